"""`fetchfleet results BATCH --index N [--body]`: one result line, from a real worker's batch in Redis."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.chaos import write_urls
from tests.support.http_target import HttpTarget
from tests.support.procs import fetchfleet_env, run_cli

pytestmark = pytest.mark.slow


def one_line_error(proc: subprocess.CompletedProcess[bytes]) -> str:
    stderr = proc.stderr.decode()
    assert proc.returncode == 2, (proc.returncode, stderr, proc.stdout)
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert proc.stdout == b""
    return stderr


def wait_done(batch: str, env: dict[str, str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = json.loads(run_cli(["status", batch, "--json"], env).stdout)
        if status["state"] == "done":
            return
        time.sleep(0.2)
    raise AssertionError(f"batch {batch} not done in {timeout} s: {status}")


def test_results_index_prints_one_result_and_its_body(
    redis_url: str, http_target: HttpTarget, spawn_worker, tmp_path: Path
) -> None:
    settings = {"body_store": (tmp_path / "bodies").as_uri(), "chunk_size": 5}
    spawn_worker(redis_url, worker_id="w1", **settings)
    env = fetchfleet_env(redis_url, allow_private_networks=True, **settings)
    urls = [http_target.url(f"/ok/{1000 + i}") for i in range(12)]
    proc = run_cli(["submit", str(write_urls(tmp_path / "urls.txt", urls)), "--body", "-q"], env)
    assert proc.returncode == 0, proc.stderr.decode()
    batch = proc.stdout.decode().strip()
    wait_done(batch, env)

    # the line as `results` writes it: the reference, no body
    out = run_cli(["results", batch, "--index", "7"], env)
    assert out.returncode == 0, out.stderr.decode()
    (line,) = out.stdout.decode().splitlines()
    doc = json.loads(line)
    assert doc["index"] == 7 and doc["url"] == urls[7] and doc["body_ref"] and "body" not in doc
    # --body: the body read from the store, checked against the result's sha256
    out = run_cli(["results", batch, "--index", "7", "--body", "-o", str(tmp_path / "seven.jsonl")], env)
    assert out.returncode == 0 and out.stdout == b"", out.stderr.decode()
    (line,) = (tmp_path / "seven.jsonl").read_text().splitlines()
    doc = json.loads(line)
    assert doc["index"] == 7 and doc["body"] == "x" * 1007 and doc["body_encoding"] == "text"
    assert hashlib.sha256(doc["body"].encode()).hexdigest() == doc["sha256"]
    # CSV: one header and one row, with the body (CSV has no place for a reference)
    out = run_cli(["results", batch, "--index", "0", "--format", "csv"], env)
    rows = out.stdout.decode().splitlines()
    assert out.returncode == 0 and len(rows) == 2 and rows[1].endswith("x" * 1000 + ",text,False"), rows

    # no such index; a flag that asks for more than one result
    assert "no index 12 in batch" in one_line_error(run_cli(["results", batch, "--index", "12"], env))
    assert "--follow does not go with it" in one_line_error(
        run_cli(["results", batch, "--index", "1", "--follow"], env)
    )
    assert "must be a whole number" in run_cli(["results", batch, "--index", "-1"], env).stderr.decode()

    # a URL still being fetched (the server answers after 3 s): no result yet
    slow = run_cli(["submit", "-", "-q"], env, stdin=f"{http_target.url('/ok/5?delay_ms=3000')}\n".encode())
    slow_batch = slow.stdout.decode().strip()
    assert "has no result yet (0 of 1 done)" in one_line_error(
        run_cli(["results", slow_batch, "--index", "0"], env)
    )
    wait_done(slow_batch, env)
    assert json.loads(run_cli(["results", slow_batch, "--index", "0"], env).stdout)["size"] == 5

    # once a follower has written the batch out, its results leave Redis: the line says where it went
    out = run_cli(["results", batch, "--follow", "-q", "-o", str(tmp_path / "all.jsonl")], env)
    assert out.returncode == 0, out.stderr.decode()
    assert "was collected" in one_line_error(run_cli(["results", batch, "--index", "7"], env))
