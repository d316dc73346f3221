"""Submitting again with the same --batch-id adds no work, after a finished or an interrupted submit."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
import redis

from tests.chaos import SlowTarget, assert_each_index_once, wait_started, wait_until, write_urls
from tests.support.procs import fetchfleet_env, run_cli, start_cli
from tests.support.redisserver import RedisProcess
from worker.contract import batch_key, results_key

pytestmark = pytest.mark.slow  # every test here starts processes

QUEUE = "fetchfleet:queue"


def test_same_batch_id_twice_adds_nothing(
    redis_url: str, redis_server: RedisProcess, spawn_worker, tmp_path: Path
) -> None:
    target = SlowTarget().start()
    try:
        n = 500
        urls = write_urls(tmp_path / "urls.txt", target.slow_urls(n, 1))
        env = fetchfleet_env(redis_url, chunk_size=50)
        first = run_cli(["submit", str(urls), "--batch-id", "same"], env)
        assert first.returncode == 0, first.stderr.decode()
        with redis_server.client() as r:
            queued = r.zcard(QUEUE)
            keys = sorted(r.keys("*"))
            assert queued == n // 50
            second = run_cli(["submit", str(urls), "--batch-id", "same"], env)
            assert second.returncode == 0, second.stderr.decode()
            assert second.stdout == first.stdout == b"same\n"
            assert r.zcard(QUEUE) == queued and sorted(r.keys("*")) == keys

        spawn_worker(redis_url, chunk_size=50, concurrency=50)
        waited = run_cli(["submit", str(urls), "--batch-id", "same", "--wait", "-q"], env, timeout=60)
        assert waited.returncode == 0, waited.stderr.decode()
        assert_each_index_once([json.loads(line) for line in waited.stdout.decode().splitlines()], n)
        assert len(target.hits) == n and set(target.hits.values()) == {1}

        other = write_urls(tmp_path / "other.txt", target.slow_urls(3, 1, tag="other"))
        clash = run_cli(["submit", str(other), "--batch-id", "same"], env)
        assert clash.returncode == 1
        assert b"different input" in clash.stderr
    finally:
        target.stop()


def test_interrupted_submit_resumes_without_duplicates(
    redis_url: str, redis_server: RedisProcess, spawn_worker, tmp_path: Path
) -> None:
    target = SlowTarget().start()
    try:
        n = 300
        urls = write_urls(tmp_path / "urls.txt", target.slow_urls(n, 1))
        # A queue of 3 chunks and no worker: the submit stops partway, waiting for room; kill it there.
        env = fetchfleet_env(redis_url, chunk_size=10, max_queued_chunks=3)
        submit = start_cli(
            ["submit", str(urls), "--batch-id", "resume"],
            env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        with redis_server.client() as r:
            wait_until(lambda: r.hget(batch_key("resume"), "enqueued") == b"30", 20, "a partial submit")
            submit.send_signal(signal.SIGKILL)
            submit.wait(10)
            assert r.hget(batch_key("resume"), "complete") == b"0"

        w = spawn_worker(redis_url, chunk_size=10, concurrency=20)
        wait_started(w)
        again = run_cli(["submit", str(urls), "--batch-id", "resume", "--wait", "-q"], env, timeout=90)
        assert again.returncode == 0, again.stderr.decode()
        assert_each_index_once([json.loads(line) for line in again.stdout.decode().splitlines()], n)
        assert len(target.hits) == n and set(target.hits.values()) == {1}
    finally:
        target.stop()


def test_a_follower_of_a_cut_short_submit_says_how_to_finish_it(redis_url: str, tmp_path: Path) -> None:
    """A submit killed while queueing leaves a batch that never completes: `results --follow` waited for
    ever without a word (observed: still silent after 120 s, when the test that ran it gave up)."""
    with redis.Redis.from_url(redis_url) as r:
        r.hset(batch_key("cut"), mapping={"complete": 0, "enqueued": 10, "done": 10, "incarnation": "x"})
        for i in range(10):
            r.xadd(results_key("cut"), {"r": json.dumps({"index": i, "url": f"http://h/{i}"}).encode()})
        err = tmp_path / "err.txt"
        with err.open("wb") as stderr:
            command = ["results", "cut", "--follow", "-q", "-o", str(tmp_path / "out.jsonl")]
            follower = start_cli(command, fetchfleet_env(redis_url), stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            wait_until(lambda: "only partly queued" in err.read_text(), 20, "the follower to say so")
            r.hset(batch_key("cut"), mapping={"complete": 1, "submitted": 10})  # the submit run again
            assert follower.wait(15) == 0
        finally:
            if follower.poll() is None:
                follower.kill()
                follower.wait(10)
    notice = err.read_text()
    print(notice)
    assert "batch cut is only partly queued (10 URLs)" in notice and "--batch-id cut" in notice, notice
    assert notice.count("\n") == 1, notice
