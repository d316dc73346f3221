"""Fair claims: a worker claims what its free slots can start soon, so small batches spread out."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from tests.chaos import wait_started, write_urls
from tests.support.http_target import HttpTarget
from tests.support.procs import fetchfleet_env, run_cli
from worker.claimsize import ClaimSizer


def test_claims_are_sized_by_free_slots() -> None:
    idle = ClaimSizer(concurrency=100, chunk_size=100)
    assert idle.chunks(now=0.0, fetches=0, in_flight=0, waiting=0, reserved=0) == 1  # not the whole batch
    assert idle.chunks(now=0.0, fetches=0, in_flight=0, waiting=0, reserved=100) == 0  # one on its way
    assert ClaimSizer(250, 100).chunks(now=0.0, fetches=0, in_flight=0, waiting=0, reserved=0) == 3
    busy = ClaimSizer(concurrency=100, chunk_size=100)
    for t in range(11):  # 5,000 fetches a second, slots full, 40 URLs waiting for one
        n = busy.chunks(now=t / 10, fetches=500 * t, in_flight=100, waiting=40, reserved=0)
    assert n == 5  # 5,000/s x 0.1 s = 500 slots free up soon, 40 of them taken already
    assert busy.chunks(now=1.0, fetches=5000, in_flight=100, waiting=600, reserved=0) == 0


@pytest.mark.slow
def test_a_four_chunk_batch_runs_on_both_idle_workers(
    redis_url: str, spawn_worker, http_target: HttpTarget, tmp_path: Path
) -> None:
    # Four chunks of 10 URLs; each URL takes 0.3 s, so a worker that took every chunk would be seen.
    urls = write_urls(tmp_path / "urls.txt", [http_target.url(f"/ok/{i}?delay_ms=300") for i in range(40)])
    settings = {"chunk_size": 10, "concurrency": 10}
    workers = [spawn_worker(redis_url, worker_id=f"fair{i}", **settings) for i in range(2)]
    for w in workers:
        wait_started(w)
    out = tmp_path / "out.jsonl"
    env = fetchfleet_env(redis_url, **settings)
    proc = run_cli(["submit", str(urls), "--wait", "-q", "-o", str(out)], env)
    assert proc.returncode == 0, proc.stderr.decode()
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["index"] for r in results) == list(range(40))
    by_worker = Counter(r["worker"] for r in results)
    print(f"\n4 chunks on 2 idle workers: URLs per worker {dict(by_worker)}")
    assert set(by_worker) == {"fair0", "fair1"}, by_worker
