"""An evicting Redis (maxmemory-policy other than noeviction) stops workers and producers at start."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from tests.chaos import assert_each_index_once, wait_started, write_urls
from tests.support.http_target import HttpTarget
from tests.support.procs import ROOT, fetchfleet_env, run_cli
from tests.support.redisserver import RedisProcess
from worker.errors import UnsafeRedis
from worker.redisconn import check_eviction_policy, maxmemory_policy
from worker.settings import load_settings


@pytest.fixture
def lru_redis() -> Iterator[RedisProcess]:
    server = RedisProcess("--maxmemory-policy", "allkeys-lru").start()
    yield server
    server.close()


@pytest.mark.slow
async def test_policy_read_through_info_when_config_is_renamed() -> None:
    server = RedisProcess("--maxmemory-policy", "volatile-ttl", "--rename-command", "CONFIG", "").start()
    try:
        r = Redis.from_url(server.url)
        try:
            assert await maxmemory_policy(r) == "volatile-ttl"
            settings = load_settings(redis_url=server.url)
            with pytest.raises(UnsafeRedis, match=r"maxmemory-policy volatile-ttl.*ALLOW_EVICTION"):
                await check_eviction_policy(r, settings, logging.getLogger("test"))
        finally:
            await r.aclose()
    finally:
        server.close()


@pytest.mark.slow
def test_worker_and_submit_refuse_an_evicting_redis(
    lru_redis: RedisProcess, http_target: HttpTarget, spawn_worker, tmp_path: Path
) -> None:
    env = fetchfleet_env(lru_redis.url, allow_private_networks=True)
    worker = subprocess.run(
        [sys.executable, "-m", "producer", "worker"], env=env, cwd=ROOT, capture_output=True, timeout=60
    )
    out = worker.stdout.decode() + worker.stderr.decode()
    assert worker.returncode == 1, out
    assert "maxmemory-policy allkeys-lru" in out and "FETCHFLEET_ALLOW_EVICTION" in out, out
    assert "Traceback" not in out, out

    urls = write_urls(tmp_path / "urls.txt", [http_target.url(f"/ok/{i}") for i in range(30)])
    refused = run_cli(["submit", str(urls), "--wait"], env, 60)
    err = refused.stderr.decode()
    assert refused.returncode == 1 and err.count("\n") == 1, err
    assert "maxmemory-policy allkeys-lru" in err and "FETCHFLEET_ALLOW_EVICTION" in err, err
    with lru_redis.client() as r:
        assert r.dbsize() == 0  # refused before anything was written

    # With the override both start (and say the risk they run).
    w = spawn_worker(lru_redis.url, allow_eviction=True)
    wait_started(w)
    assert "maxmemory-policy allkeys-lru" in w.log()
    done = run_cli(
        ["submit", str(urls), "--wait", "-q"], fetchfleet_env(lru_redis.url, allow_eviction=True), 60
    )
    assert done.returncode == 0, done.stderr.decode()
    assert_each_index_once([json.loads(line) for line in done.stdout.decode().splitlines()], 30)
