"""Processes the benchmark starts (fetchfleet workers, gather baselines) and what /proc says about them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from worker.settings import environment

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
TICKS = os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    """Resident set size of a live process, in MB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a live process has used so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def fetchfleet_env(redis_url: str, **settings: object) -> dict[str, str]:
    env = environment(os.environ, redis_url=redis_url, **settings)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class WorkerProc:
    """`python -m worker` (uvloop, as users run it), or the same worker on asyncio's own loop."""

    def __init__(self, env: dict[str, str], log_path: Path, loop: str = "uvloop") -> None:
        self.log_path = log_path
        cmd = (
            [sys.executable, "-m", "worker"]
            if loop == "uvloop"
            else [sys.executable, str(HERE / "plain_worker.py")]
        )
        with log_path.open("wb") as log:
            self.proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited at start:\n{self.log_path.read_text(errors='replace')}")
            if b" started" in self.log_path.read_bytes():
                return
            time.sleep(0.05)
        raise RuntimeError("worker did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class GatherProc:
    """One copy of gather_baseline.py that warms up, then waits for the word to go."""

    def __init__(
        self, base: str, first: int, count: int, concurrency: int, loop: str, write: Path | None = None
    ) -> None:
        args = [sys.executable, str(HERE / "gather_baseline.py"), base, "--first", str(first)]
        args += ["--count", str(count), "--concurrency", str(concurrency), "--loop", loop, "--wait-go"]
        if write is not None:
            args += ["--write", str(write)]
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT)

    def wait_ready(self) -> None:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != b"ready":
            self.proc.kill()
            raise RuntimeError(f"gather baseline did not start: {line!r}")

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.flush()

    def figures(self) -> dict[str, float]:
        out, _ = self.proc.communicate(timeout=600)
        return json.loads(out.decode().strip().splitlines()[-1])
