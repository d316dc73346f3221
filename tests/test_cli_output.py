"""Result formats: JSON lines written through unchanged, CSV with one column per field; `-` is stdout."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from producer.output import CSV_FIELDS, FORMATS, open_writer
from tests.support.http_target import HttpTarget
from tests.support.procs import ROOT, fetchfleet_env, run_cli
from worker.errors import OutputFailed

OK = {
    "index": 0,
    "url": "http://a.example/",
    "final_url": "http://a.example/x",
    "status": 200,
    "ok": True,
    "error": None,
    "size": 12,
    "sha256": "ab" * 32,
    "content_type": "text/html; charset=utf-8",
    "elapsed_ms": 3.5,
    "attempts": 1,
    "redirects": 1,
    "worker": "w-1",
}
FAILED = {
    **OK,
    "index": 1,
    "url": "http://b.example/",
    "final_url": None,
    "status": None,
    "ok": False,
    "error": {"kind": "connect", "message": 'refused, "twice"\nand, a comma'},
    "size": 0,
    "sha256": None,
    "content_type": None,
}
DOCS = [orjson.dumps(OK), orjson.dumps(FAILED)]


def write_all(path: str, fmt: str) -> None:
    writer = open_writer(path, fmt)
    for doc in DOCS:
        writer.write(doc)
    writer.close()


def test_formats() -> None:
    assert FORMATS == ("jsonl", "csv")


def test_json_lines_are_the_documents_unchanged(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    write_all(str(out), "jsonl")
    assert out.read_bytes() == b"".join(d + b"\n" for d in DOCS)


def test_csv_has_a_header_and_one_row_per_result(tmp_path: Path) -> None:
    out = tmp_path / "r.csv"
    write_all(str(out), "csv")
    with out.open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == list(CSV_FIELDS)
    ok, failed = (dict(zip(rows[0], row, strict=True)) for row in rows[1:])
    assert len(rows) == 3
    assert ok["status"] == "200" and ok["size"] == "12" and ok["sha256"] == "ab" * 32
    assert ok["error_kind"] == "" and ok["error_message"] == ""
    assert ok["content_type"] == "text/html; charset=utf-8"
    # None becomes an empty cell; quotes, commas and newlines survive the round trip
    assert failed["status"] == "" and failed["final_url"] == "" and failed["sha256"] == ""
    assert failed["error_kind"] == "connect"
    assert failed["error_message"] == FAILED["error"]["message"]
    assert {ok["ok"], failed["ok"]} == {"True", "False"}


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_dash_is_stdout_and_stays_open(fmt: str) -> None:
    """After the writer closes, the process can still print: `-` must not close stdout."""
    code = (
        "import sys, orjson\n"
        "from producer.output import open_writer\n"
        f"w = open_writer('-', {fmt!r})\n"
        f"for d in {DOCS!r}: w.write(d)\n"
        "w.close()\n"
        "print('after')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr.decode()
    text = proc.stdout.decode()
    assert text.endswith("after\n")
    body = text[: -len("after\n")]
    if fmt == "jsonl":
        assert [json.loads(line) for line in body.splitlines()] == [OK, FAILED]
    else:
        rows = list(csv.DictReader(io.StringIO(body, newline="")))
        assert [r["url"] for r in rows] == [OK["url"], FAILED["url"]]


@pytest.mark.slow
def test_submit_wait_csv_to_stdout_puts_the_batch_id_on_stderr(
    redis_url: str, http_target: HttpTarget, spawn_worker
) -> None:
    urls = [http_target.url(f"/ok/{n}") for n in (1, 2, 3)]
    spawn_worker(redis_url)
    # results are read again below: keep them in Redis after --wait collected them
    env = fetchfleet_env(redis_url, allow_private_networks=True, result_retention="ttl")
    stdin = "\n".join(urls).encode()
    proc = run_cli(["submit", "-", "--wait", "--format", "csv", "-o", "-", "-q"], env, stdin=stdin)
    assert proc.returncode == 0, proc.stderr.decode()
    rows = list(csv.DictReader(io.StringIO(proc.stdout.decode(), newline="")))
    assert sorted((r["url"], r["size"]) for r in rows) == [
        (u, str(n)) for u, n in zip(urls, (1, 2, 3), strict=True)
    ]
    batch_id = proc.stderr.decode().strip()
    assert run_cli(["status", batch_id], env).returncode == 0, batch_id

    again = run_cli(["results", batch_id, "--format", "jsonl"], env)  # default -o is stdout too
    assert again.returncode == 0, again.stderr.decode()
    assert sorted(json.loads(line)["size"] for line in again.stdout.splitlines()) == [1, 2, 3]


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_full_disk_is_an_output_failure_not_a_redis_one(fmt: str) -> None:
    """An OSError from writing results (ENOSPC) reached the CLI's Redis handler, which holds OSError:
    `cannot reach Redis at ... (No space left on device); start Redis there ...`."""
    writer = open_writer("/dev/full", fmt)
    with pytest.raises(OutputFailed, match=r"^/dev/full: cannot write results: No space left on device$"):
        for _ in range(2000):  # past the buffer: the write or the flush meets the full device
            writer.write(DOCS[0])
        writer.flush()
    with pytest.raises(OutputFailed):
        writer.close()


@pytest.mark.slow
def test_submit_wait_to_a_full_disk_says_so_and_loses_nothing(
    redis_url: str, http_target: HttpTarget, spawn_worker
) -> None:
    urls = [http_target.url(f"/ok/{n}") for n in range(1, 41)]
    spawn_worker(redis_url)
    env = fetchfleet_env(redis_url, allow_private_networks=True)
    stdin = "\n".join(urls).encode()
    proc = run_cli(
        ["submit", "-", "--wait", "-q", "--batch-id", "full-disk", "-o", "/dev/full"], env, stdin=stdin
    )
    err = proc.stderr.decode()
    assert proc.returncode == 1 and len(err.strip().splitlines()) == 1, err
    assert "Redis at" not in err and "Traceback" not in err, err
    assert "/dev/full: cannot write results: No space left on device" in err, err
    assert "fetchfleet results full-disk --follow -o /dev/full --resume" in err, err
    again = run_cli(["results", "full-disk", "--follow", "-q"], env)  # every result still in Redis
    assert again.returncode == 0, again.stderr.decode()
    assert sorted(json.loads(line)["size"] for line in again.stdout.splitlines()) == list(range(1, 41))
