"""The Python API: submit a batch of URLs, stream its results, read its status, cancel it."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from itertools import islice
from typing import Any

from redis.asyncio import Redis

from worker.awaited import awaited
from worker.bodies import inline_ref, merge_body
from worker.contract import (
    BATCHES_KEY,
    INCARNATION_FIELD,
    BatchOptions,
    BatchState,
    ChunkJob,
    FetchRequest,
    RejectedRequest,
    batch_id_problem,
    batch_key,
    chunk_job_id,
    done_key,
    results_key,
)
from worker.enqueue import enqueue_chunks, queue_depth, queue_redis
from worker.errors import BatchError, BatchLost, InvalidBatchId, QueueUnavailable, UsageError
from worker.redisconn import check_eviction_policy
from worker.rediserrors import REDIS_DOWN, RedisProblem, classify
from worker.resultstream import FORGET_LUA, START, entry_results, page_entries, parse_cursor
from worker.settings import Settings, load_settings

__all__ = ["REDIS_DOWN", "BatchStatus", "Client", "check_batch_id", "new_batch_id"]

log = logging.getLogger("fetchfleet.producer")

CHUNKS_PER_ROUND_TRIP = 50
FOLLOW_RETRY_CAP_S = 2.0  # a follower notices a Redis that came back (maybe empty) within seconds

# Update a batch hash only while it still holds the incarnation this producer created or resumed: after
# Redis lost the batch, HSET would recreate a stray hash that `status` reports as a live batch.
# KEYS[1] batch hash; ARGV[1] incarnation; ARGV[2..] field, value, ... Returns 1, or 0 if lost.
GUARDED_HSET_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if (redis.call('HGET', KEYS[1], 'incarnation') or '') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
return 1
"""


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


def check_batch_id(batch_id: str) -> str:
    """`batch_id` if it fits the grammar (`contract.BATCH_ID_RE`), else InvalidBatchId saying why."""
    problem = batch_id_problem(batch_id)
    if problem:
        shown = repr(batch_id)[:80] if isinstance(batch_id, str) else type(batch_id).__name__
        raise InvalidBatchId(f"invalid batch id {shown}: {problem}")
    return batch_id


def lost_message(batch_id: str, why: str) -> str:
    return (
        f"batch {batch_id}: its state was lost ({why}); its results so far are gone with it. "
        f"Submit the same input again with --batch-id {batch_id}: with that id, submitting twice "
        "queues it once"
    )


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


_INDEX = re.compile(rb'^\{"index":(\d+)[,}]')


class SeenIndexes:
    """Indexes already yielded by one `results` call, one bit each.

    The done bitmap lets one result per index into the stream. But replication to a replica is
    asynchronous: after a failover the new primary may lack the last results the old one took, and the
    chunk records them again under new stream ids. A reader that had read them before the failover would
    see them twice; this keeps each reader's output to one line per index.
    """

    def __init__(self) -> None:
        self._bits = bytearray()

    def first(self, document: bytes) -> bool:
        match = _INDEX.match(document)
        if match is None:  # not a result document fetchfleet wrote: let it through unjudged
            return True
        index = int(match.group(1))
        byte, bit = index >> 3, 1 << (index & 7)
        if byte >= len(self._bits):
            self._bits.extend(bytes(byte + 1 - len(self._bits) + 1024))
        if self._bits[byte] & bit:
            return False
        self._bits[byte] |= bit
        return True


class Client:
    """A connection to one fetchfleet cluster (its Redis). Use as `async with Client() as c:`."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or load_settings()
        self.redis: Redis = queue_redis(self.settings)
        self._guarded_hset = self.redis.register_script(GUARDED_HSET_LUA)
        self._forget = self.redis.register_script(FORGET_LUA)
        self._checked = False

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
            if classify(exc) is not RedisProblem.UNREACHABLE:
                raise  # a refused password or the like: reported as what it is
            raise QueueUnavailable(f"cannot reach Redis: {exc}") from exc

    async def check_server(self) -> None:
        """Refuse a Redis that may evict keys (UnsafeRedis); once per client."""
        if not self._checked:
            await check_eviction_policy(self.redis, self.settings, log)
            self._checked = True

    async def _update(self, batch_id: str, incarnation: str, fields: dict[str, Any]) -> None:
        """HSET `fields` on the batch hash, or BatchLost if Redis no longer holds this incarnation."""
        args: list[Any] = [incarnation]
        for name, value in fields.items():
            args += [name, value]
        if not await self._guarded_hset(keys=[batch_key(batch_id)], args=args):
            why = "its keys vanished from Redis while it was being submitted"
            raise BatchLost(lost_message(batch_id, why))

    async def submit(
        self,
        requests: Iterable[str | FetchRequest | RejectedRequest],
        *,
        batch_id: str | None = None,
        store_body: bool = False,
        ignore_robots: bool = False,
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
        batch_id = check_batch_id(batch_id) if batch_id is not None else new_batch_id()
        await self.check_server()
        s = self.settings
        key = batch_key(batch_id)
        options = options or BatchOptions()
        options = options.model_copy(
            update={"store_body": store_body, "ignore_robots": ignore_robots or options.ignore_robots}
        )
        meta = await awaited(self.redis.hgetall(key))
        if meta:
            incarnation = meta.get(INCARNATION_FIELD.encode(), b"").decode()
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
                # NX: of two submits racing to create the batch, both go on with the first's token.
                pipe.hsetnx(key, INCARNATION_FIELD, secrets.token_hex(8))
                pipe.hset(key, mapping=fields)
                pipe.expire(key, s.result_ttl)
                pipe.zadd(BATCHES_KEY, {batch_id: now_ms})
                # The batch index would otherwise outlive every batch it names.
                pipe.zremrangebyscore(BATCHES_KEY, 0, now_ms - s.result_ttl * 1000)
                pipe.hget(key, INCARNATION_FIELD)
                *_, token = await pipe.execute()
            incarnation = token.decode()

        it = iter(requests)
        for _ in islice(it, start):  # already queued by an earlier, interrupted submit
            pass
        index = start
        chunk_no = start // size
        # One chunk read ahead: the input's end is known before waiting for room, so a batch that
        # exactly fills the queue does not wait for room it will never use.
        urls: list[str | FetchRequest | RejectedRequest] = list(islice(it, size))
        while urls:
            # Read no further than the queue has room for, so neither Redis nor this process grows
            # with the input while the workers are behind.
            room = min(CHUNKS_PER_ROUND_TRIP, await self._wait_for_room())
            pending: list[tuple[str, ChunkJob]] = []
            while urls and len(pending) < room:
                job = ChunkJob(
                    batch_id=batch_id,
                    incarnation=incarnation,
                    first_index=index,
                    requests=urls,
                    options=options,
                )
                pending.append((chunk_job_id(batch_id, chunk_no), job))
                index += len(urls)
                chunk_no += 1
                urls = list(islice(it, size))
            await enqueue_chunks(self.redis, s, pending)
            progress: dict[str, Any] = {"enqueued": index}
            if not urls:
                # The last round: marked complete in the same update, one round trip less per submit
                # (a one-URL batch's latency, issue 16).
                progress.update(complete=1, submitted=index)
            await self._update(batch_id, incarnation, progress)
        if index == start:  # nothing (more) to queue: an empty input, or a resumed submit at its end
            await self._update(batch_id, incarnation, {"complete": 1, "submitted": index})
        return batch_id

    async def _wait_for_room(self) -> int:
        """Backpressure: hold the producer while the queue is full; returns how many chunks fit now."""
        limit = self.settings.max_queued_chunks
        while (depth := await queue_depth(self.redis, self.settings)) >= limit:
            await asyncio.sleep(0.2)
        return limit - depth

    async def status(self, batch_id: str) -> BatchStatus:
        meta = await awaited(self.redis.hgetall(batch_key(check_batch_id(batch_id))))
        if not meta:
            raise BatchError(f"no batch {batch_id!r} (unknown, or expired)")
        return status_from_meta(batch_id, meta)

    async def batch_options(self, batch_id: str) -> BatchOptions:
        """The options the batch was submitted with (whether it keeps bodies, ...)."""
        raw = await awaited(self.redis.hget(batch_key(batch_id), "options"))
        return BatchOptions.model_validate_json(raw) if raw else BatchOptions()

    async def results(
        self,
        batch_id: str,
        *,
        follow: bool = False,
        cursor: str = START,
        block_ms: int = 1000,
        inline_bodies: bool = False,
        drop_refs: bool = False,
    ) -> AsyncIterator[tuple[str, bytes]]:
        """Yield (cursor, result JSON) pairs; resume later from the last cursor seen.

        With `follow`, keep waiting until every submitted URL has a result. Reconnects if Redis goes away;
        raises BatchLost if Redis comes back without the batch (or with another batch of that id).
        Bodies kept in Redis are always in the documents; with `inline_bodies`, so are those in the body
        store (read from it), else those documents carry only their `body_ref`. `drop_refs`: inlined
        documents leave their `body_ref` out (a store that ends with this collection, `run`'s own).
        """
        async for entry_cursor, document, stored in self.entries(
            batch_id, follow=follow, cursor=cursor, block_ms=block_ms
        ):
            merged = merge_body(document, stored)
            yield entry_cursor, inline_ref(merged, drop_refs) if inline_bodies else merged

    async def result_at(self, batch_id: str, index: int, *, inline_bodies: bool = False) -> bytes:
        """The result document of the URL at `index` (its 0-based place in the input), bodies as in
        `results`. UsageError, with a one-line reason, when the batch has no such index, the URL has
        no result yet, or its result was collected (written out by a follower, then removed).

        Reads the stream of results not yet collected until it meets that index: no more than a
        `results` call reads, and it deletes nothing."""
        st = await self.status(batch_id)
        if index >= st.submitted:
            whole = "has" if st.state is not BatchState.SUBMITTING else "has so far"
            raise UsageError(
                f"results: no index {index} in batch {batch_id}: it {whole} {st.submitted} URLs "
                f"(indexes 0 to {st.submitted - 1})"
            )
        if not await awaited(self.redis.getbit(done_key(batch_id), index)):
            if st.state is BatchState.CANCELLED:
                raise UsageError(
                    f"results: index {index} of batch {batch_id} has no result: the batch was cancelled"
                )
            raise UsageError(
                f"results: index {index} of batch {batch_id} has no result yet "
                f"({st.done} of {st.submitted} done); try again later, or follow with --follow"
            )
        async for _cursor, document, stored in self.entries(batch_id):
            match = _INDEX.match(document)
            if match is not None and int(match.group(1)) == index:
                merged = merge_body(document, stored)
                return inline_ref(merged) if inline_bodies else merged
        raise UsageError(
            f"results: the result of index {index} of batch {batch_id} was collected: a follower wrote it "
            "out and removed it from Redis (FETCHFLEET_RESULT_RETENTION=collected); it is in that output"
        )

    async def entries(
        self, batch_id: str, *, follow: bool = False, cursor: str = START, block_ms: int = 1000
    ) -> AsyncIterator[tuple[str, bytes, bytes | None]]:
        """Yield (cursor, result JSON, stored body or None) as recorded, one per result: `results`
        without the merging. A stream entry holds many results; a cursor may point inside one, and
        resuming from it yields exactly the results after it (worker/resultstream.py).

        The body stays as the worker packed it (worker.bodies.pack), for callers that want its bytes.
        """
        stream = results_key(check_batch_id(batch_id))
        position = parse_cursor(cursor)
        # A blocking read must end well inside the socket timeout, or the wait reads as a dead Redis.
        block_ms = max(min(block_ms, int(self.settings.redis_socket_timeout * 500)), 1)
        incarnation = await self._incarnation(batch_id) if follow else None
        seen = SeenIndexes()
        # Every entry up to `after` is taken; `skip`: but for the first so many results of `after`
        # itself, whose rest is read first (a cursor inside an entry).
        after, skip = position.entry, position.taken
        count = page_entries(0, 0)
        while True:
            page = await self._page(stream, after, skip is not None, follow, count, block_ms)
            results = 0
            for entry_id, fields in page:
                items = entry_results(entry_id, fields, skip or 0)
                results += len(items)
                for item in items:
                    if seen.first(item[1]):
                        yield item
                after = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
            if skip is not None:  # the rest of the cursor's own entry (if it is still there) is out
                skip = None
                continue
            full = len(page) >= count
            if page:
                count = page_entries(results, len(page))
            if not follow:
                if not page:
                    return
                continue
            if not full and await self._all_recorded(batch_id, incarnation):
                # Everything is recorded: drain what is left after the cursor, page by page, and stop.
                follow = False

    async def _page(
        self, stream: str, after: str, inside: bool, follow: bool, count: int, block_ms: int
    ) -> list[Any]:
        """`count` entries after id `after` (following: waiting up to `block_ms` for one), or with
        `inside` the entry `after` itself; retried while Redis is unreachable."""
        delay = 0.1
        while True:
            try:
                if inside:
                    return list(await self.redis.xrange(stream, min=after, max=after, count=1))
                if follow:
                    reply = await self.redis.xread({stream: after}, count=count, block=block_ms)
                    return list(reply[0][1]) if reply else []
                return list(await self.redis.xrange(stream, min=f"({after}", count=count))
            except REDIS_DOWN as exc:
                if classify(exc) is not RedisProblem.UNREACHABLE:
                    raise
                log.warning("Redis unreachable while reading results (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, FOLLOW_RETRY_CAP_S if follow else 5.0)

    async def _incarnation(self, batch_id: str) -> str:
        """The batch's incarnation token ("" for a batch made before tokens); BatchError if none."""
        complete, token = await awaited(
            self.redis.hmget(batch_key(batch_id), ["complete", INCARNATION_FIELD])
        )
        if complete is None:
            raise BatchError(f"no batch {batch_id!r} (unknown, or expired)")
        return (token or b"").decode()

    async def _all_recorded(self, batch_id: str, incarnation: str | None = None) -> bool:
        """Every URL has its result. With `incarnation`, BatchLost if the batch is no longer that one."""
        # The `done` counter, not the stream's length: collected results may have been trimmed away.
        # It goes up in the same script that appends to the stream, so it never runs ahead of it.
        try:
            complete, submitted, done, token = await awaited(
                self.redis.hmget(batch_key(batch_id), ["complete", "submitted", "done", INCARNATION_FIELD])
            )
        except REDIS_DOWN as exc:
            if classify(exc) is not RedisProblem.UNREACHABLE:
                raise
            return False
        if incarnation is not None:
            # `complete` is written when the hash is made: without it, the hash is gone.
            if complete is None:
                why = "its keys are gone from Redis: restarted without persistence, flushed, or evicted"
                raise BatchLost(lost_message(batch_id, why))
            if (token or b"").decode() != incarnation:
                raise BatchLost(lost_message(batch_id, "its keys were made again by another submission"))
        return complete == b"1" and int(done or 0) >= int(submitted or 0)

    @property
    def forgets_collected(self) -> bool:
        """Whether followers delete what they have written out (FETCHFLEET_RESULT_RETENTION)."""
        return self.settings.result_retention == "collected"

    async def forget_results(self, batch_id: str, cursor: str) -> int:
        """Delete the batch's results up to and including `cursor` (collected ones); returns how many.

        Whole stream entries only: with a cursor inside an entry, that entry stays until a later
        cursor takes its last result. The `collected` counter grows by the results deleted, in the same
        script. The done bitmap and the counters stay until the TTL: status, and exactly-once recording
        of a chunk that runs again, do not need the stream.
        """
        position = parse_cursor(cursor)
        if cursor == START:
            return 0
        try:
            keys = [results_key(batch_id), batch_key(batch_id)]
            return int(await self._forget(keys=keys, args=[position.trim_below]))
        except REDIS_DOWN as exc:  # the next trim takes these too
            log.warning("could not delete collected results (%s); they expire with the batch", exc)
            return 0

    async def cancel(self, batch_id: str) -> BatchStatus:
        # Guarded like every producer write: a batch that vanishes meanwhile is not recreated by the flag.
        incarnation = await self._incarnation(check_batch_id(batch_id))
        await self._update(batch_id, incarnation, {"cancelled": int(time.time() * 1000)})
        return await self.status(batch_id)
