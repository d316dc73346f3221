"""The benchmark (ops/bench) runs end to end on a tiny input and prints every row of its table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # every test here starts processes

ROOT = Path(__file__).resolve().parent.parent
ROWS = (
    "throughput, 1 worker",
    "throughput, 2 workers",
    "enqueue, Client.submit",
    "enqueue, `fetchfleet submit FILE`",
    "collection",
    "latency p50",
    "latency p99",
    "worker RSS, 1,000 in flight",
    "Redis bytes per stored result",
)


@pytest.mark.timeout(180)  # measured 30 s
def test_bench_quick_prints_every_row(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "ops" / "bench" / "bench.py"),
            "--quick",
            "--target",
            "python",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    table = proc.stdout.decode()
    for row in ROWS:
        assert row in table, f"row {row!r} missing from:\n{table}"
    rows = {r["name"]: r for r in json.loads(out.read_text())}
    for row in ROWS:
        [name] = [n for n in rows if n.startswith(row)]
        measured = rows[name]
        # Every row was measured, and so was its baseline, in this same run.
        assert measured["value"] > 0, measured
        assert measured["baseline"] is not None and measured["baseline"] > 0, measured
