"""Output that reaches a terminal or a spreadsheet: control characters escaped, formulas neutralised."""

from __future__ import annotations

import csv
import io
import time

import orjson
import pytest
import redis

from producer.client import status_from_meta
from producer.output import CsvWriter, printable
from producer.progress import Progress
from producer.stats import ClusterStats, WorkerInfo, render_plain, render_rich
from tests.support.procs import fetchfleet_env, run_cli
from worker.contract import BATCHES_KEY, WORKERS_KEY, batch_key, worker_key

EVIL = [
    "a\nforged line",
    "a\r\x1b[2Kreal",
    "\x1b[31mred\x1b[0m",
    "\x1b]8;;http://evil\x07link",
    "bidi\u202eexe.txt",
    "nul\x00",
    "c1\x9b31m",
    "sep\u2028x",
]


@pytest.mark.parametrize("text", EVIL)
def test_printable_escapes_every_control(text: str) -> None:
    shown = printable(text)
    assert shown.isprintable(), repr(shown)
    assert "\\" in shown


def test_printable_leaves_ordinary_text_alone() -> None:
    for text in ("batch-1", "héllo wörld", "日本語", "tab?no"):
        assert printable(text) == text


def evil_stats() -> ClusterStats:
    now = int(time.time() * 1000)
    workers = [WorkerInfo(t, t, 1, 0, 10, 0, 0.0, now, now) for t in EVIL]
    meta = {b"submitted": b"10", b"done": b"1", b"complete": b"1", b"created_ms": str(now).encode()}
    batches = [status_from_meta(t, meta) for t in EVIL]
    return ClusterStats(3, workers, batches)


def test_stats_plain_and_rich_show_no_raw_control(capsys: pytest.CaptureFixture[str]) -> None:
    stats = evil_stats()
    plain = render_plain(stats)
    assert all(line.isprintable() for line in plain.split("\n"))
    assert len(plain.split("\n")) == 3 + len(EVIL) * 2  # no forged line
    render_rich(stats)
    out = capsys.readouterr().out
    for line in out.split("\n"):
        assert "\x1b" not in line and "\r" not in line and "\u202e" not in line, repr(line)


def test_rich_markup_in_stored_strings_is_not_interpreted(capsys: pytest.CaptureFixture[str]) -> None:
    now = int(time.time() * 1000)
    stats = ClusterStats(
        0, [WorkerInfo("[link=http://evil]w[/link]", "[red]h", 1, 0, 1, 0, 0.0, now, now)], []
    )
    render_rich(stats)
    out = capsys.readouterr().out
    assert (
        "[link=http://evil]w[/link]" in out.replace("\n", "").replace("│", "").replace(" ", "")
        or "[red]h" in out
    )


def test_worker_hash_with_junk_reads_without_crashing() -> None:
    w = WorkerInfo.from_hash(
        {b"id": b"\xff\xfe", b"pid": b"abc", b"fetches_per_s": b"nan", b"seen_ms": b"1e999"}
    )
    assert (w.pid, w.fetches_per_s, w.seen_ms) == (0, 0.0, 0)
    assert status_from_meta("b", {b"submitted": b"x", b"finished_ms": b"y"}).submitted == 0


def test_progress_label_is_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    p = Progress(2, "batch \x1b[31mred\nforged", interval=0)
    p.update(1)
    p.close()
    err = capsys.readouterr().err
    assert "\x1b" not in err and all(line.startswith("batch ") for line in err.strip().split("\n"))


def test_csv_cells_that_look_like_formulas_get_a_quote() -> None:
    doc = {
        "index": 0,
        "url": "http://example.com/",
        "final_url": "-http://x",
        "status": 200,
        "ok": True,
        "error": {"kind": "protocol", "message": "+cmd|' /C calc'!A0"},
        "size": 5,
        "sha256": "@SUM(1+1)",
        "content_type": '=HYPERLINK("http://evil","click")',
        "elapsed_ms": 1.5,
        "attempts": 1,
        "redirects": 0,
        "worker": "\t=1+1",
    }
    out = io.BytesIO()
    w = CsvWriter(out, owned=False)
    w.write(orjson.dumps(doc))
    w.write(orjson.dumps({**doc, "content_type": "\r=1", "worker": "plain"}))
    w.close()
    rows = list(csv.DictReader(io.StringIO(out.getvalue().decode())))
    assert rows[0]["content_type"] == "'" + doc["content_type"]
    assert rows[0]["error_message"].startswith("'+") and rows[0]["final_url"].startswith("'-")
    assert rows[0]["sha256"].startswith("'@") and rows[0]["worker"].startswith("'\t")
    assert rows[1]["content_type"].startswith("'\r") and rows[1]["worker"] == "plain"
    assert rows[0]["url"] == "http://example.com/" and rows[0]["status"] == "200" and rows[0]["size"] == "5"
    for row in rows:
        assert not any(v.startswith(("=", "+", "-", "@", "\t", "\r")) for v in row.values())


@pytest.mark.slow
def test_stats_cli_on_planted_strings(redis_url: str) -> None:
    """A Redis writer plants a heartbeat and a batch whose strings hold escapes and newlines."""
    now = int(time.time() * 1000)
    with redis.Redis.from_url(redis_url) as r:
        wid = "w\x1b[2J\nforged-worker"
        r.hset(worker_key(wid), mapping={"id": wid, "host": "h\x1b]0;title\x07", "pid": "x", "seen_ms": now})
        r.zadd(WORKERS_KEY, {wid: now})
        bid = "b\nforged-batch\x1b[31m"
        r.hset(batch_key(bid), mapping={"submitted": 5, "done": 1, "complete": 1, "created_ms": now})
        r.zadd(BATCHES_KEY, {bid: now})
    proc = run_cli(["stats"], fetchfleet_env(redis_url), timeout=60)
    out = proc.stdout.decode()
    assert proc.returncode == 0, proc.stderr.decode()
    assert "\x1b" not in out and "\x07" not in out
    assert not any(line.startswith("forged") for line in out.splitlines()), out
    assert "w\\x1b[2J\\nforged-worker" in out and "b\\nforged-batch\\x1b[31m" in out
