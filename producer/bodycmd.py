"""`fetchfleet body REF`: one result's body, as bytes, from wherever it is kept.

REF is a result line as `results`, `run` or `submit --wait` wrote it (or just its `body_ref` object),
or `-` to read that line from standard input: `sed -n 5p results.jsonl | fetchfleet body -`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson

from worker.bodies import result_body
from worker.errors import BodyUnavailable, UsageError
from worker.settings import Settings

EXAMPLE = (
    "example:\n"
    '  fetchfleet body "$(sed -n 5p results.jsonl)" -o page.html\n'
    "  grep '\"index\":42,' results.jsonl | fetchfleet body -\n\n"
    "REF is a result line (its body_ref, or its inline body), or only the body_ref object. A body read\n"
    "from the store is checked against the result's sha256; a text body kept inline is written as UTF-8."
)


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("ref", metavar="REF|-", help="a result line or its body_ref (JSON); - reads it from stdin")
    p.add_argument("-o", "--output", default="-", metavar="PATH", help="write the body here ('-': stdout)")


def parse_ref(text: str) -> dict[str, object]:
    """The result document (or body_ref) REF names; UsageError for anything else."""
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) != 1:
        raise UsageError(f"body: expected one result line, got {len(lines)}")
    try:
        doc = orjson.loads(lines[0])
    except orjson.JSONDecodeError as exc:
        raise UsageError(f"body: not a result line or body_ref (JSON): {exc}") from None
    if not isinstance(doc, dict):
        raise UsageError("body: not a result line or body_ref (a JSON object)")
    return doc


def cmd_body(args: argparse.Namespace, settings: Settings) -> int:
    doc = parse_ref(sys.stdin.read() if args.ref == "-" else args.ref)
    try:
        body = result_body(doc)
    except BodyUnavailable as exc:
        where = f" (index {doc['index']})" if isinstance(doc.get("index"), int) else ""
        raise UsageError(f"body{where}: {exc}") from None
    if args.output == "-":
        sys.stdout.buffer.write(body)
        sys.stdout.buffer.flush()
    else:
        Path(args.output).write_bytes(body)
    return 0
