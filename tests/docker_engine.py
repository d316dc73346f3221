"""A Docker engine for the real-engine tests: as found, or started by ../shared/docker-local.sh."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.compose_local import ROOT

SHARED_SCRIPT = ROOT.parent / "shared" / "docker-local.sh"
ENGINE_DIR = Path(tempfile.gettempdir()) / "fetchfleet-docker"  # the script's own cache and dockerd.pid


class NoDockerEngine(UserWarning):
    """The real-engine tests could not run here."""


def sh(*argv: str, timeout: float = 300, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} -> {proc.returncode}\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
        )
    return proc


def engine_ready() -> bool:
    if shutil.which("docker") is None:
        return False
    info = sh("docker", "info", check=False, timeout=60)
    return info.returncode == 0 and sh("docker", "compose", "version", check=False).returncode == 0


def skip_loudly(reason: str) -> None:
    warnings.warn(NoDockerEngine(f"real-engine compose tests skipped: {reason}"), stacklevel=2)
    pytest.skip(f"no Docker engine: {reason}")


@dataclass
class Engine:
    started_pid: int | None  # dockerd, when this module started it
    timings: dict[str, float] = field(default_factory=dict)

    def stop(self) -> None:
        if self.started_pid is None:
            return
        try:
            os.kill(self.started_pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and running(self.started_pid):
            time.sleep(0.2)
        if running(self.started_pid):
            os.kill(self.started_pid, signal.SIGKILL)


def running(pid: int) -> bool:
    """Alive and not a zombie (dockerd is not our child: its parent, the script's shell, is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return not re.search(r"^State:\s+Z", status, re.M)


def start_engine() -> Engine:
    if engine_ready():
        return Engine(started_pid=None)
    if not SHARED_SCRIPT.is_file():
        skip_loudly(f"`docker info` fails and {SHARED_SCRIPT.name} is not in ../shared beside the clone")
    if os.geteuid() != 0:
        skip_loudly(f"`docker info` fails and ../shared/{SHARED_SCRIPT.name} needs root")
    started = time.monotonic()
    (ENGINE_DIR / "dockerd.pid").unlink(missing_ok=True)
    proc = sh(
        "bash",
        "-c",
        'source "$1"',
        "docker-local",
        str(SHARED_SCRIPT),
        check=False,
        timeout=1200,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "FF_DOCKER_DIR": str(ENGINE_DIR)},
    )
    pid_file = ENGINE_DIR / "dockerd.pid"
    engine = Engine(started_pid=int(pid_file.read_text()) if pid_file.is_file() else None)
    engine.timings["engine start"] = time.monotonic() - started
    if not engine_ready():
        engine.stop()
        # Here (root, the script beside the clone) an engine is promised: that it failed is a failure.
        pytest.fail(f"../shared/{SHARED_SCRIPT.name} did not bring up an engine:\n{proc.stdout}{proc.stderr}")
    return engine
