"""Logging set-up: plain text or one JSON object per line, with job ids attached and secrets masked."""

from __future__ import annotations

import contextvars
import logging
import re
import sys
import time
from typing import Any

import orjson

from worker.redact import redact

# Set by the task for the chunk it runs; every log record made while running it carries the ids.
JOB_CONTEXT: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "fetchfleet_job", default=None
)

_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


# The one masking function (worker/redact.py), under the name this module has always exported.
redact_text = redact


def bind_job(batch: str, chunk: str | None = None) -> contextvars.Token[dict[str, str] | None]:
    ids = {"batch": batch} if chunk is None else {"batch": batch, "chunk": chunk}
    return JOB_CONTEXT.set(ids)


class RedactingFilter(logging.Filter):
    """Formats the message once, masks credentials in it, and attaches the current job's ids."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = redact_text(record.getMessage())
        record.msg, record.args = message, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info))
        ids = JOB_CONTEXT.get()
        if ids:
            for key, value in ids.items():
                if not hasattr(record, key):
                    setattr(record, key, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, then batch/chunk ids and any `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                doc[key] = value if isinstance(value, str | int | float | bool | None) else str(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = redact_text(self.formatException(record.exc_info))
        if record.exc_text:
            doc["exc"] = record.exc_text
        return orjson.dumps(doc).decode()


# What a fetched server's text (a Location, a robots.txt error) must not bring into a text log: controls
# that drive a terminal, end a line (a forged record) or reorder text; producer/output.py's set.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")


def _escaped(text: str) -> str:
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if _UNPRINTABLE.search(message):  # one record, one line (a traceback below it stays as it is)
            record.msg, record.args = _escaped(message), None
        line = super().format(record)
        ids = [f"{k}={getattr(record, k)}" for k in ("batch", "chunk") if hasattr(record, k)]
        if ids:
            first, nl, rest = line.partition("\n")
            line = f"{first} [{' '.join(ids)}]{nl}{rest}"
        return line


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Configure the root logger once for the process (replacing any earlier handler)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # arq logs every job's arguments, which are URLs that may carry credentials: keep it to warnings.
    logging.getLogger("arq").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
