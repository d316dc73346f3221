"""The loops a worker runs beside its chunks (leases, cancel flags, deadlines, heartbeat): start and stop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any


def start_loop(
    task: asyncio.Task[None] | None, run: Callable[[], Coroutine[Any, Any, None]], name: str
) -> asyncio.Task[None]:
    """The running task: `task` if there is one already, else a new one running `run()`."""
    return task if task is not None else asyncio.create_task(run(), name=name)


async def stop_loop(task: asyncio.Task[None] | None) -> None:
    """Cancel a loop and wait for it, so nothing of it runs after shutdown goes on."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
