"""The worker's periodic monitor: heartbeat for `fetchfleet stats`, queue-depth sample, health verdict."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Self

from redis.asyncio import BlockingConnectionPool, Redis

from worker.background import stop_loop, stop_tasks
from worker.contract import WORKERS_KEY, worker_key
from worker.metrics import WorkerMetrics
from worker.redisconn import make_pool, pool_kwargs
from worker.rediserrors import RedisProblem, classify, describe
from worker.settings import Settings, is_sentinel_url

log = logging.getLogger("fetchfleet.monitor")

PING_TIMEOUT = 2.0
PING_REUSE_S = 1.0  # a burst of /healthz requests costs Redis one PING a second at most
# An idle worker (no fetch in flight or finished since its last beat) beats less often, with a TTL to
# match: 3 commands every 10 s at the default interval instead of 5 every 2 s (issue 16: an idle worker
# costs Redis <= 1 command a second). At most IDLE_BEAT_FACTOR intervals, so a short interval set for
# quick detection stays quick. The first beat after work stops, and every beat while it runs, come at
# the configured interval, so `fetchfleet stats` shows the final figures at once.
IDLE_BEAT_S = 10.0
IDLE_BEAT_FACTOR = 5
PRUNE_EVERY_S = 60.0  # the workers set: this worker's score renewed, and ids gone for an hour pruned


def idle_beat_interval(interval: float) -> float:
    """Seconds between an idle worker's heartbeats, for FETCHFLEET_HEARTBEAT_INTERVAL `interval`."""
    return max(interval, min(IDLE_BEAT_S, IDLE_BEAT_FACTOR * interval))


def heartbeat_ttl(interval: float) -> int:
    """Seconds a heartbeat stays visible: three missed beats and the worker is gone from `stats`."""
    return max(int(interval * 3 + 0.999), 5)


@dataclass(frozen=True, slots=True)
class Health:
    ok: bool
    problems: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, object]:
        return {"status": "ok" if self.ok else "unhealthy", "problems": list(self.problems)}


@dataclass
class Probes:
    """Live readings of the worker taken at each beat; plain callables so the monitor needs no runtime."""

    in_flight: Callable[[], int]
    fetches: Callable[[], int]
    # Seconds results have waited without the recorder making progress (0: none waiting).
    recorder_stalled: Callable[[], float] = lambda: 0.0
    # Wall-clock time by which the queue engine's poll loop is due to report progress again; None when
    # the engine cannot tell (a test's runtime without a poll loop).
    poll_due: Callable[[], float | None] = lambda: None
    # "Redis is full (used/max)" while a write was refused for lack of memory; None otherwise.
    redis_full: Callable[[], str | None] = lambda: None


@dataclass
class Monitor:
    settings: Settings
    worker_id: str
    metrics: WorkerMetrics
    probes: Probes
    redis: Redis = field(init=False)
    started_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    redis_ok: bool = False
    last_beat: float = 0.0
    fetch_rate: float = 0.0
    _task: asyncio.Task[None] | None = field(default=None, init=False, repr=False)
    _last_fetches: int = field(default=0, init=False, repr=False)
    last_tick: float = 0.0  # the monitor loop's last turn, beat or not (health)
    _idle_beat: bool = field(default=False, init=False, repr=False)  # the last beat was an idle one
    _pruned: float = field(default=float("-inf"), init=False, repr=False)
    _ping_task: asyncio.Future[bool] | None = field(default=None, init=False, repr=False)
    _ping_started: float = field(default=0.0, init=False, repr=False)

    def __post_init__(self) -> None:
        # A client of its own: health must not wait behind the queue engine's busy connections. At
        # most two connections (the heartbeat, one shared ping): /healthz is open to the network, and
        # a pool without a cap would open a Redis connection per concurrent probe.
        if is_sentinel_url(self.settings.redis_url):  # the same cap; the heartbeat and ping share it
            self.redis = Redis(connection_pool=make_pool(self.settings, max_connections=2))
            return
        pool = BlockingConnectionPool.from_url(
            self.settings.redis_url, max_connections=2, timeout=PING_TIMEOUT, **pool_kwargs(self.settings)
        )
        self.redis = Redis(connection_pool=pool)

    def start(self) -> None:
        self._last_fetches = self.probes.fetches()
        self.last_beat = self.last_tick = time.monotonic()
        self._task = asyncio.create_task(self._run(), name="fetchfleet-monitor")

    async def close(self) -> None:
        await stop_loop(self._task)
        # Leave `stats` at once on a clean stop instead of waiting for the heartbeat to expire.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(PING_TIMEOUT):
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.delete(worker_key(self.worker_id))
                    pipe.zrem(WORKERS_KEY, self.worker_id)
                    await pipe.execute()
        if self._ping_task is not None:
            await stop_tasks([self._ping_task])
        await self.redis.aclose(close_connection_pool=True)

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _run(self) -> None:
        while True:
            if self.beat_due():
                await self.beat()
            self.last_tick = time.monotonic()
            await asyncio.sleep(self.settings.heartbeat_interval)

    def beat_due(self) -> bool:
        """Every turn while there is work and on the first idle one; then every IDLE_BEAT_S."""
        if not self.idle() or not self._idle_beat:
            return True
        interval = self.settings.heartbeat_interval
        return time.monotonic() - self.last_beat >= idle_beat_interval(interval) - interval / 2

    def idle(self) -> bool:
        """No fetch in flight and none finished since the last beat."""
        return self.probes.in_flight() == 0 and self.probes.fetches() == self._last_fetches

    async def beat(self) -> None:
        """One heartbeat and queue-depth sample, in one round trip."""
        now = time.monotonic()
        idle = self.idle()
        interval = self.settings.heartbeat_interval
        if idle:
            interval = idle_beat_interval(interval)
        fetches = self.probes.fetches()
        elapsed = max(now - self.last_beat, 1e-6)
        self.fetch_rate = (fetches - self._last_fetches) / elapsed
        self._last_fetches, self.last_beat = fetches, now
        now_ms = int(time.time() * 1000)
        doc = {
            "id": self.worker_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "in_flight": self.probes.in_flight(),
            "concurrency": self.settings.concurrency,
            "fetches": fetches,
            "fetches_per_s": round(self.fetch_rate, 1),
            "started_ms": self.started_ms,
            "seen_ms": now_ms,
        }
        key = worker_key(self.worker_id)
        try:
            async with asyncio.timeout(PING_TIMEOUT):
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.zcard(self.settings.queue_name)
                    pipe.hset(key, mapping=doc)
                    pipe.expire(key, heartbeat_ttl(interval))
                    if now - self._pruned >= PRUNE_EVERY_S:
                        # The set's scores only serve the pruning, so once a minute is enough for both:
                        # ids of workers gone for an hour go, so it stays small even if nobody runs stats.
                        pipe.zadd(WORKERS_KEY, {self.worker_id: now_ms})
                        pipe.zremrangebyscore(WORKERS_KEY, 0, now_ms - 3_600_000)
                        self._pruned = now
                    depth, *_ = await pipe.execute()
        except Exception as exc:  # Redis away: report it, keep beating
            if self.redis_ok:
                # An unreachable Redis is announced once by the worker's poll loop; anything else here.
                level = logging.DEBUG if classify(exc) is RedisProblem.UNREACHABLE else logging.WARNING
                log.log(level, "heartbeat failed: %s", describe(exc))
            self.redis_ok = False
            self.metrics.redis_up.set(0)
            return
        self._idle_beat = idle
        self.redis_ok = True
        self.metrics.redis_up.set(1)
        self.metrics.queue_depth.set(int(depth))

    async def ping(self) -> bool:
        """Whether Redis answers; every caller within PING_REUSE_S shares one PING and its answer."""
        now = time.monotonic()
        task = self._ping_task
        if task is None or (task.done() and now - self._ping_started > PING_REUSE_S):
            self._ping_started = now
            task = self._ping_task = asyncio.ensure_future(self._ping_once())
        return await asyncio.shield(task)

    async def _ping_once(self) -> bool:
        try:
            async with asyncio.timeout(PING_TIMEOUT):
                await self.redis.ping()
        except Exception:
            return False
        return True

    async def health(self) -> Health:
        """Unhealthy when Redis does not answer a ping within 2 s, or some part stopped making progress."""
        problems = []
        if not await self.ping():
            problems.append(f"redis did not answer a ping within {PING_TIMEOUT:g}s")
        full = self.probes.redis_full()
        if full is not None:
            problems.append(full)
        stall = self.settings.stall_seconds
        waited = self.probes.recorder_stalled()
        if waited > stall:
            problems.append(f"recorder made no progress for {waited:.0f}s")
        due = self.probes.poll_due()
        if due is not None and time.time() - due > stall:
            problems.append(f"queue poll loop is {time.time() - due:.0f}s overdue")
        tick_age = time.monotonic() - self.last_tick
        if self._task is not None and tick_age > self.settings.heartbeat_interval + stall:
            problems.append(f"monitor loop made no progress for {tick_age:.0f}s")
        return Health(ok=not problems, problems=tuple(problems))
