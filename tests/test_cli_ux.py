"""The first hour (issue 14): what `run` and `submit --wait` say, on a terminal and off it, real processes."""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import signal
import sqlite3
import struct
import subprocess
import termios
import time
from pathlib import Path

import orjson
import pyte
import pytest

from producer import output as output_module
from producer.cli import EXIT_FETCH_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, main
from producer.output import OrderedWriter, open_output
from producer.summary import Summary
from tests.chaos import write_urls
from tests.support.http_target import HttpTarget
from tests.support.procs import fetchfleet_env, restore_sigint, run_cli, start_cli
from tests.support.redisserver import free_port
from worker.errors import OutputFailed

ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")
PROGRESS = re.compile(r"(\d+)/(\d+)\b.*?\b(\d+) failed")


def local_env(**settings: str | int | bool) -> dict[str, str]:
    """A user with no FETCHFLEET_REDIS_URL: `run` starts its own server."""
    env = fetchfleet_env("unused", **settings)
    del env["FETCHFLEET_REDIS_URL"]
    return env


def in_a_terminal(argv: list[str], env: dict[str, str], timeout: float = 120) -> tuple[int, bytes]:
    """Run the CLI with stderr on a pseudo-terminal (120x40), as a user's shell would; (exit code, bytes)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {**env, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
    env.pop("NO_COLOR", None)
    proc = start_cli(
        argv,
        env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=slave,
    )
    os.close(slave)
    data = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: every writer of the terminal has gone
                    break
                if not chunk:
                    break
                data += chunk
            elif proc.poll() is not None:
                break
        return proc.wait(10), bytes(data)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def screen_of(data: bytes) -> list[str]:
    """What the terminal shows at the end, after every cursor movement and redraw."""
    screen = pyte.Screen(120, 40)
    pyte.ByteStream(screen).feed(data)
    return [line.rstrip() for line in screen.display if line.strip()]


def progress_frames(data: bytes) -> list[tuple[int, int, int]]:
    """Every (done, total, failed) the progress display ever drew."""
    text = ANSI.sub(b"", data).decode(errors="replace")
    return [(int(d), int(t), int(f)) for d, t, f in PROGRESS.findall(text)]


# ---- item 1: failures that look like success --------------------------------------------------------


@pytest.mark.slow
def test_run_in_a_terminal_summarises_blocked_urls_with_a_hint(
    http_target: HttpTarget, tmp_path: Path
) -> None:
    """Nine loopback URLs with the guard on: the screen says why every one failed and what to set."""
    urls = write_urls(tmp_path / "urls.txt", [http_target.url(f"/ok/{i}") for i in range(9)])
    code, data = in_a_terminal(
        ["run", str(urls), "-o", str(tmp_path / "out.jsonl"), "--workers", "1"], local_env()
    )
    screen = screen_of(data)
    shown = "\n".join(screen)
    print(shown)
    assert code == EXIT_OK, shown
    frames = progress_frames(data)
    assert frames and all(failed <= done for done, _total, failed in frames), frames
    final = [line for line in screen if re.search(r"\b9/9\b", line)]
    assert len(final) == 1, shown  # the final progress line, once
    assert "9 failed" in final[0] and re.search(r"\d+(\.\d)?/s", final[0]), final[0]
    assert any("9 results in" in line and "0 ok, 9 failed" in line for line in screen), shown
    (blocked,) = [line for line in screen if line.strip().startswith("blocked")]
    assert re.search(r"blocked\s+9\s+e\.g\. http://127\.0\.0\.1:\d+/ok/\d", blocked), blocked
    hint = shown[shown.index("hint: blocked") :]
    for word in ("FETCHFLEET_ALLOW_PRIVATE_NETWORKS", "FETCHFLEET_ALLOWED_NETWORKS", "WORKERS"):
        assert word in hint.replace("\n", ""), hint


@pytest.mark.slow
def test_plain_progress_never_shows_more_failed_than_done_and_ends_once(
    http_target: HttpTarget, tmp_path: Path
) -> None:
    """Off a terminal: a line every 2 s. When the last result came alone, more than 2 s after the line
    before, its periodic line and the closing line were the same line, printed twice."""
    urls = [http_target.url(f"/status/404?i={i}") for i in range(20)]
    urls += [http_target.url("/ok/1?delay_ms=2600")]
    path = write_urls(tmp_path / "urls.txt", urls)
    proc = run_cli(
        ["run", str(path), "-o", os.devnull, "--workers", "1"], local_env(allow_private_networks=True)
    )
    err = proc.stderr.decode()
    print(err)
    assert proc.returncode == EXIT_OK, err
    lines = [line for line in err.splitlines() if line.startswith("batch ")]
    frames = [(int(d), int(t), int(f)) for d, t, f in (PROGRESS.search(line).groups() for line in lines)]
    assert len(lines) >= 2 and all(f <= d for d, _t, f in frames), lines
    assert sum("21/21" in line for line in lines) == 1, lines
    # While the slow URL is out, the display catches up with the 20 results already written (a timer
    # prints it): it used to stay at the first line's count until the next result came.
    assert any("20/21" in line for line in lines), lines
    assert all(re.search(r", \d+(\.\d)?/s$", line) for line in lines), lines
    assert "HTTP 4xx" in err and "1 ok, 20 failed" in err


@pytest.mark.slow
def test_summary_by_outcome_and_fail_on(
    redis_url: str, http_target: HttpTarget, spawn_worker, tmp_path: Path
) -> None:
    """ok, 4xx, 5xx, connect and blocked, each counted with an example; --fail-on decides the exit code.

    The worker allows only 127.0.0.1/32; the submitter sets FETCHFLEET_ALLOW_PRIVATE_NETWORKS, which only
    workers read: the hint says that it had no effect.
    """
    spawn_worker(redis_url, allow_private_networks=False, allowed_networks="127.0.0.1/32", max_attempts=1)
    dead = f"http://127.0.0.1:{free_port()}/dead"
    blocked = f"http://127.0.0.2:{http_target.port}/ok/1"
    urls = [
        http_target.url("/ok/5"),
        http_target.url("/status/404"),
        http_target.url("/status/500"),
        dead,
        blocked,
    ]
    path = write_urls(tmp_path / "urls.txt", urls)
    # The same batch is collected three times below: keep its results in Redis after each collection.
    env = fetchfleet_env(redis_url, allow_private_networks=True, result_retention="ttl")
    out = tmp_path / "out.jsonl"
    proc = run_cli(["submit", str(path), "--wait", "-o", str(out), "--fail-on", "error-kinds"], env)
    err = proc.stderr.decode()
    print(err)
    assert proc.returncode == EXIT_FETCH_FAILED, err
    assert "5 results in" in err and "1 ok, 4 failed" in err
    counts = {
        m[0]: (int(m[1]), m[2])
        for m in re.findall(r"^  (\S+(?: \dxx)?)\s+(\d+)(?:\s+e\.g\. (\S+))?$", err, re.M)
    }
    assert counts == {
        "ok": (1, ""),
        "HTTP 4xx": (1, urls[1]),
        "HTTP 5xx": (1, urls[2]),
        "connect": (1, dead),
        "blocked": (1, blocked),
    }, counts
    assert "hint: blocked:" in err and "hint: connect:" in err
    hint = err[err.index("hint: blocked:") :].splitlines()[0]
    assert "FETCHFLEET_ALLOW_PRIVATE_NETWORKS is set in this command's environment" in hint, hint
    results = {r["url"]: r for r in map(json.loads, out.read_text().splitlines())}
    message = results[dead]["error"]["message"]
    assert "ssl:" not in message and "Connection refused" in message, message  # a plain http:// URL

    # the same batch again (nothing new is queued): any non-ok fails, and without --fail-on nothing does
    batch_id = proc.stdout.decode().strip()
    for fail_on, expected in (("any", EXIT_FETCH_FAILED), ("never", EXIT_OK)):
        again = run_cli(
            ["submit", str(path), "--batch-id", batch_id, "--wait", "-q", "--fail-on", fail_on], env
        )
        assert again.returncode == expected, (fail_on, again.stderr.decode())


def test_fail_on_words() -> None:
    """`error-kinds`: a result with an error kind; `any`: any result that is not ok, HTTP 404 included."""
    only_404 = Summary()
    only_404.add({"url": "http://a/", "ok": False, "status": 404, "error": None})
    assert (
        only_404.should_fail("error-kinds"),
        only_404.should_fail("any"),
        only_404.should_fail("never"),
    ) == (
        False,
        True,
        False,
    )
    dns = Summary()
    dns.add({"url": "http://b/", "ok": False, "status": None, "error": {"kind": "dns", "message": "x"}})
    assert dns.should_fail("error-kinds") and dns.should_fail("any") and not dns.should_fail("never")
    assert any(line.startswith("hint: dns:") for line in dns.lines())


# ---- item 3: waiting on nothing ------------------------------------------------------------------------


@pytest.mark.slow
def test_wait_with_no_worker_says_so_and_ctrl_c_prints_the_next_commands(
    redis_url: str, tmp_path: Path
) -> None:
    urls = write_urls(tmp_path / "urls.txt", ["https://example.com/"])
    out = tmp_path / "out.jsonl"
    env = fetchfleet_env(redis_url)
    err_path = tmp_path / "stderr"
    with err_path.open("wb") as err:
        proc = start_cli(
            ["submit", str(urls), "--wait", "-o", str(out)],
            env,
            stdout=subprocess.PIPE,
            stderr=err,
            preexec_fn=restore_sigint,  # the Ctrl-C below must reach it however pytest was started
        )
    try:
        batch_id = proc.stdout.readline().decode().strip()
        assert batch_id, err_path.read_text()
        started = time.monotonic()
        while "no live worker" not in err_path.read_text() and time.monotonic() - started < 20:
            assert proc.poll() is None, err_path.read_text()
            time.sleep(0.2)
        waited = time.monotonic() - started
        print(f"no-worker notice after {waited:.1f}s")
        assert 4 <= waited < 12, err_path.read_text()
        time.sleep(2.5)  # it keeps waiting, and says it once
        assert proc.poll() is None and err_path.read_text().count("no live worker") == 1
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == EXIT_INTERRUPTED
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stdout.close()
    err = err_path.read_text()
    print(err)
    assert f"batch {batch_id} is still queued" in err and "Traceback" not in err
    follow = f"fetchfleet results {batch_id} --follow -o {out} --resume"
    cancel = f"fetchfleet cancel {batch_id}"
    assert follow in err and cancel in err
    # the printed commands are the real ones
    done = run_cli(cancel.split()[1:], env)
    assert done.returncode == EXIT_OK and "cancelled" in done.stdout.decode(), done.stderr.decode()


# ---- item 4: errors with a next step -------------------------------------------------------------------


@pytest.mark.slow
def test_error_messages_say_what_to_do(tmp_path: Path) -> None:
    env = fetchfleet_env(f"redis://127.0.0.1:{free_port()}/0")
    good = write_urls(tmp_path / "good.txt", ["https://example.com/"])

    proc = run_cli(["submit", str(good)], env, timeout=60)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "cannot reach Redis" in err, err
    assert "FETCHFLEET_REDIS_URL" in err and "fetchfleet run" in err and "Traceback" not in err

    bare = write_urls(tmp_path / "bare.txt", ["example.com", "example.com/path?q=1"])
    err = run_cli(["submit", str(bare)], env).stderr.decode()
    assert "bare.txt:1: not an http or https URL (did you mean https://example.com ?)" in err, err
    assert "(did you mean https://example.com/path?q=1 ?)" in err, err

    many = write_urls(tmp_path / "many.txt", [f"ftp://x/{i}" for i in range(5000)])
    proc = run_cli(["submit", str(many)], env)
    lines = proc.stderr.decode().splitlines()
    assert proc.returncode == EXIT_USAGE
    assert len([line for line in lines if line.startswith(f"{many}:")]) == 20, lines[:25]
    assert "... and 4980 more bad lines not shown" in lines and len(lines) == 22, lines[-3:]

    proc = run_cli(["submit", str(tmp_path)], env)
    assert proc.returncode == EXIT_USAGE and f"{tmp_path}: is a directory" in proc.stderr.decode()

    local = local_env()
    proc = run_cli(["run", str(good), "-o", str(tmp_path)], local)
    err = proc.stderr.decode()
    assert proc.returncode == EXIT_USAGE and "is a directory" in err and "worker" not in err, err

    proc = run_cli(["run", str(good), "results.jsonl"], local)
    err = proc.stderr.decode()
    assert proc.returncode == EXIT_USAGE and err.startswith("usage: fetchfleet run "), err
    assert "unrecognized arguments: results.jsonl (to write the results to a file: -o results.jsonl)" in err

    cores = len(os.sched_getaffinity(0))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    proc = run_cli(["run", str(empty), "--workers", str(2 * cores + 1)], local)
    err = proc.stderr.decode()
    assert proc.returncode == EXIT_USAGE and f"{2 * cores + 1} worker processes on {cores} core(s)" in err, (
        err
    )


@pytest.mark.slow
def test_status_shows_times_people_read_and_json_keeps_them_raw(redis_url: str, tmp_path: Path) -> None:
    urls = write_urls(tmp_path / "urls.txt", ["https://example.com/"])
    env = fetchfleet_env(redis_url)
    batch_id = run_cli(["submit", str(urls)], env).stdout.decode().strip()
    plain = run_cli(["status", batch_id], env).stdout.decode()
    print(plain)
    assert re.search(
        r"^\s+created: \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d \(\d+s ago\)$", plain, re.M
    ), plain
    assert re.search(r"^\s+finished: -$", plain, re.M) and "_ms" not in plain, plain
    raw = json.loads(run_cli(["status", batch_id, "--json"], env).stdout)
    assert isinstance(raw["created_ms"], int) and abs(raw["created_ms"] / 1000 - time.time()) < 60


@pytest.mark.slow
def test_worker_logs_its_fetch_policy_and_exits_130_on_ctrl_c(redis_url: str, spawn_worker) -> None:
    ctrl_c = spawn_worker(
        redis_url, allow_private_networks=False, allowed_networks="10.1.0.0/16", max_body_bytes=1234
    )
    term = spawn_worker(redis_url)
    for worker in (ctrl_c, term):
        deadline = time.monotonic() + 30
        while "fetch policy" not in worker.log() and time.monotonic() < deadline:
            time.sleep(0.1)
    line = next(line for line in ctrl_c.log().splitlines() if "fetch policy" in line)
    print(line)
    assert "SSRF guard on" in line and "10.1.0.0/16" in line and "body cap 1234 bytes" in line
    assert "timeouts connect 10s, read 30s, total 60s" in line
    assert "SSRF guard off" in next(x for x in term.log().splitlines() if "fetch policy" in x)
    ctrl_c.signal(signal.SIGINT)
    assert ctrl_c.proc.wait(30) == EXIT_INTERRUPTED, ctrl_c.log()[-2000:]
    term.signal(signal.SIGTERM)
    assert term.proc.wait(30) == EXIT_OK  # a drain is the normal way to stop a worker


# ---- item 7: small things users expect --------------------------------------------------------------


def test_version_help_order_and_descriptions(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == EXIT_OK
    assert re.fullmatch(r"fetchfleet \d+\.\d+\.\d+\n", capsys.readouterr().out)

    assert main(["--help"]) == EXIT_OK
    top = capsys.readouterr().out
    listed = re.findall(r"^    (\w+)\s", top, re.M)
    assert listed[0] == "run", listed
    assert "README" not in top and "documentation: https://" in top.replace("\n", " "), top

    for command in ("results", "status", "cancel"):
        assert main([command, "--help"]) == EXIT_OK
        text = capsys.readouterr().out
        assert re.search(r"^  BATCH\s+the batch id", text, re.M), text

    assert main(["run", "--help"]) == EXIT_OK
    text = capsys.readouterr().out
    assert "FETCHFLEET_ALLOW_PRIVATE_NETWORKS" in text and "blocked" in text and "body" in text
    for command in ("run", "submit", "results", "status", "cancel", "stats", "worker"):
        assert main([command, "--help"]) == EXIT_OK
        text = capsys.readouterr().out
        options = text[text.index("options:") :]
        # every option and argument has a description after it
        assert not re.search(r"^  (-\S+(, --\S+)?( [A-Z|{},-]+)?)\n  -", options, re.M), text


@pytest.mark.slow
def test_ordered_results_from_run_submit_and_results(
    redis_url: str, http_target: HttpTarget, spawn_worker, tmp_path: Path
) -> None:
    """Later URLs answer first; --ordered writes 0, 1, 2, ... anyway."""
    n = 12
    urls = [http_target.url(f"/ok/{i + 1}?delay_ms={(n - i) * 60}") for i in range(n)]
    path = write_urls(tmp_path / "urls.txt", urls)

    def indexes(text: str) -> list[int]:
        return [json.loads(line)["index"] for line in text.splitlines()]

    run = run_cli(
        ["run", str(path), "--ordered", "-q", "--workers", "1"], local_env(allow_private_networks=True)
    )
    assert run.returncode == 0, run.stderr.decode()
    assert indexes(run.stdout.decode()) == list(range(n))

    spawn_worker(redis_url, chunk_size=n)
    env = fetchfleet_env(redis_url, result_retention="ttl")  # "unordered" is read again below
    plain = run_cli(["submit", str(path), "--wait", "-q", "--batch-id", "unordered"], env)
    assert sorted(indexes(plain.stdout.decode())) == list(range(n))
    assert indexes(plain.stdout.decode()) != list(range(n))  # the delays do reorder them
    waited = run_cli(["submit", str(path), "--wait", "-q", "--ordered", "-o", str(tmp_path / "o.jsonl")], env)
    assert waited.returncode == 0 and indexes((tmp_path / "o.jsonl").read_text()) == list(range(n))
    again = run_cli(["results", "unordered", "--ordered"], env)
    assert indexes(again.stdout.decode()) == list(range(n))


def test_ordered_writer_spills_to_disk_past_its_memory_limit(tmp_path: Path) -> None:
    out = tmp_path / "o.jsonl"
    writer = OrderedWriter(open_output(str(out)).writer("jsonl"), memory_limit=5)
    order = [*range(99, 0, -1), 0]  # index 0 last: everything else waits
    for i in order:
        writer.write(orjson.dumps({"index": i}))
    assert writer.spilled == 94 and len(writer._waiting) == 0  # released in one sweep once 0 came
    writer.close()
    assert [json.loads(x)["index"] for x in out.read_text().splitlines()] == list(range(100))

    gappy = OrderedWriter(open_output(str(out)).writer("jsonl"), memory_limit=2)
    for i in (7, 3, 5, 9, 1):
        gappy.write(orjson.dumps({"index": i}))
    gappy.close()  # `results` of an unfinished batch: what there is, in order
    assert [json.loads(x)["index"] for x in out.read_text().splitlines()] == [1, 3, 5, 7, 9]


def test_a_full_temporary_directory_for_ordered_results_is_an_output_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The spill's sqlite3 error ("database or disk is full") escaped every handler: a traceback."""
    real_connect = sqlite3.connect

    def full_disk(path: Path) -> sqlite3.Connection:
        conn = real_connect(path)
        conn.execute("PRAGMA max_page_count = 2")  # a disk that holds two pages
        return conn

    monkeypatch.setattr(output_module.sqlite3, "connect", full_disk)
    writer = OrderedWriter(open_output(str(tmp_path / "o.jsonl")).writer("jsonl"), memory_limit=1)
    with pytest.raises(OutputFailed, match=r"cannot hold results for --ordered: database or disk is full"):
        for i in range(100, 0, -1):
            writer.write(orjson.dumps({"index": i, "pad": "x" * 2000}))
    writer.close()


# ---- item 2: batch limits, applied as the stricter of batch and worker ----------------------------------


@pytest.mark.slow
def test_batch_limits_tighten_the_worker_and_never_loosen_it(
    redis_url: str, http_target: HttpTarget, spawn_worker, tmp_path: Path
) -> None:
    """One worker: guard on, only 127.0.0.1/32 opened, 60 s timeouts, 10 MiB cap. Three batches on it."""
    spawn_worker(redis_url, allow_private_networks=False, allowed_networks="127.0.0.1/32", max_attempts=1)
    env = fetchfleet_env(redis_url)
    port = http_target.port

    def submit(urls: list[str], *limits: str) -> dict[str, dict]:
        path = write_urls(tmp_path / "urls.txt", urls)
        proc = run_cli(["submit", str(path), "--wait", "-q", *limits], env)
        assert proc.returncode == EXIT_OK, proc.stderr.decode()
        return {r["url"]: r for r in map(json.loads, proc.stdout.decode().splitlines())}

    big, small, slow = (http_target.url(p) for p in ("/ok/5000", "/ok/10", "/ok/1?delay_ms=3000"))
    by_name = f"http://localhost:{port}/ok/7"

    # no limits of its own: the worker's settings
    plain = submit([big, slow, by_name])
    assert all(r["ok"] for r in plain.values()), plain

    # tighter: body cap, total timeout, and networks that exclude 127.0.0.1 (by literal and by name)
    tight = submit(
        [big, small, slow, by_name], "--max-body-bytes", "1000", "--total-timeout", "0.5",
        "--only-networks", "10.0.0.0/8",
    )  # fmt: skip
    print({u: (r["error"] or {}).get("kind") for u, r in tight.items()})
    assert tight[big]["error"]["kind"] == "blocked" and tight[by_name]["error"]["kind"] == "blocked"
    assert "outside the batch's networks" in tight[by_name]["error"]["message"]

    capped = submit([big, small, slow], "--max-body-bytes", "1000", "--total-timeout", "0.5")
    assert capped[big]["error"]["kind"] == "too_large" and "1000 bytes" in capped[big]["error"]["message"]
    assert capped[small]["ok"] and capped[small]["size"] == 10
    assert capped[slow]["error"]["kind"] == "timeout" and "0.5s" in capped[slow]["error"]["message"]

    # looser than the worker: 0.0.0.0/0 does not open 127.0.0.2, a longer timeout or a bigger cap changes
    # nothing the worker limits
    loose = ("--only-networks", "0.0.0.0/0", "--max-body-bytes", "999999999", "--total-timeout", "9999")
    wide = submit([small, f"http://127.0.0.2:{port}/ok/3"], *loose)
    assert wide[small]["ok"]
    assert wide[f"http://127.0.0.2:{port}/ok/3"]["error"]["kind"] == "blocked"

    bad = run_cli(["submit", str(tmp_path / "urls.txt"), "--only-networks", "10.0.0.0/33"], env)
    assert bad.returncode == EXIT_USAGE and "not a CIDR network" in bad.stderr.decode()


@pytest.mark.slow
def test_a_worker_setting_set_only_beside_submit_is_called_out(
    redis_url: str, http_target: HttpTarget, spawn_worker, tmp_path: Path
) -> None:
    """The issue's example: FETCHFLEET_MAX_STORED_BODY_BYTES given to `submit`; the workers keep 10 bytes."""
    spawn_worker(redis_url, max_stored_body_bytes=10)
    path = write_urls(tmp_path / "urls.txt", [http_target.url("/ok/100")])
    env = fetchfleet_env(redis_url, max_stored_body_bytes=1_000_000)
    proc = run_cli(["submit", str(path), "--wait", "--store-body", "-o", str(tmp_path / "out.jsonl")], env)
    err = proc.stderr.decode()
    print(err)
    assert proc.returncode == EXIT_OK, err
    (hint,) = [line for line in err.splitlines() if "kept body was cut" in line]
    assert "1 kept body was cut at the WORKERS' FETCHFLEET_MAX_STORED_BODY_BYTES" in hint
    assert "FETCHFLEET_MAX_STORED_BODY_BYTES is set in this command's environment" in hint
    assert "this setting had no effect" in hint
