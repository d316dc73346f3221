"""Reading submission files: one URL per line or JSON lines, checked whole before anything is queued.

Both passes stream, so a file of ten million URLs is never held in memory.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson
from pydantic import ValidationError

from producer.output import printable
from worker.contract import MAX_URL_BYTES, FetchRequest, RejectedRequest, body_too_long, url_problem
from worker.redact import redact
from worker.settings import load_settings

Entry = str | FetchRequest | RejectedRequest


@dataclass(frozen=True, slots=True)
class ScanReport:
    count: int
    bad_lines: int
    digest: str


def _parse_json(line: str, max_body: int | None = None) -> tuple[Entry | None, str | None]:
    """A JSON line: (entry, None) or (None, reason)."""
    try:
        data = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return None, f"invalid JSON: {exc}"
    try:
        req = FetchRequest.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "line"
        return None, f"{where}: {err['msg'].removeprefix('Value error, ')}"
    if max_body is not None and req.body is not None and body_too_long(req.body, max_body):
        return None, f"body: longer than {max_body} bytes (FETCHFLEET_MAX_REQUEST_BODY_BYTES)"
    # Plain GETs travel as bare strings: smaller jobs, cheaper parsing on the worker.
    if req.method == "GET" and not req.headers and req.body is None:
        return req.url, None
    return req, None


def _did_you_mean(line: str) -> str:
    """A bare host or host/path (`example.com`) most likely meant https://."""
    if "://" in line or "." not in line.split("/", 1)[0] or url_problem(f"https://{line}"):
        return ""
    return f" (did you mean https://{line} ?)"


def _request_lines(fh: IO[bytes], digest: Any) -> Iterator[tuple[int, str | None, bytes]]:
    """(line number, the line stripped, raw) of every line that is not blank or a comment; the line is
    None where it is not UTF-8. Every line, skipped or not, goes into `digest` (a hashlib object)."""
    for number, raw in enumerate(fh, start=1):
        digest.update(raw)
        try:
            # Editors on Windows start UTF-8 files with a byte order mark: not part of line 1.
            line = raw.decode("utf-8-sig" if number == 1 else "utf-8").strip()
        except UnicodeDecodeError:
            yield number, None, raw
            continue
        if line and line[0] != "#":
            yield number, line, raw


def scan(
    path: Path, label: str, report: Callable[[str], None], max_body_bytes: int | None = None
) -> ScanReport:
    """Check every line; call `report("FILE:LINE: reason")` for each bad one.

    `max_body_bytes` caps a JSON line's body; None: FETCHFLEET_MAX_REQUEST_BODY_BYTES.
    """
    if max_body_bytes is None:
        max_body_bytes = load_settings().max_request_body_bytes
    count = bad = 0
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for number, line, _raw in _request_lines(fh, digest):
            if line is None:
                problem: str | None = "not valid UTF-8"
            elif line[0] != "{":
                problem = url_problem(line)
                if problem:
                    problem += _did_you_mean(line)
            else:
                problem = _parse_json(line, max_body_bytes)[1]
            if problem:
                bad += 1
                # Input text may hold escapes, and a password (the did-you-mean hint repeats the line).
                report(f"{label}:{number}: {printable(redact(problem))}")
            else:
                count += 1
    return ScanReport(count=count, bad_lines=bad, digest=digest.hexdigest())


CHANGED = " (the line changed after the input was checked)"


def entries(
    path: Path, digest: str | None = None, changed: Callable[[], None] | None = None
) -> Iterator[Entry]:
    """The requests of a file that `scan` passed, in order: one per URL line, so one per index.

    Bare URLs are not checked again: `scan` did, and a worker checks every bare URL before it fetches.
    The file may have changed since `scan` read it: a line that no longer reads travels as a
    RejectedRequest (an `invalid_url` result at its index), never dropped, so the lines after it keep
    their indexes. With `digest` (scan's), `changed()` is called at the end if the file read differently.
    """
    hashed = hashlib.sha256()
    with path.open("rb") as fh:
        for _number, line, raw in _request_lines(fh, hashed):
            if line is None:
                yield RejectedRequest.of(raw.decode("utf-8", "replace").strip(), f"not valid UTF-8{CHANGED}")
            elif line[0] != "{":
                # Unchecked, but never unbounded: a URL line that grew past the limit is not sent whole.
                yield (
                    line if len(line) <= MAX_URL_BYTES else RejectedRequest.of(line, f"URL too long{CHANGED}")
                )
            else:
                entry, problem = _parse_json(line)
                # A JSON line that scan passed and that reads differently now: rejected at its place.
                yield (
                    entry
                    if entry is not None
                    else RejectedRequest.of(_request_of(line), f"{problem}{CHANGED}")
                )
    if digest is not None and changed is not None and hashed.hexdigest() != digest:
        changed()


def _request_of(line: str) -> object:
    """A JSON line's object, for its `url` (RejectedRequest.of reads no other field); "" if it has none."""
    try:
        data = orjson.loads(line)
    except orjson.JSONDecodeError:
        return ""
    return data if isinstance(data, dict) else ""


def spool_stdin(source: Path | None = None) -> Path:
    """Standard input (or `source`, a pipe) copied to a temporary file, so it can be checked and then
    read again."""
    tmp = tempfile.NamedTemporaryFile(prefix="fetchfleet-stdin-", suffix=".txt", delete=False)  # noqa: SIM115
    with tmp:
        if source is None:
            shutil.copyfileobj(sys.stdin.buffer, tmp, length=1024 * 1024)
        else:
            with source.open("rb") as fh:
                shutil.copyfileobj(fh, tmp, length=1024 * 1024)
    return Path(tmp.name)
