"""Starting fetchfleet workers and CLI commands as real processes for end-to-end tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from producer.children import stop_process
from worker.settings import environment

ROOT = Path(__file__).resolve().parent.parent


def fetchfleet_env(redis_url: str, **settings: str | int | bool) -> dict[str, str]:
    env = environment(os.environ, redis_url=redis_url, **settings)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class WorkerProcess:
    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker"],
            env=env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
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
