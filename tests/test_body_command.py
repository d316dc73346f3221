"""`fetchfleet body REF`: one body out of a real worker's file store, from the result line that names it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.chaos import assert_each_index_once, write_urls
from tests.support.http_target import HttpTarget
from tests.support.procs import fetchfleet_env, run_cli

pytestmark = pytest.mark.slow


def one_line_error(proc: subprocess.CompletedProcess[bytes]) -> str:
    stderr = proc.stderr.decode()
    assert proc.returncode == 2, (proc.returncode, stderr)
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert proc.stdout == b""
    print(stderr.strip())
    return stderr


def test_body_prints_one_body_from_a_worker_file_store(
    redis_url: str, http_target: HttpTarget, spawn_worker, tmp_path: Path
) -> None:
    store = tmp_path / "bodies"
    settings = {"body_store": store.as_uri(), "chunk_size": 10}
    spawn_worker(redis_url, worker_id="w1", **settings)
    urls = [http_target.url(f"/ok/{1000 + i}") for i in range(30)] + [http_target.url("/status/404")]
    urls.append("http://127.0.0.1:1/refused")  # an error result: no body
    env = fetchfleet_env(redis_url, allow_private_networks=True, **settings)
    proc = run_cli(["submit", str(write_urls(tmp_path / "urls.txt", urls)), "--body", "-q"], env)
    assert proc.returncode == 0, proc.stderr.decode()
    batch = proc.stdout.decode().strip()
    proc = run_cli(["results", batch, "--follow", "-q", "-o", str(tmp_path / "refs.jsonl")], env)
    assert proc.returncode == 0, proc.stderr.decode()
    lines = (tmp_path / "refs.jsonl").read_text().splitlines()
    by_index = {json.loads(line)["index"]: line for line in lines}
    assert_each_index_once([json.loads(line) for line in lines], len(urls))
    assert "body" not in json.loads(by_index[7]) and json.loads(by_index[7])["body_ref"]

    # the result line as an argument, to stdout
    out = run_cli(["body", by_index[7]], env)
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout == b"x" * 1007 and out.stderr == b""
    # the line on stdin, to a file; and the 404 page, a response with a body
    out = run_cli(["body", "-", "-o", str(tmp_path / "page")], env, stdin=by_index[30].encode() + b"\n")
    assert out.returncode == 0, out.stderr.decode()
    assert (tmp_path / "page").read_bytes() == b"status"
    # only the body_ref object
    ref = json.dumps(json.loads(by_index[0])["body_ref"])
    assert run_cli(["body", ref], env).stdout == b"x" * 1000

    # the error result has no body; a tampered sha256, a missing file, not JSON: one line, exit 2
    assert "connect" in one_line_error(run_cli(["body", by_index[31]], env))
    tampered = json.dumps({**json.loads(by_index[3]), "sha256": "00" * 32})
    assert "does not match its sha256" in one_line_error(run_cli(["body", tampered], env))
    gone = json.dumps({**json.loads(ref), "uri": (tmp_path / "gone.warc.gz").as_uri()})
    assert "No such file" in one_line_error(run_cli(["body", gone], env))
    assert "not a result line" in one_line_error(run_cli(["body", "3f2a9c1d0b7e4a55"], env))
    assert "one result line, got 2" in one_line_error(
        run_cli(["body", "-"], env, stdin=(by_index[1] + "\n" + by_index[2]).encode())
    )
