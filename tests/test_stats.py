"""`fetchfleet stats`: live workers from their heartbeats, the queue, and batches in progress."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.http_target import HttpTarget
from tests.support.procs import fetchfleet_env, run_cli
from worker.monitor import heartbeat_ttl, idle_beat_interval

pytestmark = pytest.mark.slow  # every test here starts processes


def stats(env: dict[str, str]) -> dict[str, Any]:
    proc = run_cli(["stats", "--json"], env)
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)


def wait_stats(env: dict[str, str], check, timeout: float) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        s = stats(env)
        if check(s) or time.monotonic() > deadline:
            return s
        time.sleep(0.2)


def test_stats_shows_live_workers_queue_and_batches(
    redis_url: str, http_target: HttpTarget, spawn_worker, tmp_path: Path
) -> None:
    env = fetchfleet_env(redis_url, chunk_size=10, heartbeat_interval=0.5)
    urls = tmp_path / "urls.txt"
    urls.write_text("".join(http_target.url(f"/ok/{i}") + "\n" for i in range(200)))
    batch = run_cli(["submit", str(urls)], env).stdout.decode().strip()

    before = stats(env)
    assert before["workers"] == []
    assert before["queue_depth"] == 20
    [b] = before["batches"]
    assert (b["batch_id"], b["state"], b["done"], b["submitted"]) == (batch, "queued", 0, 200)

    w1 = spawn_worker(redis_url, heartbeat_interval=0.5)
    w2 = spawn_worker(redis_url, heartbeat_interval=0.5)
    live = wait_stats(env, lambda s: len(s["workers"]) == 2, timeout=30)
    assert sorted(w["pid"] for w in live["workers"]) == sorted([w1.pid, w2.pid])
    for w in live["workers"]:
        assert w["id"] and w["host"] and w["started_ms"] > 0 and w["in_flight"] >= 0

    plain = run_cli(["stats"], env)  # not a terminal: plain lines
    assert b"live workers: 2" in plain.stdout

    done = run_cli(["results", batch, "--follow", "-q", "-o", str(tmp_path / "out.jsonl")], env)
    assert done.returncode == 0
    after = wait_stats(env, lambda s: s["queue_depth"] == 0, timeout=10)
    assert after["batches"] == [] and after["queue_depth"] == 0
    fetched = wait_stats(env, lambda s: sum(w["fetches"] for w in s["workers"]) == 200, timeout=10)
    assert sum(w["fetches"] for w in fetched["workers"]) == 200  # the heartbeats carry the counts

    w1.stop()  # a clean stop removes its heartbeat at once
    t0 = time.monotonic()
    one = wait_stats(env, lambda s: len(s["workers"]) == 1, timeout=5)
    assert [w["pid"] for w in one["workers"]] == [w2.pid]
    print(f"cleanly stopped worker gone after {time.monotonic() - t0:.1f}s")

    w2.signal(signal.SIGKILL)  # no goodbye: the heartbeat has to expire
    t0 = time.monotonic()
    # Idle by now: its last beat was an idle one, whose TTL covers the longer idle interval.
    ttl = heartbeat_ttl(idle_beat_interval(0.5))
    none = wait_stats(env, lambda s: not s["workers"], timeout=ttl + 5)
    waited = time.monotonic() - t0
    print(f"killed worker gone after {waited:.1f}s (idle heartbeat ttl {ttl}s)")
    assert none["workers"] == []
    assert waited <= ttl + 5
