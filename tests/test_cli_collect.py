"""Edges of the producer (issue 12 item 7) and of collecting (issue 11 item 7), on real processes."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from producer.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from producer.output import open_output
from tests.chaos import write_urls
from tests.support.http_target import HttpTarget
from tests.support.procs import ROOT, fetchfleet_env, run_cli, start_cli
from tests.support.redisserver import free_port
from worker.contract import results_key
from worker.errors import UsageError


def indexes_of(path: Path) -> list[int]:
    return [json.loads(line)["index"] for line in path.read_text().splitlines()]


# ---- issue 12 item 7 ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("chunks", [2, 100], ids=["2 chunks", "100 chunks (two round trips)"])
def test_submit_does_not_wait_when_the_batch_exactly_fills_the_queue(
    redis_url: str, tmp_path: Path, chunks: int
) -> None:
    """No worker runs: the queue is full after the last chunk, and there is nothing more to queue."""
    urls = write_urls(tmp_path / "urls.txt", [f"https://example.com/{i}" for i in range(chunks)])
    env = fetchfleet_env(redis_url, chunk_size=1, max_queued_chunks=chunks)
    started = time.monotonic()
    proc = run_cli(["submit", str(urls)], env, timeout=30)
    print(f"{chunks} chunks queued in {time.monotonic() - started:.1f}s")
    assert proc.returncode == EXIT_OK, proc.stderr.decode()
    batch_id = proc.stdout.decode().strip()
    status = json.loads(run_cli(["status", batch_id, "--json"], env).stdout)
    assert status["state"] == "queued" and status["enqueued"] == chunks == status["submitted"], status


@pytest.mark.slow
def test_a_broken_stderr_keeps_exit_2(redis_url: str, tmp_path: Path) -> None:
    """The reader of stderr went away, so writes to it fail with EPIPE: main answered exit 0 here.

    (`2>&-`, a closed fd 2, makes the interpreter itself abort before any of our code runs.)
    """
    bad = write_urls(tmp_path / "bad.txt", [f"ftp://x/{i}" for i in range(50)])
    args = [sys.executable, "-m", "producer", "submit", str(bad)]
    env = fetchfleet_env(redis_url)

    proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stderr is not None and proc.stdout is not None
    proc.stderr.close()
    out = proc.stdout.read()
    proc.stdout.close()
    assert proc.wait(60) == EXIT_USAGE and out == b""


PR_CAPBSET_DROP = 24  # linux/prctl.h
# capability numbers, linux/capability.h: what lets root write where the mode bits say no
DAC_CAPS = {"CAP_DAC_OVERRIDE": 1, "CAP_DAC_READ_SEARCH": 2, "CAP_FOWNER": 3}


def as_ordinary_user() -> Callable[[], None]:
    """A preexec_fn: the child still runs as root (it can read this venv), but without the capabilities
    that let root ignore file modes, so a 0555 directory refuses it as it refuses any user."""
    libc = ctypes.CDLL(None, use_errno=True)  # loaded before fork

    def drop() -> None:
        for number in DAC_CAPS.values():
            if libc.prctl(PR_CAPBSET_DROP, number, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")

    return drop


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0 or not sys.platform.startswith("linux"), reason="needs root's caps")
def test_unwritable_output_is_found_before_the_batch_is_queued(redis_url: str, tmp_path: Path) -> None:
    """-o in a directory the user may not write: exit 2, and Redis untouched (no orphan batch)."""
    urls = write_urls(tmp_path / "urls.txt", ["https://example.com/"])
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    target = locked / "results.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "producer", "submit", str(urls), "--wait", "-o", str(target)],
        env=fetchfleet_env(redis_url),
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        preexec_fn=as_ordinary_user(),
        check=False,
    )
    err = proc.stderr.decode()
    print(err)
    assert proc.returncode == EXIT_USAGE, err
    assert f"{target}: cannot write: Permission denied" in err and "Traceback" not in err
    with redis.Redis.from_url(redis_url) as c:
        assert c.dbsize() == 0, c.keys()


@pytest.mark.slow
def test_a_refused_submit_neither_wipes_an_old_results_file_nor_leaves_a_new_one(tmp_path: Path) -> None:
    urls = write_urls(tmp_path / "urls.txt", ["https://example.com/"])
    env = fetchfleet_env(f"redis://127.0.0.1:{free_port()}/0")
    old = tmp_path / "old.jsonl"
    old.write_text('{"index": 0}\n')
    for out in (old, tmp_path / "new.jsonl"):
        proc = run_cli(["submit", str(urls), "--wait", "-o", str(out)], env, timeout=60)
        assert proc.returncode == EXIT_FAILED, proc.stderr.decode()
    assert old.read_text() == '{"index": 0}\n'
    assert not (tmp_path / "new.jsonl").exists()


# ---- issue 11 item 7 ------------------------------------------------------------------------------


@pytest.mark.slow
def test_waiting_collector_writes_each_result_within_100ms(
    redis_url: str, http_target: HttpTarget, spawn_worker, tmp_path: Path
) -> None:
    """One fast URL and one that takes 8 s: the fast one is in the file long before the process ends."""
    spawn_worker(redis_url)
    urls = write_urls(
        tmp_path / "urls.txt", [http_target.url("/ok/1"), http_target.url("/ok/2?delay_ms=8000")]
    )
    out = tmp_path / "out.jsonl"
    proc = start_cli(
        ["submit", str(urls), "--wait", "-q", "-o", str(out)],
        fetchfleet_env(redis_url),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        batch_id = proc.stdout.readline().decode().strip()
        deadline = time.monotonic() + 7
        while time.monotonic() < deadline and not out.read_bytes().endswith(b"\n"):
            time.sleep(0.01)
        seen_ms = time.time() * 1000
        assert proc.poll() is None and indexes_of(out) == [0], out.read_text()
        with redis.Redis.from_url(redis_url) as c:
            (entry_id, _fields), *_ = c.xrange(results_key(batch_id), count=1)
        recorded_ms = int(entry_id.split(b"-")[0])
        lag = seen_ms - recorded_ms
        print(f"result recorded -> in the file: {lag:.0f} ms")
        assert lag < 400, lag  # flushed every 100 ms; the rest is XREAD, polling and a busy machine
        assert proc.wait(60) == EXIT_OK
        assert sorted(indexes_of(out)) == [0, 1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.mark.slow
def test_killed_submit_wait_resumes_with_results_follow_resume(
    redis_url: str, http_target: HttpTarget, spawn_worker, tmp_path: Path
) -> None:
    """SIGKILL mid-batch (a half-written last line too), then `results --follow --resume`: each index once."""
    spawn_worker(redis_url, concurrency=20, chunk_size=20)
    n = 400
    urls = write_urls(
        tmp_path / "urls.txt", [http_target.url(f"/ok/{i % 50 + 1}?delay_ms=100") for i in range(n)]
    )
    out = tmp_path / "out.jsonl"
    env = fetchfleet_env(redis_url)
    proc = start_cli(
        ["submit", str(urls), "--wait", "-q", "-o", str(out)],
        env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        batch_id = proc.stdout.readline().decode().strip()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and out.read_text().count("\n") < 60:
            time.sleep(0.02)
        proc.kill()
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    before = indexes_of(out)
    print(f"killed with {len(before)} of {n} results in the file")
    assert 60 <= len(before) < n
    with out.open("ab") as f:  # what a kill in the middle of a write leaves
        f.write(b'{"index":399,"url":"http://127.0.0.1/half')

    resumed = run_cli(["results", batch_id, "--follow", "-o", str(out), "--resume"], env, timeout=120)
    err = resumed.stderr.decode()
    assert resumed.returncode == EXIT_OK, err
    assert f"{len(before)} results already there" in err
    after = indexes_of(out)
    assert after[: len(before)] == before  # kept as it was
    assert sorted(after) == list(range(n))  # every index exactly once


def test_resume_reads_indexes_and_cuts_a_half_line(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    out.write_bytes(b'{"index":5}\n{"index":2}\n{"index":9,"ur')
    resumed = open_output(str(out), resume=True)
    assert (resumed.resumed_lines, list(resumed.indexes())) == (2, [2, 5])
    assert resumed.has(5) and not resumed.has(9) and not resumed.has(100_000)
    resumed.writer("jsonl").close()
    assert out.read_bytes() == b'{"index":5}\n{"index":2}\n'
    with pytest.raises(Exception, match="--format jsonl"):
        open_output(str(out), fmt="csv", resume=True)


@pytest.mark.parametrize(
    "content",
    [
        b"http://example.com/a\nhttp://example.com/b\n",  # the input file, given as -o by mistake
        b'{"index":5}\nnot a result\n{"index":6}\n',
        b'{"index":"5"}\n',
        b'{"index":-1}\n',
        b'{"index":1000000000000}\n',  # marked in a bitmap: 125 GB
        b"[1, 2]\n",
    ],
)
def test_resume_refuses_a_file_of_something_else_and_changes_nothing(tmp_path: Path, content: bytes) -> None:
    """A complete line that is no result cut the file there: `-o urls.txt --resume` emptied the input
    file, and `{"index": "5"}` or a huge index raised (a traceback, or gigabytes allocated)."""
    out = tmp_path / "urls.txt"
    out.write_bytes(content)
    with pytest.raises(UsageError, match=r"urls\.txt:\d: not a result line; .*\(nothing was changed\)"):
        open_output(str(out), resume=True)
    assert out.read_bytes() == content
