"""Per-host politeness across the whole cluster: concurrency and rate counted in Redis by one script.

A URL waits for its host without holding a fetch slot, so other hosts' URLs keep flowing; with no
limit set there is no limiter at all and a fetch costs no extra Redis round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from importlib.resources import files

from redis.asyncio import Redis
from yarl import URL

from worker.contract import THROTTLED_KEY, host_keys, throttle_key
from worker.rediserrors import REDIS_DOWN
from worker.settings import Settings

log = logging.getLogger("fetchfleet.hostlimits")

HOSTLIMIT_LUA = files("worker").joinpath("hostlimit.lua").read_text()
FULL = -1
# How often a worker asks again while its host is at the concurrency limit. Only one coroutine per
# host and worker asks, so this bounds the polling to a few dozen round trips per second per host.
POLL_SECONDS = 0.025
# A permit outlives the longest fetch (the total timeout) by this much before it counts as abandoned.
LEASE_MARGIN_SECONDS = 5.0


def host_of(url: str) -> str:
    """The politeness key of a URL: its host name, lowercased; ports of one host share it."""
    try:
        host = URL(url).host
    except (ValueError, TypeError):
        host = None
    return (host or "").lower()


@dataclass(frozen=True, slots=True)
class HostLimits:
    concurrency: int = 0
    rate: float = 0.0
    lease_seconds: float = 65.0

    def __post_init__(self) -> None:
        if self.concurrency < 0 or self.rate < 0 or self.lease_seconds <= 0:
            raise ValueError("limits must not be negative and the lease must be positive")

    @property
    def active(self) -> bool:
        return self.concurrency > 0 or self.rate > 0

    @classmethod
    def from_settings(cls, s: Settings) -> HostLimits:
        return cls(s.per_host_concurrency, s.per_host_rate, s.total_timeout + LEASE_MARGIN_SECONDS)


@dataclass
class _Poller:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


@dataclass
class HostLimiter:
    """Takes and gives back per-host permits in Redis; one instance per worker process."""

    redis: Redis
    limits: HostLimits
    waits: int = 0  # times a URL had to wait for its host (for metrics and tests)
    _script: object = field(init=False, repr=False)
    _pollers: dict[str, _Poller] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self._script = self.redis.register_script(HOSTLIMIT_LUA)

    async def try_acquire(self, host: str, permit: str, interval_ms: float | None = None) -> int:
        """0 if the permit was taken, FULL, or milliseconds until the rate allows the next request.

        `interval_ms` overrides the configured spacing (a Crawl-delay, already the stricter of the two);
        the host's adaptive throttle, if any, is applied in the script on top.
        """
        if interval_ms is None:
            interval_ms = 1000.0 / self.limits.rate if self.limits.rate > 0 else 0
        lease_ms = int(self.limits.lease_seconds * 1000)
        args = [self.limits.concurrency, f"{interval_ms:.3f}", lease_ms, permit, host]
        keys = [*host_keys(host), throttle_key(host), THROTTLED_KEY]
        return int(await self._script(keys=keys, args=args))  # type: ignore[operator]

    async def release(self, host: str, permit: str) -> None:
        if self.limits.concurrency > 0:
            await self.redis.zrem(host_keys(host)[0], permit)

    @contextlib.asynccontextmanager
    async def slot(
        self, host: str, slots: asyncio.Semaphore, interval_ms: float | None = None
    ) -> AsyncIterator[float]:
        """Hold one of the worker's fetch slots and a permit for `host`; wait for either without the slot.

        A permit is only ever held together with a slot, so its lease need only outlast one fetch.
        Yields the milliseconds spent waiting for the host (not for a slot).
        """
        permit = secrets.token_hex(8)
        # One poller per host in this process: the other URLs of a busy host wait here, asking nothing.
        poller = self._pollers.get(host)
        if poller is None:
            poller = self._pollers[host] = _Poller()
        poller.users += 1
        try:
            started = time.monotonic()
            async with poller.lock:
                # Queued behind another URL of the same host in this process: a wait for the host too.
                waited = time.monotonic() - started
                waited += await self._acquire(host, permit, slots, interval_ms)
        finally:
            poller.users -= 1
            if poller.users == 0:
                del self._pollers[host]
        try:
            yield round(waited * 1000, 3)
        finally:
            slots.release()
            if self.limits.concurrency > 0:
                with contextlib.suppress(*REDIS_DOWN):
                    # If this fails the lease frees the permit later.
                    await self.release(host, permit)

    async def _acquire(
        self, host: str, permit: str, slots: asyncio.Semaphore, interval_ms: float | None = None
    ) -> float:
        """Seconds spent waiting for the host's permission (0.0 when granted at the first ask)."""
        delay = 0.1
        waited = False
        first_refusal = 0.0
        while True:
            await slots.acquire()
            try:
                wait_ms = await self.try_acquire(host, permit, interval_ms)
            except REDIS_DOWN as exc:
                slots.release()
                log.warning("host limit for %s unavailable (%s); retrying in %.1fs", host, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            except BaseException:
                slots.release()
                raise
            if wait_ms == 0:
                return time.monotonic() - first_refusal if waited else 0.0
            slots.release()  # waiting for the host must not starve other hosts of this slot
            if not waited:
                waited = True
                first_refusal = time.monotonic()
                self.waits += 1
            pause = POLL_SECONDS if wait_ms == FULL else wait_ms / 1000
            await asyncio.sleep(pause * random.uniform(1.0, 1.2))


@contextlib.asynccontextmanager
async def fetch_slot(limiter: HostLimiter | None, slots: asyncio.Semaphore, url: str) -> AsyncIterator[None]:
    """The slot a fetch runs in: just the worker's semaphore when no host limit is set (no Redis)."""
    if limiter is None:
        async with slots:
            yield
        return
    async with limiter.slot(host_of(url), slots):
        yield


def make_limiter(redis: Redis, settings: Settings) -> HostLimiter | None:
    limits = HostLimits.from_settings(settings)
    return HostLimiter(redis, limits) if limits.active else None
