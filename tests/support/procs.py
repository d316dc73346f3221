"""Processes the tests and the benchmark start (fetchfleet workers, CLI commands, gather baselines), and
what /proc says about them (RSS, CPU time)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from producer.children import stop_process
from producer.cli import main
from worker.settings import environment

ROOT = Path(__file__).resolve().parents[2]  # the repository: tests/support/procs.py
TICKS = os.sysconf("SC_CLK_TCK")
WORKER = ("-m", "worker")  # `python -m worker`: uvloop, as users run it
ARQ_WORKER = ("-m", "arq", "worker.WorkerSettings")  # the same worker, started by arq's command line
PLAIN_LOOP_WORKER = ("-m", "ops.bench.plain_worker")  # the same worker on asyncio's own loop


def worker_command(loop: str) -> tuple[str, ...]:
    """The benchmark's `--loop` choice as a worker command line."""
    return WORKER if loop == "uvloop" else PLAIN_LOOP_WORKER


def rss_kib(pid: int) -> int:
    """Resident set size of a live process, in KiB (VmRSS)."""
    return _status_kib(pid, "VmRSS")


def peak_rss_kib(pid: int) -> int:
    """The most a live process has been resident so far, in KiB (VmHWM)."""
    return _status_kib(pid, "VmHWM")


def rss_mb(pid: int) -> float:
    return rss_kib(pid) / 1024


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a live process has used so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def restore_sigint() -> None:
    """A `preexec_fn` for a child a test will Ctrl-C: SIGINT back to its default before exec.

    A shell runs a non-interactive background job (`nohup`, `cmd &` in a script, some CI runners)
    with SIGINT ignored; an ignored signal stays ignored across fork and exec, and a Python child
    that starts with SIGINT ignored never raises KeyboardInterrupt. Without this, such a test passes
    or hangs depending on how the suite was started, not on the code under test.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def fetchfleet_env(redis_url: str, **settings: object) -> dict[str, str]:
    env = environment(os.environ, redis_url=redis_url, **settings)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class WorkerProcess:
    """A worker as a real process (`command`: `python -m worker` or `arq worker.WorkerSettings`), its
    output in `log_path`."""

    def __init__(self, env: dict[str, str], log_path: Path, command: tuple[str, ...] = WORKER) -> None:
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

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until the worker logs that it started; its log in the error if it exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited at start:\n{self.log()}")
            if b" started" in self.log_path.read_bytes():
                return
            time.sleep(0.05)
        raise RuntimeError(f"worker did not start within {timeout} s:\n{self.log()[-3000:]}")

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 20) -> int:
        try:
            return stop_process(self.proc, timeout)
        finally:
            self._log.close()


def stop_all(procs: list[subprocess.Popen[bytes]], timeout: float = 10.0) -> None:
    """SIGTERM to every process first, so they wind down together; then each gets `timeout` to exit."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        stop_process(p, timeout)


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


def start_cli(args: list[str], env: dict[str, str], **popen: Any) -> subprocess.Popen[bytes]:
    """`fetchfleet ARGS` as a process the test goes on beside (stdout and stderr piped unless given)."""
    popen.setdefault("stdout", subprocess.PIPE)
    popen.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen([sys.executable, "-m", "producer", *args], env=env, cwd=ROOT, **popen)


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


class GatherProc:
    """One copy of ops/bench/gather_baseline.py that warms up, then waits for the word to go."""

    def __init__(
        self,
        base: str,
        first: int,
        count: int,
        concurrency: int,
        loop: str,
        write: Path | None = None,
        extra: tuple[str, ...] = (),
    ) -> None:
        args = [sys.executable, "-m", "ops.bench.gather_baseline", base, "--first", str(first)]
        args += ["--count", str(count), "--concurrency", str(concurrency), "--loop", loop, "--wait-go"]
        if write is not None:
            args += ["--write", str(write)]
        args += extra
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
