"""FETCHFLEET_JOB_TIMEOUT never loses a URL: what finished stays, the rest runs again or gets a result."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from tests.support.procs import fetchfleet_env, run_cli

pytestmark = pytest.mark.slow  # every test here starts processes


def _run(redis_url: str, spawn_worker, tmp_path: Path, urls: list[str], **settings) -> list[dict]:
    spawn_worker(redis_url, **settings)
    f = tmp_path / "urls.txt"
    f.write_text("\n".join(urls) + "\n")
    out = tmp_path / "out.jsonl"
    proc = run_cli(["submit", str(f), "--wait", "-q", "-o", str(out)], fetchfleet_env(redis_url, **settings))
    assert proc.returncode == 0, proc.stderr.decode()
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_a_chunk_out_of_time_runs_its_rest_again(redis_url, spawn_worker, tmp_path, target) -> None:
    # Six 0.8 s URLs, two at a time, a 2 s chunk deadline: no single run of the chunk can finish them.
    urls = [target.url(f"/slow-headers/0.8?n={i}") for i in range(6)]
    settings = {"job_timeout": 2, "concurrency": 2, "chunk_size": 6, "chunk_max_tries": 5}
    results = _run(redis_url, spawn_worker, tmp_path, urls, **settings)
    assert sorted(Counter(r["index"] for r in results).items()) == [(i, 1) for i in range(6)]
    assert all(r["status"] == 200 and r["error"] is None for r in results), results


def test_a_chunk_that_never_fits_gets_timeout_results(redis_url, spawn_worker, tmp_path, target) -> None:
    urls = [target.url(f"/slow-headers/3?n={i}") for i in range(3)]
    settings = {"job_timeout": 1, "concurrency": 3, "chunk_size": 3, "chunk_max_tries": 2, "read_timeout": 10}
    results = _run(redis_url, spawn_worker, tmp_path, urls, **settings)
    assert sorted(r["index"] for r in results) == [0, 1, 2]
    assert {r["error"]["kind"] for r in results} == {"timeout"}
    assert all("FETCHFLEET_JOB_TIMEOUT" in r["error"]["message"] for r in results)
