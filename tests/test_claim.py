"""worker/claim.lua, the one-round-trip claim that replaces arq's per-job WATCH/MULTI, on a real Redis."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from worker.arqseam import CLAIM_LUA
from worker.enqueue import IN_PROGRESS_KEY_PREFIX

QUEUE = "fetchfleet:test-claim"


async def _claim(r: Redis, now: int, want: int, own: list[str] | None = None) -> list[str]:
    out = await r.eval(CLAIM_LUA, 1, QUEUE, now, 10_000, want, IN_PROGRESS_KEY_PREFIX, *(own or []))
    return [out[i].decode() for i in range(0, len(out), 2)]


async def test_claims_due_jobs_in_queue_order_skipping_running_ones(redis_url: str) -> None:
    r = Redis.from_url(redis_url)
    try:
        await r.zadd(QUEUE, {f"j{i}": 1000 + i for i in range(10)} | {"later": 5000})
        await r.set(IN_PROGRESS_KEY_PREFIX + "j0", b"1")  # running on another worker
        assert await _claim(r, now=2000, want=3, own=["j1"]) == ["j2", "j3", "j4"]
        # The claim is arq's in-progress key, with the lease as its expiry.
        assert 0 < await r.pttl(IN_PROGRESS_KEY_PREFIX + "j2") <= 10_000
        assert await _claim(r, now=2000, want=100) == ["j1", "j5", "j6", "j7", "j8", "j9"]
        assert await _claim(r, now=2000, want=100) == []  # `later` is not due yet
        assert await _claim(r, now=6000, want=100) == ["later"]
    finally:
        await r.aclose()


async def test_racing_claims_never_take_a_job_twice(redis_url: str) -> None:
    r = Redis.from_url(redis_url, max_connections=20)
    try:
        await r.zadd(QUEUE, {f"j{i}": i for i in range(200)})
        won = await asyncio.gather(*(_claim(r, now=10_000, want=3) for _ in range(100)))
        claimed = [j for w in won for j in w]
        assert sorted(claimed) == sorted(f"j{i}" for i in range(200))
    finally:
        await r.aclose()


async def test_scans_past_a_long_run_of_jobs_held_elsewhere(redis_url: str) -> None:
    r = Redis.from_url(redis_url)
    try:
        await r.zadd(QUEUE, {f"j{i:03}": i for i in range(300)})
        async with r.pipeline(transaction=False) as pipe:
            for i in range(250):
                pipe.set(IN_PROGRESS_KEY_PREFIX + f"j{i:03}", b"1")
            await pipe.execute()
        assert await _claim(r, now=10_000, want=2) == ["j250", "j251"]
    finally:
        await r.aclose()
