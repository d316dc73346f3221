"""High availability through Redis Sentinel: the primary killed mid-batch, a replica promoted, none lost."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from producer.children import stop_process
from producer.client import Client
from producer.embedded import free_port
from tests.chaos import SlowTarget, assert_each_index_once, wait_started, wait_until, write_urls
from tests.support.procs import ROOT, fetchfleet_env, run_cli
from tests.support.redisserver import RedisProcess, redis_binary
from worker.contract import batch_key, results_key
from worker.errors import SettingsError
from worker.settings import SentinelTarget, load_settings, parse_sentinel_url

SERVICE = "ffmain"


def test_sentinel_url_forms() -> None:
    assert parse_sentinel_url("redis+sentinel://a:1,b:2,[::1]:3/svc/4") == SentinelTarget(
        (("a", 1), ("b", 2), ("::1", 3)), "svc", 4
    )
    assert parse_sentinel_url("redis+sentinel://u:p@ss@a/svc") == SentinelTarget(
        (("a", 26379),), "svc", 0, "u", "p@ss"
    )
    assert parse_sentinel_url("rediss+sentinel://a:1/svc") == SentinelTarget((("a", 1),), "svc", 0, tls=True)
    for bad in ("redis+sentinel://a:1", "redis+sentinel://a:x/svc", "redis+sentinel://:Pw-secret-1@a:1/"):
        with pytest.raises(SettingsError) as caught:
            load_settings(redis_url=bad)
        assert "FETCHFLEET_REDIS_URL" in str(caught.value) and "Pw-secret" not in str(caught.value)


async def test_a_reader_writes_each_index_once_after_a_failover(redis_url: str) -> None:
    """After a failover a chunk records again what the new primary lost; a reader that had read the
    first copies from the old primary must not write them twice."""
    async with Client(load_settings(redis_url=redis_url)) as client:
        await client.redis.hset(batch_key("fo"), mapping={"complete": 1, "submitted": 3, "done": 3})
        for index in (0, 1, 1, 2, 0):  # 1 and 0 recorded again under new stream ids
            await client.redis.xadd(results_key("fo"), {"r": json.dumps({"index": index}).replace(" ", "")})
        got = [json.loads(doc)["index"] async for _c, doc in client.results("fo")]
        followed = [json.loads(doc)["index"] async for _c, doc in client.results("fo", follow=True)]
    assert got == [0, 1, 2] and followed == [0, 1, 2]


class Sentinel:
    """One `redis-server --sentinel` on a free port, watching SERVICE."""

    def __init__(self, primary_port: int) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="fetchfleet-sentinel-"))
        conf = self.dir / "sentinel.conf"
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndaemonize no\ndir {self.dir}\n"
            f"logfile {self.dir / 'sentinel.log'}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {primary_port} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} 1000\n"
            f"sentinel failover-timeout {SERVICE} 10000\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
        )
        binary = redis_binary()
        assert binary is not None
        self.proc = subprocess.Popen(
            [binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def primary(self) -> tuple[str, int] | None:
        try:
            with self.client() as c:
                addr = c.execute_command("SENTINEL", "get-master-addr-by-name", SERVICE)
        except redis.RedisError:
            return None
        return (addr[0].decode(), int(addr[1])) if addr else None

    def close(self) -> None:
        stop_process(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def sentinel_cluster() -> Iterator[tuple[RedisProcess, RedisProcess, list[Sentinel]]]:
    primary = RedisProcess().start()
    replica = RedisProcess("--replicaof", "127.0.0.1", str(primary.port)).start()
    sentinels: list[Sentinel] = []
    try:
        sentinels = [Sentinel(primary.port) for _ in range(3)]

        def ready() -> bool:
            try:
                with sentinels[0].client() as c:
                    replicas = c.execute_command("SENTINEL", "replicas", SERVICE)
                    c.execute_command("SENTINEL", "ckquorum", SERVICE)
                    others = c.execute_command("SENTINEL", "sentinels", SERVICE)
                return bool(replicas) and len(others) == 2
            except redis.RedisError:
                return False

        wait_until(ready, 60, "the sentinels to see the replica and each other", every=0.5)
        yield primary, replica, sentinels
    finally:
        for s in sentinels:
            s.close()
        replica.close()
        primary.close()


@pytest.mark.slow
@pytest.mark.timeout(240)  # measured 28 s (set-up 5 s, batch 20 s)
def test_primary_killed_mid_batch(sentinel_cluster, spawn_worker, tmp_path: Path) -> None:
    primary, replica, sentinels = sentinel_cluster
    url = f"redis+sentinel://{','.join(f'127.0.0.1:{s.port}' for s in sentinels)}/{SERVICE}/0"
    target = SlowTarget().start()
    submit: subprocess.Popen[bytes] | None = None
    try:
        n = 20_000
        urls = write_urls(tmp_path / "urls.txt", target.slow_urls(n, 50))
        settings = {"concurrency": 50, "chunk_size": 100, "lease_seconds": 5}
        workers = [spawn_worker(url, worker_id=f"s{i}", **settings) for i in range(2)]
        for w in workers:
            wait_started(w)
        env = fetchfleet_env(url, **settings)
        out = tmp_path / "out.jsonl"
        submit = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "producer",
                "submit",
                str(urls),
                "--batch-id",
                "ha",
                "--wait",
                "-q",
                "-o",
                out,
            ],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        with primary.client() as r:
            wait_until(lambda: int(r.hget(batch_key("ha"), "done") or 0) >= n // 4, 120, "a quarter done")
            before = int(r.hget(batch_key("ha"), "done") or 0)
        primary.kill()
        killed = time.monotonic()

        def promoted() -> bool:
            addr = sentinels[0].primary()
            return addr is not None and addr[1] == replica.port

        wait_until(promoted, 60, "the replica to be promoted", every=0.2)
        failover_s = time.monotonic() - killed
        with replica.client() as r:
            start = int(r.hget(batch_key("ha"), "done") or 0)
            wait_until(
                lambda: int(r.hget(batch_key("ha"), "done") or 0) > start, 60, "results on the new primary"
            )
        recovered_s = time.monotonic() - killed
        _o, err = submit.communicate(timeout=240)
        total_s = time.monotonic() - killed
        assert submit.returncode == 0, err.decode()[-3000:]
        results = [json.loads(line) for line in out.read_text().splitlines()]
        assert_each_index_once(results, n)
        with replica.client() as r:
            assert int(r.hget(batch_key("ha"), "done")) == n
        status = run_cli(["status", "ha", "--json"], env, 30)  # no command hangs
        assert status.returncode == 0 and json.loads(status.stdout)["done"] == n, status.stderr
        for w in workers:
            assert w.proc.poll() is None, w.log()[-3000:]
            assert "Traceback" not in w.log(), w.log()[-3000:]
        print(
            f"\nSentinel failover: {before} of {n} done at the kill; replica promoted after "
            f"{failover_s:.1f}s, results flowing again after {recovered_s:.1f}s, "
            f"batch done {total_s:.1f}s after the kill"
        )
    finally:
        if submit is not None and submit.poll() is None:
            submit.kill()
            submit.wait()
        target.stop()
