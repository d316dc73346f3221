"""Results a chunk recorded, then lost by Redis while it still ran (an older snapshot restored, a failover
to a replica that lagged), are recorded again before the chunk ends: the job is gone after it."""

from __future__ import annotations

import asyncio
from collections import Counter
from contextlib import AsyncExitStack

import orjson
import pytest
from redis.asyncio import Redis

from tests.support.http_target import HttpTarget
from worker.chunks import run_chunk, unrecorded
from worker.contract import ChunkJob, batch_key, done_key, results_key, retried_key
from worker.lifecycle import worker_runtime
from worker.resultstream import page_results
from worker.settings import load_settings

N = 20


async def _done(redis: Redis, batch_id: str) -> int:
    return int(await redis.hget(batch_key(batch_id), "done") or 0)


async def _until_done(redis: Redis, batch_id: str, at_least: int) -> None:
    async with asyncio.timeout(10):
        while await _done(redis, batch_id) < at_least:
            await asyncio.sleep(0.005)


@pytest.mark.slow  # about a second of fetches
async def test_results_lost_by_redis_while_the_chunk_runs_are_recorded_again(
    redis_url: str, http_target: HttpTarget
) -> None:
    # Two slots, 20 URLs of 60 ms: results reach Redis a pair at a time over about 0.6 s.
    urls = [http_target.url(f"/ok/{10 + i}?delay_ms=60") for i in range(N)]
    job = ChunkJob(batch_id="rolled", first_index=0, requests=urls)
    keys = [batch_key("rolled"), done_key("rolled"), results_key("rolled")]
    settings = load_settings(redis_url=redis_url, allow_private_networks=True, concurrency=2)
    async with AsyncExitStack() as stack:
        redis = Redis.from_url(redis_url)
        stack.push_async_callback(redis.aclose)
        rt = await stack.enter_async_context(worker_runtime(settings, redis, "w"))
        await redis.hset(batch_key("rolled"), mapping={"submitted": N, "complete": 1})
        running = asyncio.create_task(run_chunk(rt, job))
        # What a snapshot holds: the batch after a few results. Redis is then restored from it (RESTORE
        # over each key, as a restart from that RDB would load them) while the chunk goes on.
        await _until_done(redis, "rolled", 6)
        snapshot = {key: await redis.dump(key) for key in keys}
        await _until_done(redis, "rolled", 14)
        for key, value in snapshot.items():
            await redis.restore(key, 0, value, replace=True)
        rolled_back_to = await _done(redis, "rolled")
        await running

        documents = page_results(await redis.xrange(results_key("rolled")))
        indexes = Counter(orjson.loads(doc)["index"] for _, doc, _ in documents)
        done = await _done(redis, "rolled")
        bits = await redis.bitcount(done_key("rolled"))
    print(f"\nrestored to {rolled_back_to} of {N} done mid-chunk; after the chunk: done {done}, bits {bits}")
    assert rolled_back_to < 14
    assert (done, bits) == (N, N)
    assert sorted(indexes) == list(range(N)) and set(indexes.values()) == {1}


async def test_unrecorded_skips_results_retries_and_a_lost_batch(redis_url: str) -> None:
    """What the end-of-chunk check fetches again: indexes with neither a result nor a queued retry, and
    none at all when Redis lost the batch itself (restarted empty: every URL fetched again for nothing)."""
    job = ChunkJob(
        batch_id="chk", incarnation="i1", first_index=0, requests=[f"http://h/{i}" for i in range(N)]
    )
    settings = load_settings(redis_url=redis_url, allow_private_networks=True)
    async with AsyncExitStack() as stack:
        redis = Redis.from_url(redis_url)
        stack.push_async_callback(redis.aclose)
        rt = await stack.enter_async_context(worker_runtime(settings, redis, "w"))
        await redis.hset(batch_key("chk"), mapping={"submitted": N, "complete": 1, "incarnation": "i1"})
        for i in range(10):
            await redis.setbit(done_key("chk"), i, 1)
        await redis.setbit(retried_key("chk", 2), 12, 1)  # attempt 2 of index 12 is queued
        await redis.setbit(retried_key("chk", 3), 13, 1)  # another attempt's: not this run's retry
        entries = job.entries()
        assert [e[0] for e in await unrecorded(rt, job, entries)] == [10, 11, *range(13, N)]
        await redis.hset(batch_key("chk"), "incarnation", "i2")  # the id submitted again meanwhile
        assert await unrecorded(rt, job, entries) == []
        await redis.delete(batch_key("chk"))  # Redis restarted empty
        assert await unrecorded(rt, job, entries) == []
