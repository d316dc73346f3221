"""Bad input is refused whole: exit 2, every bad line named, no traceback, nothing written to Redis."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
import redis

from producer import cli, submitting
from tests.support.http_target import HttpTarget
from tests.support.procs import WorkerProcess, fetchfleet_env, run_cli_in_process
from worker.contract import batch_key
from worker.engine import arq_redis_settings
from worker.settings import load_settings


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


SECRET = "Pw-" + "hunter2-Zq"
ABSURD_SETTINGS = [
    ("redis_url", f"redis://:{SECRET}@[::1"),  # urlsplit: Invalid IPv6 URL
    ("redis_url", f"redis://:{SECRET}@h:99999/0"),
    ("redis_url", f"redis://:{SECRET}@h:abc/0"),
    ("redis_url", f"redis://:{SECRET}@h/notadb"),  # redis-py read it as db 0, arq as a traceback
    ("redis_url", f"redis://:{SECRET}@h/0?db=x"),
    ("redis_url", f"unix://:{SECRET}@/tmp/r.sock?db=x"),
    ("redis_url", f"redis://:{SECRET}@h/0?socket_timeout=soon"),
    ("total_timeout", "inf"),  # passed gt=0, then int(inf) in the worker
    ("connect_timeout", "inf"),
    ("result_ttl", "99999999999999999999"),  # Redis: "value is not an integer or out of range"
    ("user_agent", "fetchfleet\r\nX-Injected: 1"),  # aiohttp refuses it: every fetch failed
]


@pytest.mark.parametrize(("field", "value"), ABSURD_SETTINGS)
# Every command, `worker` and `python -m worker` too, reads the settings with load_settings before anything.
@pytest.mark.parametrize("command", [["submit", "-"], ["stats"]], ids=["submit", "stats"])
def test_absurd_settings_are_named_in_one_line(
    field: str,
    value: str,
    command: list[str],
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capfdbinary: pytest.CaptureFixture[bytes],
) -> None:
    """Each of these was a traceback (or a Redis error naming no setting) from every command."""
    env = {**fetchfleet_env(redis_url), f"FETCHFLEET_{field.upper()}": value}
    proc = run_cli_in_process(command, env, monkeypatch, capfdbinary)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert f"FETCHFLEET_{field.upper()}" in err and "Traceback" not in err, err
    assert SECRET not in err + proc.stdout.decode()


def test_a_redis_url_ending_in_a_slash_is_database_0_for_arq_too() -> None:
    """`redis://host:6379/` is db 0 to redis-py; arq's from_dsn read it as int("") and the worker died."""
    for url, db in [
        ("redis://h:6379/", 0),
        ("redis://h:6379", 0),
        ("redis://h/3", 3),
        ("redis://h/?db=2", 2),
    ]:
        assert arq_redis_settings(load_settings(redis_url=url)).database == db, url


def test_missing_file_is_usage_error(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfdbinary: pytest.CaptureFixture[bytes]
) -> None:
    proc = run_cli_in_process(
        ["submit", str(tmp_path / "nope.txt")], fetchfleet_env(redis_url), monkeypatch, capfdbinary
    )
    assert proc.returncode == 2
    assert "no such file" in proc.stderr.decode()


def test_a_pipe_is_read_as_standard_input_is(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfdbinary: pytest.CaptureFixture[bytes]
) -> None:
    """`submit <(cmd)` names a pipe, which reads once while the input is read twice (checked, then
    queued): it was refused as 'no such file', and so was /dev/null."""
    fifo = tmp_path / "urls.fifo"
    os.mkfifo(fifo)
    lines = b"http://example.com/a\n# a comment\nhttp://example.com/b\nhttp://example.com/c\n"
    writer = threading.Thread(target=fifo.write_bytes, args=(lines,), daemon=True)
    writer.start()
    proc = run_cli_in_process(["submit", str(fifo)], fetchfleet_env(redis_url), monkeypatch, capfdbinary)
    writer.join(5)
    assert proc.returncode == 0, proc.stderr.decode()
    with redis.Redis.from_url(redis_url) as r:
        assert r.hget(batch_key(proc.stdout.decode().strip()), "submitted") == b"3"
    empty = run_cli_in_process(["submit", os.devnull], fetchfleet_env(redis_url), monkeypatch, capfdbinary)
    assert empty.returncode == 2 and "no URLs to submit" in empty.stderr.decode(), empty.stderr


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


@pytest.mark.slow
def test_a_file_changed_between_check_and_queueing_keeps_one_result_per_index(
    redis_url: str,
    http_target: HttpTarget,
    spawn_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfdbinary: pytest.CaptureFixture[bytes],
) -> None:
    """The second read queues without checking each URL again. A file edited in between: the line that
    went bad gets an invalid_url result at its own index (it was dropped before, and every later line
    took the index of the one before it), and submit says that the file changed."""
    spawn_worker(redis_url)
    f = tmp_path / "urls.txt"
    urls = [http_target.url(f"/ok/{i}") for i in range(6)]
    f.write_text("\n".join(urls) + "\n")
    real_check = submitting.check_input

    def check_then_edit(path: Path, label: str, max_body_bytes: int) -> tuple[int, str]:
        checked = real_check(path, label, max_body_bytes)
        edited = [*urls]
        edited[2] = "not a url any more"
        edited[3] = '{"url": "http://u:secret@example.com/", "bad": 1}'
        path.write_text("\n".join(edited) + "\n")
        return checked

    monkeypatch.setattr(cli, "check_input", check_then_edit)
    out = tmp_path / "out.jsonl"
    env = fetchfleet_env(redis_url, allow_private_networks=True)
    proc = run_cli_in_process(
        ["submit", str(f), "--wait", "-q", "-o", str(out)], env, monkeypatch, capfdbinary
    )
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    assert "changed after it was checked" in err, err
    results = sorted((orjson.loads(line) for line in out.read_bytes().splitlines()), key=lambda r: r["index"])
    assert [r["index"] for r in results] == list(range(6))
    assert [r["url"] for r in results] == [
        urls[0], urls[1], "not a url any more", "http://u:***@example.com/", urls[4], urls[5]
    ]  # fmt: skip
    assert [r["ok"] for r in results] == [True, True, False, False, True, True]
    assert results[2]["error"]["kind"] == results[3]["error"]["kind"] == "invalid_url"
    assert "changed after" in results[3]["error"]["message"]
    assert "secret" not in out.read_text()
