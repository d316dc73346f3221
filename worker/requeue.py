"""Retries go back to the queue grouped into chunks, so they run through the worker's fetch slots.

One job per retried URL left at most `max_jobs` retried URLs in flight per worker whatever the
concurrency (issue 11: 2,000 timeouts at concurrency 250 took minutes). URLs a worker sends back
within `LINGER_S` of each other are queued together: one chunk per batch, attempt, batch options and
due-time bucket, up to `FETCHFLEET_CHUNK_SIZE` URLs. A URL never runs before its backoff (or its
Retry-After): the chunk is due at the end of its bucket, at most a bucket later than the URL asked.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Self

from redis.asyncio import Redis

from worker.background import start_loop, stop_loop
from worker.contract import (
    CHUNK_TASK,
    BatchOptions,
    ChunkJob,
    FetchRequest,
    RejectedRequest,
    retried_key,
    retry_job_id,
    wake_key,
)
from worker.enqueue import JOB_KEY_PREFIX, chunk_payload, job_record
from worker.pressure import RedisPressure
from worker.rediserrors import REDIS_ERRORS, RedisProblem, classify
from worker.settings import Settings

log = logging.getLogger("fetchfleet.requeue")

REQUEUE_LUA = files("worker").joinpath("requeue.lua").read_text()
# How long the first retry of a group waits for others to join it: short next to any backoff that
# matters, long enough that a wave of timeouts (they end together) travels as a few chunks.
LINGER_S = 0.2
BACKOFF_CAP_S = 5.0


def bucket_ms(delay: float) -> int:
    """Width of the due-time buckets for a retry waiting `delay` s: a few percent of the wait at most."""
    if delay < 5:
        return 250
    if delay < 30:
        return 1000
    return 5000


@dataclass(slots=True)
class Waiting:
    batch_id: str
    options: BatchOptions
    index: int
    request: FetchRequest | RejectedRequest | str
    attempts: int  # made so far; the retry is attempt attempts + 1
    due_ms: int  # the chunk's score: the end of this retry's bucket
    future: asyncio.Future[None] = field(repr=False)
    incarnation: str = ""  # the batch's, carried into the retry chunk (see ChunkJob.incarnation)


class Requeuer:
    """Buffers the retries of every chunk a worker runs and queues them as chunks."""

    def __init__(self, redis: Redis, settings: Settings, pressure: RedisPressure) -> None:
        self._redis = redis
        self._settings = settings
        self._pressure = pressure
        self._script = redis.register_script(REQUEUE_LUA)
        self._queue_name = settings.queue_name
        self._waiting: list[Waiting] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def add(
        self,
        job: ChunkJob,
        index: int,
        request: FetchRequest | RejectedRequest | str,
        attempts: int,
        delay: float,
    ) -> None:
        """Queue attempt `attempts + 1` of one URL `delay` s from now; returns once it is in Redis.

        Raises what Redis raised when the retry cannot be queued for good: the caller then records
        the attempt's outcome instead, so the URL is never lost.
        """
        if self._closed:
            raise RuntimeError("requeuer is closed")
        width = bucket_ms(delay)
        due = math.ceil((int(time.time() * 1000) + delay * 1000) / width) * width
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(
            Waiting(job.batch_id, job.options, index, request, attempts, due, fut, job.incarnation)
        )
        self._wake.set()
        self._task = start_loop(self._task, self._run, "fetchfleet-requeue")
        await fut

    async def close(self) -> None:
        self._closed = True
        self._wake.set()
        if self._task is not None:
            try:
                async with asyncio.timeout(LINGER_S + 10):
                    await asyncio.shield(self._task)
            except TimeoutError:
                await stop_loop(self._task)
            self._task = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
        for w in self._waiting:
            if not w.future.done():
                w.future.set_exception(RuntimeError("requeuer closed"))

    async def _run(self) -> None:
        while not (self._closed and not self._waiting):
            await self._wake.wait()
            self._wake.clear()
            if not self._closed:
                await asyncio.sleep(LINGER_S)
            take, self._waiting = self._waiting, []
            groups: dict[tuple[str, str, int, BatchOptions, int], list[Waiting]] = {}
            for w in take:
                groups.setdefault((w.batch_id, w.incarnation, w.attempts, w.options, w.due_ms), []).append(w)
            size = self._settings.chunk_size
            for group in groups.values():
                group.sort(key=lambda w: w.index)
                for i in range(0, len(group), size):
                    part = group[i : i + size]
                    try:
                        await self._queue(part)
                    except Exception as exc:  # a bug here must fail these retries, not hang their chunks
                        log.exception("queueing %d retries failed", len(part))
                        for w in part:
                            if not w.future.done():
                                w.future.set_exception(exc)

    async def _queue(self, items: list[Waiting]) -> None:
        """Queue one chunk; waits out a full or unreachable Redis, never drops a retry silently."""
        delay = 0.1
        while items:
            first = items[0]
            job = ChunkJob(
                batch_id=first.batch_id,
                incarnation=first.incarnation,
                first_index=first.index,
                requests=[w.request for w in items],
                indexes=[w.index for w in items],
                attempts=[first.attempts] * len(items),
                options=first.options,
            )
            attempt = first.attempts + 1
            # Unique without a random part: the bitmap lets each (index, attempt) into one job only.
            job_id = retry_job_id(first.batch_id, first.index, attempt)
            data = job_record(CHUNK_TASK, (chunk_payload(job),), int(time.time() * 1000))
            ttl = self._settings.result_ttl
            try:
                seen = await self._script(
                    keys=[
                        retried_key(first.batch_id, attempt),
                        JOB_KEY_PREFIX + job_id,
                        self._queue_name,
                        wake_key(self._queue_name),
                    ],
                    args=[ttl, ttl * 1000, job_id, first.due_ms, data, *(w.index for w in items)],
                )
            except REDIS_ERRORS as exc:
                problem = classify(exc)
                transient = problem in (RedisProblem.FULL, RedisProblem.UNREACHABLE)
                if not transient or (self._closed and delay >= BACKOFF_CAP_S):
                    log.error("could not queue %d retries of batch %s: %s", len(items), first.batch_id, exc)
                    for w in items:
                        if not w.future.done():
                            w.future.set_exception(exc)
                    return
                if problem is RedisProblem.FULL:
                    self._pressure.full_now()  # nothing was written; the URLs wait here for room
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_CAP_S)
                continue
            queued_before = {int(i) for i in seen}
            for w in items:
                if (not seen or w.index in queued_before) and not w.future.done():
                    w.future.set_result(None)
            # A second run of the chunk: its retries queued by the first run are done; send the rest.
            items = [w for w in items if seen and w.index not in queued_before]
