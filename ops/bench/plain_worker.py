"""`python -m worker` on asyncio's own event loop instead of uvloop, so the benchmark can compare them."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the working tree's worker package

import worker.main as worker_main

if __name__ == "__main__":
    worker_main.install_event_loop = lambda: None  # everything else exactly as `fetchfleet worker`
    sys.exit(worker_main.serve())
