"""ops/bench/bodies.py runs end to end on a tiny input and prints every row of its table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ROWS = (
    "throughput, --body to a file store",
    "Redis peak used_memory, 5,000 URLs, collector attached",
    "CPU ms per 1,000 URLs: worker(s), --body to the store",
    "CPU ms per 1,000 URLs: worker(s), no body kept",
    "Redis bytes per result after collection",
    "memory run throughput",
)


@pytest.mark.slow
def test_bodies_bench_quick_prints_every_row() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ops.bench.bodies", "--quick", "--big", "5000"],
        cwd=ROOT,
        capture_output=True,
        timeout=300,
        check=False,
    )
    out = proc.stdout.decode()
    assert proc.returncode == 0, proc.stderr.decode()[-3000:] + out
    for row in ROWS:
        assert row in out, f"row {row!r} missing:\n{out}"
    print(out)
