"""Adaptive per-host backoff shared by the fleet: a host that says "slow down" gets a lower rate everywhere.

A 429 or 503 (or a run of timeouts and failed connects) halves the host's shared request rate in Redis
(worker/throttle.lua), and a Retry-After pauses it for every worker; the rate then grows back by a fixed
step each second until it reaches the configured limit, or, with no limit set, a ceiling at which the
host is let go. Workers learn which hosts are throttled from one small zset read every half second, so
an unthrottled host costs no Redis call per URL.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.resources import files

from redis.asyncio import Redis
from redis.exceptions import RedisError

from worker.background import stop_loop
from worker.contract import THROTTLED_KEY, throttle_key
from worker.retry import parse_retry_after
from worker.settings import Settings

log = logging.getLogger("fetchfleet.throttle")

THROTTLE_LUA = files("worker").joinpath("throttle.lua").read_text()
SLOW_DOWN_STATUSES = frozenset({429, 503})
FAILURE_KINDS = frozenset({"timeout", "connect"})
FAILURE_RUN = (
    5  # consecutive timeouts/failed connects from one host (in one worker) that count as "slow down"
)
REFRESH_SECONDS = 0.5  # how stale a worker's list of throttled hosts may be
KNOWN_HOSTS_MAX = 10_000  # throttled hosts a worker reads (the set is tiny unless a crawl goes badly)
# With no limit configured, the rate at which a recovering host is let go, as a multiple of the start.
UNLIMITED_CEILING = 10
RECOVERY_STEPS = 10  # seconds of good answers to climb back by one start rate
MIN_RATE = 0.05  # requests per second: at most a 20 s gap, however often a host says 429


@dataclass(frozen=True, slots=True)
class ThrottlePolicy:
    start_rate: float  # req/s after the first "slow down" of a host with no configured rate
    configured_rate: float  # FETCHFLEET_PER_HOST_RATE (0: none)
    retry_after_max: float

    @property
    def first_rate(self) -> float:
        """The first cut: half the configured rate, or the start rate when none is configured."""
        return self.configured_rate / 2 if self.configured_rate > 0 else self.start_rate

    @property
    def ceiling(self) -> float:
        """The rate at which the throttle is lifted: the configured limit, or 10x the start rate."""
        return self.configured_rate if self.configured_rate > 0 else self.start_rate * UNLIMITED_CEILING

    @property
    def step(self) -> float:
        """Requests per second regained per second without trouble (additive increase)."""
        return max(self.first_rate / RECOVERY_STEPS, MIN_RATE)

    @classmethod
    def from_settings(cls, s: Settings) -> ThrottlePolicy:
        return cls(s.throttle_start_rate, s.per_host_rate, s.retry_after_max)


@dataclass
class Throttle:
    """One per worker process: which hosts are throttled (refreshed), and reporting "slow down"."""

    redis: Redis
    policy: ThrottlePolicy
    hosts: dict[str, int] = field(default_factory=dict)  # throttled host -> when it lapses (epoch ms)
    events: dict[str, int] = field(default_factory=dict)  # reports made, by event (bounded: 3 words)
    _failures: dict[str, int] = field(default_factory=dict, init=False, repr=False)
    _last_report: dict[str, tuple[float, bool]] = field(default_factory=dict, init=False, repr=False)
    _script: object = field(init=False, repr=False)
    _task: asyncio.Task[None] | None = field(default=None, init=False, repr=False)
    # Whether the worker has work (URLs claimed, waiting or in flight): an idle worker's list is not
    # refreshed, so idle it asks Redis nothing (issue 16); a starting chunk reads it first when stale.
    busy: Callable[[], bool] = lambda: True
    _refreshed: float = field(default=0.0, init=False, repr=False)  # monotonic

    def __post_init__(self) -> None:
        self._script = self.redis.register_script(THROTTLE_LUA)

    def start(self) -> None:
        self._task = asyncio.create_task(self._refresh_loop(), name="fetchfleet-throttle")

    async def close(self) -> None:
        await stop_loop(self._task)

    async def _refresh_loop(self) -> None:
        while True:
            if self.busy():
                await self.fresh()
            await asyncio.sleep(REFRESH_SECONDS)

    def stale(self) -> bool:
        """Not read within REFRESH_SECONDS (the worker was idle): a starting chunk reads it first."""
        return time.monotonic() - self._refreshed >= REFRESH_SECONDS

    async def fresh(self) -> None:
        """Refresh the list unless it was read within REFRESH_SECONDS (a chunk starting after idle)."""
        if not self.stale():
            return
        try:
            await self.refresh()
        except RedisError as exc:
            log.debug("throttled hosts not refreshed: %s", exc)

    async def refresh(self) -> None:
        now_ms = int(time.time() * 1000)
        rows = await self.redis.zrangebyscore(
            THROTTLED_KEY, now_ms, "+inf", start=0, num=KNOWN_HOSTS_MAX, withscores=True
        )
        self.hosts = {member.decode(): int(score) for member, score in rows}
        self._refreshed = time.monotonic()

    def needs_report(self, host: str, status: int | None, kind: str | None) -> str | None:
        """After a fetch: the event to report for `host`, if any ("slow_down" or "failures").

        The common case, a good answer while no failure run is counted anywhere, costs one dict check.
        """
        if status in SLOW_DOWN_STATUSES:
            self._failures.pop(host, None)
            return "slow_down"
        if kind in FAILURE_KINDS:
            run = self._failures.get(host, 0) + 1
            if run >= FAILURE_RUN:
                self._failures.pop(host, None)
                return "failures"
            self._failures[host] = run
            if len(self._failures) > KNOWN_HOSTS_MAX:
                self._failures.clear()
            return None
        if self._failures:
            self._failures.pop(host, None)
        return None

    async def report(self, host: str, event: str, retry_after: str | None) -> None:
        """Cut the host's shared rate (once per round across the fleet) and pause it for Retry-After."""
        pause = parse_retry_after(retry_after) if event == "slow_down" else None
        pause_ms = int(min(pause, self.policy.retry_after_max) * 1000) if pause else 0
        now = time.monotonic()
        # This worker's own answers of one overloaded moment: one report (the script dedupes the fleet),
        # and one more if a Retry-After comes after a report that had none.
        last, paused_before = self._last_report.get(host, (0.0, False))
        if now - last < 1.0 and (paused_before or not pause_ms):
            return
        self._last_report[host] = (now, bool(pause_ms))
        if len(self._last_report) > KNOWN_HOSTS_MAX:
            self._last_report.clear()
        p = self.policy
        args = [host, p.first_rate, p.ceiling, p.step, MIN_RATE, pause_ms]
        try:
            cut, rate, paused = await self._script(  # type: ignore[operator]
                keys=[throttle_key(host), THROTTLED_KEY], args=args
            )
        except RedisError as exc:
            log.warning("could not throttle %s: %s", host, exc)
            return
        self.hosts[host] = max(int(paused), int(time.time() * 1000) + 60_000)  # known here at once
        self._count("pause" if pause_ms else event)
        if int(cut):
            self._count("rate_cut")
            log.info("host %s said slow down (%s): fleet rate now %s/s", host, event, rate.decode())

    def _count(self, event: str) -> None:
        self.events[event] = self.events.get(event, 0) + 1
