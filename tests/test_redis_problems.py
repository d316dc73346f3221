"""Every CLI command reports a Redis error as what it is: one line, exit 1, no traceback, no secret."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos import SlowTarget, assert_each_index_once, wait_started, wait_until, write_urls
from tests.support.http_target import HttpTarget
from tests.support.procs import fetchfleet_env, run_cli, start_cli
from tests.support.redisserver import RedisProcess
from worker.codec import load_job
from worker.contract import BATCHES_KEY, batch_key, chunk_job_id, done_key, results_key
from worker.enqueue import JOB_KEY_PREFIX

PASSWORD = "Pw@" + secrets.token_hex(6) + ":/x"  # a password a URL parser would cut short
QUEUE = "fetchfleet:queue"


def one_line_failure(proc: subprocess.CompletedProcess[bytes], *words: str) -> str:
    err = proc.stderr.decode()
    assert proc.returncode == 1, (proc.returncode, err)
    assert err.count("\n") == 1 and err.startswith("fetchfleet: "), err
    assert "Traceback" not in err
    for word in words:
        assert word in err, (word, err)
    return err


def commands(urls: Path, batch: str) -> list[list[str]]:
    return [
        ["submit", str(urls), "--batch-id", batch],
        ["submit", str(urls), "--batch-id", batch, "--wait"],
        ["results", batch],
        ["status", batch],
        ["cancel", batch],
        ["stats"],
    ]


@pytest.fixture
def private_redis() -> Iterator[RedisProcess]:
    server = RedisProcess().start()
    yield server
    server.close()


@pytest.mark.slow
@pytest.mark.timeout(240)  # 18 command runs: measured 40 s
def test_wrong_password_every_command(tmp_path: Path) -> None:
    server = RedisProcess(password=PASSWORD).start()
    try:
        urls = write_urls(tmp_path / "urls.txt", ["http://example.test/a"])
        encoded = PASSWORD.replace("@", "%40").replace(":", "%3A").replace("/", "%2F")
        for url, extra in (
            (f"redis://:wrong-{encoded}@127.0.0.1:{server.port}/0", {}),
            (f"redis://127.0.0.1:{server.port}/0", {"redis_password": "wrong-" + PASSWORD}),
            (f"redis://127.0.0.1:{server.port}/0", {}),  # none at all: NOAUTH
        ):
            env = fetchfleet_env(url, **extra)
            for args in commands(urls, "b1"):
                err = one_line_failure(run_cli(args, env, 60), "refused the credentials")
                assert "cannot reach" not in err
                for piece in (PASSWORD, encoded, PASSWORD[3:15]):
                    assert piece not in err, err
    finally:
        server.close()


@pytest.mark.slow
@pytest.mark.timeout(180)  # 6 command runs
def test_wrongtype_planted_at_the_batch_key(private_redis: RedisProcess, tmp_path: Path) -> None:
    urls = write_urls(tmp_path / "urls.txt", ["http://example.test/a"])
    with private_redis.client() as r:
        r.set(batch_key("planted"), "not a hash")
        r.zadd(BATCHES_KEY, {"planted": 1})  # so that stats reads it too
    env = fetchfleet_env(private_redis.url)
    for args in commands(urls, "planted"):
        err = one_line_failure(run_cli(args, env, 60), "WRONGTYPE")
        assert "cannot reach" not in err
    with private_redis.client() as r:
        assert r.get(batch_key("planted")) == b"not a hash"  # left as it was
        assert r.zcard(QUEUE) == 0


@pytest.mark.slow
def test_readonly_replica(private_redis: RedisProcess, tmp_path: Path) -> None:
    replica = RedisProcess("--replicaof", "127.0.0.1", str(private_redis.port)).start()
    try:
        urls = write_urls(tmp_path / "urls.txt", [f"http://example.test/{i}" for i in range(10)])
        primary_env = fetchfleet_env(private_redis.url)
        made = run_cli(["submit", str(urls), "--batch-id", "onprimary"], primary_env, 60)
        assert made.returncode == 0, made.stderr.decode()
        env = fetchfleet_env(replica.url)
        with replica.client() as rc:
            wait_until(lambda: rc.exists(batch_key("onprimary")), 20, "the replica to sync")
        for args in (["submit", str(urls), "--batch-id", "onreplica"], ["cancel", "onprimary"]):
            err = one_line_failure(run_cli(args, env, 60), "read-only replica", "READONLY")
            assert "cannot reach" not in err
        status = run_cli(["status", "onprimary"], env, 60)  # reading from a replica is fine
        assert status.returncode == 0, status.stderr.decode()
    finally:
        replica.close()


@pytest.mark.slow
@pytest.mark.timeout(180)  # measured 20 s
def test_submit_into_full_redis_completes_later_with_the_same_id(
    private_redis: RedisProcess, tmp_path: Path
) -> None:
    n, chunk = 20_000, 100
    secret_url = "http://user:Url-Secret-77@example.test/"
    lines = [f"{secret_url}{'p' * 60}/{i}" for i in range(n)]
    urls = write_urls(tmp_path / "urls.txt", lines)
    env = fetchfleet_env(private_redis.url, chunk_size=chunk)
    with private_redis.client() as r:
        used = int(r.info("memory")["used_memory"])
        r.config_set("maxmemory", used + 600_000)  # room for about a third of the jobs
    full = run_cli(["submit", str(urls), "--batch-id", "fill"], env, 120)
    err = one_line_failure(full, "full", "--batch-id fill")
    assert "example.test" not in err and "Url-Secret" not in err  # no payloads
    with private_redis.client() as r:
        queued_before = r.zcard(QUEUE)
        assert 0 < queued_before < n // chunk, queued_before
        r.config_set("maxmemory", 0)
    again = run_cli(["submit", str(urls), "--batch-id", "fill"], env, 120)
    assert again.returncode == 0, again.stderr.decode()
    twice = run_cli(["submit", str(urls), "--batch-id", "fill"], env, 120)
    assert twice.returncode == 0, twice.stderr.decode()
    with private_redis.client() as r:
        ids = sorted(m.decode() for m in r.zrange(QUEUE, 0, -1))
        assert ids == sorted(chunk_job_id("fill", k) for k in range(n // chunk))
        seen: list[int] = []
        for job_id in ids:
            payload = load_job(r.get(JOB_KEY_PREFIX + job_id))["a"][0]
            first = payload.get("first_index", 0)
            seen += range(first, first + len(payload["requests"]))
            assert payload["requests"] == lines[first : first + len(payload["requests"])]
        assert sorted(seen) == list(range(n)), "some URL is queued twice or not at all"
        meta = r.hgetall(batch_key("fill"))
        assert (meta[b"complete"], int(meta[b"submitted"])) == (b"1", n)
    print(f"\nfull Redis: {queued_before} of {n // chunk} chunks queued before OOM; the rest after")


@pytest.mark.slow
def test_worker_reports_wrongtype_as_what_it_is(
    private_redis: RedisProcess, http_target: HttpTarget, spawn_worker, tmp_path: Path
) -> None:
    """A key of another type where results go: the worker says WRONGTYPE, never "unreachable", does not
    wait it out as an outage, and leaves the keys exactly as they were."""
    urls = write_urls(tmp_path / "urls.txt", [http_target.url(f"/ok/{i}") for i in range(20)])
    env = fetchfleet_env(private_redis.url)
    made = run_cli(["submit", str(urls), "--batch-id", "wt"], env, 60)
    assert made.returncode == 0, made.stderr.decode()
    with private_redis.client() as r:
        r.set(results_key("wt"), "planted")
        w = spawn_worker(private_redis.url, chunk_max_tries=2)
        wait_until(lambda: "WRONGTYPE" in w.log(), 30, "the worker to report WRONGTYPE")
        wait_until(lambda: r.zcard(QUEUE) == 0, 30, "the chunk to be given up")
        log = w.log()
        assert "cannot reach" not in log and "unreachable" not in log.lower(), log[-3000:]
        assert r.get(results_key("wt")) == b"planted"
        assert not r.exists(done_key("wt")) and r.hget(batch_key("wt"), "done") is None
    assert w.proc.poll() is None


@pytest.mark.slow
@pytest.mark.parametrize("wait", [False, True])
def test_redis_that_stops_answering_mid_queueing(
    wait: bool, private_redis: RedisProcess, spawn_worker, tmp_path: Path
) -> None:
    """Redis silent for 3 s (SIGSTOP: a restart, a network cut) while submit queues a batch that only
    fits the queue as workers empty it. Before: both exited 1 telling to start Redis or use `run`, with
    no word of the half-queued batch; `--wait` had said that it reconnects."""
    target = SlowTarget().start()
    try:
        n = 2000
        urls = write_urls(tmp_path / "urls.txt", target.slow_urls(n, 50))
        settings = {"chunk_size": 10, "max_queued_chunks": 20, "concurrency": 20, "redis_socket_timeout": 1}
        wait_started(spawn_worker(private_redis.url, **settings))
        out = tmp_path / "out.jsonl"
        command = [
            "submit",
            str(urls),
            "--batch-id",
            "cut",
            *(["--wait", "-q", "-o", str(out)] if wait else []),
        ]
        env = fetchfleet_env(private_redis.url, **settings)
        submit = start_cli(command, env)
        try:
            with private_redis.client() as r:
                wait_until(lambda: int(r.hget(batch_key("cut"), "enqueued") or 0) >= 200, 30, "queueing")
            os.kill(private_redis.pid, signal.SIGSTOP)
            time.sleep(3)
            os.kill(private_redis.pid, signal.SIGCONT)
            _, err = submit.communicate(timeout=90)
        finally:
            os.kill(private_redis.pid, signal.SIGCONT)
            if submit.poll() is None:
                submit.kill()
                submit.wait(10)
        message = err.decode()
        print(message)
        assert "Traceback" not in message
        if not wait:
            assert submit.returncode == 1, message
            assert "batch cut may be partly queued" in message and "--batch-id cut" in message, message
            again = run_cli(
                ["submit", str(urls), "--batch-id", "cut", "--wait", "-q", "-o", str(out)], env, 90
            )
            assert again.returncode == 0, again.stderr.decode()
        else:
            assert submit.returncode == 0, message
            assert "while batch cut was being queued; it goes on when Redis answers again" in message
        assert_each_index_once([json.loads(line) for line in out.read_text().splitlines()], n)
    finally:
        target.stop()
