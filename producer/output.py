"""Result writers: JSON lines (the stored documents, written through unchanged) or CSV."""

from __future__ import annotations

import csv
import io
import sys
from typing import IO, Protocol

import orjson

CSV_FIELDS = (
    "index",
    "url",
    "final_url",
    "status",
    "ok",
    "error_kind",
    "error_message",
    "size",
    "sha256",
    "content_type",
    "elapsed_ms",
    "attempts",
    "redirects",
    "worker",
)
# With bodies kept: the body as text, or base64 as `body_encoding` says (never dropped silently).
CSV_BODY_FIELDS = ("body", "body_encoding", "body_truncated")
FORMATS = ("jsonl", "csv")


class ResultWriter(Protocol):
    def write(self, document: bytes) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class JsonLinesWriter:
    def __init__(self, out: IO[bytes], owned: bool) -> None:
        self._out, self._owned = out, owned

    def write(self, document: bytes) -> None:
        self._out.write(document + b"\n")

    def flush(self) -> None:
        self._out.flush()

    def close(self) -> None:
        self._out.flush()
        if self._owned:
            self._out.close()


class CsvWriter:
    def __init__(self, out: IO[bytes], owned: bool, body: bool = False) -> None:
        self._raw, self._owned = out, owned
        self._text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=True)
        self._csv = csv.writer(self._text)
        self._fields = CSV_FIELDS + CSV_BODY_FIELDS if body else CSV_FIELDS
        self._csv.writerow(self._fields)

    def write(self, document: bytes) -> None:
        r = orjson.loads(document)
        err = r.get("error") or {}
        row = {**r, "error_kind": err.get("kind"), "error_message": err.get("message")}
        self._csv.writerow(["" if row.get(f) is None else row.get(f) for f in self._fields])

    def flush(self) -> None:
        self._text.flush()
        self._raw.flush()

    def close(self) -> None:
        self._text.flush()
        if self._owned:
            self._text.close()
        else:
            self._text.detach()


def open_writer(path: str, fmt: str = "jsonl", body: bool = False) -> ResultWriter:
    """`path` "-" means standard output; `body`: CSV gets the body columns."""
    if path == "-":
        out, owned = sys.stdout.buffer, False
    else:
        out, owned = open(path, "wb"), True  # noqa: SIM115
    if fmt == "csv":
        return CsvWriter(out, owned, body)
    return JsonLinesWriter(out, owned)
