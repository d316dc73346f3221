"""SIGTERM drains: no new chunks, fetches in flight finish, unstarted URLs go back, exit 0, nothing twice."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos import (
    SlowTarget,
    assert_each_index_once,
    stream_results,
    wait_started,
    wait_until,
    write_urls,
)
from tests.support.procs import fetchfleet_env, run_cli
from tests.support.redisserver import RedisProcess
from worker.contract import batch_key

pytestmark = pytest.mark.slow  # every test here starts processes


@pytest.fixture
def slow_target() -> Iterator[SlowTarget]:
    target = SlowTarget().start()
    yield target
    target.stop()


def test_sigterm_hands_back_and_fetches_nothing_twice(
    redis_url: str, redis_server: RedisProcess, slow_target: SlowTarget, spawn_worker, tmp_path: Path
) -> None:
    n = 400
    urls = write_urls(tmp_path / "urls.txt", slow_target.slow_urls(n, 300))
    # The leaving worker holds two chunks of 20 with only 10 slots: some URLs it holds never started.
    leaving = spawn_worker(redis_url, worker_id="leaving", concurrency=10, chunk_size=20, drain_grace=20)
    wait_started(leaving)
    env = fetchfleet_env(redis_url, chunk_size=20, result_retention="ttl")  # the stream is read again below
    proc = run_cli(["submit", str(urls), "--batch-id", "drain"], env)
    assert proc.returncode == 0, proc.stderr.decode()
    staying = spawn_worker(redis_url, worker_id="staying", concurrency=20, chunk_size=20)
    wait_started(staying)
    with redis_server.client() as r:
        wait_until(lambda: int(r.hget(batch_key("drain"), "done") or 0) >= 60, 30, "some results")
    in_flight_before = sum(slow_target.hits.values())
    leaving.signal(signal.SIGTERM)
    t0 = time.monotonic()
    code = leaving.proc.wait(25)
    stopped_in = time.monotonic() - t0
    assert code == 0, leaving.log()
    # It waited for fetches of 0.3 s, not for its whole chunks nor the grace period.
    assert stopped_in < 10, stopped_in
    log = leaving.log()
    assert "handed back" in log, log
    assert "Traceback" not in log

    done = run_cli(["results", "drain", "--follow", "-q"], env, timeout=90)
    assert done.returncode == 0, done.stderr.decode()
    with redis_server.client() as r:
        results = [res for _ms, res in stream_results(r, "drain")]
    assert_each_index_once(results, n)
    assert all(res["status"] == 200 for res in results)
    assert set(slow_target.hits.values()) == {1}, "a URL was fetched twice after a graceful stop"
    assert len(slow_target.hits) == n
    by_leaving = sum(res["worker"] == "leaving" for res in results)
    assert 0 < by_leaving < n and in_flight_before > 0
    print(f"\nSIGTERM: exited 0 in {stopped_in:.2f}s; it recorded {by_leaving} of {n}, handed back the rest")


def test_sigterm_grace_runs_out(
    redis_url: str, redis_server: RedisProcess, slow_target: SlowTarget, spawn_worker, tmp_path: Path
) -> None:
    """Fetches longer than the grace period are cancelled; the chunk runs again elsewhere, once each."""
    n = 10
    urls = write_urls(tmp_path / "urls.txt", slow_target.slow_urls(n, 4000, tag="long"))
    leaving = spawn_worker(redis_url, worker_id="leaving", concurrency=10, chunk_size=10, drain_grace=1)
    wait_started(leaving)
    env = fetchfleet_env(redis_url, chunk_size=10, result_retention="ttl")  # the stream is read again below
    assert run_cli(["submit", str(urls), "--batch-id", "grace"], env).returncode == 0
    wait_until(lambda: sum(slow_target.hits.values()) == n, 15, "all fetches started")
    leaving.signal(signal.SIGTERM)
    t0 = time.monotonic()
    assert leaving.proc.wait(15) == 0, leaving.log()
    assert 0.8 < time.monotonic() - t0 < 6
    assert "grace period over" in leaving.log()

    spawn_worker(redis_url, worker_id="next", concurrency=10, chunk_size=10)
    done = run_cli(["results", "grace", "--follow", "-q"], env, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    with redis_server.client() as r:
        results = [res for _ms, res in stream_results(r, "grace")]
    assert_each_index_once(results, n)
    assert {res["worker"] for res in results} == {"next"}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_signal_right_after_start_up_always_ends_the_worker(
    redis_url: str, spawn_worker, sig: signal.Signals
) -> None:
    """A stop signal in the first moments of the poll loop: one cancel of arq's loop was sometimes
    swallowed there and the worker ran on, idle, for ever (CI saw it; 22 of 40 Ctrl-Cs by hand)."""
    expected = 130 if sig == signal.SIGINT else 0
    workers = [spawn_worker(redis_url) for _ in range(6)]
    for i, worker in enumerate(workers):
        wait_until(lambda w=worker: "started:" in w.log(), 60, "worker start-up", every=0.002)
        time.sleep(0.01 * i)  # 0 to 50 ms into the poll loop
        worker.signal(sig)
    for worker in workers:
        assert worker.proc.wait(20) == expected, worker.log()[-2000:]
