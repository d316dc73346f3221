"""Shared fixtures: a private redis-server, local HTTP targets, worker processes (from tests/support)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.fetch_target import FetchTarget
from tests.support.http_target import HttpTarget
from tests.support.procs import WORKER, WorkerProcess, fetchfleet_env
from tests.support.redisserver import RedisProcess

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


@pytest.fixture(scope="module")
def target() -> Iterator[FetchTarget]:
    """The misbehaving-server target of the fetcher tests, one per module: its counters (hits,
    connections, arrivals) then speak of that module's tests only."""
    t = FetchTarget().start()
    yield t
    t.stop()


@pytest.fixture
def spawn_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def spawn(
        redis_url: str, command: tuple[str, ...] = WORKER, **settings: str | int | bool
    ) -> WorkerProcess:
        settings.setdefault("allow_private_networks", True)
        env = fetchfleet_env(redis_url, **settings)
        w = WorkerProcess(env, tmp_path / f"worker-{len(started)}.log", command)
        started.append(w)
        return w

    yield spawn
    for w in started:
        w.stop()


# A fast test gets pyproject's 60 s; a test that starts processes gets this unless it names its own
# (`@pytest.mark.timeout(N)`): on a loaded 2-core CI machine, a worker start, a moto server or a SIGKILL
# take-over can pass a minute without anything being stuck.
SLOW_TEST_TIMEOUT = 180


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("slow") and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(SLOW_TEST_TIMEOUT))
