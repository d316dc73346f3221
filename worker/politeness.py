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
from typing import Self

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from redis.asyncio import Redis

from worker.contract import BatchOptions, mask_password
from worker.fetcher import FOLLOW, Fetcher, HopCheck, HopVerdict
from worker.hostlimits import HostLimiter, HostLimits, host_of
from worker.robots import DISALLOW, RobotsCache, RobotsRules, host_of_origin, origin_of
from worker.settings import Settings
from worker.throttle import Throttle, ThrottlePolicy

ORIGINS_REMEMBERED = 10_000  # per process; past it the memo starts again (a crawl of many sites)


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


class HeldSlot:
    """A slot of the worker's semaphore already taken: leaving the block gives it back. Stateless, so
    one instance serves every URL."""

    def __init__(self, slots: asyncio.Semaphore) -> None:
        self.slots = slots

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        self.slots.release()


@dataclass
class Politeness:
    settings: Settings
    redis: Redis
    limiter: HostLimiter
    limited: bool  # a per-host concurrency or rate is configured: every URL goes through the limiter
    robots: RobotsCache | None
    throttle: Throttle | None
    # robots verdicts per URL, for /metrics
    allowed: int = 0
    disallowed: int = 0
    unreachable: int = 0
    _configured_interval_ms: float = field(init=False)
    _origins: dict[str, tuple[str, str]] = field(default_factory=dict, init=False, repr=False)
    # URL text up to its path -> (rules to match, None: nothing to match; the Gate; good until, monotonic)
    _fast: dict[str, tuple[RobotsRules | None, Gate, float]] = field(
        default_factory=dict, init=False, repr=False
    )

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

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _origin(self, url: str) -> tuple[str, str] | None:
        """(origin, host) of a URL, remembered by the URL's text up to its path: the hot path parses once
        per origin, not once per URL (ops/bench: ~2 us a URL saved)."""
        cut = url.find("/", 8)  # past "https://": the first "/" ends the authority (or is in a query)
        prefix = url if cut < 0 else url[:cut]
        known = self._origins.get(prefix)
        if known is None:
            origin = origin_of(prefix)
            if origin is None:
                return None
            if len(self._origins) >= ORIGINS_REMEMBERED:
                self._origins.clear()
            known = self._origins[prefix] = (origin, host_of_origin(origin))
        return known

    def gate(self, url: str, options: BatchOptions) -> Gate | None:
        """The verdict if it can be given without waiting (no Redis call); None: ask `gate_async`.

        The common case is one dict read by the URL's text up to its path, and at most one robots.txt
        match: ops/bench measures it against FETCHFLEET_ROBOTS=ignore.
        """
        cut = url.find("/", 8)  # past "https://": the first "/" ends the authority (or is in a query)
        fast = self._fast.get(url if cut < 0 else url[:cut])
        if fast is not None and not (options.ignore_robots and self.settings.robots_allow_batch_ignore):
            rules, gate, until = fast
            if until > time.monotonic() and (rules is None or rules.allows(url)):
                self.allowed += 1
                return gate
        return self._gate(url, options)

    def _gate(self, url: str, options: BatchOptions) -> Gate | None:
        known = self._origin(url)
        if known is None:  # the fetch reports the URL as invalid
            return Gate(host_of(url))
        origin, host = known
        robots = self.robots
        if robots is None:
            gate = Gate(host)
            self._remember_fast(url, None, gate, float("inf"))
            return gate
        if options.ignore_robots and self.settings.robots_allow_batch_ignore:
            return Gate(host)
        seen = robots.remembered(origin)
        if seen is None:
            return None
        gate = self._decide(url, host, seen[0], 0.0)
        if gate.refused is None:
            self._remember_fast(url, None if seen[0].open_to_all else seen[0], gate, seen[1])
        return gate

    def _remember_fast(self, url: str, rules: RobotsRules | None, gate: Gate, until: float) -> None:
        cut = url.find("/", 8)
        if len(self._fast) >= ORIGINS_REMEMBERED:
            self._fast.clear()
        self._fast[url if cut < 0 else url[:cut]] = (rules, gate, until)

    async def gate_async(self, url: str, options: BatchOptions) -> Gate:
        """The verdict, waiting for robots.txt when needed."""
        known = self._origin(url)
        if known is None or self.robots is None:
            return Gate(host_of(url))
        origin, host = known
        started = time.monotonic()
        rules = await self.robots.rules(origin)
        return self._decide(url, host, rules, round((time.monotonic() - started) * 1000, 3))

    def hop_check(self, options: BatchOptions) -> HopCheck | None:
        """What the fetcher asks before following a redirect, as a crawler that re-queued the redirect
        would have (Scrapy's RobotsTxtMiddleware sees every redirect as a new request): the target's
        robots.txt, then its turn (Crawl-delay, host limit, backoff) when it is another host than the one
        whose turn the fetch holds. None when nothing applies."""
        obey = self.robots is not None and not (
            options.ignore_robots and self.settings.robots_allow_batch_ignore
        )
        if not obey and not self.limited and self.throttle is None:
            return None

        async def check(url: str, first: str) -> HopVerdict:
            gate = (self.gate(url, options) or await self.gate_async(url, options)) if obey else None
            if gate is None:
                gate = Gate(host_of(url))
            elif gate.refused is not None:
                shown = mask_password(url)
                if gate.unreachable:
                    return HopVerdict(refusal=f"redirect to {shown} not followed: {gate.refused.reason}")
                return HopVerdict(refusal=f"redirect to {shown} not followed: disallowed by its robots.txt")
            if gate.host == host_of(first):
                return FOLLOW  # the fetch holds this host's turn already
            # The worker's fetch slot is held by this fetch already: the target's turn is taken with a
            # slot of its own, so a hop never waits for another fetch's slot (nor starves them).
            own = asyncio.Semaphore(1)
            slot = self.slot(gate, own)
            return FOLLOW if slot is own else HopVerdict(slot=slot)

        return check

    def _decide(self, url: str, host: str, rules: RobotsRules, waited_ms: float) -> Gate:
        if not rules.allows(url):
            if rules.state == DISALLOW:
                self.unreachable += 1
            else:
                self.disallowed += 1
            return Gate(host, rules, None, waited_ms)
        self.allowed += 1
        return Gate(host, None, self._interval(rules), waited_ms)

    def _interval(self, rules: RobotsRules) -> float | None:
        delay = rules.crawl_delay
        if not delay or self.settings.crawl_delay_max <= 0:
            return None
        return max(min(delay, self.settings.crawl_delay_max) * 1000, self._configured_interval_ms)

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

    async def admit(
        self, url: str, options: BatchOptions, slots: asyncio.Semaphore, held: HeldSlot
    ) -> tuple[Gate, contextlib.AbstractAsyncContextManager[float | None] | None]:
        """The URL's verdict and the slot to fetch it in (None when robots.txt refuses it).

        A verdict this URL has to load itself (its origin's robots.txt neither in memory nor being
        loaded by another URL) is loaded in a fetch slot, which the fetch then keeps when nothing else
        applies to the host: as a script's first request to a new host spends its slot on DNS, TCP and
        TLS, and the page reuses that connection. Loaded outside a slot, the URLs of new hosts waited
        for robots.txt while the slots they were claimed for stood empty (ops/bench --profile web: 145
        of 500 fetches in flight on average, none in the run's first second). URLs waiting for another
        URL's load, and hosts with a limit, a Crawl-delay or a backoff, still wait holding no slot: a
        second URL of the host that finds the load started when its slot comes gives the slot back and
        waits for the verdict, then for a slot like any URL (fetching at once in the slot it held, it
        opened a second connection beside the first URL's page: 283-370 of 1,000 hosts of the web
        profile).
        """
        gate = self.gate(url, options)
        if gate is None:
            known, robots = self._origin(url), self.robots
            if robots is not None and known is not None and not robots.loading(known[0]):
                # This URL is to load the verdict: in a fetch slot. It claims the load only once it holds
                # the slot: a load claimed while waiting for one would leave every fetch that holds a
                # slot and was redirected to this origin waiting for it, and the slot never coming.
                await slots.acquire()
                try:
                    gate = self.gate(url, options)  # it may have come while this URL waited
                    if gate is None and not robots.loading(known[0]):
                        gate = await self.gate_async(url, options)  # loads it, needing no other slot
                except BaseException:
                    slots.release()
                    raise
                if gate is not None and gate.refused is None and self.slot(gate, slots) is slots:
                    return gate, held  # no limit, delay or backoff: the fetch keeps the slot
                slots.release()
            if gate is None:  # another URL loads it: wait for it holding no slot
                gate = await self.gate_async(url, options)
        if gate.refused is not None:
            return gate, None
        return gate, await self.take_slot(gate, slots, held)

    async def take_slot(
        self, gate: Gate, slots: asyncio.Semaphore, held: HeldSlot
    ) -> contextlib.AbstractAsyncContextManager[float | None]:
        """The slot, taken now when it is the bare semaphore: a host throttled while this URL waited
        for it (its first 429s arrive while the rest of the chunk queues here) goes to the limiter."""
        slot = self.slot(gate, slots)
        if slot is not slots or self.throttle is None:
            return slot
        await slots.acquire()
        if gate.host in self.throttle.hosts:
            slots.release()
            return self.limiter.slot(gate.host, slots, gate.interval_ms)
        return held

    def slow_down(self, gate: Gate, status: int | None, kind: str | None) -> str | None:
        """After a fetch: the event to report if the host said "slow down" (plain checks, no Redis)."""
        throttle = self.throttle
        if throttle is None:
            return None
        return throttle.needs_report(gate.host, status, kind)

    async def report(self, gate: Gate, event: str, retry_after: str | None) -> None:
        """A 429/503 or a run of failures from the host: cut its rate for the whole fleet."""
        if self.throttle is not None:
            await self.throttle.report(gate.host, event, retry_after)


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
            checks.add_metric([verdict], getattr(p, verdict))
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
    settings: Settings,
    redis: Redis,
    worker_id: str,
    limiter: HostLimiter | None,
    fetcher: Fetcher | None = None,
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
        robots=RobotsCache(settings, redis, worker_id, pool_of=fetcher) if obey else None,
        throttle=Throttle(redis, ThrottlePolicy.from_settings(settings))
        if settings.adaptive_throttle
        else None,
    )
