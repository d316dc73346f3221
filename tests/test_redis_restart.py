"""Redis killed and restarted mid-batch (append-only, or from an older RDB): workers and followers go on."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos import SlowTarget, assert_each_index_once, wait_started, wait_until, write_urls
from tests.support.procs import fetchfleet_env, run_cli, start_cli
from tests.support.redisserver import RedisProcess
from worker.contract import batch_key

pytestmark = pytest.mark.slow  # every test here starts processes

DOWN_S = 8


@pytest.fixture
def aof_redis() -> Iterator[RedisProcess]:
    server = RedisProcess(appendonly=True).start()
    yield server
    server.close()


@pytest.mark.timeout(180)  # measured 28 s
def test_redis_killed_and_restarted_mid_batch(aof_redis: RedisProcess, spawn_worker, tmp_path: Path) -> None:
    target = SlowTarget().start()
    try:
        n = 3000
        urls = write_urls(tmp_path / "urls.txt", target.slow_urls(n, 100))
        settings = {"concurrency": 20, "chunk_size": 50}
        workers = [spawn_worker(aof_redis.url, worker_id=f"w{i}", **settings) for i in range(2)]
        # A worker idle on another queue polls Redis all the time: its poll loop dies with the server.
        idle = spawn_worker(aof_redis.url, worker_id="idle", queue_name="ff:other", **settings)
        for w in [*workers, idle]:
            wait_started(w)
        # Two readers follow one batch: each must see every result, so neither deletes what it read.
        env = fetchfleet_env(aof_redis.url, result_retention="ttl", **settings)
        out = tmp_path / "out.jsonl"
        submit = start_cli(["submit", str(urls), "--batch-id", "restart", "--wait", "-o", str(out)], env)
        follow = None
        try:
            with aof_redis.client() as r:
                wait_until(lambda: r.exists(batch_key("restart")), 20, "the batch")
                follow = start_cli(["results", "restart", "--follow", "-q"], env)
                wait_until(lambda: int(r.hget(batch_key("restart"), "done") or 0) >= 600, 60, "some results")
            aof_redis.kill()
            killed = time.monotonic()
            # Longer than redis-py's own reconnect attempts: arq's poll loop dies and must be restarted.
            time.sleep(DOWN_S)
            aof_redis.start()
            _out, err = submit.communicate(timeout=120)
            follow_out, follow_err = follow.communicate(timeout=30)
        finally:
            for p in (submit, follow):
                if p is not None and p.poll() is None:
                    p.kill()
        took = time.monotonic() - killed
        assert submit.returncode == 0, err.decode()
        assert follow.returncode == 0, follow_err.decode()
        assert b"Traceback" not in err and b"Traceback" not in follow_err

        waited = [json.loads(line) for line in out.read_text().splitlines()]
        followed = [json.loads(line) for line in follow_out.decode().splitlines()]
        assert_each_index_once(waited, n)
        assert_each_index_once(followed, n)
        for w in [*workers, idle]:
            assert w.proc.poll() is None, w.log()
            assert "Traceback" not in w.log(), w.log()[-3000:]
        log = idle.log()
        assert log.count("cannot reach Redis") == 1, log[-3000:]
        assert "answers again" in log, log[-3000:]
        # Its poll loop was restarted with its accounting repaired: it still takes and runs work.
        other_env = fetchfleet_env(aof_redis.url, queue_name="ff:other", **settings)
        small = write_urls(tmp_path / "small.txt", target.slow_urls(200, 10, tag="after"))
        again = run_cli(["submit", str(small), "--wait", "-q"], other_env, timeout=60)
        assert again.returncode == 0, again.stderr.decode() + log
        after = [json.loads(line) for line in again.stdout.decode().splitlines()]
        assert_each_index_once(after, 200)
        assert {r["worker"] for r in after} == {"idle"}
        print(f"\nRedis restart: batch finished {took:.1f}s after the kill ({DOWN_S} s down)")
    finally:
        target.stop()


@pytest.mark.timeout(180)
def test_redis_restarted_from_an_older_snapshot_mid_batch(spawn_worker, tmp_path: Path) -> None:
    """Restarted from an RDB taken a little earlier, Redis forgot results of chunks that were still
    running on living workers; those chunks ended and left the queue, and --wait waited for ever
    (done stuck at 4,946 of 5,000, queue empty). Each chunk now checks its results before it ends."""
    server = RedisProcess().start()
    target = SlowTarget().start()
    try:
        n = 3000
        urls = write_urls(tmp_path / "urls.txt", target.slow_urls(n, 100))
        settings = {"concurrency": 20, "chunk_size": 50}
        for w in [spawn_worker(server.url, worker_id=f"w{i}", **settings) for i in range(2)]:
            wait_started(w)
        out = tmp_path / "out.jsonl"
        env = fetchfleet_env(server.url, **settings)
        submit = start_cli(["submit", str(urls), "--batch-id", "rdb", "--wait", "-q", "-o", str(out)], env)
        try:
            with server.client() as r:
                wait_until(lambda: int(r.hget(batch_key("rdb"), "done") or 0) >= 400, 60, "some results")
                r.save()
                saved = int(r.hget(batch_key("rdb"), "done") or 0)
                wait_until(lambda: int(r.hget(batch_key("rdb"), "done") or 0) >= saved + 400, 60, "more")
            server.kill()
            server.start()  # from the snapshot: the last 400 or so results are gone from Redis
            killed = time.monotonic()
            _out, err = submit.communicate(timeout=60)
        finally:
            if submit.poll() is None:
                submit.kill()
                submit.wait(10)
        took = time.monotonic() - killed
        assert submit.returncode == 0, err.decode()
        assert_each_index_once([json.loads(line) for line in out.read_text().splitlines()], n)
        with server.client() as r:
            assert int(r.hget(batch_key("rdb"), "done") or 0) == n
        print(f"\nrestarted from a snapshot taken at {saved} results: batch finished {took:.1f}s after")
    finally:
        target.stop()
        server.close()


def test_redis_down_at_start(spawn_worker, http_target, tmp_path: Path) -> None:
    server = RedisProcess()  # a port, not started yet
    try:
        w = spawn_worker(server.url, worker_id="early")
        wait_until(lambda: "cannot reach Redis" in w.log(), 30, "the worker to report Redis down")
        time.sleep(4)  # several more reconnect attempts, none of them logged again
        assert w.proc.poll() is None, w.log()
        log = w.log()
        assert log.count("cannot reach Redis") == 1, log
        assert "Traceback" not in log, log

        env = fetchfleet_env(server.url)
        refused = run_cli(["status", "nope"], env, timeout=60)
        assert refused.returncode == 1
        assert b"Traceback" not in refused.stderr
        assert refused.stderr.decode().count("\n") == 1, refused.stderr.decode()

        server.start()
        urls = write_urls(tmp_path / "urls.txt", [http_target.url(f"/ok/{i}") for i in range(100)])
        done = run_cli(["submit", str(urls), "--wait", "-q"], env, timeout=60)
        assert done.returncode == 0, done.stderr.decode() + w.log()
        assert_each_index_once([json.loads(line) for line in done.stdout.decode().splitlines()], 100)
        assert "answers again" in w.log()
    finally:
        server.close()
