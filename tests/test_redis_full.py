"""A full Redis (maxmemory reached, noeviction) mid-batch: nothing lost, nothing twice, no tries burnt."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from producer.embedded import free_port
from tests.chaos import Workers, done_count, wait_started, wait_until, write_urls
from tests.support.fetch_target import FetchTarget
from tests.support.procs import fetchfleet_env, rss_kib, start_cli
from tests.support.redisserver import RedisProcess
from worker.contract import batch_key, results_key

# 25,000 URLs: Redis still fills up a third of the way in, with 250 retried URLs and thousands in flight
# (50,000 proved nothing more in twice the time). Blocked for six leases of 5 s (was seven of 10 s): more
# than five lease lengths, so a lease that lapsed while blocked would show, in 30 s instead of 70 s.
N = 25_000
FULL_FOR_S = 30.0  # longer than five leases (FETCHFLEET_LEASE_SECONDS 5)
LEASE_S = 5
MAX_ATTEMPTS = 3


@dataclass
class Fleet:
    target: FetchTarget
    server: RedisProcess
    workers: Workers
    clis: list[subprocess.Popen[bytes]] = field(default_factory=list)  # killed at the end if running


@contextlib.contextmanager
def noeviction_fleet(tmp_path: Path) -> Iterator[Fleet]:
    """A target, a Redis that refuses writes once full (noeviction) and room for workers and CLI
    processes; everything started is stopped at the end."""
    fleet = Fleet(
        FetchTarget().start(), RedisProcess("--maxmemory-policy", "noeviction").start(), Workers(tmp_path)
    )
    try:
        yield fleet
    finally:
        for cli in fleet.clis:
            if cli.poll() is None:
                cli.kill()
        fleet.workers.stop_all()
        fleet.server.close()
        fleet.target.stop()


def healthz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_full_redis_loses_nothing_and_burns_no_tries(tmp_path: Path) -> None:
    with noeviction_fleet(tmp_path) as fleet:
        target, server, workers = fleet.target, fleet.server, fleet.workers
        r = server.client()
        # A 200 each, but every hundredth URL answers 503 once first: its retry goes through the queue
        # too. Each URL has a path of its own, so the target counts the requests made for each.
        urls = write_urls(
            tmp_path / "urls.txt",
            [target.url(f"/flaky/u{i}/{int(i % 100 == 7)}/503") for i in range(N)],
        )
        settings = {
            "concurrency": 100,
            "chunk_size": 100,
            "lease_seconds": LEASE_S,
            "max_attempts": MAX_ATTEMPTS,
            "heartbeat_interval": 1,
            "retry_backoff_base": 0.2,
            # One 503 in a hundred is this test's retry path, not a host asking the fleet to slow down.
            "adaptive_throttle": False,
        }
        out = tmp_path / "out.jsonl"
        # Results stay in Redis after collection (retention ttl), so that they are what fills it up.
        env = fetchfleet_env(server.url, result_retention="ttl", **settings)
        command = ["submit", str(urls), "--wait", "-q", "--batch-id", "full", "-o", str(out)]
        submit = start_cli([*command], env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        fleet.clis.append(submit)
        wait_until(lambda: r.hget(batch_key("full"), "complete") == b"1", 120, "the whole batch queued")
        # The cap: what the queued batch takes now, plus room for about a third of its results
        # (~370 bytes each in Redis), so that Redis fills up mid-batch.
        used = int(r.info("memory")["used_memory"])
        r.config_set("maxmemory", used + N // 3 * 370)
        ports = [free_port() for _ in range(2)]
        ws = [
            workers.spawn(server.url, worker_id=f"w{i}", metrics_port=ports[i], **settings) for i in range(2)
        ]
        for w in ws:
            wait_started(w)

        # Redis fills up: the done count stops moving while the queue still holds work.
        def full_now() -> bool:
            return all("Redis is full" in w.log() for w in ws)

        wait_until(full_now, 180, "both workers to report a full Redis")
        full_at = time.monotonic()
        done_when_full = done_count(r, "full")
        assert 0 < done_when_full < N, done_when_full
        rss: list[list[int]] = []
        health: list[tuple[int, str]] = []
        while time.monotonic() - full_at < FULL_FOR_S:
            rss.append([rss_kib(w.pid) for w in ws])
            if len(rss) % 10 == 1:
                health.append(healthz(ports[len(rss) % 2]))
            assert all(w.proc.poll() is None for w in ws)
            time.sleep(1)
        done_blocked = done_count(r, "full")
        r.config_set("maxmemory", 0)
        room_at = time.monotonic()
        _, stderr = submit.communicate(timeout=300)
        finished = time.monotonic() - room_at
        assert submit.returncode == 0, stderr.decode()
        logs = [w.log() for w in ws]

    results = [json.loads(line) for line in out.read_text().splitlines()]
    counts = Counter(x["index"] for x in results)
    assert sorted(counts) == list(range(N)) and set(counts.values()) == {1}, "an index missing or twice"
    kinds = Counter((x["error"] or {}).get("kind") for x in results)
    assert kinds == Counter({None: N}), kinds  # zero `internal`, zero anything else
    # A full Redis costs no attempt and throws no fetch away: each URL was requested exactly as often
    # as its result says it was attempted, within the limit, and the flaky ones twice.
    over = [x for x in results if target.hits[f"flaky:u{x['index']}"] != x["attempts"]]
    assert not over, [(x["index"], x["attempts"], target.hits[f"flaky:u{x['index']}"]) for x in over[:5]]
    assert all(x["attempts"] <= MAX_ATTEMPTS for x in results)
    assert all(x["attempts"] == 2 for x in results if x["index"] % 100 == 7)
    # While blocked: nothing was claimed or fetched, so worker memory stayed flat.
    first, peak = rss[0], [max(s[i] for s in rss) for i in range(2)]
    growth = [peak[i] - first[i] for i in range(2)]
    reports = [log.count("Redis is full (") for log in logs]
    print(
        f"\n{N:,} URLs, Redis full at {done_when_full:,} done ({done_blocked:,} when room came back "
        f"after {FULL_FOR_S:.0f}s); finished {finished:.1f}s later; worker RSS while blocked: "
        f"first {[k // 1024 for k in first]} MiB, peak {[k // 1024 for k in peak]} MiB, growth "
        f"{[g // 1024 for g in growth]} MiB; 'Redis is full' lines per worker {reports}; "
        f"/healthz while full {[code for code, _ in health]}"
    )
    assert all(g < 20 * 1024 for g in growth), growth
    assert all(1 <= n <= 3 for n in reports), reports  # once a minute, not once per attempt
    assert health and all(code == 503 and "Redis is full" in body for code, body in health), health
    assert all("Redis has room again" in log for log in logs)
    assert not any("Traceback" in log for log in logs)


@pytest.mark.slow
def test_a_follower_says_when_redis_is_full_and_goes_on_when_it_has_room(tmp_path: Path) -> None:
    """Workers stop while Redis is full and log it; a follower waited without a word on its screen."""
    server = RedisProcess("--maxmemory-policy", "noeviction").start()
    follower: subprocess.Popen[bytes] | None = None
    try:
        r = server.client()
        r.hset(batch_key("quiet"), mapping={"submitted": 3, "complete": 1, "done": 0, "incarnation": "x"})
        # Full: every write that adds memory is refused from here on.
        r.config_set("maxmemory", int(r.info("memory")["used_memory"]) * 9 // 10)
        out, err = tmp_path / "out.jsonl", tmp_path / "err.txt"
        with err.open("wb") as stderr:
            follower = start_cli(
                ["results", "quiet", "--follow", "-q", "-o", str(out)],
                fetchfleet_env(server.url),
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        said = wait_until(lambda: "Redis is full" in err.read_text(), 15, "the follower to say so")
        assert said and follower.poll() is None
        r.config_set("maxmemory", 0)
        wait_until(lambda: "has room again" in err.read_text(), 15, "the follower to say that too")
        for i in range(3):  # what the workers record once there is room
            r.xadd(results_key("quiet"), {"r": json.dumps({"index": i, "url": f"http://h/{i}"}).encode()})
        r.hset(batch_key("quiet"), "done", 3)
        assert follower.wait(15) == 0
        notice = err.read_text()
    finally:
        if follower is not None and follower.poll() is None:
            follower.kill()
        server.close()
    print(notice)
    assert "maxmemory" in notice and "nothing is lost" in notice and "Traceback" not in notice
    assert "Redis has room again; batch quiet goes on" in notice
    assert sorted(json.loads(line)["index"] for line in out.read_text().splitlines()) == [0, 1, 2]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_workers_that_started_into_a_full_redis_are_not_called_missing(tmp_path: Path) -> None:
    """A full Redis refuses the heartbeat of a worker that starts then: submit --wait said "no live
    worker ... stays queued until one starts" beside the two workers waiting for room."""
    with noeviction_fleet(tmp_path) as fleet:
        target, server, workers = fleet.target, fleet.server, fleet.workers
        r = server.client()
        n = 300
        urls = write_urls(tmp_path / "urls.txt", [target.url(f"/flaky/q{i}/0/503") for i in range(n)])
        env = fetchfleet_env(server.url, heartbeat_interval=1)
        out, err = tmp_path / "out.jsonl", tmp_path / "err.txt"
        with err.open("wb") as stderr:
            command = ["submit", str(urls), "--wait", "-q", "--batch-id", "blocked", "-o", str(out)]
            submit = start_cli(command, env, stdout=subprocess.DEVNULL, stderr=stderr)
            fleet.clis.append(submit)
        wait_until(lambda: r.hget(batch_key("blocked"), "complete") == b"1", 30, "the batch queued")
        r.config_set("maxmemory", int(r.info("memory")["used_memory"]) * 9 // 10)
        for i in range(2):
            wait_started(workers.spawn(server.url, worker_id=f"w{i}", heartbeat_interval=1))
        wait_until(lambda: "Redis is full" in err.read_text(), 15, "the full Redis said")
        time.sleep(8)  # past NO_WORKER_AFTER and a poll of the workers
        said = err.read_text()
        r.config_set("maxmemory", 0)
        assert submit.wait(60) == 0, err.read_text()
    assert "no live worker" not in said, said
    assert sorted(json.loads(line)["index"] for line in out.read_text().splitlines()) == list(range(n))
