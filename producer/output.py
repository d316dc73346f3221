"""Result writers: JSON lines (the stored documents, written through unchanged) or CSV."""

from __future__ import annotations

import csv
import io
import re
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
FORMATS = ("jsonl", "csv")


# Characters that move a terminal's cursor, recolour it, end a line or reorder text (bidi controls,
# "Trojan Source"): C0 and C1 controls, DEL, the line and paragraph separators, bidi marks.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")


def printable(text: object) -> str:
    """`text` safe for a terminal: every control character written as an escape (`\\x1b`, `\\n`)."""
    s = text if isinstance(text, str) else str(text)
    if _UNPRINTABLE.search(s) is None:
        return s
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), s)


# OWASP's CSV injection rule: a cell starting with one of these is a formula to a spreadsheet.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: object) -> object:
    """A CSV cell as written: text that a spreadsheet would run as a formula gets a leading `'`."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return "" if value is None else value


class ResultWriter(Protocol):
    def write(self, document: bytes) -> None: ...
    def close(self) -> None: ...


class JsonLinesWriter:
    def __init__(self, out: IO[bytes], owned: bool) -> None:
        self._out, self._owned = out, owned

    def write(self, document: bytes) -> None:
        self._out.write(document + b"\n")

    def close(self) -> None:
        self._out.flush()
        if self._owned:
            self._out.close()


class CsvWriter:
    def __init__(self, out: IO[bytes], owned: bool) -> None:
        self._raw, self._owned = out, owned
        self._text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=True)
        self._csv = csv.writer(self._text)
        self._csv.writerow(CSV_FIELDS)

    def write(self, document: bytes) -> None:
        r = orjson.loads(document)
        err = r.get("error") or {}
        row = {**r, "error_kind": err.get("kind"), "error_message": err.get("message")}
        self._csv.writerow([csv_cell(row.get(f)) for f in CSV_FIELDS])

    def close(self) -> None:
        self._text.flush()
        if self._owned:
            self._text.close()
        else:
            self._text.detach()


def open_writer(path: str, fmt: str = "jsonl") -> ResultWriter:
    """`path` "-" means standard output."""
    if path == "-":
        out, owned = sys.stdout.buffer, False
    else:
        out, owned = open(path, "wb"), True  # noqa: SIM115
    if fmt == "csv":
        return CsvWriter(out, owned)
    return JsonLinesWriter(out, owned)
