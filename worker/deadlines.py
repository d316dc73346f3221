"""Read and total timeouts of every fetch in flight, kept by one periodic check instead of timers."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass

from worker.background import start_loop, stop_loop

# A timeout fires at most this fraction of its length (and never more than MAX_LATE_S) late, never early.
SLACK = 0.125
MAX_LATE_S = 0.5


@dataclass(eq=False, slots=True)
class Deadline:
    """One fetch's limits, in time.monotonic() seconds, filled in by `Watchdog.begin`.

    The fetcher's per-fetch state extends it, so that watching a fetch allocates nothing more.
    """

    task: asyncio.Task[object] | None = None
    end: float = 0.0  # the total deadline
    read_timeout: float = 0.0
    last: float = 0.0  # the last sign of progress; `progress()` restarts the read timeout
    cancelling: int = 0  # the task's cancel requests when the fetch began (asyncio.timeout's rule)
    fired: str | None = None  # "total" or "read" once the watchdog cancelled the task

    def progress(self) -> None:
        self.last = time.monotonic()


class Watchdog:
    """Cancels the fetches that ran out of time, like asyncio.timeout, with one timer for all of them.

    uvloop allocates a libuv timer per call_at; asyncio.timeout plus aiohttp's sock_read (re-armed on
    every read) cost several of them per fetch, ~5-10 us of a worker's ~90 us a URL (ops/bench). Here a
    fetch costs a set insert and removal, and a timeout fires a little late (see SLACK), never early.
    """

    def __init__(self, read_timeout: float, total_timeout: float) -> None:
        self.read_timeout = read_timeout
        self.total_timeout = total_timeout
        self.every = max(0.005, min(MAX_LATE_S, min(read_timeout, total_timeout) * SLACK))
        self._live: set[Deadline] = set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = start_loop(self._task, self._run, "fetchfleet-deadlines")

    async def close(self) -> None:
        await stop_loop(self._task)
        self._task = None

    def begin(self, d: Deadline) -> None:
        """Watch the current task from now; pair with `end(d)` in a finally."""
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a fetch must run inside a task")
        d.task, d.cancelling, d.read_timeout = task, task.cancelling(), self.read_timeout
        d.last = now = time.monotonic()
        d.end = now + self.total_timeout
        self._live.add(d)

    def end(self, d: Deadline) -> None:
        self._live.discard(d)

    @contextlib.contextmanager
    def paused(self, d: Deadline) -> Iterator[None]:
        """Time spent inside counts against neither of d's timeouts (a wait for a host's turn)."""
        if d not in self._live:  # fired already: the cancel is on its way
            yield
            return
        left = d.end - time.monotonic()
        self._live.discard(d)
        try:
            yield
        finally:
            d.last = now = time.monotonic()
            d.end = now + left
            self._live.add(d)

    def check(self, now: float) -> None:
        for d in [d for d in self._live if now >= d.end or now - d.last >= d.read_timeout]:
            self._live.discard(d)
            d.fired = "total" if now >= d.end else "read"
            if d.task is not None:
                d.task.cancel()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            if self._live:
                self.check(time.monotonic())
