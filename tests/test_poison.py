"""Poison input: faults injected into a real worker fail one URL, or one chunk, and never loop."""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos import Workers, assert_each_index_once, wait_started, wait_until, write_urls
from tests.support.http_target import HttpTarget
from tests.support.procs import fetchfleet_env, run_cli
from tests.support.redisserver import RedisProcess
from worker.contract import batch_key

pytestmark = pytest.mark.slow  # every test here starts processes

# Loaded by the worker subprocess only (PYTHONPATH): production code carries no test hooks.
FAULTS = textwrap.dedent(
    """
    import os

    import worker.chunks as chunks
    import worker.fetcher as fetcher

    _fetch = fetcher.Fetcher.fetch
    _run_chunk = chunks.run_chunk

    def _url(req):
        return req if isinstance(req, str) else req.url

    async def fetch(self, req, *args, **kwargs):
        if "/poison/" in _url(req):
            raise RuntimeError("injected fault for one URL")
        if "/crash/" in _url(req):
            os._exit(70)  # the whole process dies, as a segfault in a parser would
        return await _fetch(self, req, *args, **kwargs)

    async def run_chunk(rt, job):
        if any("/chunkpoison/" in _url(r) for r in job.requests):
            raise RuntimeError("injected fault for a whole chunk")
        return await _run_chunk(rt, job)

    fetcher.Fetcher.fetch = fetch
    chunks.run_chunk = run_chunk
    """
)


@pytest.fixture
def faulty(tmp_path: Path) -> dict[str, str]:
    hooks = tmp_path / "faults"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(FAULTS)
    return {"PYTHONPATH": str(hooks)}


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    ws = Workers(tmp_path)
    yield ws
    ws.stop_all()


def test_poison_url_and_chunk(
    redis_url: str, http_target: HttpTarget, workers: Workers, faulty: dict[str, str], tmp_path: Path
) -> None:
    n = 300
    urls = []
    for i in range(n):
        if i == 110:  # makes its whole chunk, indexes 100 to 119, raise
            urls.append(http_target.url(f"/chunkpoison/{i}"))
        elif i % 37 == 5:
            urls.append(http_target.url(f"/poison/{i}"))
        else:
            urls.append(http_target.url(f"/ok/{i}"))
    path = write_urls(tmp_path / "urls.txt", urls)
    settings = {"chunk_size": 20, "concurrency": 20, "chunk_max_tries": 3}
    w = workers.spawn(redis_url, faulty, **settings)
    wait_started(w)
    env = fetchfleet_env(redis_url, **settings)
    done = run_cli(["submit", str(path), "--wait", "-q"], env, timeout=90)
    assert done.returncode == 0, done.stderr.decode() + w.log()
    results = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert_each_index_once(results, n)
    for r in results:
        if 100 <= r["index"] < 120:  # the chunk that raised as a whole, on every try
            assert r["error"]["kind"] == "internal", r
            assert "injected fault for a whole chunk" in r["error"]["message"]
        elif "/poison/" in r["url"]:
            assert r["error"]["kind"] == "internal" and "injected fault for one URL" in r["error"]["message"]
        else:
            assert r["status"] == 200 and r["error"] is None, r
    assert w.proc.poll() is None, "the worker died"
    log = w.log()
    assert log.count("failed on try") == 3, log  # tried chunk_max_tries times, then recorded
    poisoned = sum("/poison/" in u for i, u in enumerate(urls) if not 100 <= i < 120)
    assert log.count("RuntimeError: injected fault for one URL") == poisoned


def test_crashing_url_does_not_crash_loop(
    redis_url: str, redis_server: RedisProcess, http_target: HttpTarget, workers: Workers, faulty, tmp_path
) -> None:
    """A URL that kills its worker process each time: after chunk_max_tries runs it is recorded, not run."""
    urls = [http_target.url("/ok/10"), http_target.url("/crash/1"), http_target.url("/ok/11")]
    path = write_urls(tmp_path / "urls.txt", urls)
    settings = {"chunk_size": 10, "concurrency": 1, "chunk_max_tries": 3, "lease_seconds": 2}
    env = fetchfleet_env(redis_url, **settings)
    assert run_cli(["submit", str(path), "--batch-id", "crashy"], env).returncode == 0
    crashes = 0
    deadline = time.monotonic() + 90
    # A supervisor (compose's restart:) in miniature: start a worker again whenever one dies.
    w = workers.spawn(redis_url, faulty, **settings)
    with redis_server.client() as r:
        while int(r.hget(batch_key("crashy"), "done") or 0) < len(urls):
            assert time.monotonic() < deadline, f"not done after {crashes} crashes"
            if w.proc.poll() is not None:
                assert w.proc.returncode == 70
                crashes += 1
                w = workers.spawn(redis_url, faulty, **settings)
            time.sleep(0.1)
        time.sleep(3)  # more than a lease: nothing of the batch is left to crash another worker
    assert w.proc.poll() is None
    assert crashes == 3
    done = run_cli(["results", "crashy"], env)
    results = {json.loads(line)["index"]: json.loads(line) for line in done.stdout.decode().splitlines()}
    assert results[1]["error"]["kind"] == "internal"
    assert "did not finish in 3 runs" in results[1]["error"]["message"]
    assert sorted(results) == [0, 1, 2]
    # Its neighbours were fetched on some run, or, when the crash came first each time, share its fate.
    for i in (0, 2):
        assert results[i]["status"] == 200 or results[i]["error"]["kind"] == "internal", results[i]
    wait_until(lambda: "started" in w.log(), 10, "the last worker")
