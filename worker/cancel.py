"""Which batches are cancelled, as a per-process view refreshed twice a second for fetches in flight."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Self

from redis.asyncio import Redis

from worker.background import start_loop, stop_loop
from worker.contract import batch_key

log = logging.getLogger("fetchfleet.cancel")

REFRESH_S = 0.5
FORGET_S = 60.0


def flag_set(value: bytes | str | None) -> bool:
    return bool(value) and value not in (b"0", "0")


class CancelWatch:
    """Answers "is this batch cancelled?" without a round trip per fetch.

    Every chunk checks the flag in Redis when it starts; fetches of chunks already running check this
    cache, which re-reads the flags of the batches seen in the last minute every REFRESH_S. So after
    `fetchfleet cancel` returns, no new fetch of the batch starts anywhere after REFRESH_S.
    """

    def __init__(self, redis: Redis, refresh_s: float = REFRESH_S) -> None:
        self._redis = redis
        self._refresh_s = refresh_s
        self._seen: dict[str, float] = {}
        self._cancelled: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    def note(self, batch_id: str, cancelled: bool) -> None:
        """Record a flag read elsewhere (at chunk start) and keep watching the batch."""
        self._seen[batch_id] = time.monotonic()
        if cancelled:
            self._cancelled.add(batch_id)

    def is_cancelled(self, batch_id: str) -> bool:
        self._seen[batch_id] = time.monotonic()
        return batch_id in self._cancelled

    async def refresh(self) -> None:
        now = time.monotonic()
        for batch_id in [b for b, t in self._seen.items() if now - t > FORGET_S]:
            del self._seen[batch_id]
            self._cancelled.discard(batch_id)
        watched = [b for b in self._seen if b not in self._cancelled]  # a cancel is never undone
        if not watched:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for batch_id in watched:
                pipe.hget(batch_key(batch_id), "cancelled")
            replies = await pipe.execute()
        for batch_id, value in zip(watched, replies, strict=True):
            if flag_set(value):
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
