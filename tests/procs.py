"""Starting fetchfleet workers and CLI commands as real processes for end-to-end tests (or in-process)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from producer.children import stop_process
from producer.cli import main
from worker.settings import environment

ROOT = Path(__file__).resolve().parent.parent


def restore_sigint() -> None:
    """A `preexec_fn` for a child a test will Ctrl-C: SIGINT back to its default before exec.

    A shell runs a non-interactive background job (`nohup`, `cmd &` in a script, some CI runners)
    with SIGINT ignored; an ignored signal stays ignored across fork and exec, and a Python child
    that starts with SIGINT ignored never raises KeyboardInterrupt. Without this, such a test passes
    or hangs depending on how the suite was started, not on the code under test.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def fetchfleet_env(redis_url: str, **settings: str | int | bool) -> dict[str, str]:
    env = environment(os.environ, redis_url=redis_url, **settings)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class WorkerProcess:
    def __init__(
        self, env: dict[str, str], log_path: Path, command: tuple[str, ...] = ("-m", "worker")
    ) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, *command],
            env=env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=restore_sigint,  # tests Ctrl-C workers; a worker started by hand has it
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 20) -> int:
        try:
            return stop_process(self.proc, timeout)
        finally:
            self._log.close()


def run_cli(
    args: list[str], env: dict[str, str], timeout: float = 120, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "producer", *args],
        env=env,
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        timeout=timeout,
        check=False,
    )


def run_cli_in_process(
    args: list[str],
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[bytes],
) -> subprocess.CompletedProcess[bytes]:
    """`run_cli` without a process, for what one call of `main` proves as well: exit code and message.

    `python -m producer` is `sys.exit(main())`, so an escaping exception fails the test here as it
    would print a traceback there. Keep `run_cli` where the process itself is the point (signals,
    children, what a fresh interpreter imports).
    """
    for name in {n for n in os.environ if n.startswith("FETCHFLEET_")} - env.keys():
        monkeypatch.delenv(name)
    for name, value in env.items():
        if os.environ.get(name) != value:
            monkeypatch.setenv(name, value)
    policy = asyncio.get_event_loop_policy()
    try:
        code = main(args)
    finally:
        asyncio.set_event_loop_policy(policy)  # main installs uvloop's for itself
        sys.stdout.flush()
        sys.stderr.flush()
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess(["fetchfleet", *args], code, out, err)
