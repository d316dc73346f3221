"""`arq worker.WorkerSettings` starts a working fetchfleet worker, as `fetchfleet worker` does."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.http_target import HttpTarget
from tests.support.procs import ROOT, fetchfleet_env, restore_sigint, run_cli

pytestmark = pytest.mark.slow  # every test here starts processes


def test_arq_cli_worker_fetches(redis_url: str, http_target: HttpTarget, tmp_path: Path) -> None:
    env = fetchfleet_env(redis_url, allow_private_networks=True, worker_id="arq-cli-worker")
    log = (tmp_path / "arq.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "arq", "worker.WorkerSettings"],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=log,
        preexec_fn=restore_sigint,  # it is stopped by SIGINT below, however pytest was started
    )
    try:
        urls = tmp_path / "urls.txt"
        urls.write_text("".join(http_target.url(f"/ok/{n}") + "\n" for n in range(1, 21)))
        out = tmp_path / "out.jsonl"
        done = run_cli(["submit", str(urls), "--wait", "-q", "-o", str(out)], env, timeout=60)
        assert done.returncode == 0, done.stderr.decode()
        results = [json.loads(line) for line in out.read_text().splitlines()]
        assert sorted(r["size"] for r in results) == list(range(1, 21))
        assert {r["worker"] for r in results} == {"arq-cli-worker"}
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
        log.close()
