"""A full Redis (maxmemory reached under noeviction): one shared flag, waited out without losing anything.

Whoever meets an OOM reply (recorder, retry queue, claims) calls `RedisPressure.full_now()`. While the
flag is up the worker claims no chunk and starts no fetch, keeps what it fetched in memory, pauses its
chunk deadlines (waiting for room is not the chunk's fault), fails `/healthz`, and logs "Redis is full
(used/max)" once a minute. It comes down when INFO memory shows room again (5 % of maxmemory free).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Self

from redis.asyncio import Redis

from worker.background import start_loop, stop_loop
from worker.rediserrors import REDIS_ERRORS

log = logging.getLogger("fetchfleet.pressure")

REPORT_EVERY_S = 60.0
CHECK_EVERY_S = 1.0
# Room means this much of maxmemory free again, not one write squeezing in: resuming at the first
# free byte would fill Redis again at once and flap between full and not every second.
ROOM_FRACTION = 0.95


def mib(n: int) -> str:
    return f"{n / 1048576:.1f} MiB"


@dataclass
class RedisPressure:
    """Is Redis full? Shared by every part of one worker process."""

    redis: Redis
    full: bool = False
    since: float = 0.0
    used: int = 0
    maxmemory: int = 0
    _room: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None
    _last_report: float = 0.0
    _full_seconds: float = 0.0
    # Chunk deadlines (asyncio.Timeout) in force, and what was left of each while paused.
    _deadlines: dict[asyncio.Timeout, float | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._room.set()

    def full_now(self) -> None:
        """An OOM reply was seen: raise the flag (once) and start watching for room."""
        if self.full:
            return
        self.full, self.since = True, time.monotonic()
        self._room.clear()
        self._pause_deadlines()
        self._task = start_loop(self._task, self._watch, "fetchfleet-pressure")

    def room_again(self) -> None:
        """INFO shows room: lower the flag and let everything move on."""
        if not self.full:
            return
        waited = time.monotonic() - self.since
        self._full_seconds += waited
        self.full = False
        self._room.set()
        self._resume_deadlines()
        log.info("Redis has room again after %.0fs full; recording and claiming resume", waited)

    async def wait_room(self) -> None:
        await self._room.wait()

    def full_for(self) -> float:
        return time.monotonic() - self.since if self.full else 0.0

    def describe(self) -> str:
        if self.maxmemory:
            return f"Redis is full ({mib(self.used)}/{mib(self.maxmemory)} used, maxmemory reached)"
        return "Redis is full (OOM replies; maxmemory reached)"

    async def read_memory(self) -> None:
        info = await self.redis.info("memory")
        # What Redis compares with maxmemory: replication and AOF buffers are not counted.
        self.used = int(info.get("used_memory", 0)) - int(info.get("mem_not_counted_for_evict", 0))
        self.maxmemory = int(info.get("maxmemory", 0))

    def has_room(self) -> bool:
        return self.maxmemory == 0 or self.used < self.maxmemory * ROOM_FRACTION

    async def close(self) -> None:
        await stop_loop(self._task)
        self._task = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _watch(self) -> None:
        """While full: read INFO memory each second, report once a minute, lower the flag on room."""
        try:
            while self.full:
                with contextlib.suppress(*REDIS_ERRORS):
                    await self.read_memory()
                    if self.has_room():
                        self.room_again()
                        break
                now = time.monotonic()
                if now - self._last_report >= REPORT_EVERY_S:
                    self._last_report = now
                    log.warning(
                        "%s for %.0fs: results are kept, no chunk is claimed and no fetch starts "
                        "until there is room",
                        self.describe(),
                        self.full_for(),
                    )
                await asyncio.sleep(CHECK_EVERY_S)
        finally:
            self._task = None

    # ---- chunk deadlines that stop while Redis is full ------------------------------------------

    @contextlib.asynccontextmanager
    async def deadline(self, seconds: float) -> AsyncIterator[None]:
        """`asyncio.timeout(seconds)` whose clock stops while Redis is full."""
        async with asyncio.timeout(seconds) as cm:
            if self.full:
                self._deadlines[cm] = seconds
                cm.reschedule(None)
            else:
                self._deadlines[cm] = None
            try:
                yield
            finally:
                self._deadlines.pop(cm, None)

    def _pause_deadlines(self) -> None:
        now = asyncio.get_running_loop().time()
        for cm in self._deadlines:
            when = cm.when()
            if when is not None and not cm.expired():
                self._deadlines[cm] = max(when - now, 0.0)
                cm.reschedule(None)

    def _resume_deadlines(self) -> None:
        now = asyncio.get_running_loop().time()
        for cm, left in self._deadlines.items():
            if left is not None and not cm.expired():
                cm.reschedule(now + left)
                self._deadlines[cm] = None
