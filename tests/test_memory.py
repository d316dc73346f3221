"""Bounded memory: 200,000 URLs through two workers; worker RSS stays flat, Redis cost per result is small."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.chaos import done_count, wait_started, write_urls
from tests.support.http_target import HttpTarget
from tests.support.procs import fetchfleet_env, rss_kib, run_cli
from tests.support.redisserver import RedisProcess
from worker.contract import batch_keys as contract_keys

pytestmark = pytest.mark.slow  # every test here starts processes

N = 200_000
TTL = 3600


@pytest.mark.timeout(600)  # measured 175 s on a loaded 2-core machine
def test_200k_urls_flat_rss_and_expiring_keys(
    redis_url: str, redis_server: RedisProcess, http_target: HttpTarget, spawn_worker, tmp_path: Path
) -> None:
    urls = write_urls(tmp_path / "urls.txt", [http_target.url(f"/ok/{100 + i % 400}") for i in range(N)])
    settings = {"concurrency": 100, "chunk_size": 100, "result_ttl": TTL}
    workers = [spawn_worker(redis_url, worker_id=f"m{i}", **settings) for i in range(2)]
    for w in workers:
        wait_started(w)
    env = fetchfleet_env(redis_url, **settings)
    with redis_server.client() as r:
        r.execute_command("MEMORY", "PURGE")
        before = int(r.info("memory")["used_memory"])

        samples: list[tuple[int, list[int]]] = []  # (results done, RSS KiB of each worker)
        stop = threading.Event()

        def sample() -> None:
            with redis_server.client() as rs:
                while not stop.is_set():
                    samples.append((done_count(rs, "mem"), [rss_kib(w.pid) for w in workers]))
                    time.sleep(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.monotonic()
        try:
            submit = run_cli(["submit", str(urls), "--batch-id", "mem"], env, timeout=300)
            assert submit.returncode == 0, submit.stderr.decode()
            deadline = time.monotonic() + 600
            while done_count(r, "mem") < N:
                assert time.monotonic() < deadline, f"only {done_count(r, 'mem')} of {N} done"
                assert all(w.proc.poll() is None for w in workers)
                time.sleep(0.5)
        finally:
            stop.set()
            sampler.join(5)
        took = time.monotonic() - started
        r.execute_command("MEMORY", "PURGE")
        after = int(r.info("memory")["used_memory"])

        # Every key the batch left behind expires, within the result TTL.
        keys = [k.decode() for k in r.scan_iter(match="*", count=1000)]
        batch_keys = [k for k in keys if k.endswith(":mem") and k.startswith("ff:")]
        assert sorted(batch_keys) == sorted(contract_keys("mem"))
        for k in batch_keys:
            assert 0 < r.ttl(k) <= TTL, k
        assert not [k for k in keys if k.startswith("arq:job:")], "finished chunk jobs left behind"
        for k in keys:
            if k.startswith(("arq:", "ff:")) and k not in ("fetchfleet:queue",) and r.type(k) != b"zset":
                assert r.ttl(k) > 0, f"{k} never expires"
        assert r.zcard("fetchfleet:queue") == 0

    per_result = (after - before) / N
    # RSS: from the first tenth of the run (sessions, buffers and caches warmed up) to the end.
    warm = [rss for done, rss in samples if done >= N // 10]
    assert len(warm) >= 10, "too few samples"
    growth = [max(s[i] for s in warm[len(warm) // 2 :]) - warm[0][i] for i in range(2)]
    peaks = [max(s[i] for s in warm) for i in range(2)]
    print(
        f"\n200,000 URLs in {took:.0f}s ({N / took:.0f}/s); worker RSS at 10%: "
        f"{[s // 1024 for s in warm[0]]} MiB, at 50%: {[s // 1024 for s in warm[len(warm) // 2]]} MiB, "
        f"at the end: {[s // 1024 for s in warm[-1]]} MiB, peak {[p // 1024 for p in peaks]} MiB, "
        f"growth in the second half {[g // 1024 for g in growth]} MiB; "
        f"Redis {per_result:.0f} bytes per stored result ({(after - before) / 2**20:.1f} MiB)"
    )
    # Flat: what a worker gains after the warm-up does not scale with the 180,000 URLs that follow.
    for g in growth:
        assert g < 20 * 1024, f"worker RSS grew {g // 1024} MiB"
    assert per_result < 600, per_result
