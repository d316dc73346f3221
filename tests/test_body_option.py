"""Bodies on every path under one name: `--body` on run and submit, a CSV body column, base64 when binary."""

from __future__ import annotations

import base64
import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from producer.cli import build_parser
from producer.output import CSV_BODY_FIELDS, CSV_FIELDS, CsvWriter
from tests.support.fetch_target import BINARY, TEXT, FetchTarget, sha256
from tests.support.procs import fetchfleet_env, run_cli
from tests.test_run import local_env


@pytest.fixture(scope="module")
def target() -> Iterator[FetchTarget]:
    t = FetchTarget().start()
    yield t
    t.stop()


def csv_rows(docs: list[dict], body: bool) -> list[dict[str, str]]:
    raw = io.BytesIO()
    writer = CsvWriter(raw, owned=False, body=body)
    for doc in docs:
        writer.write(orjson.dumps(doc))
    writer.close()
    return list(csv.DictReader(io.StringIO(raw.getvalue().decode(), newline="")))


def test_csv_with_bodies_has_the_body_columns() -> None:
    docs = [
        {"index": 0, "url": "http://a.test/", "status": 200, "body": 'a,"b"\nc', "body_encoding": "text"},
        {"index": 1, "url": "http://a.test/b", "status": 200, "body": "/w==", "body_encoding": "base64"},
    ]
    rows = csv_rows(docs, body=True)
    assert list(rows[0]) == [*CSV_FIELDS, *CSV_BODY_FIELDS]
    assert rows[0]["body"] == 'a,"b"\nc' and rows[0]["body_encoding"] == "text"
    assert rows[1]["body"] == "/w==" and rows[1]["body_encoding"] == "base64"
    assert list(csv_rows(docs, body=False)[0]) == list(CSV_FIELDS)


@pytest.mark.parametrize("command", ["run", "submit"])
def test_body_is_one_option_with_the_old_spelling_kept(command: str) -> None:
    parser = build_parser()
    for flag in ("--body", "--store-body"):
        assert parser.parse_args([command, "urls.txt", flag]).body is True
    assert parser.parse_args([command, "urls.txt"]).body is False
    assert parser.parse_args(["results", "b1", "--body"]).body is True


def pages(target: FetchTarget) -> dict[str, tuple[bytes, str]]:
    """url -> (body the server sends, body_encoding expected)."""
    return {
        target.url("/ok/300"): (b"x" * 300, "text"),
        target.url("/encoded/gzip"): (TEXT, "text"),
        target.url("/binary"): (BINARY, "base64"),
        target.url("/echo"): (b"", "text"),  # checked by field, not by bytes
    }


def body_bytes(r: dict) -> bytes:
    return base64.b64decode(r["body"]) if r["body_encoding"] == "base64" else r["body"].encode()


@pytest.mark.slow
def test_run_with_body_gives_every_page(target: FetchTarget, tmp_path: Path) -> None:
    expected = pages(target)
    urls = [u for u in expected if not u.endswith("/echo")] * 5
    path = tmp_path / "urls.txt"
    path.write_text("\n".join(urls) + "\n")
    out = tmp_path / "out.jsonl"
    # An inline cap of 16 bytes would cut every body: whole ones came through run's own directory store.
    env = local_env(allow_private_networks=True, max_stored_body_bytes=16)
    proc = run_cli(["run", str(path), "-o", str(out), "--body", "--workers", "2", "-q"], env)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["index"] for r in results) == list(range(len(urls)))
    for r in results:
        sent, encoding = expected[r["url"]]
        assert r["body_encoding"] == encoding, r
        assert body_bytes(r) == sent and sha256(sent) == r["sha256"]
        assert r["body_truncated"] is False
        assert "body_ref" not in r  # that store is removed when run ends: no reference into it


@pytest.mark.slow
def test_run_with_body_as_csv_has_the_text(target: FetchTarget, tmp_path: Path) -> None:
    path = tmp_path / "urls.txt"
    path.write_text(target.url("/ok/12") + "\n" + target.url("/binary") + "\n")
    out = tmp_path / "out.csv"
    env = local_env(allow_private_networks=True)
    proc = run_cli(["run", str(path), "-o", str(out), "--body", "--format", "csv", "--workers", "1"], env)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    with out.open(newline="") as f:
        rows = {int(r["index"]): r for r in csv.DictReader(f)}
    assert (rows[0]["body"], rows[0]["body_encoding"]) == ("x" * 12, "text")
    assert rows[1]["body_encoding"] == "base64" and base64.b64decode(rows[1]["body"]) == BINARY


@pytest.mark.slow
def test_results_as_csv_of_a_body_batch_has_the_body_column(
    redis_url: str, spawn_worker, target: FetchTarget, tmp_path: Path
) -> None:
    """`results` knows from the batch that it kept bodies: the CSV gets the column without `--body`."""
    spawn_worker(redis_url)
    path = tmp_path / "urls.txt"
    path.write_text(target.url("/ok/5") + "\n")
    env = fetchfleet_env(redis_url)
    submitted = run_cli(["submit", str(path), "--store-body"], env)
    assert submitted.returncode == 0, submitted.stderr.decode()
    batch = submitted.stdout.decode().strip()
    proc = run_cli(["results", batch, "--follow", "--format", "csv", "-q"], env)
    assert proc.returncode == 0, proc.stderr.decode()
    (row,) = csv.DictReader(io.StringIO(proc.stdout.decode(), newline=""))
    assert (row["body"], row["body_encoding"], row["body_truncated"]) == ("xxxxx", "text", "False")
