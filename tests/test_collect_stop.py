"""A collector ends once every result is written, even when a helper task loses its cancel.

redis-py (5.3, with the socket timeout every client of ours has) loses some of the cancels that land
inside a command: the call returns as if nothing happened. `submit --wait` stopped its worker watcher
with one cancel and then waited for it, and so, now and then, never exited after writing every result
(tests/test_s3store.py's SIGKILL test hung 1 run in 15 that way).
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
from pathlib import Path

import pytest
from redis.asyncio import Redis

import producer.submitting as submitting
from producer.client import Client
from producer.submitting import collect
from tests.support.procs import ROOT
from worker.background import stop_tasks
from worker.contract import batch_key
from worker.recorder import Recorder
from worker.redisconn import make_redis
from worker.settings import load_settings


async def test_collect_ends_when_the_worker_watcher_loses_its_cancel(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lost: list[str] = []

    async def live_workers_losing_a_cancel(client: Client) -> list[object]:
        """A Redis call that swallows the first cancel landing in it, as redis-py's sometimes do."""
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            if lost:
                raise
            lost.append("lost")
        return []

    monkeypatch.setattr(submitting, "NO_WORKER_AFTER", 0.0)
    monkeypatch.setattr(submitting, "live_workers", live_workers_losing_a_cancel)
    settings = load_settings(redis_url=redis_url)
    async with Client(settings) as client:
        r: Redis = client.redis
        await r.hset(batch_key("b1"), mapping={"submitted": 3, "incarnation": "tok", "complete": 1})
        rec = Recorder(r, ttl=600)
        rec.start()
        try:
            await asyncio.gather(
                *(rec.record("b1", i, False, b'{"index":%d}' % i, incarnation="tok") for i in range(3))
            )
        finally:
            await rec.close()
        out = tmp_path / "out.jsonl"
        summary = await asyncio.wait_for(
            collect(client, "b1", str(out), "jsonl", True, None, watch_workers=True), 10
        )
    assert lost == ["lost"], "the watcher was not inside its Redis call when the collector stopped it"
    assert summary.done == 3 and len(out.read_text().splitlines()) == 3


async def _stop_tasks_in_redis_commands(redis_url: str, trials: int) -> int:
    """Tasks looping over Redis commands on our own client, each stopped by stop_tasks at a random
    moment; returns how many of the first cancels the client lost. AssertionError if a stop hangs."""
    redis = make_redis(load_settings(redis_url=redis_url))
    lost = 0
    try:
        for _ in range(trials):

            async def loop() -> None:
                while True:
                    await redis.zrange("no-such-key", 0, -1)

            task = asyncio.ensure_future(loop())
            await asyncio.sleep(random.random() * 0.002)
            task.cancel()
            await asyncio.wait({task}, timeout=0.05)
            lost += not task.done()
            await asyncio.wait_for(stop_tasks([task]), 5)
            assert task.done()
    finally:
        await redis.aclose()
    return lost


@pytest.mark.slow
def test_stop_tasks_ends_tasks_inside_real_redis_commands(redis_url: str) -> None:
    """Against a real Redis, in a process of its own: a connection whose command lost its cancel is
    left half-closed by redis-py, and its "unclosed" warning would land in whichever test runs next."""
    code = (
        "import asyncio, sys; from tests.test_collect_stop import _stop_tasks_in_redis_commands as t; "
        "print(asyncio.run(t(sys.argv[1], 40)))"
    )
    proc = subprocess.run(
        [sys.executable, "-W", "ignore::ResourceWarning", "-c", code, redis_url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    print(f"{proc.stdout.strip()} of 40 first cancels lost inside a Redis command")
