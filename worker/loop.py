"""The event loop every fetchfleet process runs: uvloop where it is installed, asyncio's own elsewhere."""

from __future__ import annotations

import asyncio

try:
    import uvloop
except ImportError:  # uvloop is optional where it cannot build (Windows, some platforms)
    uvloop = None  # type: ignore[assignment]  # the module or None: the one place that checks


def install_event_loop() -> None:
    if uvloop is not None:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
