"""Result writers: JSON lines (the stored documents, written through unchanged) or CSV."""

from __future__ import annotations

import contextlib
import csv
import heapq
import io
import os
import re
import sqlite3
import stat
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

import orjson

from worker.contract import MAX_INDEX
from worker.errors import OutputFailed, UsageError

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
    def flush(self) -> None: ...
    def close(self) -> None: ...


def _failed(label: str, exc: OSError) -> OutputFailed:
    return OutputFailed(f"{label}: cannot write results: {exc.strerror or exc}")


class JsonLinesWriter:
    def __init__(self, out: IO[bytes], owned: bool, label: str = "standard output") -> None:
        self._out, self._owned, self._label = out, owned, label

    # BrokenPipeError passes: a reader that stopped (`| head`) is no failure (producer.cli).
    def write(self, document: bytes) -> None:
        try:
            self._out.write(document + b"\n")
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise _failed(self._label, exc) from None

    def flush(self) -> None:
        try:
            self._out.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise _failed(self._label, exc) from None

    def close(self) -> None:
        try:
            self.flush()
        finally:
            if self._owned:
                with contextlib.suppress(OSError):  # its failed flush is the one reported
                    self._out.close()


class CsvWriter:
    def __init__(
        self,
        out: IO[bytes],
        owned: bool,
        header: bool = True,
        body: bool = False,
        label: str = "standard output",
    ) -> None:
        self._raw, self._owned, self._label = out, owned, label
        self._text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=True)
        self._csv = csv.writer(self._text)
        self._fields = CSV_FIELDS + CSV_BODY_FIELDS if body else CSV_FIELDS
        if header:
            self._csv.writerow(self._fields)

    def write(self, document: bytes) -> None:
        r = orjson.loads(document)
        err = r.get("error") or {}
        row = {**r, "error_kind": err.get("kind"), "error_message": err.get("message")}
        try:
            self._csv.writerow([csv_cell(row.get(f)) for f in self._fields])
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise _failed(self._label, exc) from None

    def flush(self) -> None:
        try:
            self._text.flush()
            self._raw.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise _failed(self._label, exc) from None

    def close(self) -> None:
        try:
            self.flush()
        finally:
            if self._owned:
                with contextlib.suppress(OSError):  # its failed flush is the one reported
                    self._text.close()
            else:
                with contextlib.suppress(OSError):  # standard output stays open whatever happened
                    self._text.detach()


def open_writer(path: str, fmt: str = "jsonl", body: bool = False) -> ResultWriter:
    """`path` "-" means standard output; `body`: CSV gets the body columns."""
    if path == "-":
        out, owned, label = sys.stdout.buffer, False, "standard output"
    else:
        out, owned, label = open(path, "wb"), True, path  # noqa: SIM115
    if fmt == "csv":
        return CsvWriter(out, owned, body=body, label=label)
    return JsonLinesWriter(out, owned, label)


# ---- an output opened before any work is queued ---------------------------------------------------


@dataclass
class Output:
    """An output file opened (so checked writable) before the batch is queued, truncated only once the
    batch exists: a refused submit neither leaves an orphan batch nor wipes an earlier results file."""

    path: str
    file: IO[bytes] | None  # None: standard output
    created: bool = False
    resumed: bool = False
    # indexes already in the file, for --resume (a bitmap: one bit per index, so 10 million URLs cost 1.2 MB)
    seen: bytearray = field(default_factory=bytearray)
    resumed_lines: int = 0

    def has(self, index: int) -> bool:
        byte = index >> 3
        return 0 <= byte < len(self.seen) and bool(self.seen[byte] & (1 << (index & 7)))

    def mark(self, index: int) -> None:
        byte = index >> 3
        if byte >= len(self.seen):
            self.seen.extend(bytes(byte + 1 - len(self.seen)))
        self.seen[byte] |= 1 << (index & 7)

    def indexes(self) -> Iterator[int]:
        """The indexes already in the file, in order."""
        for byte_no, byte in enumerate(self.seen):
            if byte:
                for bit in range(8):
                    if byte & (1 << bit):
                        yield (byte_no << 3) + bit

    def abandon(self) -> None:
        """Nothing was queued after all: close, and remove the file if this run created it."""
        if self.file is not None:
            self.file.close()
            if self.created:
                with contextlib.suppress(OSError):
                    os.unlink(self.path)

    def writer(self, fmt: str, body: bool = False) -> ResultWriter:
        if self.file is None:
            out, owned = sys.stdout.buffer, False
        else:
            out, owned = self.file, True
            # Only a regular file is emptied: /dev/null, a FIFO or a terminal cannot be (EINVAL, ESPIPE)
            if not self.resumed and stat.S_ISREG(os.fstat(out.fileno()).st_mode):
                out.seek(0)
                out.truncate()
        label = self.path if self.file is not None else "standard output"
        if fmt == "csv":
            return CsvWriter(out, owned, header=not self.resumed_lines, body=body, label=label)
        return JsonLinesWriter(out, owned, label)


def open_output(path: str, fmt: str = "jsonl", resume: bool = False) -> Output:
    """Open `path` for writing now, without truncating it; `--resume` reads which indexes it holds."""
    if path == "-":
        if resume:
            raise UsageError("--resume needs an output file (-o PATH), not standard output")
        return Output(path, None)
    target = Path(path)
    if target.is_dir():
        raise UsageError(f"{path}: is a directory")
    if not target.resolve().parent.is_dir():
        raise UsageError(f"{path}: directory {target.resolve().parent} does not exist")
    existed = target.exists()
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise UsageError(f"{path}: cannot write: {exc.strerror}") from None
    regular = stat.S_ISREG(os.fstat(fd).st_mode)
    out = Output(path, os.fdopen(fd, "r+b" if regular else "wb"), created=not existed)
    if resume:
        if not regular:
            out.abandon()
            raise UsageError(f"{path}: --resume needs a regular file")
        if fmt != "jsonl":
            out.abandon()
            raise UsageError("--resume reads the indexes of a JSON lines file: use it with --format jsonl")
        _read_back(out)
    return out


def _read_back(out: Output) -> None:
    """Note every complete line's index; cut a half-written last line (the process was killed mid-line).

    A complete line that is not a result refuses the file, changed in nothing: it was cut there, so
    `-o urls.txt --resume` (the input file by mistake) emptied it before writing results into it."""
    assert out.file is not None
    out.resumed = True
    good = 0
    out.file.seek(0)
    for number, line in enumerate(out.file, start=1):
        if not line.endswith(b"\n"):
            break
        index = _result_index(line)
        if index is None:
            out.abandon()
            raise UsageError(
                f"{out.path}:{number}: not a result line; --resume adds to a JSON lines file of results "
                "(nothing was changed)"
            )
        out.mark(index)
        good += len(line)
        out.resumed_lines += 1
    out.file.seek(good)
    out.file.truncate()


def _result_index(line: bytes) -> int | None:
    """The `index` of a result line, or None if the line is not one (an index past Redis's bitmaps,
    2^32 - 1, is none either: marking it would allocate gigabytes)."""
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    index = doc.get("index") if isinstance(doc, dict) else None
    if type(index) is not int or not 0 <= index <= MAX_INDEX:
        return None
    return index


class OrderedWriter:
    """Results in index order (`--ordered`) with bounded memory.

    A result whose turn has not come waits in a dict; past `memory_limit` waiting results, the rest wait
    in a temporary SQLite file keyed by index, so a batch whose first URL is slowest costs disk, not RAM.
    """

    def __init__(self, inner: ResultWriter, first: int = 0, memory_limit: int = 10_000) -> None:
        self.inner, self.next, self.memory_limit = inner, first, memory_limit
        self._waiting: dict[int, bytes] = {}
        self._spill: sqlite3.Connection | None = None
        self._spill_dir: tempfile.TemporaryDirectory[str] | None = None
        self.spilled = 0

    def write(self, document: bytes, index: int | None = None) -> None:
        if index is None:
            index = int(orjson.loads(document)["index"])
        if index != self.next:
            self._hold(index, document)
            return
        self.inner.write(document)
        self.next += 1
        self._release()

    def skip(self, index: int) -> None:
        """`index` is already written (a resumed file): its turn passes."""
        if index == self.next:
            self.next += 1
            self._release()
        else:
            self._hold(index, None)

    def _hold(self, index: int, document: bytes | None) -> None:
        if len(self._waiting) < self.memory_limit:
            self._waiting[index] = document or b""
            return
        try:
            if self._spill is None:
                self._spill_dir = tempfile.TemporaryDirectory(prefix="fetchfleet-ordered-")
                self._spill = sqlite3.connect(Path(self._spill_dir.name) / "wait.db")
                self._spill.execute("CREATE TABLE wait (i INTEGER PRIMARY KEY, doc BLOB)")
            self._spill.execute("INSERT OR REPLACE INTO wait VALUES (?, ?)", (index, document or b""))
        except (sqlite3.Error, OSError) as exc:  # a full temporary directory: a traceback before
            where = self._spill_dir.name if self._spill_dir is not None else tempfile.gettempdir()
            raise OutputFailed(f"{where}: cannot hold results for --ordered: {exc}") from None
        self.spilled += 1

    def _take(self, index: int) -> bytes | None:
        if index in self._waiting:
            return self._waiting.pop(index)
        if self._spill is not None:
            row = self._spill.execute("SELECT doc FROM wait WHERE i = ?", (index,)).fetchone()
            if row is not None:
                self._spill.execute("DELETE FROM wait WHERE i = ?", (index,))
                return bytes(row[0])
        return None

    def _release(self) -> None:
        while (doc := self._take(self.next)) is not None:
            if doc:
                self.inner.write(doc)
            self.next += 1

    def flush(self) -> None:
        self.inner.flush()

    def close(self) -> None:
        """Whatever still waits (a gap: `results` of an unfinished batch) goes out in index order."""
        try:
            rest: Iterable[tuple[int, bytes]] = sorted(self._waiting.items())
            if self._spill is not None:  # merged as they stream: the spilled rows are never all in memory
                rest = heapq.merge(rest, self._spill.execute("SELECT i, doc FROM wait ORDER BY i"))
            for _index, doc in rest:
                if doc:
                    self.inner.write(doc)
        finally:
            if self._spill is not None:
                self._spill.close()
            if self._spill_dir is not None:
                self._spill_dir.cleanup()
            self.inner.close()
