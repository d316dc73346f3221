"""`python -m worker` on asyncio's own event loop instead of uvloop, so the benchmark can compare them.

Run from the repository root as `python -m ops.bench.plain_worker`: the working tree's worker package.
"""

from __future__ import annotations

import sys

import worker.main as worker_main

if __name__ == "__main__":
    worker_main.install_event_loop = lambda: None  # everything else exactly as `fetchfleet worker`
    sys.exit(worker_main.serve())
