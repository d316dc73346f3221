"""Worker /metrics and /healthz: real worker processes, a real Redis that the tests stop and restart."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.compose_local import ROOT
from tests.support.http_target import HttpTarget
from tests.support.procs import fetchfleet_env, run_cli
from tests.support.redisserver import RedisProcess, free_port
from worker.contract import ErrorInfo, ErrorKind, FetchResult
from worker.metrics import WorkerMetrics, outcome_of, status_class
from worker.monitor import Monitor, Probes
from worker.recorder import Recorder
from worker.redisconn import make_redis
from worker.settings import load_settings

SAMPLE = re.compile(r"^(?P<name>[a-z_]+)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$")


def scrape(port: int) -> dict[tuple[str, str], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    samples = {}
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m and not line.startswith("#"):
            samples[(m["name"], m["labels"] or "")] = float(m["value"])
    return samples


def total(samples: dict[tuple[str, str], float], name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


def healthz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_for(predicate, timeout: float, every: float = 0.1):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    return predicate()


@pytest.mark.slow
def test_metrics_during_a_run_show_fetches_and_queue_depth(
    redis_url: str, http_target: HttpTarget, spawn_worker, tmp_path: Path
) -> None:
    sizes = [100 + i % 400 for i in range(3000)]
    urls = tmp_path / "urls.txt"
    urls.write_text("".join(http_target.url(f"/ok/{s}") + "\n" for s in sizes))
    env = fetchfleet_env(redis_url, chunk_size=10)
    submit = run_cli(["submit", str(urls)], env)  # queued before any worker runs: a real backlog
    assert submit.returncode == 0, submit.stderr.decode()
    batch = submit.stdout.decode().strip()

    port = free_port()
    # Few slots, frequent samples: the run lasts long enough to be watched mid-way.
    spawn_worker(redis_url, chunk_size=10, concurrency=4, metrics_port=port, heartbeat_interval=0.5)

    def mid_run() -> dict[tuple[str, str], float] | None:
        try:
            s = scrape(port)
        except (urllib.error.URLError, OSError):
            return None
        if total(s, "fetchfleet_fetches_total") > 0 and s.get(("fetchfleet_queue_depth", ""), 0) > 0:
            return s
        return None

    seen = wait_for(mid_run, timeout=60)
    assert seen, "never saw fetches and a queue at the same time"
    print(
        f"mid-run: fetches={total(seen, 'fetchfleet_fetches_total'):.0f} "
        f"queue_depth={seen[('fetchfleet_queue_depth', '')]:.0f}"
    )
    assert seen[("fetchfleet_fetches_total", 'outcome="ok",status_class="2xx"')] > 0
    assert seen[("fetchfleet_redis_up", "")] == 1

    done = run_cli(["results", batch, "--follow", "-q", "-o", str(tmp_path / "out.jsonl")], env, timeout=180)
    assert done.returncode == 0, done.stderr.decode()
    end = wait_for(lambda: (s := scrape(port))[("fetchfleet_queue_depth", "")] == 0 and s, timeout=10)
    assert end, "queue depth never went back to 0"
    assert total(end, "fetchfleet_fetches_total") == len(sizes)
    assert end[("fetchfleet_fetch_duration_seconds_count", "")] == len(sizes)
    assert end[("fetchfleet_fetched_bytes_total", "")] == sum(sizes)
    assert end[("fetchfleet_chunks_total", 'result="done"')] == len(sizes) / 10
    assert end[("fetchfleet_fetches_in_flight", "")] == 0


@pytest.mark.slow
def test_healthz_fails_while_redis_is_down_and_recovers(spawn_worker, tmp_path: Path) -> None:
    redis = RedisProcess().start()
    try:
        port = free_port()
        spawn_worker(redis.url, metrics_port=port)
        assert wait_for(lambda: healthz(port)[0] == 200 if _listening(port) else False, timeout=30)

        redis.stop()
        stopped = time.monotonic()
        assert wait_for(lambda: healthz(port)[0] == 503, timeout=15)
        status, body = healthz(port)
        print(f"unhealthy {time.monotonic() - stopped:.1f}s after Redis stopped: {body}")
        assert status == 503 and "redis" in body

        redis.start()  # same port, same data directory
        back = time.monotonic()
        assert wait_for(lambda: healthz(port)[0] == 200, timeout=30)
        print(f"healthy again {time.monotonic() - back:.1f}s after Redis returned")
    finally:
        redis.close()


def _listening(port: int) -> bool:
    try:
        healthz(port)
    except (urllib.error.URLError, OSError):
        return False
    return True


def result(status: int | None, kind: ErrorKind | None = None, size: int = 0) -> FetchResult:
    error = ErrorInfo(kind=kind, message="x") if kind else None
    return FetchResult(index=0, url="http://e.test/", status=status, ok=bool(status and status < 400),
                       error=error, size=size, elapsed_ms=12.5)  # fmt: skip


def test_fetch_outcomes_and_status_classes() -> None:
    assert (outcome_of(result(200)), status_class(200)) == ("ok", "2xx")
    assert (outcome_of(result(404)), status_class(404)) == ("bad_status", "4xx")
    assert (outcome_of(result(None, ErrorKind.CONNECT)), status_class(None)) == ("connect", "none")
    assert outcome_of(result(503, ErrorKind.HTTP_STATUS)) == "http_status"

    m = WorkerMetrics()
    for r in (result(200, size=10), result(200, size=5), result(None, ErrorKind.TIMEOUT)):
        m.fetched(r)
    text = m.render().decode()
    assert 'fetchfleet_fetches_total{outcome="ok",status_class="2xx"} 2.0' in text
    assert 'fetchfleet_fetches_total{outcome="timeout",status_class="none"} 1.0' in text
    assert "fetchfleet_fetched_bytes_total 15.0" in text
    assert "fetchfleet_fetch_duration_seconds_count 3.0" in text

    waits = [0]
    m.bind("w1", in_flight=lambda: 7, stalled=lambda: 0.0, politeness_waits=lambda: waits[0])
    m.retried("timeout")
    waits[0] = 3  # read at scrape time, not pushed
    text = m.render().decode()
    assert "fetchfleet_politeness_waits_total 3.0" in text
    assert "fetchfleet_fetches_in_flight 7.0" in text
    assert 'fetchfleet_retries_total{reason="timeout"} 1.0' in text
    assert 'fetchfleet_worker_info{worker_id="w1"} 1.0' in text


async def test_health_reports_a_stalled_recorder(monkeypatch: pytest.MonkeyPatch) -> None:
    """Results waiting on a Redis that never answers: the recorder stalls and /healthz says so."""
    dead = f"redis://127.0.0.1:{free_port()}/0"
    monkeypatch.setenv("FETCHFLEET_REDIS_URL", dead)
    settings = load_settings(stall_seconds=0.5)
    recorder = Recorder(make_redis(settings), settings.result_ttl)
    recorder.start()
    assert recorder.stalled_for() == 0.0
    waiting = asyncio.ensure_future(recorder.record("b1", 0, False, b"{}", incarnation=""))
    probes = Probes(in_flight=lambda: 0, fetches=lambda: 0, recorder_stalled=recorder.stalled_for)
    monitor = Monitor(settings, "w-test", WorkerMetrics(), probes)
    try:
        await asyncio.sleep(0.8)
        assert recorder.stalled_for() >= 0.5
        health = await monitor.health()
        assert not health.ok
        assert any("recorder made no progress" in p for p in health.problems)
        assert any("redis did not answer" in p for p in health.problems)
    finally:
        waiting.cancel()
        recorder._closed = True
        recorder._task.cancel()  # type: ignore[union-attr]
        await asyncio.gather(recorder._task, return_exceptions=True)  # type: ignore[arg-type]
        await monitor.close()


def test_dashboard_queries_only_metrics_the_worker_exports() -> None:
    m = WorkerMetrics()
    m.fetched(result(200, size=1))
    m.chunk_done("done")
    m.retried("http_status")
    exported = {mm["name"] for line in m.render().decode().splitlines() if (mm := SAMPLE.match(line))}
    dashboard = json.loads((ROOT / "ops/grafana/dashboards/fetchfleet.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {name for e in exprs for name in re.findall(r"\bfetchfleet_[a-z_]+", e)}
    assert used and used <= exported, used - exported
    assert {"fetchfleet_fetches_total", "fetchfleet_queue_depth"} <= used
    jobs = {j for e in exprs for j in re.findall(r'job="([^"]+)"', e)}
    prom = (ROOT / "ops/prometheus/prometheus.yml").read_text()
    assert all(f"job_name: {j}" in prom for j in jobs)


@pytest.mark.slow
def test_a_taken_metrics_port_stops_the_worker_with_a_message(redis_url: str, spawn_worker) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        worker = spawn_worker(redis_url, metrics_port=port)
        assert worker.proc.wait(60) == 2
    log = worker.log()
    assert f"FETCHFLEET_METRICS_PORT: cannot serve /metrics on 127.0.0.1:{port}" in log
    assert "Traceback" not in log


async def test_health_reports_an_overdue_poll_loop(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine says when arq's poll loop is due to renew its stamp; overdue past the limit fails."""
    monkeypatch.setenv("FETCHFLEET_REDIS_URL", redis_url)
    settings = load_settings(stall_seconds=5)
    due = [time.time() + 60]
    probes = Probes(in_flight=lambda: 0, fetches=lambda: 0, poll_due=lambda: due[0])
    monitor = Monitor(settings, "w-test", WorkerMetrics(), probes)
    try:
        assert (await monitor.health()).ok
        due[0] = time.time() - 6
        health = await monitor.health()
        assert not health.ok and re.fullmatch(r"queue poll loop is [6-9]s overdue", health.problems[0])
    finally:
        await monitor.close()
