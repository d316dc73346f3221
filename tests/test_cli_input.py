"""Bad input is refused whole: exit 2, every bad line named, no traceback, nothing written to Redis."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from tests.support.procs import fetchfleet_env, run_cli_in_process


def test_bad_lines_named_and_nothing_written(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfdbinary: pytest.CaptureFixture[bytes]
) -> None:
    lines = [
        "http://example.com/good",
        "not a url",
        "ftp://example.com/file",
        "# a comment",
        "",
        "http://exa mple.com/",
        "http://example.com/" + "a" * 9000,
        "https://example.com/also-good",
    ]
    f = tmp_path / "bad.txt"
    f.write_text("\n".join(lines) + "\n")
    proc = run_cli_in_process(
        ["submit", str(f), "--wait"], fetchfleet_env(redis_url), monkeypatch, capfdbinary
    )
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert "Traceback" not in err
    named = sorted(int(line.split(":")[1]) for line in err.splitlines() if line.startswith(f"{f}:"))
    assert named == [2, 3, 6, 7], err
    with redis.Redis.from_url(redis_url) as c:
        assert c.dbsize() == 0


def test_json_lines_errors_name_the_line(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfdbinary: pytest.CaptureFixture[bytes]
) -> None:
    f = tmp_path / "in.jsonl"
    f.write_text(
        '{"url": "http://example.com/a", "method": "POST", "body": "x"}\n'
        '{"url": "http://example.com/b", "method": "DELETE"}\n'
        '{"url": 5}\n'
        "{broken\n"
    )
    proc = run_cli_in_process(["submit", str(f)], fetchfleet_env(redis_url), monkeypatch, capfdbinary)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert [ln.split(":")[1] for ln in err.splitlines() if ln.startswith(str(f))] == ["2", "3", "4"]


def test_bad_setting_names_the_variable(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfdbinary: pytest.CaptureFixture[bytes]
) -> None:
    f = tmp_path / "ok.txt"
    f.write_text("http://example.com/\n")
    env = fetchfleet_env(redis_url, concurrency="lots")
    proc = run_cli_in_process(["submit", str(f)], env, monkeypatch, capfdbinary)
    err = proc.stderr.decode()
    assert proc.returncode == 2
    assert "FETCHFLEET_CONCURRENCY" in err and "Traceback" not in err


def test_missing_file_is_usage_error(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfdbinary: pytest.CaptureFixture[bytes]
) -> None:
    proc = run_cli_in_process(
        ["submit", str(tmp_path / "nope.txt")], fetchfleet_env(redis_url), monkeypatch, capfdbinary
    )
    assert proc.returncode == 2
    assert "no such file" in proc.stderr.decode()


def test_unwritable_output_refused_before_anything_is_queued(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfdbinary: pytest.CaptureFixture[bytes]
) -> None:
    f = tmp_path / "ok.txt"
    f.write_text("http://example.com/\n")
    target = tmp_path / "missing" / "out.jsonl"
    proc = run_cli_in_process(
        ["submit", str(f), "--wait", "-o", str(target)], fetchfleet_env(redis_url), monkeypatch, capfdbinary
    )
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert "does not exist" in err and "Traceback" not in err
    with redis.Redis.from_url(redis_url) as c:
        assert c.dbsize() == 0
