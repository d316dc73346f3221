"""`arq worker.WorkerSettings` runs the same worker as `fetchfleet worker`: its fetches, its exit codes,
its stop during a Redis outage (tests/test_worker_commands.py: the same claim, drain and hand-back)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from tests.support.http_target import HttpTarget
from tests.support.procs import ARQ_WORKER, WORKER, WorkerProcess, fetchfleet_env, run_cli
from tests.support.redisserver import RedisProcess

pytestmark = pytest.mark.slow  # every test here starts processes

COMMANDS = {"fetchfleet": WORKER, "arq": ARQ_WORKER}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_worker_command_fetches_and_ctrl_c_exits_130(
    command: str, redis_url: str, http_target: HttpTarget, tmp_path: Path
) -> None:
    env = fetchfleet_env(redis_url, allow_private_networks=True, worker_id=f"{command}-cli-worker")
    worker = WorkerProcess(env, tmp_path / "worker.log", COMMANDS[command])
    try:
        worker.wait_ready()
        urls = tmp_path / "urls.txt"
        urls.write_text("".join(http_target.url(f"/ok/{n}") + "\n" for n in range(1, 21)))
        out = tmp_path / "out.jsonl"
        done = run_cli(["submit", str(urls), "--wait", "-q", "-o", str(out)], env, timeout=60)
        assert done.returncode == 0, done.stderr.decode()
        results = [json.loads(line) for line in out.read_text().splitlines()]
        assert sorted(r["size"] for r in results) == list(range(1, 21))
        assert {r["worker"] for r in results} == {f"{command}-cli-worker"}
        worker.signal(signal.SIGINT)
        assert worker.proc.wait(30) == 130, worker.log()  # an interruption, as for every command
        log = worker.log()
        assert "SIGINT: taking no more chunks" in log, log  # our drain, not arq's handler
        assert "Traceback" not in log, log
    finally:
        worker.stop()


@pytest.mark.parametrize("command", list(COMMANDS))
def test_sigterm_during_a_redis_outage_ends_cleanly(command: str, tmp_path: Path) -> None:
    server = RedisProcess().start()
    worker = None
    try:
        env = fetchfleet_env(server.url, worker_id=f"{command}-outage")
        worker = WorkerProcess(env, tmp_path / "worker.log", COMMANDS[command])
        worker.wait_ready()
        server.kill()  # Redis gone while the worker waits for work
        worker.signal(signal.SIGTERM)
        assert worker.proc.wait(30) == 0, worker.log()
        log = worker.log()
        assert "while stopping: cannot reach Redis" in log, log  # said in one line ...
        assert "Traceback" not in log, log  # ... and nothing else
        assert "stopped after 0 fetches" in log, log  # every component closed
    finally:
        if worker is not None:
            worker.stop()
        server.close()
