"""Starting fetchfleet workers and CLI commands as real processes for end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def fetchfleet_env(redis_url: str, **settings: str | int | bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FETCHFLEET_")}
    env["FETCHFLEET_REDIS_URL"] = redis_url
    env["PYTHONUNBUFFERED"] = "1"
    for key, value in settings.items():
        env[f"FETCHFLEET_{key.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
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
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)
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
