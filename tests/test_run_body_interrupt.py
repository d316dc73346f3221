"""`fetchfleet run --body` cut short by Ctrl-C: every result it wrote still gives its body.

Without FETCHFLEET_BODY_STORE, `run` keeps bodies in a store inside its temporary directory, which
goes when it ends, interrupted or not: the results it wrote must hold their bodies inline and no
`body_ref` into that directory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson
import pytest

from producer.local import DIR_PREFIX
from tests.chaos import wait_until, write_urls
from tests.support.http_target import HttpTarget
from tests.support.procs import ROOT, fetchfleet_env, restore_sigint
from worker.bodies import result_body


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_ctrl_c_leaves_only_results_whose_bodies_resolve(http_target: HttpTarget, tmp_path: Path) -> None:
    n = 3000
    urls = write_urls(
        tmp_path / "urls.txt", [http_target.url(f"/ok/{100 + i}?delay_ms=100") for i in range(n)]
    )
    out = tmp_path / "out.jsonl"
    env = fetchfleet_env("unused", allow_private_networks=True, concurrency=10)
    del env["FETCHFLEET_REDIS_URL"]  # run starts its own server and, for --body, its own store
    env.pop("FETCHFLEET_BODY_STORE", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "producer", "run", str(urls), "--body", "-o", str(out), "--workers", "1"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # a terminal's foreground job: Ctrl-C reaches the whole group
        preexec_fn=restore_sigint,
    )
    try:
        wait_until(lambda: out.exists() and out.read_bytes().count(b"\n") >= 100, 60, "first results")
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 130, stderr.decode()[-2000:]
    assert b"Traceback" not in stderr
    assert not list(Path(tempfile.gettempdir()).glob(f"{DIR_PREFIX}{proc.pid}-*")), "temporary dir left"
    lines = out.read_bytes().splitlines()
    docs = [orjson.loads(line) for line in lines]
    assert 100 <= len(docs) < n, len(docs)
    for doc in docs:
        assert "body_ref" not in doc, f"a reference into the removed store: {doc}"
        assert result_body(doc) == b"x" * (100 + doc["index"]), doc
    print(f"interrupted after {len(docs)} of {n} results; every body resolved")
