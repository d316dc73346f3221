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
            "-m",
            "ops.bench.bench",
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
    print(table)  # the figures, for the log (-s)
    for row in ROWS:
        assert row in table, f"row {row!r} missing from:\n{table}"
    rows = {r["name"]: r for r in json.loads(out.read_text())}
    for row in ROWS:
        [name] = [n for n in rows if n.startswith(row)]
        measured = rows[name]
        # Every row was measured, and so was its baseline, in this same run.
        assert measured["value"] > 0, measured
        assert measured["baseline"] is not None and measured["baseline"] > 0, measured
    # Redis's cost with 12 workers: per URL it cannot be nothing; idle it may be (a blocking wait).
    for row in ("Redis commands per URL, 12 workers", "Redis CPU us per URL, 12 workers"):
        [name] = [n for n in rows if n.startswith(row)]
        assert rows[name]["value"] > 0, rows[name]
    [idle] = [n for n in rows if n.startswith("idle Redis commands/s per worker (12 idle)")]
    assert rows[idle]["value"] >= 0, rows[idle]
    # robots.txt was fetched (workers obey it by default), once per origin: counted from the workers'
    # log lines, so a quieter log would read 0 of 0 and pass the row's own check.
    robots = rows["robots.txt requests, whole benchmark"]
    assert robots["value"] == robots["baseline"] >= 1, robots


BENCH = (sys.executable, "-m", "ops.bench.bench")
WEB_ROWS = (
    "web throughput, 1 worker at",
    "web throughput, 1 worker (same run)",
    "web throughput, 2 workers at",
    "web throughput, 2 workers (same run)",
    "web worker RSS",
    "web CPU us/URL, 1 worker",
)


@pytest.mark.slow
@pytest.mark.timeout(300)  # measured 38 s at load 3, about 100 s at load 12
def test_bench_web_quick_prints_every_row(tmp_path: Path) -> None:
    """`--profile web --quick`: the CA, the name server, the HTTPS target, both baselines, every row."""
    out = tmp_path / "rows.json"
    proc = subprocess.run(
        [*BENCH, "--profile", "web", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        timeout=280,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    print(proc.stdout.decode())  # the figures, for the log (-s)
    rows = {r["name"]: r for r in json.loads(out.read_text())}
    for row in WEB_ROWS:
        [name] = [n for n in rows if n.startswith(row)]
        measured = rows[name]
        assert measured["value"] > 0, measured
        assert measured["baseline"] is not None and measured["baseline"] > 0, measured


def test_oneshot_bench_prints_best_and_median() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ops.bench.oneshot", "--runs", "2", "--urls", "10"],
        cwd=ROOT,
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    out = proc.stdout.decode()
    print(out)
    assert out.count("10 results in") == 2 and "fetch, 10 URLs, fresh process: best" in out
