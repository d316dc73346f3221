"""Connections from settings: a unix socket URL works as a TCP one does, and passwords never print."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.http_target import HttpTarget
from tests.support.procs import fetchfleet_env, run_cli
from tests.support.redisserver import RedisProcess
from worker.redisconn import make_redis, redact
from worker.settings import load_settings


@pytest.mark.slow
async def test_unix_socket_url(tmp_path: Path, http_target: HttpTarget, spawn_worker) -> None:
    sock = tmp_path / "redis.sock"
    server = RedisProcess("--unixsocket", str(sock), "--unixsocketperm", "700").start()
    try:
        url = f"unix://{sock}"
        client = make_redis(load_settings(redis_url=url))
        assert await client.ping()
        await client.aclose(close_connection_pool=True)

        spawn_worker(url)
        urls = tmp_path / "urls.txt"
        urls.write_text("".join(http_target.url(f"/ok/{n}") + "\n" for n in range(1, 11)))
        out = tmp_path / "out.jsonl"
        env = fetchfleet_env(url, allow_private_networks=True)
        proc = run_cli(["submit", str(urls), "--wait", "-q", "-o", str(out)], env, timeout=60)
        assert proc.returncode == 0, proc.stderr.decode()
        assert sorted(json.loads(line)["size"] for line in out.read_text().splitlines()) == list(range(1, 11))
    finally:
        server.close()


def test_redact_hides_the_password() -> None:
    assert redact("redis://:s3cret@host:6379/0") == "redis://***@host:6379/0"
    assert redact("rediss://user:s3cret@host/0") == "rediss://user:***@host/0"
    assert redact("redis://host:6379/0") == "redis://host:6379/0"
