"""A worker SIGKILLed mid-batch: its chunks run again elsewhere within the lease, nothing lost or doubled."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.chaos import stream_results, wait_started, write_urls
from tests.http_target import HttpTarget
from tests.procs import ROOT, fetchfleet_env
from tests.redis_proc import RedisProcess

N = 20_000
CHUNK = 100  # the default chunk size; set explicitly because the recovery figure is read per chunk


def test_sigkill_two_seconds_in_20000_urls(
    redis_url: str, redis_server: RedisProcess, http_target: HttpTarget, spawn_worker, tmp_path: Path
) -> None:
    urls = write_urls(tmp_path / "urls.txt", [http_target.url(f"/ok/{100 + i % 900}") for i in range(N)])
    # Default job timeout (300 s): without a lease the killed worker's chunks would wait 310 s.
    settings = {"concurrency": 20, "chunk_size": CHUNK}
    victim = spawn_worker(redis_url, worker_id="victim", **settings)
    survivor = spawn_worker(redis_url, worker_id="survivor", **settings)
    wait_started(victim)
    wait_started(survivor)

    out = tmp_path / "out.jsonl"
    env = fetchfleet_env(redis_url, **settings)
    started = time.monotonic()
    submit = subprocess.Popen(
        [sys.executable, "-m", "producer", "submit", str(urls), "--wait", "-q", "-o", str(out)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    time.sleep(2.0)
    victim.signal(signal.SIGKILL)
    killed_at_ms = int(time.time() * 1000)
    assert victim.proc.wait(10) == -signal.SIGKILL

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

    # Recovery: the chunks the victim held when it died (some of their URLs recorded by it, the rest
    # not) were taken over by the survivor; how long after the kill did each one start recording again?
    batch_id = stdout.decode().strip()
    with redis_server.client() as r:
        recorded = stream_results(r, batch_id)
    by_chunk: dict[int, dict[str, list[int]]] = {}
    for ms, res in recorded:
        by_chunk.setdefault(res["index"] // CHUNK, {}).setdefault(res["worker"], []).append(ms)
    orphaned = {c: w for c, w in by_chunk.items() if "victim" in w and "survivor" in w}
    assert orphaned, "the victim held no half-done chunk when killed: the test did not test recovery"
    recovery = max(min(w["survivor"]) - killed_at_ms for w in orphaned.values()) / 1000
    victim_results = sum(len(w.get("victim", [])) for w in by_chunk.values())
    print(
        f"\nSIGKILL recovery: {len(orphaned)} half-done chunks taken over, the last "
        f"{recovery:.1f}s after the kill; victim recorded {victim_results} results before dying; "
        f"20,000 URLs done in {took:.1f}s"
    )
    assert 0 < recovery <= 15, recovery
    assert survivor.proc.poll() is None
    assert "Traceback" not in survivor.log()


def test_living_worker_keeps_its_lease(redis_url: str, spawn_worker, tmp_path: Path) -> None:
    """Chunks that run far longer than the lease are not taken by an idle second worker meanwhile."""
    from tests.chaos import SlowTarget, wait_until
    from tests.procs import run_cli

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
