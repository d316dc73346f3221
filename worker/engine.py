"""The queue engine seam: the only module that imports arq.

It enqueues chunk jobs in bulk, adapts the arq task to `run_chunk`, and builds `WorkerSettings`.
Moving to another engine means rewriting this module and nothing else.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import secrets
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypedDict

from arq.connections import ArqRedis, RedisSettings
from arq.constants import in_progress_key_prefix, job_key_prefix
from arq.jobs import serialize_job
from arq.utils import timestamp_ms
from arq.worker import Worker, func
from redis.asyncio import Redis

from worker.codec import dump_job, load_job
from worker.contract import CHUNK_TASK, ChunkJob
from worker.redisconn import make_pool
from worker.settings import Settings

if TYPE_CHECKING:  # the producer imports this module for enqueueing and must not load the fetcher
    from worker.chunks import Runtime

log = logging.getLogger("fetchfleet.worker")

JOB_KEY_PREFIX = job_key_prefix
IN_PROGRESS_KEY_PREFIX = in_progress_key_prefix


class WorkerCtx(TypedDict, total=False):
    redis: ArqRedis
    runtime: Runtime
    settings: Settings
    job_id: str
    job_try: int


def chunk_payload(job: ChunkJob) -> dict[str, Any]:
    return job.model_dump(mode="json", exclude_defaults=True)


def queue_redis(settings: Settings) -> ArqRedis:
    """A client that arq's own calls can use; it never pickles."""
    return ArqRedis(
        connection_pool=make_pool(settings),
        job_serializer=dump_job,
        job_deserializer=load_job,
        default_queue_name=settings.queue_name,
    )


async def enqueue_chunks(
    redis: Redis,
    settings: Settings,
    jobs: Sequence[tuple[str, ChunkJob]],
    defer_ms: int = 0,
) -> None:
    """Enqueue many chunk jobs in one pipelined round trip (arq's enqueue_job costs three per job).

    NX on both writes keeps a re-submitted job id from being queued twice.
    """
    now = timestamp_ms()
    ttl_ms = settings.result_ttl * 1000
    async with redis.pipeline(transaction=False) as pipe:
        for job_id, job in jobs:
            data = serialize_job(CHUNK_TASK, (chunk_payload(job),), {}, None, now, serializer=dump_job)
            pipe.set(JOB_KEY_PREFIX + job_id, data, px=ttl_ms, nx=True)
            pipe.zadd(settings.queue_name, {job_id: now + defer_ms}, nx=True)
        await pipe.execute()


async def queue_depth(redis: Redis, settings: Settings) -> int:
    return int(await redis.zcard(settings.queue_name))


async def fetch_chunk(ctx: WorkerCtx, payload: dict[str, Any]) -> int:
    from worker.chunks import run_chunk

    job = ChunkJob.model_validate(payload)
    summary = await run_chunk(ctx["runtime"], job)
    return summary.recorded


def make_worker_id(settings: Settings) -> str:
    if settings.worker_id:
        return settings.worker_id
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


def build_worker_settings(settings: Settings) -> type:
    """The class `arq worker.WorkerSettings` reads: only its own attributes count, so all are set here."""

    from worker.chunks import Runtime
    from worker.fetcher import Fetcher
    from worker.recorder import Recorder

    async def on_startup(ctx: WorkerCtx) -> None:
        fetcher = Fetcher(settings)
        await fetcher.start()
        recorder = Recorder(ctx["redis"], settings.result_ttl)
        recorder.start()
        ctx["settings"] = settings
        ctx["runtime"] = Runtime(settings, ctx["redis"], fetcher, recorder, make_worker_id(settings))
        log.info("worker %s started, concurrency %d", ctx["runtime"].worker_id, settings.concurrency)

    async def on_shutdown(ctx: WorkerCtx) -> None:
        rt = ctx.get("runtime")
        if rt is not None:
            await rt.recorder.close()
            await rt.fetcher.close()

    # Hold enough chunks that the next one is already running while the last fetches of one finish.
    chunks_held = max(2, math.ceil(settings.concurrency / settings.chunk_size) + 1)
    redis_settings = RedisSettings.from_dsn(settings.redis_url)
    if settings.redis_password is not None:
        redis_settings.password = settings.redis_password.get_secret_value()
    if settings.redis_ca_file:
        redis_settings.ssl_ca_certs = settings.redis_ca_file
    attrs: dict[str, Any] = {
        "functions": [func(fetch_chunk, name=CHUNK_TASK, keep_result=0, max_tries=20)],
        "queue_name": settings.queue_name,
        "redis_settings": redis_settings,
        "job_serializer": dump_job,
        "job_deserializer": load_job,
        "on_startup": on_startup,
        "on_shutdown": on_shutdown,
        "max_jobs": chunks_held,
        # Every running job stays in the queue zset; reading far past what the whole cluster can hold
        # at once is what lets a second worker find work (ARQ-NOTES: read limit vs. in-flight jobs).
        "queue_read_limit": 1000,
        "poll_delay": settings.poll_delay,
        "job_timeout": settings.job_timeout,
        "keep_result": 0,
        "expires_extra_ms": settings.result_ttl * 1000,
        "health_check_interval": 60,
        "handle_signals": True,
    }
    return type("WorkerSettings", (), attrs)


async def run_worker(settings: Settings) -> None:
    """`fetchfleet worker`: build the arq Worker inside the running loop and run it until stopped."""
    cls = build_worker_settings(settings)
    kwargs = {k: v for k, v in vars(cls).items() if not k.startswith("__")}
    worker = Worker(**kwargs)
    try:
        await worker.async_run()
    except asyncio.CancelledError:
        pass
    finally:
        await worker.close()
