"""The exactly-once gate, on fakeredis (unit) and on the real server (through a chunk run twice)."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from fakeredis import FakeAsyncRedis
from redis.asyncio import Redis

from worker.contract import batch_key, results_key
from worker.recorder import Recorder, done_flags
from worker.resultstream import page_results


async def _record_all(r: Redis, batch: str, indexes: list[int]) -> None:
    rec = Recorder(r, ttl=3600)
    rec.start()
    for i in indexes:
        await rec.record(batch, i, i % 2 == 1, orjson.dumps({"index": i}), incarnation="")
    await rec.close()


@pytest.fixture(params=["fake", "real"])
async def redis_client(request, redis_server):
    if request.param == "fake":
        client = FakeAsyncRedis()
    else:
        client = Redis.from_url(redis_server.url)
        await client.flushall()
    yield client
    await client.aclose()


async def test_second_recording_adds_nothing(redis_client: Redis) -> None:
    await redis_client.hset(batch_key("b"), mapping={"submitted": 10})
    await _record_all(redis_client, "b", list(range(10)))
    await _record_all(redis_client, "b", list(range(10)))  # the chunk "ran twice"
    meta = await redis_client.hgetall(batch_key("b"))
    assert int(meta[b"done"]) == 10 and int(meta[b"failed"]) == 5
    assert b"finished_ms" in meta
    entries = page_results(await redis_client.xrange(results_key("b")))
    assert sorted(orjson.loads(doc)["index"] for _, doc, _ in entries) == list(range(10))
    assert await done_flags(redis_client, "b", [0, 9, 10]) == [True, True, False]
    for key in (batch_key("b"), results_key("b")):
        assert 0 < await redis_client.ttl(key) <= 3600


async def test_concurrent_recorders_one_winner(redis_client: Redis) -> None:
    await redis_client.hset(batch_key("c"), mapping={"submitted": 50})
    await asyncio.gather(*(_record_all(redis_client, "c", list(range(50))) for _ in range(4)))
    assert len(page_results(await redis_client.xrange(results_key("c")))) == 50


async def test_indexes_far_apart_in_one_flush(redis_client: Redis) -> None:
    """Results of chunks far apart in a batch (and an index twice) in one flush: each index once, the
    second time around none (the BITFIELD path of record.lua, beside the GETRANGE one)."""
    indexes = [i * 5_003 for i in range(1_300)] + [5_003, 0]  # past one call's 1,000 bits; two repeats
    await redis_client.hset(batch_key("far"), mapping={"submitted": 2**32 - 1})
    for attempt in range(2):
        rec = Recorder(redis_client, ttl=3600)
        rec.start()  # waits for its first result: then every one below is queued, one flush of 1,000
        flags = await asyncio.gather(
            *(rec.record("far", i, False, orjson.dumps({"index": i}), incarnation="") for i in indexes)
        )
        await rec.close()
        if attempt == 0:
            assert flags == [True] * 1_300 + [False, False]
        else:
            assert not any(flags)
    meta = await redis_client.hgetall(batch_key("far"))
    assert int(meta[b"done"]) == 1_300
    entries = page_results(await redis_client.xrange(results_key("far")))
    assert sorted(orjson.loads(doc)["index"] for _, doc, _ in entries) == sorted(set(indexes))
    probes = [0, 5_003, 5_004, 1_299 * 5_003]
    assert await done_flags(redis_client, "far", probes) == [True, True, False, True]
