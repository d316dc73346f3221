"""Shared fixtures: a private redis-server, a local HTTP target, and worker processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.http_target import HttpTarget
from tests.procs import WorkerProcess, fetchfleet_env
from tests.redis_proc import RedisProcess

pytest_plugins = ["tests.tiers"]  # an unmarked test that starts a process fails (the fast tier's guard)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisProcess]:
    server = RedisProcess().start()
    yield server
    server.close()


@pytest.fixture
def redis_url(redis_server: RedisProcess) -> str:
    """A clean database on the private server (never the machine's own Redis)."""
    with redis_server.client() as c:
        c.flushall()
    return redis_server.url


@pytest.fixture(scope="session")
def http_target() -> Iterator[HttpTarget]:
    target = HttpTarget().start()
    yield target
    target.stop()


@pytest.fixture
def spawn_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def spawn(redis_url: str, **settings: str | int | bool) -> WorkerProcess:
        settings.setdefault("allow_private_networks", True)
        env = fetchfleet_env(redis_url, **settings)
        w = WorkerProcess(env, tmp_path / f"worker-{len(started)}.log")
        started.append(w)
        return w

    yield spawn
    for w in started:
        w.stop()
