"""The Python API: submit a batch of URLs, stream its results, read its status, cancel it."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from itertools import islice
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from worker.bodies import inline_ref, merge_body
from worker.contract import (
    BATCHES_KEY,
    BatchOptions,
    BatchState,
    ChunkJob,
    FetchRequest,
    batch_key,
    chunk_job_id,
    results_key,
)
from worker.engine import enqueue_chunks, queue_depth, queue_redis
from worker.errors import BatchError, QueueUnavailable
from worker.settings import Settings, load_settings

log = logging.getLogger("fetchfleet.producer")

CHUNKS_PER_ROUND_TRIP = 50
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)


@dataclass(frozen=True, slots=True)
class BatchStatus:
    batch_id: str
    state: BatchState
    submitted: int
    done: int
    failed: int
    enqueued: int
    created_ms: int
    finished_ms: int | None
    # results written out by a follower and removed from Redis (FETCHFLEET_RESULT_RETENTION=collected)
    collected: int = 0

    @property
    def remaining(self) -> int:
        return max(self.submitted - self.done, 0)

    def as_dict(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id,
            "state": self.state.value,
            "submitted": self.submitted,
            "done": self.done,
            "failed": self.failed,
            "remaining": self.remaining,
            "enqueued": self.enqueued,
            "created_ms": self.created_ms,
            "finished_ms": self.finished_ms,
            "collected": self.collected,
        }


def new_batch_id() -> str:
    return uuid.uuid4().hex[:16]


def status_from_meta(batch_id: str, meta: dict[bytes, bytes]) -> BatchStatus:
    def num(name: str) -> int:
        try:
            return int(meta.get(name.encode(), b"0"))
        except ValueError:  # not written by fetchfleet: read as 0 rather than fail `stats`
            return 0

    submitted, done = num("submitted"), num("done")
    complete = meta.get(b"complete") == b"1"
    if meta.get(b"cancelled", b"0") != b"0":
        state = BatchState.CANCELLED
    elif complete and done >= submitted:
        state = BatchState.DONE
    elif complete:
        state = BatchState.QUEUED
    else:
        state = BatchState.SUBMITTING
    finished = meta.get(b"finished_ms")
    return BatchStatus(
        batch_id=batch_id,
        state=state,
        submitted=submitted,
        done=done,
        failed=num("failed"),
        enqueued=num("enqueued"),
        created_ms=num("created_ms"),
        finished_ms=num("finished_ms") if finished else None,
        collected=num("collected"),
    )


class Client:
    """A connection to one fetchfleet cluster (its Redis). Use as `async with Client() as c:`."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or load_settings()
        self.redis: Redis = queue_redis(self.settings)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.redis.aclose(close_connection_pool=True)

    async def ping(self) -> None:
        try:
            await self.redis.ping()
        except REDIS_DOWN as exc:
            raise QueueUnavailable(f"cannot reach Redis: {exc}") from exc

    async def submit(
        self,
        requests: Iterable[str | FetchRequest],
        *,
        batch_id: str | None = None,
        store_body: bool = False,
        total: int | None = None,
        digest: str | None = None,
        options: BatchOptions | None = None,
    ) -> str:
        """Queue every request as chunk jobs and return the batch id.

        Submitting again with the same `batch_id` adds no work: a finished submission is left alone and
        an interrupted one resumes where it stopped. `digest` (of the input) guards against reusing an
        id for different input. `options`: the batch's own fetch limits, which workers apply only where
        they are stricter than their own settings.
        """
        if total is None and isinstance(requests, list | tuple):
            total = len(requests)
        batch_id = batch_id or new_batch_id()
        s = self.settings
        key = batch_key(batch_id)
        options = (options or BatchOptions()).model_copy(update={"store_body": store_body})
        meta = await self.redis.hgetall(key)
        if meta:
            if digest and meta.get(b"digest", b"").decode() not in ("", digest):
                raise BatchError(f"batch id {batch_id!r} already holds a different input")
            if meta.get(b"complete") == b"1":
                return batch_id
            start = int(meta.get(b"enqueued", b"0"))
            # Chunk ids depend on the chunk size: a resumed submit keeps the first one's.
            size = int(meta.get(b"chunk_size", s.chunk_size))
        else:
            size = s.chunk_size
            start = 0
            now_ms = int(time.time() * 1000)
            fields: dict[str, Any] = {
                "created_ms": now_ms,
                "enqueued": 0,
                "complete": 0,
                "chunk_size": s.chunk_size,
                "options": options.model_dump_json(),
            }
            if total is not None:
                fields["submitted"] = total
            if digest:
                fields["digest"] = digest
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(key, mapping=fields)
                pipe.expire(key, s.result_ttl)
                pipe.zadd(BATCHES_KEY, {batch_id: now_ms})
                # The batch index would otherwise outlive every batch it names.
                pipe.zremrangebyscore(BATCHES_KEY, 0, now_ms - s.result_ttl * 1000)
                await pipe.execute()

        it = iter(requests)
        for _ in islice(it, start):  # already queued by an earlier, interrupted submit
            pass
        index = start
        chunk_no = start // size
        # One chunk read ahead: the input's end is known before waiting for room, so a batch that
        # exactly fills the queue does not wait for room it will never use.
        urls = list(islice(it, size))
        while urls:
            # Read no further than the queue has room for, so neither Redis nor this process grows
            # with the input while the workers are behind.
            room = min(CHUNKS_PER_ROUND_TRIP, await self._wait_for_room())
            pending: list[tuple[str, ChunkJob]] = []
            while urls and len(pending) < room:
                job = ChunkJob(batch_id=batch_id, first_index=index, requests=urls, options=options)
                pending.append((chunk_job_id(batch_id, chunk_no), job))
                index += len(urls)
                chunk_no += 1
                urls = list(islice(it, size))
            await enqueue_chunks(self.redis, s, pending)
            await self.redis.hset(key, "enqueued", index)
        fields = {"complete": 1, "submitted": index}
        await self.redis.hset(key, mapping=fields)
        return batch_id

    async def _wait_for_room(self) -> int:
        """Backpressure: hold the producer while the queue is full; returns how many chunks fit now."""
        limit = self.settings.max_queued_chunks
        while (depth := await queue_depth(self.redis, self.settings)) >= limit:
            await asyncio.sleep(0.2)
        return limit - depth

    async def status(self, batch_id: str) -> BatchStatus:
        meta = await self.redis.hgetall(batch_key(batch_id))
        if not meta:
            raise BatchError(f"no batch {batch_id!r} (unknown, or expired)")
        return status_from_meta(batch_id, meta)

    async def batch_options(self, batch_id: str) -> BatchOptions:
        """The options the batch was submitted with (whether it keeps bodies, ...)."""
        raw = await self.redis.hget(batch_key(batch_id), "options")
        return BatchOptions.model_validate_json(raw) if raw else BatchOptions()

    async def results(
        self,
        batch_id: str,
        *,
        follow: bool = False,
        cursor: str = "0-0",
        block_ms: int = 1000,
        inline_bodies: bool = False,
    ) -> AsyncIterator[tuple[str, bytes]]:
        """Yield (cursor, result JSON) pairs; resume later from the last cursor seen.

        With `follow`, keep waiting until every submitted URL has a result. Reconnects if Redis goes away.
        Bodies kept in Redis are always in the documents; with `inline_bodies`, so are those in the body
        store (read from it), else those documents carry only their `body_ref`.
        """
        async for entry_cursor, document, stored in self.entries(
            batch_id, follow=follow, cursor=cursor, block_ms=block_ms
        ):
            merged = merge_body(document, stored)
            yield entry_cursor, inline_ref(merged) if inline_bodies else merged

    async def entries(
        self, batch_id: str, *, follow: bool = False, cursor: str = "0-0", block_ms: int = 1000
    ) -> AsyncIterator[tuple[str, bytes, bytes | None]]:
        """Yield (cursor, result JSON, stored body or None) as recorded: `results` without the merging.

        The body stays as the worker packed it (worker.bodies.pack), for callers that want its bytes.
        """
        stream = results_key(batch_id)
        delay = 0.1
        while True:
            try:
                if follow:
                    reply = await self.redis.xread({stream: cursor}, count=1000, block=block_ms)
                    entries = reply[0][1] if reply else []
                else:
                    entries = await self.redis.xrange(stream, min=f"({cursor}", count=1000)
                delay = 0.1
            except REDIS_DOWN as exc:
                log.warning("Redis unreachable while reading results (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            for entry_id, fields in entries:
                cursor = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                yield cursor, fields[b"r"], fields.get(b"b")
            if not follow:
                if not entries:
                    return
                continue
            if len(entries) < 1000 and await self._all_recorded(batch_id):
                # Everything is recorded; drain what is left after the cursor and stop.
                rest = await self.redis.xrange(stream, min=f"({cursor}")
                for entry_id, fields in rest:
                    cursor = entry_id.decode()
                    yield cursor, fields[b"r"], fields.get(b"b")
                return

    async def _all_recorded(self, batch_id: str) -> bool:
        # The `done` counter, not the stream's length: collected results may have been trimmed away.
        # It goes up in the same script that appends to the stream, so it never runs ahead of it.
        try:
            complete, submitted, done = await self.redis.hmget(
                batch_key(batch_id), "complete", "submitted", "done"
            )
        except REDIS_DOWN:
            return False
        return complete == b"1" and int(done or 0) >= int(submitted or 0)

    @property
    def forgets_collected(self) -> bool:
        """Whether followers delete what they have written out (FETCHFLEET_RESULT_RETENTION)."""
        return self.settings.result_retention == "collected"

    async def forget_results(self, batch_id: str, cursor: str) -> int:
        """Delete the batch's results up to and including `cursor` (collected ones); returns how many.

        The done bitmap and the counters stay until the TTL: status, and exactly-once recording of a
        chunk that runs again, do not need the stream.
        """
        if cursor == "0-0":
            return 0
        ms, _, seq = cursor.partition("-")
        try:
            removed = int(
                await self.redis.xtrim(
                    results_key(batch_id), minid=f"{ms}-{int(seq or 0) + 1}", approximate=False
                )
            )
            if removed:  # counted, so that a later reader is told why they are not there
                await self.redis.hincrby(batch_key(batch_id), "collected", removed)
            return removed
        except REDIS_DOWN as exc:  # the next trim takes these too
            log.warning("could not delete collected results (%s); they expire with the batch", exc)
            return 0

    async def cancel(self, batch_id: str) -> BatchStatus:
        key = batch_key(batch_id)
        if not await self.redis.exists(key):
            raise BatchError(f"no batch {batch_id!r} (unknown, or expired)")
        await self.redis.hset(key, "cancelled", int(time.time() * 1000))
        return await self.status(batch_id)
