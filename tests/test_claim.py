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


async def test_a_claimed_job_waits_out_its_lease_in_the_queue(redis_url: str) -> None:
    """claim.lua scores a claimed job at its lease's end (polls and claims meet no running job) and
    returns the score it had; the claims after a moved page skip no job."""
    r = Redis.from_url(redis_url)
    try:
        await r.zadd(QUEUE, {f"j{i:03}": i for i in range(150)})
        await r.set(IN_PROGRESS_KEY_PREFIX + "j001", b"1")  # running elsewhere, scored before this
        out = await r.eval(CLAIM_LUA, 1, QUEUE, 1000, 10_000, 100, IN_PROGRESS_KEY_PREFIX)
        claimed = [out[i].decode() for i in range(0, len(out), 2)]
        assert claimed == [f"j{i:03}" for i in range(151) if i != 1][:100]
        assert [int(float(out[i])) for i in range(1, 8, 2)] == [0, 2, 3, 4]  # the scores they had
        assert await r.zscore(QUEUE, "j000") == 11_000
        assert await _claim(r, now=1000, want=100) == [f"j{i:03}" for i in range(101, 150)]
        # Nothing due while they run; a job whose worker died falls due at its lease's end and is
        # claimed once its key has lapsed.
        assert await _claim(r, now=10_999, want=100) == []
        assert await _claim(r, now=11_000, want=1) == []  # its claim key still lives
        await r.delete(IN_PROGRESS_KEY_PREFIX + "j000")
        assert await _claim(r, now=11_000, want=1) == ["j000"]
    finally:
        await r.aclose()


async def test_a_chunk_run_again_is_deferred_from_the_score_it_had(redis_url: str) -> None:
    """arq adds a retry's deferral to the score a job had when claimed; FleetWorker.finish_job takes
    claim.lua's move to the lease's end off again (else a retry "at once" would wait a lease)."""
    from arq.connections import ArqRedis

    from worker.arqseam import FleetWorker

    pool = ArqRedis.from_url(redis_url)
    try:

        async def task(_ctx: object) -> None:
            return None

        w = FleetWorker(
            lease_seconds=10, functions=[task], redis_pool=pool, queue_name=QUEUE, handle_signals=False
        )
        await pool.zadd(QUEUE, {"now": 5000, "later": 5000})
        out = await pool.eval(CLAIM_LUA, 1, QUEUE, 6000, 10_000, 2, IN_PROGRESS_KEY_PREFIX)
        for i in range(0, len(out), 2):
            w.score_moved[out[i].decode()] = 6000 + 10_000 - int(float(out[i + 1]))
        await w.finish_job("now", False, None, None, False, None, None)  # Retry(defer=0)
        await w.finish_job("later", False, None, None, False, 3000, None)  # arq: defer + now - score
        assert await pool.zscore(QUEUE, "now") == 5000
        assert await pool.zscore(QUEUE, "later") == 8000
        assert await pool.exists(IN_PROGRESS_KEY_PREFIX + "now") == 0
    finally:
        await pool.aclose()
