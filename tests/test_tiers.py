"""The test tiers' own guarantees: the fast tier's guard, and Ctrl-C that holds however pytest started."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support.procs import ROOT, restore_sigint

pytestmark = pytest.mark.slow  # both start processes: a pytest run, a Python child

INNER_CONFTEST = """
import subprocess, sys
import pytest

pytest_plugins = ["tests.tiers"]


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: starts processes")


@pytest.fixture(scope="session")
def server():
    return subprocess.run([sys.executable, "-c", "pass"], check=True)  # like the private redis-server


@pytest.fixture
def per_test_server():
    return subprocess.run([sys.executable, "-c", "pass"], check=True)
"""

INNER_TESTS = """
import asyncio, subprocess, sys
import pytest


def test_unmarked_spawns():
    subprocess.run([sys.executable, "-c", "pass"], check=True)


async def test_unmarked_spawns_through_asyncio():
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await proc.wait()


def test_unmarked_uses_a_per_test_server(per_test_server):
    pass


@pytest.mark.slow
def test_marked_spawns():
    subprocess.run([sys.executable, "-c", "pass"], check=True)


def test_unmarked_uses_the_session_server(server):
    pass


def test_unmarked_in_process():
    assert sum(range(4)) == 6
"""


def test_an_unmarked_test_that_starts_a_process_fails(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(textwrap.dedent(INNER_CONFTEST))
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(INNER_TESTS))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "-o", "asyncio_mode=auto"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    out = proc.stdout
    print(out)
    failed = {line.split("::")[1].split()[0] for line in out.splitlines() if line.startswith("FAILED")}
    errors = {line.split("::")[1].split()[0] for line in out.splitlines() if line.startswith("ERROR")}
    passed = {line.split("::")[1].split()[0] for line in out.splitlines() if line.startswith("PASSED")}
    assert failed == {"test_unmarked_spawns", "test_unmarked_spawns_through_asyncio"}, out
    assert errors == {"test_unmarked_uses_a_per_test_server"}, out  # its fixture started the process
    assert passed == {
        "test_marked_spawns",
        "test_unmarked_uses_the_session_server",
        "test_unmarked_in_process",
    }, out
    assert "starts a process but is not marked slow" in out


@pytest.mark.parametrize("restore", [False, True], ids=["inherited", "restored"])
def test_restore_sigint_gives_a_child_ctrl_c_even_when_pytest_ignores_it(restore: bool) -> None:
    def preexec() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # as `nohup` or a script's `cmd &` starts pytest
        if restore:
            restore_sigint()

    child = subprocess.run(
        [sys.executable, "-c", "import signal; print(signal.getsignal(signal.SIGINT) is signal.SIG_IGN)"],
        preexec_fn=preexec,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    # Python installs its KeyboardInterrupt handler only over a default SIGINT, never over an ignored one.
    assert child.stdout.strip() == str(not restore)
