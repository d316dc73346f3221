"""The loops a worker runs beside its chunks (leases, cancel flags, deadlines, heartbeat): start and stop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Iterable
from typing import Any


def start_loop(
    task: asyncio.Task[None] | None, run: Callable[[], Coroutine[Any, Any, None]], name: str
) -> asyncio.Task[None]:
    """The running task: `task` if there is one already, else a new one running `run()`."""
    return task if task is not None else asyncio.create_task(run(), name=name)


# A loop that outlived its cancel is cancelled again this often.
CANCEL_AGAIN_S = 0.25


async def stop_loop(task: asyncio.Task[None] | None) -> None:
    """Cancel a loop and wait for it, so nothing of it runs after shutdown goes on.

    Cancelled again until it ends: a cancel landing inside a library call can come out of it as
    another exception (a Redis command cut short) that the loop's own `except Exception` takes for a
    failed beat, and the loop then sleeps on for ever, with shutdown waiting on it (seen: a SIGTERM 1-2
    ms after start-up left 6 of 80 workers stuck in the heartbeat's first beat).
    """
    if task is None:
        return
    await cancel_until_done(task)
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def cancel_until_done(task: asyncio.Future[Any]) -> None:
    """Cancel `task` every CANCEL_AGAIN_S until it has ended; its outcome is left to whoever awaits it."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=CANCEL_AGAIN_S)


async def stop_tasks(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """Cancel every task, again until each has ended, and wait for them all; their outcomes are dropped.

    For helper tasks that may be inside a Redis call when they are stopped: redis-py (5.3, with a
    socket timeout set, as ours always is) loses about a third of the cancels that land in a command
    (measured: a task looping over ZRANGE, cancelled at a random moment, ran on 503 times in 1,500), and
    one `cancel()` followed by a wait then waits for ever (seen: `submit --wait` had written every
    result and never exited, its worker watcher still polling).
    """
    pending = list(tasks)
    for task in pending:
        task.cancel()
    for task in pending:
        await cancel_until_done(task)
    await asyncio.gather(*pending, return_exceptions=True)
