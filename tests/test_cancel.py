"""`fetchfleet cancel`: no new fetch of the batch starts anywhere; the rest get `cancelled` results."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.chaos import (
    SlowTarget,
    assert_each_index_once,
    stream_results,
    wait_started,
    wait_until,
    write_urls,
)
from tests.support.procs import fetchfleet_env, run_cli
from tests.support.redisserver import RedisProcess
from worker.contract import batch_key

pytestmark = pytest.mark.slow  # every test here starts processes

REFRESH_MARGIN_S = 1.0  # the workers' cancel view refreshes every 0.5 s


def test_cancel_stops_every_worker(
    redis_url: str, redis_server: RedisProcess, spawn_worker, tmp_path: Path
) -> None:
    target = SlowTarget().start()
    try:
        n = 3000
        urls = write_urls(tmp_path / "urls.txt", target.slow_urls(n, 200))
        settings = {"concurrency": 20, "chunk_size": 200}  # a held chunk is 2 s of fetching
        workers = [spawn_worker(redis_url, worker_id=f"w{i}", **settings) for i in range(2)]
        for w in workers:
            wait_started(w)
        env = fetchfleet_env(redis_url, result_retention="ttl", **settings)  # the stream is read again below
        assert run_cli(["submit", str(urls), "--batch-id", "stopme"], env).returncode == 0
        with redis_server.client() as r:
            wait_until(lambda: int(r.hget(batch_key("stopme"), "done") or 0) >= 200, 30, "some results")

        cancel = run_cli(["cancel", "stopme"], env)
        assert cancel.returncode == 0, cancel.stderr.decode()
        assert b"cancelled" in cancel.stdout
        cancelled_at = time.time()
        time.sleep(REFRESH_MARGIN_S)
        started_by_then = len(target.arrivals)
        time.sleep(2.0)
        late = [t - cancelled_at for t in target.arrivals[started_by_then:]]
        assert not late, f"{len(late)} fetches started after the cancel settled"
        assert max(target.arrivals) < cancelled_at + REFRESH_MARGIN_S

        # The rest of the batch is reported: a `cancelled` result for each URL not fetched.
        follow = run_cli(["results", "stopme", "--follow", "-q"], env, timeout=60)
        assert follow.returncode == 0, follow.stderr.decode()
        results = [json.loads(line) for line in follow.stdout.decode().splitlines()]
        assert_each_index_once(results, n)
        kinds = Counter((r["error"] or {}).get("kind", "ok") for r in results)
        fetched = [r for r in results if r["error"] is None]
        assert kinds["cancelled"] > n / 2, kinds
        assert kinds["ok"] + kinds["cancelled"] == n, kinds
        assert all(r["status"] is None and not r["ok"] for r in results if r["error"])
        # What was fetched was fetched once and has its own result; nothing else reached the target.
        assert sum(target.hits.values()) == len(fetched)
        assert set(target.hits.values()) == {1}

        status = run_cli(["status", "stopme", "--json"], env)
        st = json.loads(status.stdout)
        assert st["state"] == "cancelled", st
        assert st["done"] == n and st["remaining"] == 0 and st["failed"] == kinds["cancelled"]
        with redis_server.client() as r:
            recorded = stream_results(r, "stopme")
        first_cancelled = min(ms for ms, res in recorded if res["error"]) / 1000
        print(
            f"\ncancel: {len(fetched)} fetched, {kinds['cancelled']} reported cancelled, first "
            f"cancelled result {first_cancelled - cancelled_at:+.2f}s after the cancel"
        )
    finally:
        target.stop()


def test_cancel_unknown_batch(redis_url: str) -> None:
    proc = run_cli(["cancel", "nosuch"], fetchfleet_env(redis_url))
    assert proc.returncode == 1
    assert b"no batch" in proc.stderr and b"Traceback" not in proc.stderr
