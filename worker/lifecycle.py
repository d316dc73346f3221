"""A worker process's components: opened in order in one AsyncExitStack, closed in reverse, once.

Both worker commands start and stop them through arq's `on_startup`/`on_shutdown` (WorkerHooks): the
first opens every component, the second closes what the first opened. A start-up that fails half-way
(an evicting Redis, a metrics port taken) closes what it had opened before the error leaves it.
"""

from __future__ import annotations

import gc
import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import TypedDict

from arq.connections import ArqRedis
from redis.asyncio import Redis

from worker.cancel import CancelWatch
from worker.chunks import Runtime
from worker.enqueue import IN_PROGRESS_KEY_PREFIX
from worker.fetcher import Fetcher
from worker.hostlimits import make_limiter
from worker.lease import Leases
from worker.ops import Ops
from worker.politeness import make_politeness
from worker.pressure import RedisPressure
from worker.recorder import Recorder
from worker.redisconn import check_eviction_policy, redact
from worker.requeue import Requeuer
from worker.s3store import S3WarcStore
from worker.settings import Settings
from worker.storeuri import store_directory
from worker.warcstore import BodyStore, WarcStore

log = logging.getLogger("fetchfleet.worker")


class WorkerCtx(TypedDict, total=False):
    """arq's per-worker ctx: what on_startup put there, and arq's own job fields."""

    redis: ArqRedis
    components: AsyncExitStack  # everything on_startup opened; on_shutdown pops and closes it
    runtime: Runtime
    leases: Leases
    poll_due: Callable[[], float | None]
    settings: Settings
    job_id: str
    job_try: int


def make_worker_id(settings: Settings) -> str:
    if settings.worker_id:
        return settings.worker_id
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


def body_store(settings: Settings, worker_id: str) -> S3WarcStore | WarcStore:
    """The store FETCHFLEET_BODY_STORE names, not yet opened (an async context manager)."""
    assert settings.body_store is not None
    if settings.body_store.startswith("s3://"):
        return S3WarcStore(
            settings.body_store,
            worker_id,
            settings.warc_max_bytes,
            settings.s3_flush_seconds,
            settings.body_store_max_wait,
            settings.s3_endpoint_url,
        )
    return WarcStore(
        store_directory(settings.body_store),
        worker_id,
        settings.warc_max_bytes,
        settings.warc_max_seconds,
        settings.body_store_max_wait,
    )


@asynccontextmanager
async def worker_runtime(settings: Settings, redis: Redis, worker_id: str) -> AsyncIterator[Runtime]:
    """What every chunk of one process shares, each part opened here and closed in reverse on exit.

    Closed in this order: retries and politeness first (they record through the recorder), then the
    recorder (its last flush), the fetcher, and the body store last (results point into it)."""
    async with AsyncExitStack() as stack:
        store: BodyStore | None = None
        if settings.body_store:
            store = await stack.enter_async_context(body_store(settings, worker_id))
        fetcher = await stack.enter_async_context(Fetcher(settings))
        pressure = await stack.enter_async_context(RedisPressure(redis))
        recorder = await stack.enter_async_context(Recorder(redis, settings.result_ttl, pressure))
        limiter = make_limiter(redis, settings)
        polite = make_politeness(settings, redis, worker_id, limiter, fetcher)
        if polite is not None:
            await stack.enter_async_context(polite)  # the throttled-hosts refresh loop, robots.txt cache
        requeuer = await stack.enter_async_context(Requeuer(redis, settings, pressure))
        cancels = await stack.enter_async_context(CancelWatch(redis))
        yield Runtime(
            settings, redis, fetcher, recorder, worker_id, cancels, requeuer, limiter, polite, store
        )


@dataclass(frozen=True)
class WorkerHooks:
    """arq's start-up, shutdown and per-job hooks, for `fetchfleet worker` and `arq worker.WorkerSettings`."""

    settings: Settings

    async def on_startup(self, ctx: WorkerCtx) -> None:
        if "components" in ctx:  # the poll loop restarted after a Redis outage: keep what runs
            return
        settings = self.settings
        # Before anything starts: on an evicting Redis queued work vanishes unnoticed (UnsafeRedis).
        await check_eviction_policy(ctx["redis"], settings, log)
        # arq logs each job's arguments (URLs, which may carry credentials) at INFO; under
        # `arq worker.WorkerSettings` its own logging config has just turned that on again.
        logging.getLogger("arq").setLevel(max(logging.getLogger("arq").level, logging.WARNING))
        async with AsyncExitStack() as stack:
            rt = await stack.enter_async_context(
                worker_runtime(settings, ctx["redis"], make_worker_id(settings))
            )
            leases = await stack.enter_async_context(
                Leases(ctx["redis"], IN_PROGRESS_KEY_PREFIX, settings.lease_seconds)
            )
            await stack.enter_async_context(Ops(rt, ctx.get("poll_due")))  # heartbeat, /metrics, /healthz
            # Everything is open: from here only on_shutdown closes it (an error above closed it already).
            ctx["runtime"], ctx["leases"], ctx["settings"] = rt, leases, settings
            ctx["components"] = stack.pop_all()
        # What exists now lives as long as the process: frozen, the collector stops walking it, and a
        # larger young generation makes passes rare (ops/bench: GC was ~15% of a busy worker's CPU).
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 20, 20)
        log.info(
            "worker %s started: Redis %s, concurrency %d, lease %.0fs",
            rt.worker_id,
            redact(settings.redis_url),
            settings.concurrency,
            settings.lease_seconds,
        )

    async def on_shutdown(self, ctx: WorkerCtx) -> None:
        """Close what on_startup opened, in reverse, once; a later call does nothing."""
        components = ctx.pop("components", None)
        rt = ctx.pop("runtime", None)
        ctx.pop("leases", None)
        if components is None:
            return
        await components.aclose()
        if rt is not None:
            log.info("worker %s stopped after %d fetches", rt.worker_id, rt.fetches)

    async def on_job_start(self, ctx: WorkerCtx) -> None:
        # claim.lua set the claim key for one lease (both worker commands claim through it): renewed from
        # now on, not cut again (a round trip between the claim and the first fetch, issue 16).
        ctx["leases"].track(ctx["job_id"])

    async def on_job_end(self, ctx: WorkerCtx) -> None:
        ctx["leases"].release(ctx["job_id"])
