"""Writes results to Redis exactly once, batching many results into one round trip."""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Self

from redis.asyncio import Redis

from worker.contract import batch_keys
from worker.pressure import RedisPressure
from worker.rediserrors import REDIS_ERRORS, RedisProblem, classify, describe
from worker.resultstream import RESULTS_PER_ENTRY

log = logging.getLogger("fetchfleet.recorder")

RECORD_LUA = files("worker").joinpath("record.lua").read_text()
MAX_FLUSH = 1000
MAX_INDEX = 2**32  # SETBIT's offsets: the done bitmap holds no index beyond
NUMBERS = struct.Struct(">IBII")  # record.lua's ARGV[2]: index, failed, document and body lengths
LOST = -1  # record.lua's answer when the batch hash is gone or holds another incarnation
FULL_BACKOFF_CAP_S = 5.0


@dataclass(slots=True)
class Pending:
    batch_id: str
    index: int
    failed: bool
    payload: bytes
    body: bytes  # compressed kept body, b"" for none
    future: asyncio.Future[bool] = field(repr=False)
    incarnation: str = ""


def reversed_keys(batch_id: str) -> list[str]:
    """The record script's KEYS order: done bitmap, result stream, batch hash."""
    meta, stream, done = batch_keys(batch_id)
    return [done, stream, meta]


async def done_flags(redis: Redis, batch_id: str, indexes: list[int]) -> list[bool]:
    """Which of `indexes` already have a result, in one round trip."""
    if not indexes:
        return []
    args: list[str | int] = []
    for i in indexes:
        args += ["GET", "u1", i]
    _meta, _stream, done = batch_keys(batch_id)
    # redis-py leaves execute_command unannotated.
    values = await redis.execute_command("BITFIELD", done, *args)  # type: ignore[no-untyped-call]
    return [bool(v) for v in values]


def script_args(ttl: int, group: list[Pending], incarnation: str = "") -> list[int | str | bytes]:
    """record.lua's ARGV: the ttl, the numbers of every result packed in one string, their bodies in
    another, the batch incarnation the results belong to, the most results a stream entry takes, then
    the documents, that many to an argument, joined by newlines (each argument an entry as it stands)."""
    numbers = b"".join([NUMBERS.pack(p.index, p.failed, len(p.payload), len(p.body)) for p in group])
    bodies = b"".join([p.body for p in group])
    step = RESULTS_PER_ENTRY
    documents = [b"\n".join([p.payload for p in group[i : i + step]]) for i in range(0, len(group), step)]
    return [ttl, numbers, bodies, incarnation, step, *documents]


class Recorder:
    """Collects results from every running chunk and flushes them together.

    A flush starts as soon as one result is waiting; results that arrive while it runs go out in the
    next one, so under load each round trip carries hundreds of results and when idle there is no delay.
    """

    def __init__(self, redis: Redis, ttl: int, pressure: RedisPressure | None = None) -> None:
        self._redis = redis
        self._ttl = ttl
        self.pressure = pressure if pressure is not None else RedisPressure(redis)
        self._script = redis.register_script(RECORD_LUA)
        self._queue: list[Pending] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        # For /healthz: results waiting, and when the recorder last moved (see stalled_for).
        self._waiting = 0
        self._progress_at = time.monotonic()
        # Batches whose state Redis lost, already warned about: one warning per batch, not per flush.
        self._lost: set[tuple[str, str]] = set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="fetchfleet-recorder")

    async def record(
        self,
        batch_id: str,
        index: int,
        failed: bool,
        payload: bytes,
        body: bytes | None = None,
        *,
        incarnation: str,
    ) -> bool:
        """Queue one result and wait until it is durable; True if it was the first for its index.

        `incarnation` is required: a result recorded under another one (or none) is dropped as belonging
        to a lost batch, so every caller must pass the one its chunk job carries.

        False too when the batch no longer exists in that incarnation: the result is dropped.
        """
        if self._closed:
            raise RuntimeError("recorder is closed")
        if not 0 <= index < MAX_INDEX:
            # It does not fit record.lua's four bytes, and would fail the whole flush: refused here, it
            # fails its chunk only.
            raise ValueError(f"result index {index} is outside 0..{MAX_INDEX - 1}")
        if b"\n" in payload:
            # A stream entry's documents are its lines (worker/resultstream.py); JSON escapes a newline
            # in a string, so only a document that is not compact JSON can hold one.
            raise ValueError(f"result document of index {index} is not one line")
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.append(Pending(batch_id, index, failed, payload, body or b"", fut, incarnation))
        self._wake.set()
        if not self._waiting:
            self._progress_at = time.monotonic()
        self._waiting += 1
        try:
            return await fut
        finally:
            self._waiting -= 1
            self._progress_at = time.monotonic()

    def is_lost(self, batch_id: str, incarnation: str) -> bool:
        """Whether Redis answered that it no longer holds this batch (its results are dropped)."""
        return (batch_id, incarnation) in self._lost

    def stalled_for(self) -> float:
        """Seconds results have been waiting with none made durable; 0 when nothing waits."""
        return time.monotonic() - self._progress_at if self._waiting else 0.0

    async def close(self) -> None:
        self._closed = True
        self._wake.set()
        if self._task is not None:
            await self._task

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                take, self._queue = self._queue[:MAX_FLUSH], self._queue[MAX_FLUSH:]
                await self._flush(take)
            if self._closed:
                return

    async def _flush(self, items: list[Pending]) -> None:
        by_batch: dict[tuple[str, str], list[Pending]] = {}
        for p in items:
            by_batch.setdefault((p.batch_id, p.incarnation), []).append(p)
        delay = 0.1
        failing: RedisProblem | None = None
        while True:
            try:
                # Usually one batch per flush; EVALSHA falls back to loading the script once.
                for key in list(by_batch):
                    batch_id, incarnation = key
                    group = by_batch[key]
                    flags = await self._script(
                        keys=reversed_keys(batch_id), args=script_args(self._ttl, group, incarnation)
                    )
                    if flags == LOST:
                        self._batch_lost(batch_id, incarnation, group)
                        del by_batch[key]
                        continue
                    for p, flag in zip(group, flags, strict=True):
                        if not p.future.done():
                            p.future.set_result(bool(flag))
                    # Recorded: a retry after an error further on must not send this group again.
                    del by_batch[key]
                break
            except REDIS_ERRORS as exc:
                problem = classify(exc)
                if problem is RedisProblem.FULL and not (self._closed and delay >= FULL_BACKOFF_CAP_S):
                    # Redis is full: the script's first write was refused, so nothing of this group
                    # was written. Keep every result and try again until there is room; the chunks
                    # waiting on them hold their leases meanwhile, and no new chunk is claimed.
                    # (Shutting down: the chunks fail after a while and run again elsewhere later.)
                    self.pressure.full_now()
                    self._progress_at = time.monotonic()  # waiting for room is not a stall
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, FULL_BACKOFF_CAP_S)
                    continue
                if problem is not RedisProblem.UNREACHABLE and problem is not RedisProblem.FULL:
                    # Not an outage (WRONGTYPE, READONLY, NOSCRIPT, ...): waiting will not fix it. The
                    # chunks waiting on these results fail and retry; the script wrote nothing.
                    log.error("recording %d results failed: %s", len(items), describe(exc))
                    self._fail(items, exc)
                    return
                # Redis away: keep the results and try again, never drop them.
                if self._closed and delay >= 5.0:
                    # Shutting down and Redis stays away: the chunk fails and arq runs it again later.
                    self._fail(items, exc)
                    return
                if problem is not failing:
                    failing = problem
                    # An unreachable Redis is announced once by the worker's poll loop; say it here
                    # only at DEBUG so that an outage costs one line, not one per attempt.
                    level = logging.DEBUG if problem is RedisProblem.UNREACHABLE else logging.WARNING
                    log.log(level, "recording %d results waits: %s", len(items), describe(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _batch_lost(self, batch_id: str, incarnation: str, group: list[Pending]) -> None:
        """Redis no longer holds this batch (restarted empty, flushed, evicted): drop its results."""
        if (batch_id, incarnation) not in self._lost:
            self._lost.add((batch_id, incarnation))
            log.warning(
                "batch %s no longer exists in Redis (its state was lost); its results are dropped", batch_id
            )
        for p in group:
            if not p.future.done():
                p.future.set_result(False)

    @staticmethod
    def _fail(items: list[Pending], exc: BaseException) -> None:
        for p in items:
            if not p.future.done():
                p.future.set_exception(exc)
