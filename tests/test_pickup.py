"""Instant, silent pickup: an idle worker blocks on the wake list, claims as soon as a chunk is queued,
and costs Redis a few commands a second instead of a poll every FETCHFLEET_POLL_DELAY."""

from __future__ import annotations

import asyncio
import statistics
import time

import pytest
import redis.asyncio as aredis

from producer.client import Client
from tests.chaos import wait_started
from tests.support.http_target import HttpTarget
from worker.settings import load_settings


async def commands_per_second(url: str, seconds: float) -> float:
    """Redis commands per second (INFO commandstats), the measurement's own INFO calls left out."""
    async with aredis.Redis.from_url(url) as r:

        async def calls() -> int:
            stats = await r.info("commandstats")
            return sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")

        before, started = await calls(), time.monotonic()
        await asyncio.sleep(seconds)
        return (await calls() - before) / (time.monotonic() - started)


@pytest.mark.slow
@pytest.mark.timeout(120)  # measured 10 s
async def test_an_idle_worker_sends_a_few_commands_a_second(redis_url: str, spawn_worker) -> None:
    w = spawn_worker(redis_url)  # FETCHFLEET_POLL_DELAY 0.01: polling would send ~100 a second
    wait_started(w)
    await asyncio.sleep(1.5)  # start-up traffic over
    rate = await commands_per_second(redis_url, 4.0)
    print(f"idle worker: {rate:.1f} Redis commands/s")
    # The wait (a due-time check, BLPOP, arq's poll) once a second, heartbeats every 2 s: ~5.5/s.
    assert rate <= 10, rate


@pytest.mark.slow
@pytest.mark.timeout(120)  # measured 20 s
async def test_a_chunk_is_claimed_as_soon_as_it_is_queued(
    redis_url: str, spawn_worker, http_target: HttpTarget
) -> None:
    # A poll every 2 s would make a one-URL batch wait a second on average; the wake list does not.
    w = spawn_worker(redis_url, poll_delay=2)
    wait_started(w)
    await asyncio.sleep(2.5)
    took = []
    async with Client(load_settings(redis_url=redis_url)) as client:
        for i in range(5):
            started = time.perf_counter()
            batch_id = await client.submit([http_target.url(f"/ok/{i}")])
            gen = client.results(batch_id, follow=True)
            async for _cursor, _doc in gen:
                break
            await gen.aclose()
            took.append((time.perf_counter() - started) * 1000)
            # Idle again: arq finishes the chunk after its result is written, and while a chunk runs
            # the worker polls every poll_delay as before; once idle it blocks on the wake list.
            await asyncio.sleep(2.5)
    print(f"one URL, submit to result: p50 {statistics.median(took):.1f} ms, max {max(took):.1f} ms")
    assert statistics.median(took) < 200, took
