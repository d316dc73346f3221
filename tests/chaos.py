"""Helpers for the failure tests: a slow HTTP target that logs arrivals, batch readers, waiting, RSS."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from aiohttp import web

from tests.support.http_target import HttpTarget
from tests.support.procs import WorkerProcess, fetchfleet_env
from worker.contract import batch_key, results_key
from worker.resultstream import entry_results


class SlowTarget(HttpTarget):
    """Adds /slow/{ms}/{name}: answers after ms milliseconds; every arrival is counted and timed."""

    def __init__(self) -> None:
        super().__init__()
        self.arrivals: list[float] = []
        self.app.router.add_get("/slow/{ms}/{name}", self._slow)

    async def _slow(self, request: web.Request) -> web.Response:
        self.hits[request.path] += 1
        self.arrivals.append(time.time())
        await asyncio.sleep(int(request.match_info["ms"]) / 1000)
        return web.Response(body=b"slow", content_type="text/plain")

    def slow_urls(self, n: int, ms: int, tag: str = "u") -> list[str]:
        return [self.url(f"/slow/{ms}/{tag}{i}") for i in range(n)]


def wait_until(check: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def batch_meta(r: redis.Redis, batch_id: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in r.hgetall(batch_key(batch_id)).items()}


def done_count(r: redis.Redis, batch_id: str) -> int:
    return int(r.hget(batch_key(batch_id), "done") or 0)


def stream_results(r: redis.Redis, batch_id: str) -> list[tuple[int, dict[str, Any]]]:
    """(ms the result was recorded, result) for every entry of the batch's result stream."""
    out: list[tuple[int, dict[str, Any]]] = []
    cursor = "-"
    key = results_key(batch_id)
    while True:
        page = r.xrange(key, min=cursor, count=5000)
        if not page:
            return out
        for entry_id, fields in page:
            ms = int(entry_id.split(b"-")[0])
            out += [(ms, json.loads(doc)) for _, doc, _ in entry_results(entry_id, fields)]
        last = page[-1][0].decode()
        cursor = "(" + last


def assert_each_index_once(results: list[dict[str, Any]], n: int) -> None:
    indexes = sorted(r["index"] for r in results)
    assert len(indexes) == n, f"{len(indexes)} results for {n} URLs"
    assert indexes == list(range(n)), "some index is missing or recorded twice"


def write_urls(path: Path, urls: list[str]) -> Path:
    path.write_text("\n".join(urls) + "\n")
    return path


class Workers:
    """Worker processes with extra environment (e.g. PYTHONPATH for fault injection); all stopped at end."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[WorkerProcess] = []

    def spawn(
        self, redis_url: str, extra_env: dict[str, str] | None = None, **settings: Any
    ) -> WorkerProcess:
        settings.setdefault("allow_private_networks", True)
        env = fetchfleet_env(redis_url, **settings)
        env.update(extra_env or {})
        w = WorkerProcess(env, self.tmp_path / f"worker-{len(self.started)}.log")
        self.started.append(w)
        return w

    def stop_all(self) -> None:
        for w in self.started:
            if not w._log.closed:
                w.stop()


def wait_started(w: WorkerProcess, timeout: float = 20) -> None:
    w.wait_ready(timeout)
