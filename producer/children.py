"""Children that cannot outlive `fetchfleet run`: own process group, parent-death signal, bounded stop."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0, sig: int = signal.SIGTERM) -> int:
    """Ask a child to stop, kill it if it has not within `timeout`; its exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(10)


def parent_death_signal(sig: int) -> Callable[[], None] | None:
    """A preexec_fn that makes the kernel send `sig` to the child when this process dies (Linux only).

    It covers what no `finally` can: a SIGKILL of `fetchfleet run`, or a crash of the interpreter.
    The kernel ties it to the forking *thread*: spawn from the main thread, never from a pool thread.
    """
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # loaded before fork: the child may not import or allocate
    parent = os.getpid()

    def arm() -> None:
        libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:  # the parent died between fork and prctl: nobody will signal us
            os.kill(os.getpid(), sig)

    return arm


class Child:
    """One process in a process group of its own, so that a terminal's Ctrl-C reaches only the parent,
    which then stops its children in order, and a stop reaches anything the child itself started."""

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        env: dict[str, str],
        log_path: Path,
        death_signal: int = signal.SIGTERM,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                list(args),
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=parent_death_signal(death_signal),
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def terminate(self) -> None:
        """Ask the whole group to stop; see `reap` for the wait."""
        if self.alive():
            self._signal_group(signal.SIGTERM)

    def kill(self) -> int:
        """Stop the whole group at once (SIGKILL) and reap it; returns the exit code."""
        if self.alive():
            self._signal_group(signal.SIGKILL)
        return self.proc.wait()

    def reap(self, deadline: float) -> int:
        """Wait until `deadline` (monotonic) for a clean exit, then kill the group; returns the exit code."""
        try:
            return self.proc.wait(max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            self._signal_group(signal.SIGKILL)  # the leader and anything it started
        return self.proc.wait()


def stop_all(children: Sequence[Child], grace: float, again_after: float | None = None) -> None:
    """SIGTERM every child at once, then SIGKILL what is left after `grace` seconds in total.

    `again_after`: send a second SIGTERM after this long; a worker drains its fetches on the first and
    stops at once on the second (its chunks go back to the queue), which is what an interrupted run wants.
    """
    for child in children:
        child.terminate()
    start = time.monotonic()
    if again_after is not None:
        for child in children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(max(start + again_after - time.monotonic(), 0.0))
        for child in children:
            child.terminate()
    for child in children:
        child.reap(start + grace)
