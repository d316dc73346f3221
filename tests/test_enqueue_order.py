"""Chunks wait in the queue in the order they were enqueued, not in the order of their ids as strings."""

from __future__ import annotations

from redis.asyncio import Redis

from producer.client import Client
from worker.contract import chunk_job_id
from worker.enqueue import DueScores
from worker.settings import load_settings


async def test_a_batch_is_queued_in_input_order(redis_url: str) -> None:
    """250 chunks over five round trips, most within one millisecond: the queue (claim.lua takes its
    lowest scores first) holds them as c0, c1, ..., c249; scored alike, they sorted as c0, c1, c10,
    c100, c101, ..., which ran the input's far-apart parts together."""
    settings = load_settings(redis_url=redis_url, chunk_size=10, max_queued_chunks=10_000)
    async with Client(settings) as client:
        batch_id = await client.submit([f"http://h{i % 300}.test/{i}" for i in range(2500)])
    redis = Redis.from_url(redis_url)
    try:
        queued = [m.decode() for m in await redis.zrange(settings.queue_name, 0, -1)]
    finally:
        await redis.aclose()
    assert queued == [chunk_job_id(batch_id, n) for n in range(250)]


def test_due_scores_increase_across_calls_and_keep_deferrals_apart() -> None:
    _due_scores = DueScores()
    first = _due_scores(1_000, 0, 3)
    again = _due_scores(1_000, 0, 2)  # the same millisecond: after the first call's chunks
    assert first == sorted(first) and again[0] > first[-1] and again == sorted(again)
    later = _due_scores(1_000, 5_000, 2)  # a retry due in 5 s: its own due time, in order
    assert later[0] == 6_000 and later[1] > later[0]
    assert _due_scores(1_000, 0, 1)[0] < later[0]  # and it does not push chunks due now into the future
