"""A worker's components open in order and close in reverse, once, on every way out (worker/lifecycle.py).

In-process against the private Redis: the hooks both worker commands run (arq's on_startup and
on_shutdown) with every component a real one (aiohttp session, WARC store, ops port, loops).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import warnings
from pathlib import Path
from typing import Any

import pytest

from tests.chaos import wait_started
from tests.support.procs import WorkerProcess, fetchfleet_env
from tests.support.redisserver import RedisProcess, free_port
from worker.contract import WORKERS_KEY
from worker.engine import arq_pool, run_worker
from worker.errors import SettingsError, UnsafeRedis
from worker.lifecycle import WorkerCtx, WorkerHooks
from worker.settings import Settings, load_settings


def component_tasks() -> set[str]:
    """The names of the background loops of worker components still running in this loop."""
    return {t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("fetchfleet-")}


def settings_for(redis_url: str, tmp_path: Path, **extra: Any) -> Settings:
    # Every optional component on: body store, robots.txt, per-host limit, adaptive backoff, ops port.
    return load_settings(
        redis_url=redis_url,
        worker_id="lifecycle-test",
        body_store=(tmp_path / "bodies").as_uri(),
        robots="obey",
        per_host_concurrency=2,
        adaptive_throttle=True,
        **extra,
    )


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def record_loop_errors() -> list[dict[str, Any]]:
    """What the loop's exception handler gets from here on (aiohttp reports an unclosed session there)."""
    seen: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, context: seen.append(context))
    return seen


def unclosed_after_gc(loop_errors: list[dict[str, Any]]) -> list[str]:
    """Every "Unclosed ..." a collection brings out, as warning or as loop error."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
    said = [str(w.message) for w in caught] + [str(c.get("message")) for c in loop_errors]
    return [s for s in said if "nclosed" in s]


async def test_a_start_up_failing_half_way_closes_what_it_opened(redis_url: str, tmp_path: Path) -> None:
    errors = record_loop_errors()
    with socket.socket() as taken:  # the metrics port, taken: the ops server is the last to start
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = settings_for(redis_url, tmp_path, metrics_port=taken.getsockname()[1])
        pool = arq_pool(settings)
        ctx: WorkerCtx = {"redis": pool}
        hooks = WorkerHooks(settings)
        before = component_tasks()
        with pytest.raises(SettingsError, match="FETCHFLEET_METRICS_PORT"):
            await hooks.on_startup(ctx)
    try:
        # The heartbeat had started (the monitor opens before the port) and was taken back.
        assert await pool.zscore(WORKERS_KEY, "lifecycle-test") is None
        assert component_tasks() - before == set()
        assert (tmp_path / "bodies").is_dir()  # the body store was opened before the failure
        assert not {"components", "runtime", "leases"} & set(ctx)
        await hooks.on_shutdown(ctx)  # arq's close() after a failed start: nothing left to close
    finally:
        await pool.aclose(close_connection_pool=True)
    assert unclosed_after_gc(errors) == []


async def test_components_close_in_reverse_once(redis_url: str, tmp_path: Path) -> None:
    errors = record_loop_errors()
    port = free_port()
    settings = settings_for(redis_url, tmp_path, metrics_port=port)
    pool = arq_pool(settings)
    ctx: WorkerCtx = {"redis": pool}
    hooks = WorkerHooks(settings)
    before = component_tasks()
    try:
        await hooks.on_startup(ctx)
        rt = ctx["runtime"]
        session = rt.fetcher.session
        assert port_open(port)
        assert {"fetchfleet-leases", "fetchfleet-cancel-watch", "fetchfleet-monitor"} <= component_tasks()
        await hooks.on_startup(ctx)  # the poll loop restarted: what runs is kept, nothing opened twice
        assert ctx["runtime"] is rt
        await hooks.on_shutdown(ctx)
        assert not port_open(port)
        assert session.closed
        assert component_tasks() - before == set()
        assert await pool.zscore(WORKERS_KEY, "lifecycle-test") is None
        await hooks.on_shutdown(ctx)  # run_worker's stack calls it again after arq's close: no-op
    finally:
        await pool.aclose(close_connection_pool=True)
    assert unclosed_after_gc(errors) == []


async def test_an_evicting_redis_stops_the_start_before_anything_opens(
    redis_url: str, tmp_path: Path
) -> None:
    settings = settings_for(redis_url, tmp_path, metrics_port=free_port())
    pool = arq_pool(settings)
    ctx: WorkerCtx = {"redis": pool}
    before = component_tasks()
    await pool.config_set("maxmemory-policy", "allkeys-lru")
    try:
        with pytest.raises(UnsafeRedis):
            await WorkerHooks(settings).on_startup(ctx)
        assert component_tasks() - before == set()
        assert not (tmp_path / "bodies").exists()
        assert not port_open(settings.metrics_port or 0)
    finally:
        await pool.config_set("maxmemory-policy", "noeviction")
        await pool.aclose(close_connection_pool=True)


@pytest.mark.slow
def test_fetchfleet_worker_becomes_the_worker_process(redis_url: str, tmp_path: Path) -> None:
    """`fetchfleet worker` hands its process to the worker's entry point (the producer CLI never
    imports the worker runner): same pid, so a SIGTERM sent to it drains the worker and exits 0."""
    env = fetchfleet_env(redis_url, worker_id="via-cli")
    w = WorkerProcess(env, tmp_path / "w.log", ("-m", "producer", "worker"))
    try:
        wait_started(w)
        cmdline = Path(f"/proc/{w.pid}/cmdline").read_bytes().split(b"\0")
        assert cmdline[-3:-1] == [b"-m", b"worker"], cmdline
        w.signal(signal.SIGTERM)
        assert w.proc.wait(30) == 0, w.log()
        assert "worker via-cli stopped" in w.log()
    finally:
        w.stop()


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_components_close_when_arqs_close_fails(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis gone at the stop: arq's close() fails at its first Redis call and never reaches its
    on_shutdown; run_worker's stack closes the components and the pool all the same, once."""
    caplog.set_level(logging.INFO, logger="fetchfleet")
    errors = record_loop_errors()
    server = RedisProcess().start()
    port = free_port()
    try:
        settings = settings_for(server.url, tmp_path, metrics_port=port)
        before = component_tasks()
        run = asyncio.create_task(run_worker(settings))
        for _ in range(300):  # the ops port is the last component to open
            if port_open(port) or run.done():
                break
            await asyncio.sleep(0.05)
        assert port_open(port), run
        server.kill()
        await asyncio.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)  # to run_worker's own handler (Stopper)
        assert await asyncio.wait_for(run, 60) == signal.SIGTERM
    finally:
        server.kill()
    assert "while stopping" in caplog.text  # arq's close() did fail
    assert "worker lifecycle-test stopped" in caplog.text  # and the components were closed anyway
    assert not port_open(port)
    assert component_tasks() - before == set()
    assert unclosed_after_gc(errors) == []
