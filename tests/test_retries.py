"""Retries: which failures are retried, how long they wait, and that the wait is in the queue."""

from __future__ import annotations

import email.utils
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from redis import Redis

from tests.support.fetch_target import FetchTarget
from tests.support.procs import ROOT, fetchfleet_env, run_cli
from worker.contract import retry_job_id
from worker.retry import RetryPolicy, parse_retry_after


def test_what_is_retried() -> None:
    p = RetryPolicy(max_attempts=3)
    for status in (429, 502, 503, 504):
        assert p.should_retry(1, status, None)
    for status in (200, 301, 404, 500, 501):
        assert not p.should_retry(1, status, None)
    assert p.should_retry(2, None, "connect") and p.should_retry(2, None, "timeout")
    for kind in ("dns", "tls", "blocked", "too_large", "too_many_redirects", "invalid_url", "protocol"):
        assert not p.should_retry(1, None, kind)
    assert not p.should_retry(3, 503, None)  # attempts counts attempts: the third was the last
    assert not RetryPolicy(max_attempts=1).should_retry(1, 503, None)
    assert RetryPolicy(statuses=frozenset({500})).should_retry(1, 500, None)
    # A POST that timed out may have reached the server: never sent twice; a failed connect sent nothing.
    assert not p.should_retry(1, None, "timeout", "POST")
    assert p.should_retry(1, None, "connect", "POST") and p.should_retry(1, 503, None, "POST")
    assert p.should_retry(1, None, "timeout", "HEAD")


def test_backoff_is_exponential_capped_and_fully_jittered() -> None:
    p = RetryPolicy(backoff_base=1.0, backoff_cap=5.0)
    for attempts, ceiling in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (10, 5.0)):
        samples = [p.delay(attempts) for _ in range(400)]
        assert all(0 <= s <= ceiling for s in samples)
        # Full jitter: spread over the whole range, not clustered at the ceiling.
        assert min(samples) < ceiling * 0.1 and max(samples) > ceiling * 0.9


def test_retry_after_is_honoured_up_to_a_cap() -> None:
    p = RetryPolicy(backoff_base=0.01, backoff_cap=0.01, retry_after_max=30)
    assert 7 <= p.delay(1, "7") <= 7.01
    assert p.delay(1, "3600") == 30
    now = time.time()
    date = email.utils.formatdate(now + 20, usegmt=True)
    assert 18 <= p.delay(1, date, now=now) <= 21
    assert p.delay(1, "soon") <= 0.01  # unreadable: ordinary backoff
    assert parse_retry_after(email.utils.formatdate(now - 60, usegmt=True), now=now) == 0
    assert parse_retry_after(None) is None and parse_retry_after("12") == 12


@pytest.mark.parametrize(
    "value",
    ["\u00b2", "\u2460", "\u00b9\u00b2", "-5", "1.5", "1e9", "0x10", "\udcff", "Fri, 31 Dec 99999 0:0:0 GMT"],
)
def test_any_retry_after_a_server_sends_is_read_or_ignored(value: str) -> None:
    """str.isdigit() holds for superscript and circled digits that float() refuses: a 429 with
    `Retry-After: ²` raised in the worker and the URL's result became `internal`."""
    p = RetryPolicy(backoff_base=0.01, backoff_cap=0.01, retry_after_max=30)
    assert parse_retry_after(value) is None
    assert p.delay(1, value) <= 0.01


SETTINGS = {"retry_backoff_base": 0.05, "retry_backoff_cap": 0.2, "chunk_size": 10}


@pytest.mark.slow
def test_retries_through_a_worker(redis_url: str, spawn_worker, target: FetchTarget, tmp_path: Path) -> None:
    target.reset_counts()
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = s.getsockname()[1]
    s.close()
    cases = {
        "/flaky/a/1/503": (200, None, 2),
        "/flaky/b/1/429?retry_after=1": (200, None, 2),
        "/flaky/c/99/503": (503, "http_status", 3),
        "/flaky/d/99/404": (404, None, 1),
        "/flaky/e/2/502": (200, None, 3),
        "/ok/5": (200, None, 1),
        f"dead:{dead}": (None, "connect", 3),
    }
    urls = [f"http://127.0.0.1:{dead}/" if p.startswith("dead:") else target.url(p) for p in cases]
    path = tmp_path / "urls.txt"
    path.write_text("\n".join(urls) + "\n")
    spawn_worker(redis_url, **SETTINGS)
    out = tmp_path / "out.jsonl"
    proc = run_cli(["submit", str(path), "--wait", "-o", str(out)], fetchfleet_env(redis_url), timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    results = {r["index"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert sorted(results) == list(range(len(cases)))
    for i, (status, kind, attempts) in enumerate(cases.values()):
        r = results[i]
        assert (r["status"], (r["error"] or {}).get("kind"), r["attempts"]) == (status, kind, attempts), r
    for key, n in (("a", 2), ("b", 2), ("c", 3), ("d", 1), ("e", 3)):
        assert target.hits[f"flaky:{key}"] == n  # attempts counts attempts, one request each
    first, second = target.times["/flaky/b/1/429"]
    assert second - first >= 0.95  # Retry-After: 1 was honoured


@pytest.mark.slow
def test_a_waiting_retry_holds_no_slot(
    redis_url: str, spawn_worker, target: FetchTarget, tmp_path: Path
) -> None:
    """One slot only. The first URL is told to come back in 3 s; the twenty after it must not wait
    for that, and the wait must sit in the queue as a deferred job."""
    target.reset_counts()
    urls = [target.url("/flaky/slot/1/429?retry_after=3")] + [target.url(f"/ok/{i}") for i in range(20)]
    path = tmp_path / "urls.txt"
    path.write_text("\n".join(urls) + "\n")
    # Retry-After would also pause the whole host (adaptive backoff, tests/test_politeness.py); here the
    # other URLs share that host, and what is under test is the retry alone.
    spawn_worker(redis_url, concurrency=1, adaptive_throttle=False, **SETTINGS)
    batch = "slotfree"
    out = tmp_path / "out.jsonl"
    env = fetchfleet_env(redis_url)
    submit = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "producer",
            "submit",
            str(path),
            "--wait",
            "--batch-id",
            batch,
            "-o",
            str(out),
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    retry_id = retry_job_id(batch, 0, 2)
    deferred_by = None
    with Redis.from_url(redis_url) as r:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and deferred_by is None:
            score = r.zscore("fetchfleet:queue", retry_id)
            if score is not None:
                redis_now = r.time()
                deferred_by = score / 1000 - (redis_now[0] + redis_now[1] / 1e6)
            time.sleep(0.02)
    _stdout, stderr = submit.communicate(timeout=60)
    assert submit.returncode == 0, stderr.decode()
    assert deferred_by is not None and 1.5 < deferred_by <= 3.1, deferred_by
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(results) == 21
    slow = next(r for r in results if r["index"] == 0)
    assert (slow["status"], slow["attempts"]) == (200, 2)
    first, second = target.times["/flaky/slot/1/429"]
    assert second - first >= 2.9
    ok_times = [t for path_, ts in target.times.items() if path_.startswith("/ok/") for t in ts]
    assert len(ok_times) == 20
    # All twenty went through the only slot while the retry waited in the queue.
    assert max(ok_times) < second and max(ok_times) - first < 2.0
    assert results[-1]["index"] == 0  # recorded last
