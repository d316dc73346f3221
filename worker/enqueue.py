"""Putting chunk jobs on the queue, as arq stores them, without importing arq (the producer's side).

The producer and the worker's retries enqueue through this module; the worker runner (worker/engine.py)
imports it, never the other way round. `import producer` loads neither arq nor aiohttp.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis

from worker.codec import dump_job
from worker.contract import CHUNK_TASK, WAKE_TOKENS_MAX, ChunkJob, wake_key
from worker.redisconn import make_pool
from worker.settings import Settings

# arq's key names (arq.constants): importing arq loads its whole worker, so they are repeated here and a
# test (tests/test_import_graph.py) checks them against the installed arq.
JOB_KEY_PREFIX = "arq:job:"
IN_PROGRESS_KEY_PREFIX = "arq:in-progress:"
RETRY_KEY_PREFIX = "arq:retry:"


def chunk_payload(job: ChunkJob) -> dict[str, Any]:
    return job.model_dump(mode="json", exclude_defaults=True)


def job_record(function: str, args: tuple[Any, ...], enqueue_time_ms: int) -> bytes:
    """A job as arq's `serialize_job` writes it (no try yet, no keyword arguments), in msgpack."""
    return dump_job({"t": None, "f": function, "a": args, "k": {}, "et": enqueue_time_ms})


def queue_redis(settings: Settings) -> Redis:
    """A client on the queue's Redis (the producer's; the worker wraps its pool in arq's ArqRedis)."""
    return Redis(connection_pool=make_pool(settings))


async def enqueue_chunks(
    redis: Redis,
    settings: Settings,
    jobs: Sequence[tuple[str, ChunkJob]],
    defer_ms: int = 0,
) -> None:
    """Enqueue many chunk jobs in one pipelined round trip (arq's enqueue_job costs three per job).

    NX on both writes keeps a re-submitted job id from being queued twice.
    """
    now = int(time.time() * 1000)  # arq.utils.timestamp_ms
    ttl_ms = settings.result_ttl * 1000
    due = _due_scores(now, defer_ms, len(jobs))
    async with redis.pipeline(transaction=False) as pipe:
        for (job_id, job), score in zip(jobs, due, strict=True):
            data = job_record(CHUNK_TASK, (chunk_payload(job),), now)
            pipe.set(JOB_KEY_PREFIX + job_id, data, px=ttl_ms, nx=True)
            pipe.zadd(settings.queue_name, {job_id: score}, nx=True)
        if jobs:
            wake_workers(pipe, settings.queue_name, len(jobs))
        await pipe.execute()


# Queue scores a microsecond apart, in the order the chunks were enqueued. Chunks scored alike are
# taken in the order of their ids as strings: c1, c10, c100, c101, ... ran together, so a batch's URLs
# ran far out of input order, and hosts spread over the input met themselves twice at once (web
# profile of ops/bench: 406 of 1,000 hosts got a second TLS connection, 10 with the gather script).
_SCORE_STEP_MS = 0.001


class DueScores:
    """Queue scores for chunks, increasing: chunks due at once also come after every earlier call's
    (several calls can fall in one millisecond); deferred ones (retries) keep their own due time."""

    def __init__(self) -> None:
        self._last = 0.0  # the last score given to a chunk due at once

    def __call__(self, now: int, defer_ms: int, count: int) -> list[float]:
        first = float(now + defer_ms)
        if not defer_ms:
            first = max(first, self._last + _SCORE_STEP_MS)
        scores = [first + i * _SCORE_STEP_MS for i in range(count)]
        if scores and not defer_ms:
            self._last = scores[-1]
        return scores


_due_scores = DueScores()  # one per process: its producers and a worker's retries share the order


def wake_workers(pipe: Any, queue_name: str, chunks: int) -> None:
    """Wake up to `chunks` idle workers blocked on the wake list (FleetWorker.wait_for_work); a deferred
    chunk wakes them too, so that they wait for its due time instead of their longest wait."""
    key = wake_key(queue_name)
    pipe.rpush(key, *["1"] * min(chunks, WAKE_TOKENS_MAX))
    pipe.ltrim(key, -WAKE_TOKENS_MAX, -1)  # tokens nobody waited for must not pile up


async def queue_depth(redis: Redis, settings: Settings) -> int:
    return int(await redis.zcard(settings.queue_name))
