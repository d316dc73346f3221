"""A hostile batch through real workers, beside a normal one on the same Redis (issue 12).

The hostile side mixes every class of attack the issue names: fetched servers that send odd charsets,
header bytes and bodies; input lines that pass the producer but carry passwords, credentials for a
cross-origin redirect and addresses the registries forbid; chunk jobs written straight into the queue
with arq's serializer (bad requests, negative and unrecordable indexes, garbage); and a flood of idle
and half-sent connections on every worker's ops port. The normal batch must finish with every index
exactly once and correct results, and the hostile ones must finish too.
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import redis
from arq.jobs import serialize_job

from tests.chaos import assert_each_index_once, wait_started, write_urls
from tests.support.fetch_target import FetchTarget
from tests.support.http_target import HttpTarget
from tests.support.procs import fetchfleet_env, run_cli, start_cli
from tests.support.raw_target import HOSTILE_RESPONSES, PUNY_BODY, RawTarget, flood
from tests.support.redisserver import free_port
from worker.codec import dump_job
from worker.contract import BATCHES_KEY, CHUNK_TASK, batch_key

pytestmark = pytest.mark.slow  # every test here starts processes

QUEUE = "fetchfleet:queue"
SECRET = "hunter2-" + "x7q"
MAX_BODY = 4096
NORMAL = 1500


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[RawTarget, FetchTarget, FetchTarget]]:
    raw = RawTarget(HOSTILE_RESPONSES).start()
    a, b = FetchTarget().start(), FetchTarget().start()  # two origins for the cross-origin redirect
    yield raw, a, b
    raw.stop()
    a.stop()
    b.stop()


def hostile_lines(raw: RawTarget, a: FetchTarget, b: FetchTarget) -> list[tuple[str, dict[str, Any]]]:
    """(input line, what its result must show)."""
    lines: list[tuple[str, dict[str, Any]]] = []
    for path in sorted(HOSTILE_RESPONSES):  # a fetched server's charsets, header bytes and bodies
        lines.append((raw.url(path), {"status": 200}))
    lines.append((raw.url("/" + "a" * 8000), {"status": 404}))
    # A password in the URL: fetched with it, shown masked.
    masked = a.url("/ok/10").replace("http://", f"http://user:{SECRET}@")
    lines.append((masked, {"status": 200, "url": a.url("/ok/10").replace("http://", "http://user:***@")}))
    # Credentials and an API key for one origin must not reach another through a redirect.
    hop = a.url(f"/redirect-to?url={b.url('/echo')}")
    headers = {"X-Api-Key": SECRET, "Authorization": f"Bearer {SECRET}", "X-Latin": "café"}
    lines.append(
        (json.dumps({"url": hop, "headers": headers}), {"status": 200, "echo_without": set(headers)})
    )
    lines.append(
        (
            json.dumps({"url": a.url("/echo"), "method": "POST", "body": "b" * (MAX_BODY - 10)}),
            {"status": 200},
        )
    )
    # Addresses the registries forbid, in notations the old policy let through, and a hop to one.
    for host in ("[::ffff:0:a9fe:a9fe]", "[64:ff9b::a9fe:a9fe]", "[3fff::1]", "[5f00::1]", "169.254.169.254"):
        lines.append((f"http://{host}/latest/meta-data/", {"kind": "blocked"}))
    lines.append((a.url("/redirect-to?url=http://[::ffff:0:a00:1]/"), {"kind": "blocked"}))
    return lines


def plant(r: redis.Redis, job_id: str, payload: object, raw: bytes | None = None) -> None:
    """A job written straight into the queue, as any Redis writer could, with arq's own serializer."""
    now = int(time.time() * 1000)
    data = (
        raw if raw is not None else serialize_job(CHUNK_TASK, (payload,), {}, None, now, serializer=dump_job)
    )
    r.set(f"arq:job:{job_id}", data, px=600_000)
    r.zadd(QUEUE, {job_id: now})


def plant_jobs(r: redis.Redis, a: FetchTarget) -> tuple[str, int]:
    """A batch of planted jobs: bad entries, a negative and an unrecordable index, garbage payloads."""
    batch, n = "planted", 8
    now = int(time.time() * 1000)
    r.hset(batch_key(batch), mapping={"submitted": n, "complete": 1, "enqueued": n, "created_ms": now})
    r.zadd(BATCHES_KEY, {batch: now})
    bad = [
        a.url("/ok/7"),  # 0: fine
        {"url": a.url("/ok/1"), "headers": {"X-Y\r\nInjected": "1"}},  # 1: header injection
        {"url": a.url("/ok/1"), "headers": {"": "empty name"}},  # 2
        {"url": "http://127.0.0.1:0/"},  # 3: port 0
        {"url": a.url("/echo"), "method": "POST", "body": "b" * (MAX_BODY + 1)},  # 4: over the body cap
        {"url": 5},  # 5
        7,  # 6
    ]
    plant(r, "planted:bad-entries", {"batch_id": batch, "first_index": 0, "requests": bad})
    # Index 7 is fetched by its own good job; the negative job would have landed on 7 and 6.
    plant(r, "planted:negative", {"batch_id": batch, "first_index": -7, "requests": [a.url("/ok/66")] * 2})
    plant(r, "planted:index-7", {"batch_id": batch, "first_index": 7, "requests": [a.url("/ok/77")]})
    plant(r, "planted:huge-index", {"batch_id": batch, "indexes": [2**32], "requests": [a.url("/ok/1")]})
    plant(r, "planted:not-msgpack", None, raw=b"\x93\x01garbage\xc1")
    plant(r, "planted:not-a-map", None, raw=msgpack.packb([1, 2, 3]))
    plant(
        r, "planted:no-such-task", None, raw=msgpack.packb({"t": 1, "f": "os.system", "a": ["id"], "k": {}})
    )
    plant(
        r,
        "planted:bad-args",
        None,
        raw=dump_job({"t": None, "f": CHUNK_TASK, "a": ["x"], "k": {}, "et": now}),
    )
    return batch, n


# ---- batch ids -----------------------------------------------------------------------------------
# Helper `integrity` adds its cases here: batch ids that try to name another batch's keys (submitted
# through the CLI and the API beside the batches above), each expected to be refused with a clear error
# while the normal batch still finishes. Return (CLI arguments, expected exit code) pairs.
def batch_id_cases(normal_batch: str) -> list[tuple[list[str], int]]:
    reaching = [
        f"{normal_batch}:done",
        f"{normal_batch}:results",
        f"meta:{normal_batch}",
        "x" * 65,
        "a b",
        "\x1b[2J",
    ]
    cases: list[tuple[list[str], int]] = []
    for bad in reaching:
        cases += [(["submit", "-", "--batch-id", bad], 2), (["cancel", bad], 2), (["status", bad], 2)]
    return [*cases, (["results", f"{normal_batch}:done"], 2), (["results", "", "--follow"], 2)]


def finish(proc: subprocess.Popen[bytes], timeout: float) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.slow
def test_hostile_batch_beside_a_normal_one(
    redis_url: str,
    http_target: HttpTarget,
    servers: tuple[RawTarget, FetchTarget, FetchTarget],
    spawn_worker,
    tmp_path: Path,
) -> None:
    raw, a, b = servers
    settings: dict[str, Any] = {
        "allow_private_networks": False,
        "allowed_networks": "127.0.0.1/32",  # the test servers, and nothing else on this machine
        "max_request_body_bytes": MAX_BODY,
        "concurrency": 20,
        "chunk_size": 10,
    }
    ports = [free_port(), free_port()]
    workers = [
        spawn_worker(redis_url, metrics_port=p, worker_id=f"w{i}", **settings) for i, p in enumerate(ports)
    ]
    for w in workers:
        wait_started(w)
    env = fetchfleet_env(redis_url, result_retention="ttl", **settings)  # results are read again below

    held: list[socket.socket] = []
    for port in ports:  # the ops ports flooded for the whole run
        held += flood(port, 250)
    try:
        with redis.Redis.from_url(redis_url) as r:
            planted, planted_n = plant_jobs(r, a)

        normal_urls = [http_target.url(f"/ok/{100 + i % 300}") for i in range(NORMAL)]
        normal_file = write_urls(tmp_path / "normal.txt", normal_urls)
        lines = hostile_lines(raw, a, b)
        hostile_file = tmp_path / "hostile.jsonl"
        hostile_file.write_bytes(b"\xef\xbb\xbf" + "\n".join(line for line, _ in lines).encode() + b"\n")
        normal_out, hostile_out = tmp_path / "normal.jsonl", tmp_path / "hostile.out.jsonl"

        started = time.monotonic()
        normal = start_cli(
            ["submit", str(normal_file), "--batch-id", "normal", "--wait", "-q", "-o", str(normal_out)], env
        )
        hostile = start_cli(
            [
                "submit",
                str(hostile_file),
                "--batch-id",
                "hostile",
                "--store-body",
                "--wait",
                "-q",
                "-o",
                str(hostile_out),
            ],
            env,
        )
        for args, code in batch_id_cases("normal"):
            assert run_cli(args, env, timeout=60).returncode == code, args
        normal_rc, _, normal_err = finish(normal, 180)
        hostile_rc, _, hostile_err = finish(hostile, 180)
        took = time.monotonic() - started
        follow = run_cli(["results", planted, "--follow", "-q"], env, timeout=60)
        csv = run_cli(["results", "hostile", "--format", "csv"], env, timeout=60)
        stats = run_cli(["stats"], env, timeout=60)
    finally:
        for s in held:
            s.close()

    # The normal batch: every index exactly once, each the right answer.
    assert normal_rc == 0, normal_err
    results = [json.loads(line) for line in normal_out.read_text().splitlines()]
    assert_each_index_once(results, NORMAL)
    for res in results:
        assert res["status"] == 200 and res["error"] is None, res
        assert res["url"] == normal_urls[res["index"]] and res["size"] == 100 + res["index"] % 300

    # The hostile batch finished too, each line with what it must show.
    assert hostile_rc == 0, hostile_err
    assert "Traceback" not in hostile_err + normal_err
    got = {r["index"]: r for r in map(json.loads, hostile_out.read_text().splitlines())}
    assert sorted(got) == list(range(len(lines)))
    for i, (line, want) in enumerate(lines):
        res = got[i]
        if "status" in want:
            assert res["status"] == want["status"] and res["error"] is None, (line[:100], res)
        if "kind" in want:
            assert res["error"]["kind"] == want["kind"], (line[:100], res)
        if "url" in want:
            assert res["url"] == want["url"] and SECRET not in (res["final_url"] or "")
        if "echo_without" in want:
            seen = json.loads(res["body"])["headers"]
            assert not want["echo_without"] & set(seen), seen
    puny = next(r for r in got.values() if r["url"].endswith("/punycode"))
    assert base64.b64decode(puny["body"]) == PUNY_BODY
    assert csv.returncode == 0 and csv.stdout.count(b"\n") >= len(lines) + 1

    # The planted jobs: bad entries fail alone, the negative-index job is refused, the batch finishes.
    assert follow.returncode == 0, follow.stderr.decode()
    planted_results = {r["index"]: r for r in map(json.loads, follow.stdout.decode().splitlines())}
    assert sorted(planted_results) == list(range(planted_n)), sorted(planted_results)
    assert planted_results[0]["status"] == 200 and planted_results[7]["url"] == a.url("/ok/77")
    assert planted_results[7]["size"] == 77  # not the negative job's /ok/66 under |-7|
    for i in range(1, 7):
        assert planted_results[i]["error"]["kind"] == "invalid_url", planted_results[i]

    logs = "".join(w.log() for w in workers)
    everything = (
        logs + hostile_out.read_text() + follow.stdout.decode() + csv.stdout.decode() + stats.stdout.decode()
    )
    assert SECRET not in everything, "a password or credential was written out"
    assert stats.returncode == 0 and all(w.proc.poll() is None for w in workers)
    print(
        f"\nhostile run: {NORMAL} normal URLs and {len(lines)} hostile lines in {took:.1f}s, "
        f"{planted_n} planted indexes, {len(held)} ops-port connections held; all finished"
    )
