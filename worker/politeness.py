"""Everything a URL passes before its fetch starts: robots.txt, Crawl-delay, host limits, adaptive backoff.

`Politeness.gate` decides per URL; the common case (verdict in memory, host not throttled, no limit) is
a few dict reads and hands back the worker's bare slot semaphore: no Redis call.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from redis.asyncio import Redis

from worker.contract import BatchOptions
from worker.hostlimits import HostLimiter, HostLimits, host_of
from worker.robots import DISALLOW, RobotsCache, RobotsRules, host_of_origin, origin_of
from worker.settings import Settings
from worker.throttle import Throttle, ThrottlePolicy


@dataclass(frozen=True, slots=True)
class Gate:
    """The politeness verdict for one URL."""

    host: str
    refused: RobotsRules | None = None  # robots.txt forbids the URL, or could not be read
    interval_ms: float | None = None  # Crawl-delay spacing, already the stricter with the configured rate
    waited_ms: float = 0.0  # spent waiting for robots.txt

    @property
    def unreachable(self) -> bool:
        return self.refused is not None and self.refused.state == DISALLOW


@dataclass
class Politeness:
    settings: Settings
    redis: Redis
    limiter: HostLimiter
    limited: bool  # a per-host concurrency or rate is configured: every URL goes through the limiter
    robots: RobotsCache | None
    throttle: Throttle | None
    checks: dict[str, int] = field(default_factory=dict)  # robots verdicts per URL, by outcome
    _configured_interval_ms: float = field(init=False)

    def __post_init__(self) -> None:
        rate = self.settings.per_host_rate
        self._configured_interval_ms = 1000.0 / rate if rate > 0 else 0.0

    def start(self) -> None:
        if self.throttle is not None:
            self.throttle.start()

    async def close(self) -> None:
        if self.throttle is not None:
            await self.throttle.close()
        if self.robots is not None:
            await self.robots.close()

    def _robots_for(self, options: BatchOptions) -> RobotsCache | None:
        if options.ignore_robots and self.settings.robots_allow_batch_ignore:
            return None
        return self.robots

    def gate(self, url: str, options: BatchOptions) -> Gate | None:
        """The verdict if it can be given without waiting (no Redis call); None: ask `gate_async`."""
        robots = self._robots_for(options)
        if robots is None:
            return Gate(host_of(url))
        origin = origin_of(url)
        if origin is None:  # the fetch reports the URL as invalid
            return Gate(host_of(url))
        rules = robots.cached(origin)
        if rules is None:
            return None
        return self._decide(url, host_of_origin(origin), rules, 0.0)

    async def gate_async(self, url: str, options: BatchOptions) -> Gate:
        robots = self._robots_for(options)
        origin = origin_of(url)
        if robots is None or origin is None:
            return Gate(host_of(url))
        started = time.monotonic()
        rules = await robots.rules(origin)
        return self._decide(url, host_of_origin(origin), rules, round((time.monotonic() - started) * 1000, 3))

    def _decide(self, url: str, host: str, rules: RobotsRules, waited_ms: float) -> Gate:
        if not rules.allows(url):
            verdict = "unreachable" if rules.state == DISALLOW else "disallowed"
            self.checks[verdict] = self.checks.get(verdict, 0) + 1
            return Gate(host, rules, None, waited_ms)
        self.checks["allowed"] = self.checks.get("allowed", 0) + 1
        delay = rules.crawl_delay
        if delay:
            interval = max(min(delay, self.settings.crawl_delay_max) * 1000, self._configured_interval_ms)
            return Gate(host, None, interval, waited_ms)
        return Gate(host, None, None, waited_ms)

    def slot(
        self, gate: Gate, slots: asyncio.Semaphore
    ) -> contextlib.AbstractAsyncContextManager[float | None]:
        """The slot the fetch runs in: the bare semaphore unless the host is limited, delayed or throttled."""
        throttle = self.throttle
        if (
            not self.limited
            and gate.interval_ms is None
            and (throttle is None or gate.host not in throttle.hosts)
        ):
            return slots
        return self.limiter.slot(gate.host, slots, gate.interval_ms)

    async def observe(
        self, gate: Gate, status: int | None, kind: str | None, retry_after: str | None
    ) -> None:
        """After a fetch: a 429/503 or a run of failures from the host cuts its rate for the fleet."""
        throttle = self.throttle
        if throttle is None:
            return
        event = throttle.needs_report(gate.host, status, kind)
        if event is not None:
            await throttle.report(gate.host, event, retry_after)


class PolitenessCounters(Collector):
    """/metrics: robots verdicts, robots.txt fetches and throttle events, each with a few fixed labels."""

    def __init__(self, polite: Politeness) -> None:
        self.polite = polite

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        p = self.polite
        checks = CounterMetricFamily(
            "fetchfleet_robots_checks", "URLs checked against robots.txt, by verdict", labels=["verdict"]
        )
        for verdict in ("allowed", "disallowed", "unreachable"):
            checks.add_metric([verdict], p.checks.get(verdict, 0))
        yield checks
        fetches = CounterMetricFamily(
            "fetchfleet_robots_fetches",
            "robots.txt files this worker fetched for the fleet, by what they said",
            labels=["state"],
        )
        fetched = p.robots.fetched if p.robots is not None else {}
        for state in ("rules", "allow", "unreachable"):
            fetches.add_metric([state], fetched.get(state, 0))
        yield fetches
        events = CounterMetricFamily(
            "fetchfleet_throttle_events",
            "hosts telling this worker to slow down, by event (rate_cut: the fleet's rate was halved)",
            labels=["event"],
        )
        seen = p.throttle.events if p.throttle is not None else {}
        for event in ("slow_down", "failures", "pause", "rate_cut"):
            events.add_metric([event], seen.get(event, 0))
        yield events
        yield GaugeMetricFamily(
            "fetchfleet_throttled_hosts",
            "hosts under adaptive backoff, as this worker last read it",
            value=len(p.throttle.hosts) if p.throttle is not None else 0,
        )


def make_politeness(
    settings: Settings, redis: Redis, worker_id: str, limiter: HostLimiter | None
) -> Politeness | None:
    """None when nothing applies (robots ignored, no limit, no adaptive backoff): the plain fetch path."""
    obey = settings.robots == "obey"
    if not obey and not settings.adaptive_throttle and limiter is None:
        return None
    return Politeness(
        settings,
        redis,
        limiter or HostLimiter(redis, HostLimits.from_settings(settings)),
        limited=limiter is not None,
        robots=RobotsCache(settings, redis, worker_id) if obey else None,
        throttle=Throttle(redis, ThrottlePolicy.from_settings(settings))
        if settings.adaptive_throttle
        else None,
    )
