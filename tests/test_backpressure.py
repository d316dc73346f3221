"""Backpressure: `submit` of a large input keeps at most FETCHFLEET_MAX_QUEUED_CHUNKS chunks queued."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.chaos import SlowTarget, wait_started, wait_until, write_urls
from tests.support.procs import fetchfleet_env, run_cli, start_cli
from tests.support.redisserver import RedisProcess
from worker.contract import batch_key

pytestmark = pytest.mark.slow  # every test here starts processes

QUEUE = "fetchfleet:queue"
LIMIT = 5


def test_queue_stays_bounded(
    redis_url: str, redis_server: RedisProcess, spawn_worker, tmp_path: Path
) -> None:
    target = SlowTarget().start()
    samples: list[tuple[int, int]] = []  # (queue depth, used_memory)
    stop = threading.Event()

    def sample() -> None:
        with redis_server.client() as r:
            while not stop.is_set():
                samples.append((r.zcard(QUEUE), int(r.info("memory")["used_memory"])))
                time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    submit: subprocess.Popen[bytes] | None = None
    try:
        n = 5000
        urls = write_urls(tmp_path / "urls.txt", target.slow_urls(n, 1))
        env = fetchfleet_env(redis_url, chunk_size=20, max_queued_chunks=LIMIT)
        sampler.start()
        submit = start_cli(
            ["submit", str(urls), "--batch-id", "big"],
            env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        # No worker yet: the producer fills the queue to the limit and waits.
        with redis_server.client() as r:
            wait_until(lambda: r.zcard(QUEUE) == LIMIT, 20, "a full queue")
            time.sleep(1.5)
            assert submit.poll() is None, "submit returned while its input could not be queued"
            assert r.zcard(QUEUE) == LIMIT
            assert int(r.hget(batch_key("big"), "enqueued")) == LIMIT * 20
        w = spawn_worker(redis_url, chunk_size=20, concurrency=40)
        wait_started(w)
        _out, err = submit.communicate(timeout=120)
        assert submit.returncode == 0, err.decode()
        done = run_cli(["results", "big", "--follow", "-q"], env, timeout=120)
        assert done.returncode == 0
        assert len(done.stdout.splitlines()) == n
    finally:
        if submit is not None and submit.poll() is None:
            submit.kill()
            submit.communicate()
        stop.set()
        sampler.join(5)
        target.stop()
    deepest = max(d for d, _m in samples)
    grew = (max(m for _d, m in samples) - samples[0][1]) / 1024
    print(
        f"\nbackpressure: {len(samples)} samples, deepest queue {deepest} chunks (limit {LIMIT}), "
        f"Redis used_memory peak +{grew:.0f} KiB for {n} URLs (results included)"
    )
    assert deepest <= LIMIT
    assert len(samples) > 100
