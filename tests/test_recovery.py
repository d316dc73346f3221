"""A worker SIGKILLed mid-batch: its chunks run again elsewhere within the lease, nothing lost or doubled."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.chaos import SlowTarget, stream_results, wait_started, wait_until, write_urls
from tests.support.http_target import HttpTarget
from tests.support.procs import fetchfleet_env, run_cli, start_cli
from tests.support.redisserver import RedisProcess

pytestmark = pytest.mark.slow  # every test here starts processes

N = 20_000
CHUNK = 100  # the default chunk size; set explicitly because the recovery figure is read per chunk


@pytest.mark.timeout(180)  # measured 26 s
def test_sigkill_two_seconds_in_20000_urls(
    redis_url: str, redis_server: RedisProcess, http_target: HttpTarget, spawn_worker, tmp_path: Path
) -> None:
    urls = write_urls(
        tmp_path / "urls.txt", [http_target.url(f"/ok/{100 + i % 900}?delay_ms=10") for i in range(N)]
    )
    # Default job timeout (300 s): without a lease the killed worker's chunks would wait 310 s. Each
    # response takes 10 ms, so at 2 x 20 in flight the batch is far from done when the kill comes.
    settings = {"concurrency": 20, "chunk_size": CHUNK}
    victim = spawn_worker(redis_url, worker_id="victim", **settings)
    survivor = spawn_worker(redis_url, worker_id="survivor", **settings)
    wait_started(victim)
    wait_started(survivor)

    out = tmp_path / "out.jsonl"
    env = fetchfleet_env(redis_url, result_retention="ttl", **settings)  # the stream is read again below
    started = time.monotonic()
    submit = start_cli(
        ["submit", str(urls), "--wait", "-q", "-o", str(out)],
        env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    time.sleep(2.0)
    victim.signal(signal.SIGKILL)
    killed_at_ms = int(time.time() * 1000)
    assert victim.proc.wait(10) == -signal.SIGKILL
    # The chunks claimed at the moment of the kill: the survivor's carry on at once, the victim's wait
    # for their lease to run out. Read from the claims themselves, not guessed from result timing.
    with redis_server.client() as r:
        claimed = {
            int(key.rsplit(b":c", 1)[1]) for key in r.scan_iter(match=b"arq:in-progress:*:c*", count=1000)
        }

    try:
        stdout, stderr = submit.communicate(timeout=90)
    finally:
        submit.kill()
    took = time.monotonic() - started
    assert submit.returncode == 0, stderr.decode()
    assert took < 90

    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(results) == N
    assert sorted(r["index"] for r in results) == list(range(N))
    assert all(r["status"] == 200 for r in results), [r for r in results if r["status"] != 200][:3]

    # Recovery: for every chunk claimed at the kill, when did the survivor first record a result of it
    # after the kill? The victim's chunks are the ones that had to wait; the last of them is the figure.
    batch_id = stdout.decode().strip()
    with redis_server.client() as r:
        recorded = stream_results(r, batch_id)
    first_after: dict[int, int] = {}
    victim_results = 0
    for ms, res in recorded:
        victim_results += res["worker"] == "victim"
        chunk = res["index"] // CHUNK
        if res["worker"] == "survivor" and ms >= killed_at_ms and chunk in claimed:
            first_after[chunk] = min(first_after.get(chunk, ms), ms)
    assert claimed and set(first_after) == claimed - _finished_before(recorded, killed_at_ms, claimed)
    waits = sorted((ms - killed_at_ms) / 1000 for ms in first_after.values())
    taken_over = [w for w in waits if w > 1.0]  # the survivor's own chunks went on within milliseconds
    assert victim_results > 0 and taken_over, (victim_results, waits)
    recovery = max(taken_over)
    print(
        f"\nSIGKILL recovery: {len(taken_over)} of the victim's chunks taken over, the last "
        f"{recovery:.1f}s after the kill; victim recorded {victim_results} results before dying; "
        f"20,000 URLs done in {took:.1f}s"
    )
    assert recovery <= 15, recovery
    assert survivor.proc.poll() is None
    assert "Traceback" not in survivor.log()


def test_living_worker_keeps_its_lease(redis_url: str, spawn_worker, tmp_path: Path) -> None:
    """Chunks that run far longer than the lease are not taken by an idle second worker meanwhile."""
    target = SlowTarget().start()
    try:
        urls = write_urls(tmp_path / "urls.txt", target.slow_urls(20, 1000))
        # 2 slots, 10 URLs a chunk, 1 s each: every chunk holds its claim ~5 s, the lease is 2 s.
        settings = {"concurrency": 2, "chunk_size": 10, "lease_seconds": 2}
        env = fetchfleet_env(redis_url, **settings)
        first = spawn_worker(redis_url, worker_id="holder", **settings)
        wait_started(first)
        proc = run_cli(["submit", str(urls), "--batch-id", "lease"], env)
        assert proc.returncode == 0, proc.stderr.decode()
        wait_until(lambda: sum(target.hits.values()) >= 2, 10, "the first fetches")
        idle = spawn_worker(redis_url, worker_id="idle", **{**settings, "concurrency": 1})
        wait_started(idle)
        done = run_cli(["results", "lease", "--follow", "-q"], env, timeout=60)
        assert done.returncode == 0, done.stderr.decode()
        results = [json.loads(line) for line in done.stdout.decode().splitlines()]
        assert sorted(r["index"] for r in results) == list(range(20))
        assert set(target.hits.values()) == {1}, "a URL was fetched twice: a lease was lost while held"
    finally:
        target.stop()


def _finished_before(recorded: list[tuple[int, dict]], killed_at_ms: int, claimed: set[int]) -> set[int]:
    """Claimed chunks that got no result from the survivor after the kill: all their URLs were recorded
    by the victim. (Not "no result after the kill": a result the victim sent just before its SIGKILL may
    be stamped by a loaded Redis a millisecond after `killed_at_ms`, and its chunk then had nothing left
    for the survivor to record.)"""
    after = {
        res["index"] // CHUNK for ms, res in recorded if ms >= killed_at_ms and res["worker"] != "victim"
    }
    return claimed - after
