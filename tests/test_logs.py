"""Structured logs: one JSON object per line, job ids attached, credentials never written."""

from __future__ import annotations

import contextvars
import io
import json
import logging

import pytest

from worker.errors import SettingsError
from worker.logs import JsonFormatter, RedactingFilter, TextFormatter, bind_job, redact_text
from worker.settings import load_settings, unknown_variables


def capture(formatter: logging.Formatter) -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger(f"fetchfleet.test.{id(out)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, out


def test_json_lines_carry_job_ids_and_no_passwords() -> None:
    logger, out = capture(JsonFormatter())

    def in_chunk() -> None:
        bind_job("b123", "b123:c7")
        logger.warning("Redis at %s failed", "redis://app:s3cret@redis:6379/0")
        try:
            raise ValueError("fetch http://bob:hunter2@example.test/x failed")
        except ValueError:
            logger.exception("internal error")

    contextvars.copy_context().run(in_chunk)
    logger.info("idle", extra={"queue_depth": 4})
    lines = out.getvalue().splitlines()
    docs = [json.loads(line) for line in lines if line.startswith("{")]
    assert len(docs) == 3, lines
    first, second, third = docs
    assert first["msg"] == "Redis at redis://app:***@redis:6379/0 failed"
    assert (first["batch"], first["chunk"], first["level"]) == ("b123", "b123:c7", "warning")
    assert second["batch"] == "b123" and "hunter2" not in second["exc"] and "bob:***@" in second["exc"]
    assert "batch" not in third and third["queue_depth"] == 4
    assert "s3cret" not in out.getvalue() and "hunter2" not in out.getvalue()


def test_text_format_appends_ids() -> None:
    logger, out = capture(TextFormatter())
    contextvars.copy_context().run(lambda: (bind_job("b9"), logger.info("hello")))
    assert out.getvalue().rstrip().endswith("hello [batch=b9]")


def test_text_lines_carry_no_control_characters_of_a_server() -> None:
    """A robots.txt that redirected too often logged its Location as sent: a fetched server wrote
    ESC sequences (clear the screen, colours) and line ends (a forged record) into the worker's log."""
    logger, out = capture(TextFormatter())
    location = "/robots.txt#\x1b[2J\x1b[31m\nFAKE 2026 ERROR fetchfleet.worker: gone\u202e"
    logger.info("robots.txt: more than 5 redirects (last to %s)", location)
    logger.info("tab\tkept as an escape too, like the CLI's")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and all(line.isprintable() for line in lines), lines
    assert "\\x1b[2J\\x1b[31m\\nFAKE" in lines[0] and lines[0].endswith("\\u202e)")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("redis://:pw@h:6379/0", "redis://***@h:6379/0"),
        ("rediss://user:p%40ss@h/1 and http://a:b@c/", "rediss://user:***@h/1 and http://a:***@c/"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("mail me at a@b.c", "mail me at a@b.c"),
    ],
)
def test_redact_text(text: str, expected: str) -> None:
    assert redact_text(text) == expected


def test_unknown_fetchfleet_variables_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    assert unknown_variables({"FETCHFLEET_CONCURRENCY": "5", "PATH": "/bin"}) == []
    assert unknown_variables({"fetchfleet_metrics_prot": "9100"}) == ["fetchfleet_metrics_prot"]
    monkeypatch.setenv("FETCHFLEET_LOG_FROMAT", "json")
    with pytest.raises(
        SettingsError,
        match=r"FETCHFLEET_LOG_FROMAT: not a fetchfleet setting \(did you mean FETCHFLEET_LOG_FORMAT",
    ):
        load_settings()
    monkeypatch.delenv("FETCHFLEET_LOG_FROMAT")
    monkeypatch.setenv("FETCHFLEET_LOG_FORMAT", "JSON")
    monkeypatch.setenv("FETCHFLEET_LOG_LEVEL", "debug")
    s = load_settings()
    assert (s.log_format, s.log_level) == ("json", "DEBUG")
    monkeypatch.setenv("FETCHFLEET_LOG_FORMAT", "xml")
    with pytest.raises(SettingsError, match="FETCHFLEET_LOG_FORMAT"):
        load_settings()
