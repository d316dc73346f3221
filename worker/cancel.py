"""Which batches are cancelled, as a per-process view refreshed twice a second while their chunks run."""

from __future__ import annotations

import asyncio
import logging
from typing import Self

from redis.asyncio import Redis

from worker.background import start_loop, stop_loop
from worker.contract import batch_key

log = logging.getLogger("fetchfleet.cancel")

REFRESH_S = 0.5


def flag_set(value: bytes | str | None) -> bool:
    return bool(value) and value not in (b"0", "0")


class CancelWatch:
    """Answers "is this batch cancelled?" without a round trip per fetch.

    Every chunk checks the flag in Redis when it starts; fetches of chunks already running check this
    cache, which re-reads the flags of the batches with chunks running here every REFRESH_S. So after
    `fetchfleet cancel` returns, no new fetch of the batch starts anywhere after REFRESH_S. A batch
    with no chunk running here is not watched: an idle worker asks Redis nothing (issue 16).
    """

    def __init__(self, redis: Redis, refresh_s: float = REFRESH_S) -> None:
        self._redis = redis
        self._refresh_s = refresh_s
        self._running: dict[str, int] = {}  # batch id -> chunks of it running here
        self._cancelled: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    def note(self, batch_id: str, cancelled: bool) -> None:
        """A chunk of the batch starts, its flag read at its start: watch the batch until `done`."""
        self._running[batch_id] = self._running.get(batch_id, 0) + 1
        if cancelled:
            self._cancelled.add(batch_id)

    def done(self, batch_id: str) -> None:
        """A chunk of the batch ended; the last one ends the watch (a later chunk reads the flag anew)."""
        left = self._running.get(batch_id, 0) - 1
        if left > 0:
            self._running[batch_id] = left
            return
        self._running.pop(batch_id, None)
        self._cancelled.discard(batch_id)

    def is_cancelled(self, batch_id: str) -> bool:
        return batch_id in self._cancelled

    async def refresh(self) -> None:
        watched = [b for b in self._running if b not in self._cancelled]  # a cancel is never undone
        if not watched:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for batch_id in watched:
                pipe.hget(batch_key(batch_id), "cancelled")
            replies = await pipe.execute()
        for batch_id, value in zip(watched, replies, strict=True):
            if flag_set(value) and batch_id in self._running:
                log.info("batch %s was cancelled: no new fetch of it starts here", batch_id)
                self._cancelled.add(batch_id)

    def start(self) -> None:
        self._task = start_loop(self._task, self._run, "fetchfleet-cancel-watch")

    async def close(self) -> None:
        await stop_loop(self._task)
        self._task = None

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            try:
                await self.refresh()
            except Exception as exc:  # Redis away: chunk starts still check the flag themselves
                log.debug("refreshing cancel flags failed: %s", exc)
