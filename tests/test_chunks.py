"""A chunk run twice, in sequence or at once (as after a crash), leaves one result per index."""

from __future__ import annotations

import asyncio
from collections import Counter
from contextlib import AsyncExitStack

import orjson
from redis.asyncio import Redis

from tests.support.http_target import HttpTarget
from worker.chunks import Runtime, run_chunk
from worker.contract import ChunkJob, batch_key, results_key
from worker.lifecycle import worker_runtime
from worker.resultstream import page_results
from worker.settings import load_settings


async def _runtime(stack: AsyncExitStack, redis_url: str, worker_id: str) -> Runtime:
    settings = load_settings(redis_url=redis_url, allow_private_networks=True, concurrency=10)
    redis = Redis.from_url(redis_url)
    stack.push_async_callback(redis.aclose)
    return await stack.enter_async_context(worker_runtime(settings, redis, worker_id))


async def test_same_chunk_twice(redis_url: str, http_target: HttpTarget) -> None:
    urls = [http_target.url(f"/ok/{100 + i}") for i in range(40)]
    job = ChunkJob(batch_id="twice", first_index=0, requests=urls)
    async with AsyncExitStack() as stack:
        a, b = await _runtime(stack, redis_url, "A"), await _runtime(stack, redis_url, "B")
        await a.redis.hset(batch_key("twice"), mapping={"submitted": 80, "complete": 1})
        first = await run_chunk(a, job)
        second = await run_chunk(b, job)
        assert (first.fetched, first.recorded) == (40, 40)
        assert (second.fetched, second.skipped, second.recorded) == (0, 40, 0)

        # Two workers on the same chunk at the same moment: the gate lets one result per index through.
        job2 = ChunkJob(batch_id="twice", first_index=40, requests=urls)
        both = await asyncio.gather(run_chunk(a, job2), run_chunk(b, job2))
        assert sum(s.recorded for s in both) == 40

        entries = page_results(await a.redis.xrange(results_key("twice")))
        indexes = Counter(orjson.loads(doc)["index"] for _, doc, _ in entries)
        assert sorted(indexes) == list(range(80)) and set(indexes.values()) == {1}
        meta = await a.redis.hgetall(batch_key("twice"))
        assert int(meta[b"done"]) == 80
