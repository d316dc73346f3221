"""Adaptive per-host backoff in Redis: cut once per round, pause on Retry-After, grow back, let go."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from producer.stats import ClusterStats, ThrottledHost, render_plain
from worker.contract import THROTTLED_KEY, BatchOptions, throttle_key
from worker.hostlimits import HostLimiter, HostLimits
from worker.politeness import HeldSlot, make_politeness
from worker.settings import load_settings
from worker.throttle import FAILURE_RUN, Throttle, ThrottlePolicy


@pytest.fixture
async def aredis(redis_url: str):
    r = Redis.from_url(redis_url)
    yield r
    await r.aclose()


def _rate(doc: dict[bytes, bytes]) -> float:
    return float(doc[b"rate"])


def test_policy_starting_points() -> None:
    unlimited = ThrottlePolicy(start_rate=10, configured_rate=0, retry_after_max=300)
    assert (unlimited.first_rate, unlimited.ceiling, unlimited.step) == (10, 100, 1)
    limited = ThrottlePolicy(start_rate=10, configured_rate=8, retry_after_max=300)
    assert (limited.first_rate, limited.ceiling) == (4, 8)  # half the configured rate, back up to it


def test_failure_runs_are_counted_per_host() -> None:
    t = Throttle.__new__(Throttle)  # the run counting is plain bookkeeping: no Redis involved
    t._failures = {}
    assert t.needs_report("h", 429, None) == "slow_down"
    assert t.needs_report("h", 503, None) == "slow_down"
    assert t.needs_report("h", 500, None) is None
    for _ in range(FAILURE_RUN - 1):
        assert t.needs_report("h", None, "timeout") is None
    assert t.needs_report("h", 200, None) is None  # a good answer ends the run
    for _ in range(FAILURE_RUN - 1):
        assert t.needs_report("h", None, "connect") is None
    assert t.needs_report("other", None, "connect") is None  # another host's run is its own
    assert t.needs_report("h", None, "timeout") == "failures"


async def test_cut_once_per_round_then_pause_and_recover(aredis: Redis) -> None:
    policy = ThrottlePolicy(start_rate=10, configured_rate=0, retry_after_max=300)
    a, b = Throttle(aredis, policy), Throttle(aredis, policy)
    await a.report("h", "slow_down", None)
    assert _rate(await aredis.hgetall(throttle_key("h"))) == 10
    await b.report("h", "slow_down", None)  # the same overloaded moment, seen by another worker
    assert _rate(await aredis.hgetall(throttle_key("h"))) == pytest.approx(10, abs=0.1)
    await asyncio.sleep(1.15)
    await b.report("h", "slow_down", None)
    assert _rate(await aredis.hgetall(throttle_key("h"))) == pytest.approx(5.6, abs=0.3)  # (10 + 1.15) / 2

    # Retry-After pauses the host for everyone, and the limiter says so.
    await a.report("h", "slow_down", "2")
    limiter = HostLimiter(aredis, HostLimits())
    wait = await limiter.try_acquire("h", "p")
    assert 1500 < wait <= 2000
    await b.refresh()
    assert "h" in b.hosts  # every worker learns the host is throttled from one zset read
    for key in (throttle_key("h"), THROTTLED_KEY):
        assert 60_000 < await aredis.pttl(key) < 200_000  # gone some time after the host recovers


async def test_recovered_host_is_let_go(aredis: Redis) -> None:
    """With the rate back at the ceiling the throttle is deleted and the host leaves the set."""
    policy = ThrottlePolicy(start_rate=1, configured_rate=0, retry_after_max=300)  # ceiling 10/s, +0.1/s
    t = Throttle(aredis, policy)
    await t.report("h", "slow_down", None)
    limiter = HostLimiter(aredis, HostLimits())
    assert await limiter.try_acquire("h", "p1") == 0
    wait = await limiter.try_acquire("h", "p2")
    assert 900 < wait <= 1000  # 1 request/s now
    # Pretend the host has behaved for long enough: the rate is back at the ceiling.
    await aredis.hset(throttle_key("h"), "since", 0)
    await aredis.delete("ff:host:h:rate")
    assert await limiter.try_acquire("h", "p3") == 0
    assert not await aredis.exists(throttle_key("h"))
    assert await aredis.zscore(THROTTLED_KEY, "h") is None


async def test_configured_rate_is_the_ceiling(aredis: Redis) -> None:
    policy = ThrottlePolicy(start_rate=10, configured_rate=4, retry_after_max=300)
    t = Throttle(aredis, policy)
    await t.report("h", "slow_down", None)
    doc = await aredis.hgetall(throttle_key("h"))
    assert _rate(doc) == 2 and float(doc[b"ceil"]) == 4


async def test_a_url_queued_for_a_slot_sees_a_new_throttle(redis_url: str, aredis: Redis) -> None:
    """The host is throttled while a URL waits for the worker's only slot: once it has the slot it
    goes through the limiter (and waits out the pause there) instead of firing at once."""
    polite = make_politeness(load_settings(redis_url=redis_url, robots="ignore"), aredis, "w", None)
    assert polite is not None and polite.throttle is not None
    slots = asyncio.Semaphore(1)
    held = HeldSlot(slots)
    gate = polite.gate("http://h.test/x", BatchOptions())
    assert gate is not None and gate.host == "h.test"
    assert await polite.take_slot(gate, slots, held) is held  # not throttled: the bare slot, taken
    waiting = asyncio.create_task(polite.take_slot(gate, slots, held))
    await asyncio.sleep(0.05)
    await polite.throttle.report("h.test", "slow_down", "1")  # a 429 with Retry-After: 1 came back
    async with held:  # the first fetch ends and gives its slot back
        pass
    slot = await asyncio.wait_for(waiting, 2)
    assert slot is not held
    async with slot as waited:
        assert waited is not None and 800 < waited < 1500
    assert not slots.locked()  # the slot was given back


def test_stats_lines_escape_what_redis_holds() -> None:
    """Host names and origins come from Redis: shown escaped, one line each, and nothing when empty."""
    evil = "a\nforged line\x1b[31m"
    host = ThrottledHost(evil, 5.0, 100.0, 0, 0, "unreachable")
    stats = ClusterStats(0, [], [], [host], [(f"http://{evil}:80", 0)])
    lines = render_plain(stats).split("\n")
    assert all(line.isprintable() for line in lines)
    assert len(lines) == 3 + 2 + 2  # depth, workers, batches; one header and one row each
    assert "throttled" not in render_plain(ClusterStats(0, [], []))
