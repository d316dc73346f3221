"""End to end: two worker processes, a real Redis, a real HTTP server, the CLI as a user runs it."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from tests.support.http_target import HttpTarget
from tests.support.procs import fetchfleet_env, run_cli
from tests.support.redisserver import free_port

pytestmark = pytest.mark.slow  # every test here starts processes


def test_two_workers_3000_urls(redis_url: str, http_target: HttpTarget, spawn_worker, tmp_path: Path) -> None:
    dead_port = free_port()  # nothing listens here
    expected: list[tuple[str, int | None, int]] = []
    for i in range(3000):
        if i % 50 == 7:
            expected.append((http_target.url("/status/404"), 404, 6))
        elif i % 100 == 13:
            expected.append((f"http://127.0.0.1:{dead_port}/nothing/{i}", None, 0))
        else:
            size = 100 + i % 900
            expected.append((http_target.url(f"/ok/{size}"), 200, size))
    urls = tmp_path / "urls.txt"
    urls.write_text("\n".join(u for u, _, _ in expected) + "\n")

    settings = {"concurrency": 50, "chunk_size": 50, "allow_private_networks": True}
    spawn_worker(redis_url, **settings)
    spawn_worker(redis_url, **settings)
    out = tmp_path / "out.jsonl"
    env = fetchfleet_env(redis_url, **settings)
    proc = run_cli(["submit", str(urls), "--wait", "-o", str(out)], env, timeout=180)
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"Traceback" not in proc.stderr

    lines = out.read_text().splitlines()
    assert len(lines) == 3000
    results = [json.loads(line) for line in lines]
    counts = Counter(r["index"] for r in results)
    assert sorted(counts) == list(range(3000))
    assert set(counts.values()) == {1}
    for r in results:
        url, status, size = expected[r["index"]]
        assert r["url"] == url
        assert r["status"] == status
        if status is None:
            assert r["error"]["kind"] == "connect", r
            assert r["ok"] is False
        else:
            assert r["error"] is None
            assert r["size"] == size
            assert r["ok"] is (status == 200)
        assert r["attempts"] >= 1
        assert r["elapsed_ms"] >= 0
    workers = Counter(r["worker"] for r in results)
    kinds = Counter((r["status"], (r["error"] or {}).get("kind")) for r in results)
    print(f"\n3,000 URLs: results per worker {sorted(workers.values())}; (status, error kind) {dict(kinds)}")
    assert len(workers) == 2, workers
    assert min(workers.values()) > 100, workers

    batch_id = proc.stdout.decode().strip()
    status = run_cli(["status", batch_id, "--json"], env)
    assert status.returncode == 0, status.stderr.decode()
    st = json.loads(status.stdout)
    assert st["state"] == "done" and st["done"] == 3000 and st["submitted"] == 3000
