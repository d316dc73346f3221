"""The ops port under a flood: idle and half-sent connections cannot exhaust a fetching worker."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import redis.asyncio as aredis

from tests.chaos import assert_each_index_once, wait_started, wait_until, write_urls
from tests.support.http_target import HttpTarget
from tests.support.procs import fetchfleet_env, start_cli
from tests.support.raw_target import flood
from tests.support.redisserver import free_port
from worker import opsserver
from worker.metrics import WorkerMetrics
from worker.monitor import Monitor, Probes
from worker.opsserver import MAX_CONNECTIONS, MIN_AGE_TO_DROP
from worker.settings import load_settings

FLOOD = 500


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def healthz(port: int) -> tuple[int, float]:
    started = time.monotonic()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as resp:
            return resp.status, time.monotonic() - started
    except urllib.error.HTTPError as exc:
        return exc.code, time.monotonic() - started
    except (urllib.error.URLError, OSError):  # refused at the cap: 0
        return 0, time.monotonic() - started


@pytest.mark.slow
def test_500_idle_connections_do_not_stop_fetching_or_health(
    redis_url: str, http_target: HttpTarget, spawn_worker, tmp_path: Path
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))  # room for the flood
    port = free_port()
    concurrency = 20
    w = spawn_worker(redis_url, metrics_port=port, concurrency=concurrency, chunk_size=20)
    wait_started(w)
    wait_until(lambda: healthz(port)[0] == 200, 30, "the worker to be healthy")
    # A container-sized descriptor budget: 500 connections held would use up twice what it has.
    resource.prlimit(w.pid, resource.RLIMIT_NOFILE, (256, resource.prlimit(w.pid, resource.RLIMIT_NOFILE)[1]))
    baseline = fd_count(w.pid)

    n = 3000
    urls = write_urls(
        tmp_path / "urls.txt", [http_target.url(f"/ok/{100 + i % 50}?delay_ms=100") for i in range(n)]
    )
    out = tmp_path / "out.jsonl"
    submit = start_cli(
        ["submit", str(urls), "--wait", "-q", "-o", str(out)],
        fetchfleet_env(redis_url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    held: list[socket.socket] = []
    try:
        wait_until(lambda: out.exists() and out.stat().st_size > 0, 30, "the first results")
        started = time.monotonic()
        held = flood(port, FLOOD)
        opened = time.monotonic() - started
        peak = fd_count(w.pid)
        answers, early = [], []
        while submit.poll() is None and time.monotonic() - started < 120:
            peak = max(peak, fd_count(w.pid))
            # For MIN_AGE_TO_DROP after the burst every slot holds a fresh connection, and a probe may
            # be turned away; from then on the oldest held connection makes room for it.
            settled = time.monotonic() - started - opened > MIN_AGE_TO_DROP + 0.5
            (answers if settled else early).append(healthz(port))
            peak = max(peak, fd_count(w.pid))
            time.sleep(0.2)
        _stdout, stderr = submit.communicate(timeout=120)
    finally:
        for s in held:
            s.close()
        if submit.poll() is None:
            submit.kill()
    assert submit.returncode == 0, stderr.decode()
    assert answers, "the batch ended before the flood was in place: make it longer"
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert_each_index_once(results, n)
    bad = [r for r in results if r["status"] != 200 or r["error"] is not None]
    assert not bad, bad[:3]
    slowest = max(t for _, t in answers)
    print(
        f"\n{FLOOD} connections held on the ops port (opened in {opened:.1f}s): "
        f"worker fds {baseline} before, "
        f"peak {peak}; /healthz asked {len(answers)} times once settled, all 200: "
        f"{all(c == 200 for c, _ in answers)}, {sum(c != 200 for c, _ in early)} of {len(early)} "
        "refused before; "
        f"slowest {slowest * 1000:.0f} ms; {n} URLs all fetched"
    )
    assert answers and all(code == 200 for code, _ in answers)
    assert slowest < 3.0
    assert peak <= baseline + concurrency + MAX_CONNECTIONS + 30
    assert w.proc.poll() is None


async def _exchange(port: int, data: bytes, wait: float = 5.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), wait)
    except ConnectionError:  # cut off (or refused at the cap) with a reset
        return b""
    finally:
        writer.close()


@pytest.mark.slow  # waits out a real head timeout
async def test_ops_server_bounds_each_connection(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process: routes, a slow or oversized head is cut off, and 200 concurrent /healthz cost Redis
    at most the monitor's two connections."""
    monkeypatch.setenv("FETCHFLEET_REDIS_URL", redis_url)
    monkeypatch.setattr(opsserver, "HEAD_TIMEOUT", 0.3)
    monitor = Monitor(
        load_settings(), "w-ops", WorkerMetrics(), Probes(in_flight=lambda: 0, fetches=lambda: 0)
    )
    port = free_port()
    server = opsserver.OpsServer(monitor, "127.0.0.1", port)
    await server.start()
    probe = aredis.Redis.from_url(redis_url)
    try:
        assert (await _exchange(port, b"GET /metrics HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 200 OK")
        assert (await _exchange(port, b"HEAD /healthz HTTP/1.1\r\n\r\n")).endswith(b"\r\n\r\n")
        assert (await _exchange(port, b"POST /healthz HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 405")
        assert (await _exchange(port, b"GET /nope HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 404")
        assert (await _exchange(port, b"\xff\xfe garbage\r\n\r\n")).startswith(b"HTTP/1.1 400")
        assert await _exchange(port, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 10_000) == b""  # too long
        started = time.monotonic()
        assert await _exchange(port, b"GET /metrics HTTP/1.1\r\nX: slow") == b""  # never finished
        assert 0.25 < time.monotonic() - started < 2.0
        before = (await probe.info("clients"))["connected_clients"]
        replies = await asyncio.gather(
            *(_exchange(port, b"GET /healthz HTTP/1.1\r\n\r\n") for _ in range(200))
        )
        served = sum(r.startswith(b"HTTP/1.1 200") for r in replies)
        after = (await probe.info("clients"))["connected_clients"]
        print(f"\n200 concurrent /healthz: {served} answered 200, Redis clients {before} -> {after}")
        assert served >= opsserver.MAX_CONNECTIONS and all(
            r == b"" or r.startswith(b"HTTP/1.1 200") for r in replies
        )
        assert after - before <= 2
    finally:
        await server.close()
        await monitor.close()
        await probe.aclose()
