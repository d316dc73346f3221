"""`fetchfleet.fetch()` on a fresh process, measured: 100 local URLs with bodies, from the interpreter's
start (import included) to typed results in input order, the embedded server and a local worker started
and stopped inside the call (issue 13's goal: under 1.5 s).

    python -m ops.bench.oneshot              # 7 fresh processes; --runs N

A timed test would fail on a busy shared machine without anything being wrong (the engineering
standards: speed goals are shown by ops/bench). tests/test_api.py checks what the call returns.
Printed: each run's time and its import share, then best and median.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from ops.bench.harness import precompile
from tests.support.http_target import HttpTarget
from tests.support.procs import ROOT

# Run by a fresh interpreter: prints one JSON line of its own timings.
FETCH_SCRIPT = """
import json, sys, time
started = time.monotonic()
import fetchfleet
imported = time.monotonic()
urls = sys.argv[1:]
results = fetchfleet.fetch(urls, body=True, ordered=True)
took = time.monotonic() - started
assert [r.index for r in results] == list(range(len(urls))), "not in input order"
assert all(isinstance(r, fetchfleet.Result) for r in results)
assert all(r.ok and r.text() == "x" * (100 + r.index) for r in results), "a page is missing"
print(json.dumps({"results": len(results), "seconds": took, "import": imported - started}))
"""


def one_run(urls: list[str]) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FETCHFLEET_")}
    env["FETCHFLEET_ALLOW_PRIVATE_NETWORKS"] = "true"  # the target is on 127.0.0.1
    proc = subprocess.run(
        [sys.executable, "-c", FETCH_SCRIPT, *urls], env=env, cwd=ROOT, capture_output=True, timeout=120
    )
    if proc.returncode != 0:
        raise SystemExit(f"fetch failed: {proc.stderr.decode()[-2000:]}")
    doc: dict[str, float] = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    return doc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="fresh processes to time (default 7)")
    parser.add_argument("--urls", type=int, default=100, help="URLs per call (default 100)")
    args = parser.parse_args()
    precompile()
    target = HttpTarget().start()
    try:
        urls = [target.url(f"/ok/{100 + i}") for i in range(args.urls)]
        times = []
        for n in range(args.runs):
            doc = one_run(urls)
            times.append(doc["seconds"])
            took, imported = doc["seconds"], doc["import"]
            print(f"run {n + 1}: {doc['results']} results in {took:.3f} s (import {imported:.3f} s)")
        print(
            f"fetchfleet.fetch, {args.urls} URLs, fresh process: best {min(times):.3f} s, "
            f"median {statistics.median(times):.3f} s (goal < 1.5 s)"
        )
    finally:
        target.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
