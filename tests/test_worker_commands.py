"""`fetchfleet worker` and `arq worker.WorkerSettings` on the same batch: claim, SIGTERM drain, exactly once.

arq 0.28's command line always builds arq's own `Worker` (`arq.worker.create_worker`: `Worker(**kwargs)`,
no worker class can be named); its `on_startup` runs the runner `fetchfleet worker` runs (worker/main.py),
so both commands claim through claim.lua, hand unstarted URLs back on SIGTERM, and record each index
exactly once. All of it is asserted for both, alike.
"""

from __future__ import annotations

import hashlib
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.chaos import SlowTarget, assert_each_index_once, stream_results, wait_until, write_urls
from tests.support.procs import ARQ_WORKER, WORKER, WorkerProcess, fetchfleet_env, run_cli
from tests.support.redisserver import RedisProcess
from worker.arqseam import CLAIM_LUA
from worker.contract import batch_key

pytestmark = pytest.mark.slow  # every test here starts processes

COMMANDS = {"fetchfleet": WORKER, "arq": ARQ_WORKER}


@pytest.fixture
def slow_target() -> Iterator[SlowTarget]:
    target = SlowTarget().start()
    yield target
    target.stop()


CLAIM_SHA = hashlib.sha1(CLAIM_LUA.encode()).hexdigest()


def claim_script_ran(r: redis.Redis) -> bool:
    """Was worker/claim.lua run on this server since its scripts were flushed? (redis-py's Script runs
    EVALSHA and loads the script on NOSCRIPT, so a claim made through it leaves it loaded.)"""
    return bool(r.script_exists(CLAIM_SHA)[0])


@pytest.mark.parametrize("command", list(COMMANDS))
def test_same_batch_under_both_worker_commands(
    command: str, redis_url: str, redis_server: RedisProcess, slow_target: SlowTarget, tmp_path: Path
) -> None:
    n, batch = 200, f"both-{command}"
    urls = write_urls(tmp_path / "urls.txt", slow_target.slow_urls(n, 300, tag=command))
    env = fetchfleet_env(
        redis_url,
        allow_private_networks=True,
        worker_id=f"leaving-{command}",
        concurrency=10,
        chunk_size=20,
        drain_grace=20,
        result_retention="ttl",
    )
    procs: list[WorkerProcess] = []
    try:
        with redis_server.client() as r:
            r.script_flush()
            leaving = WorkerProcess(env, tmp_path / "leaving.log", COMMANDS[command])
            procs.append(leaving)
            time.sleep(2)  # started: under `arq` its log shows nothing of ours before the first chunk
            assert leaving.proc.poll() is None, leaving.log()
            proc = run_cli(["submit", str(urls), "--batch-id", batch], env)
            assert proc.returncode == 0, proc.stderr.decode()
            wait_until(lambda: int(r.hget(batch_key(batch), "done") or 0) >= 40, 30, "some results")
            claims = claim_script_ran(r)
            leaving.signal(signal.SIGTERM)
            t0 = time.monotonic()
            code = leaving.proc.wait(30)
            stopped_in = time.monotonic() - t0
            done_by_leaving = int(r.hget(batch_key(batch), "done") or 0)
            staying_env = {**env, "FETCHFLEET_WORKER_ID": "staying", "FETCHFLEET_CONCURRENCY": "50"}
            staying = WorkerProcess(staying_env, tmp_path / "staying.log")
            procs.append(staying)
            done = run_cli(["results", batch, "--follow", "-q"], env, timeout=90)
            assert done.returncode == 0, done.stderr.decode()
            results = [res for _ms, res in stream_results(r, batch)]
        log = leaving.log()
        assert code == 0, log
        assert "Traceback" not in log, log
        assert_each_index_once(results, n)
        assert set(slow_target.hits.values()) == {1}, "a URL was fetched twice after a graceful stop"
        handed_back = "handed back" in log
        print(
            f"\n{command}: claim.lua used: {claims}; SIGTERM -> exit {code} in "
            f"{stopped_in:.2f}s; {done_by_leaving} of {n} recorded by it; handed back: {handed_back}; "
            f"each of {n} indexes once"
        )
        assert claims  # the claims went through claim.lua
        assert handed_back and stopped_in < 10, (stopped_in, log)
    finally:
        for w in procs:
            w.stop()
        sys.stdout.flush()
