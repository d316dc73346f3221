"""A full Redis on a real server (maxmemory 1 byte): results, retries and leases wait, nothing is lost."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from worker.codec import load_job
from worker.contract import ChunkJob, batch_key, results_key
from worker.enqueue import IN_PROGRESS_KEY_PREFIX, JOB_KEY_PREFIX
from worker.lease import Leases
from worker.metrics import WorkerMetrics
from worker.monitor import Monitor, Probes
from worker.pressure import RedisPressure
from worker.recorder import Recorder
from worker.requeue import Requeuer
from worker.settings import Settings


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    r = Redis.from_url(redis_url)
    await r.config_set("maxmemory-policy", "noeviction")
    try:
        yield r
    finally:
        await r.config_set("maxmemory", 0)
        await r.aclose()


async def fill(r: Redis) -> None:
    """Redis is full from now on: every write that could add memory gets an OOM reply."""
    await r.config_set("maxmemory", 1)


async def make_room(r: Redis) -> None:
    await r.config_set("maxmemory", 0)


async def test_results_wait_for_room_and_are_recorded_once(redis: Redis) -> None:
    rec = Recorder(redis, ttl=600)
    rec.start()
    try:
        await redis.hset(batch_key("b1"), mapping={"submitted": 10})  # results go only to a live batch
        await fill(redis)
        task = asyncio.create_task(rec.record("b1", 3, False, b'{"index":3}', incarnation=""))
        await asyncio.sleep(0.3)
        assert not task.done()  # kept, not dropped and not failed
        assert rec.pressure.full and "Redis is full" in rec.pressure.describe()
        assert await redis.xlen(results_key("b1")) == 0
        await make_room(redis)
        assert await asyncio.wait_for(task, 10) is True
        await asyncio.wait_for(rec.pressure.wait_room(), 3)  # INFO memory shows the room
        assert await redis.xlen(results_key("b1")) == 1
    finally:
        await make_room(redis)
        await rec.close()
        await rec.pressure.close()


def job(batch: str = "b1") -> ChunkJob:
    return ChunkJob(batch_id=batch, requests=[f"http://x.test/{i}" for i in range(10)])


async def queued_jobs(r: Redis, queue: str) -> dict[str, ChunkJob]:
    out = {}
    for job_id in await r.zrange(queue, 0, -1):
        raw = await r.get(JOB_KEY_PREFIX + job_id.decode())
        out[job_id.decode()] = ChunkJob.model_validate(load_job(raw)["a"][0])
    return out


async def test_retries_are_grouped_and_queued_once_per_attempt(redis: Redis) -> None:
    settings = Settings(queue_name="ff-test-requeue", chunk_size=4)
    pressure = RedisPressure(redis)
    rq = Requeuer(redis, settings, pressure)
    try:
        j = job()
        # Six URLs of one chunk fail together: one chunk of four and one of two, due together.
        await asyncio.gather(*(rq.add(j, i, f"http://x.test/{i}", 1, 0.0) for i in range(6)))
        first = await queued_jobs(redis, settings.queue_name)
        assert sorted(len(c.requests) for c in first.values()) == [2, 4]
        assert sorted(i for c in first.values() for i in c.indexes or []) == list(range(6))
        assert all(c.attempts == [1] * len(c.requests) for c in first.values())
        # The same chunk run again (its lease lapsed): the same retries, grouped otherwise, add nothing...
        await asyncio.gather(*(rq.add(j, i, f"http://x.test/{i}", 1, 0.0) for i in (5, 1, 3)))
        assert await queued_jobs(redis, settings.queue_name) == first
        # ...while a new URL in the same group, and the next attempt of a queued one, are queued.
        await asyncio.gather(rq.add(j, 8, "http://x.test/8", 1, 0.0), rq.add(j, 3, "http://x.test/3", 2, 0.0))
        now = await queued_jobs(redis, settings.queue_name)
        added = {k: v for k, v in now.items() if k not in first}
        assert sorted((v.indexes, v.attempts) for v in added.values()) == [([3], [2]), ([8], [1])]
    finally:
        await rq.close()


async def test_retries_wait_for_room(redis: Redis) -> None:
    settings = Settings(queue_name="ff-test-requeue-full", chunk_size=4)
    pressure = RedisPressure(redis)
    rq = Requeuer(redis, settings, pressure)
    try:
        await fill(redis)
        task = asyncio.create_task(rq.add(job("b2"), 1, "http://x.test/1", 1, 0.0))
        await asyncio.sleep(0.8)
        assert not task.done() and pressure.full
        assert await redis.zcard(settings.queue_name) == 0
        await make_room(redis)
        await asyncio.wait_for(task, 10)
        assert await redis.zcard(settings.queue_name) == 1
    finally:
        await make_room(redis)
        await rq.close()
        await pressure.close()


async def test_retry_never_runs_before_its_backoff(redis: Redis) -> None:
    settings = Settings(queue_name="ff-test-requeue-due")
    rq = Requeuer(redis, settings, RedisPressure(redis))
    try:
        seconds, micros = await redis.time()
        before_ms = seconds * 1000 + micros // 1000
        await rq.add(job("b3"), 0, "http://x.test/0", 1, 3.0)
        ((_, score),) = await redis.zrange(settings.queue_name, 0, -1, withscores=True)
        assert before_ms + 3000 <= score <= before_ms + 3000 + 250 + 300  # a bucket late at most
    finally:
        await rq.close()


async def test_leases_stay_renewed_while_redis_is_full(redis: Redis) -> None:
    leases = Leases(redis, IN_PROGRESS_KEY_PREFIX, lease_s=2)
    await redis.set(IN_PROGRESS_KEY_PREFIX + "c1", b"1", px=300)
    leases.track("c1")
    await fill(redis)
    await leases.renew()  # PEXPIRE adds nothing, so a full Redis still takes it
    assert await redis.pttl(IN_PROGRESS_KEY_PREFIX + "c1") > 1500


async def test_chunk_deadline_stops_while_redis_is_full(redis: Redis) -> None:
    pressure = RedisPressure(redis)
    await fill(redis)
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(TimeoutError):
            async with pressure.deadline(0.3):
                pressure.full_now()
                await asyncio.sleep(0.6)  # longer than the deadline, all of it full: no timeout
                await make_room(redis)
                pressure.room_again()
                await asyncio.sleep(5)  # the rest of the 0.3 s runs out now
        assert 0.85 <= loop.time() - started < 2.0
    finally:
        await make_room(redis)
        await pressure.close()


async def test_healthz_fails_while_redis_is_full(redis_url: str) -> None:
    settings = Settings(redis_url=redis_url)
    verdict: list[str | None] = [None]
    probes = Probes(in_flight=lambda: 0, fetches=lambda: 0, redis_full=lambda: verdict[0])
    monitor = Monitor(settings, "w", WorkerMetrics(), probes)
    try:
        assert (await monitor.health()).ok
        verdict[0] = "Redis is full (30.0 MiB/30.0 MiB used, maxmemory reached)"
        health = await monitor.health()
        assert not health.ok and health.problems == (verdict[0],)
    finally:
        await monitor.close()
