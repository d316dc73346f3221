"""Finding a live `fetchfleet run`'s private server: only this user's, only live ones, newest first."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from producer.localruns import live_runs, settings_for, write_connection
from worker.redact import redact
from worker.settings import load_settings


def _dead_pid() -> int:
    """A pid no process has now (the fast tier starts no process to get one)."""
    pid = 4_000_000  # above Linux's largest pid_max (2**22)
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid -= 1


def test_live_runs_newest_first_and_only_live_ones(tmp_path: Path) -> None:
    older, newer, dead = (tmp_path / f"fetchfleet-run-{pid}-x{i}" for i, pid in
                          enumerate((os.getpid(), os.getpid(), _dead_pid())))  # fmt: skip
    for d, port in ((older, 1), (dead, 3), (newer, 2)):
        d.mkdir()
        write_connection(d, f"redis://127.0.0.1:{port}/0", f"pw{port}")
        time.sleep(0.02)  # distinct mtimes
    (tmp_path / f"fetchfleet-run-{os.getpid()}-junk").mkdir()  # not started yet: no file
    junk = tmp_path / f"fetchfleet-run-{os.getpid()}-bad"
    junk.mkdir()
    (junk / "redis.json").write_text("{not json")
    assert [r.url for r in live_runs(tmp_path)] == ["redis://127.0.0.1:2/0", "redis://127.0.0.1:1/0"]
    assert (newer / "redis.json").stat().st_mode & 0o777 == 0o600


def test_only_readers_without_a_redis_url_are_redirected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)  # gettempdir() reads TMPDIR again
    d = tmp_path / f"fetchfleet-run-{os.getpid()}-a"
    d.mkdir()
    write_connection(d, "redis://127.0.0.1:7/0", "hush-hush-1234")
    base = load_settings()
    moved, note = settings_for("stats", base, {})
    assert moved.redis_url == "redis://127.0.0.1:7/0" and note is not None
    assert moved.redis_password is not None and moved.redis_password.get_secret_value() == "hush-hush-1234"
    assert "hush-hush-1234" not in redact("auth hush-hush-1234")  # masked in any message from now on
    for command, environ in (("submit", {}), ("run", {}), ("stats", {"FETCHFLEET_REDIS_URL": "redis://h"})):
        assert settings_for(command, base, environ) == (base, None)
