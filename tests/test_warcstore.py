"""The file body store: WARC/1.1 files warcio accepts, references that resolve, kills that lose nothing."""

from __future__ import annotations

import asyncio
import errno
import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.chaos import assert_each_index_once, wait_started, wait_until, write_urls
from tests.support.http_target import HttpTarget
from tests.support.procs import fetchfleet_env, run_cli, start_cli
from worker.bodies import inline_ref
from worker.errors import BodyStoreError, BodyUnavailable
from worker.warcstore import Exchange, WarcStore, read_body, read_record, sha256_digest_header

WARCIO = str(Path(sys.executable).parent / "warcio")


def exchange(n: int) -> Exchange:
    return Exchange(
        url=f"http://a.test/page/{n}?x=1",
        method="GET",
        request_headers=(("Host", "a.test"), ("User-Agent", "t")),
        status=200,
        reason="OK",
        version="1.1",
        response_headers=(("Content-Type", "text/plain"), ("Content-Encoding", "gzip")),
    )


def check_files(directory: Path) -> list[Path]:
    """Every WARC file passes `warcio check` (digests included) and `warcio index` lists its records."""
    files = sorted(directory.glob("*.warc.gz"))
    assert files, "no WARC files written"
    check = subprocess.run([WARCIO, "check", "-v", *map(str, files)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout[-3000:] + check.stderr[-3000:]
    assert "digest pass" in check.stdout and "fail" not in check.stdout
    index = subprocess.run([WARCIO, "index", *map(str, files)], capture_output=True, text=True, check=True)
    types = [json.loads(line)["warc-type"] for line in index.stdout.splitlines()]
    assert types.count("response") == types.count("request") and types.count("warcinfo") == len(files)
    return files


@pytest.mark.slow  # runs warcio's own `check` and `index` on the files
async def test_put_returns_durable_references_and_rotates_by_size(tmp_path: Path) -> None:
    bodies = {n: os.urandom(200) + f"page {n}".encode() for n in range(40)}
    async with WarcStore(tmp_path, "w/1", max_bytes=4096, max_seconds=3600, max_wait=5) as store:
        refs = await asyncio.gather(*(store.put(exchange(n), body) for n, body in bodies.items()))
    assert len({r.uri for r in refs}) > 1, "never rotated at 4 KiB"
    for n, ref in enumerate(refs):
        payload, digest = read_record(ref.model_dump())
        assert payload == bodies[n]
        assert digest == sha256_digest_header(hashlib.sha256(payload).hexdigest())
    # the records hold the decoded body: no Content-Encoding to decode twice, the real length
    text = b"".join(gzip.decompress(p.read_bytes()) for p in tmp_path.glob("*.warc.gz"))
    assert b"Content-Encoding" not in text and b"Content-Length: 206\r\n" in text
    check_files(tmp_path)


@pytest.mark.slow  # runs warcio's own `check`
async def test_header_bytes_that_are_not_utf8_still_give_a_valid_record(tmp_path: Path) -> None:
    """aiohttp hands such header bytes over surrogate-escaped; warcio %-encodes them (RFC 8187)."""
    odd = Exchange(
        url="http://a.test/odd",
        method="GET",
        request_headers=(("Host", "a.test"),),
        status=200,
        reason="OK",
        version="1.1",
        response_headers=(("X-Latin", "caf\udce9"), ("X-Utf8", "café"), ("Content-Type", "text/plain")),
    )
    async with WarcStore(tmp_path, "w", max_bytes=1 << 30, max_seconds=3600, max_wait=5) as store:
        ref = await store.put(odd, b"body")
    assert read_record(ref.model_dump())[0] == b"body"
    text = gzip.decompress(next(tmp_path.glob("*.warc.gz")).read_bytes())
    assert b"X-Latin: caf%C3%A9\r\n" in text and b"X-Utf8: caf%C3%A9\r\n" in text
    check_files(tmp_path)


async def test_rotation_by_age(tmp_path: Path) -> None:
    async with WarcStore(tmp_path, "w", max_bytes=1 << 30, max_seconds=0.2, max_wait=5) as store:
        first = await store.put(exchange(0), b"a")
        await asyncio.sleep(0.3)
        second = await store.put(exchange(1), b"b")
    assert first.uri != second.uri


async def test_a_body_not_durable_in_time_fails_the_put(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk that does not finish an fsync (here: one that takes 2 s) fails the put after max_wait."""
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        time.sleep(2)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    async with WarcStore(tmp_path, "w", max_bytes=1 << 30, max_seconds=3600, max_wait=0.3) as store:
        started = time.monotonic()
        with pytest.raises(BodyStoreError, match=r"not durable within 0.3s"):
            await store.put(exchange(0), b"slow disk")
        assert time.monotonic() - started < 1.5


async def test_a_failed_write_fails_its_puts_and_the_next_put_starts_a_new_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk (here: the first write fails with ENOSPC) fails the waiting puts; the file's later
    offsets are uncertain then, so the next put writes to a new file and its reference resolves."""
    real_write = os.write
    failures = [OSError(errno.ENOSPC, "No space left on device")]

    def write(fd: int, data: bytes) -> int:
        if failures:
            raise failures.pop()
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    async with WarcStore(tmp_path, "w", max_bytes=1 << 30, max_seconds=3600, max_wait=5) as store:
        with pytest.raises(BodyStoreError, match="No space left on device"):
            await store.put(exchange(0), b"lost")
        ref = await store.put(exchange(1), b"kept")
    assert read_body(ref.model_dump(), hashlib.sha256(b"kept").hexdigest()) == b"kept"
    assert len(list(tmp_path.glob("*.warc.gz"))) == 2


def test_inline_ref_reports_a_body_that_does_not_match(tmp_path: Path) -> None:
    async def one() -> dict:
        async with WarcStore(tmp_path, "w", 1 << 30, 3600, 5) as store:
            return (await store.put(exchange(0), b"right")).model_dump()

    ref = asyncio.run(one())
    good = {"index": 0, "sha256": hashlib.sha256(b"right").hexdigest(), "body_ref": ref}
    assert json.loads(inline_ref(json.dumps(good, separators=(",", ":")).encode()))["body"] == "right"
    bad = {**good, "sha256": "00" * 32}
    doc = json.loads(inline_ref(json.dumps(bad, separators=(",", ":")).encode()))
    assert doc["body"] is None and "does not match" in doc["body_error"]


@pytest.mark.slow
def test_file_store_through_real_workers(
    redis_url: str, http_target: HttpTarget, spawn_worker, tmp_path: Path
) -> None:
    store = tmp_path / "bodies"
    settings = {"body_store": store.as_uri(), "chunk_size": 20}
    spawn_worker(redis_url, worker_id="w1", **settings)
    spawn_worker(redis_url, worker_id="w2", **settings)
    urls = [http_target.url(f"/ok/{50 + i}") for i in range(300)] + [http_target.url("/status/404")]
    path = write_urls(tmp_path / "urls.txt", urls)
    out = tmp_path / "refs.jsonl"
    env = fetchfleet_env(redis_url, result_retention="ttl", **settings)  # results are read twice
    proc = run_cli(["submit", str(path), "--body", "-q"], env)
    assert proc.returncode == 0, proc.stderr.decode()
    batch = proc.stdout.decode().strip()
    proc = run_cli(["results", batch, "--follow", "-q", "-o", str(out)], env)
    assert proc.returncode == 0, proc.stderr.decode()
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert_each_index_once(results, len(urls))
    for r in results:
        assert "body" not in r, "a body went through Redis"
        assert read_body(r["body_ref"], r["sha256"]) == (b"x" * (50 + r["index"]) if r["ok"] else b"status")
        _payload, digest = read_record(r["body_ref"])  # the record's own header, as warcio reads it
        assert digest == f"sha256:{r['sha256']}", r
    files = check_files(store)
    print(f"{len(results)} results in {len(files)} WARC files, {sum(f.stat().st_size for f in files)} bytes")
    inlined = run_cli(["results", batch, "--body", "-q"], env)
    assert inlined.returncode == 0, inlined.stderr.decode()
    texts = {d["index"]: d["body"] for d in map(json.loads, inlined.stdout.decode().splitlines())}
    assert texts == {i: "x" * (50 + i) for i in range(300)} | {300: "status"}


@pytest.mark.slow
def test_worker_sigkilled_mid_batch_loses_no_body(
    redis_url: str, http_target: HttpTarget, spawn_worker, tmp_path: Path
) -> None:
    store = tmp_path / "bodies"
    n = 3000
    settings = {"body_store": store.as_uri(), "chunk_size": 50, "concurrency": 20, "lease_seconds": 2}
    victim = spawn_worker(redis_url, worker_id="victim", **settings)
    survivor = spawn_worker(redis_url, worker_id="survivor", **settings)
    wait_started(victim)
    wait_started(survivor)
    urls = [http_target.url(f"/ok/{100 + i % 500}?delay_ms=5") for i in range(n)]
    path = write_urls(tmp_path / "urls.txt", urls)
    out = tmp_path / "out.jsonl"
    env = fetchfleet_env(redis_url, **settings)
    submit = start_cli(
        ["submit", str(path), "--body", "--wait", "-q", "-o", str(out)],
        env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )

    # Kill once the victim has written records into its WARC file (and, a moment later, recorded their
    # results), while the batch is far from done.
    def victim_bytes() -> int:
        return sum(f.stat().st_size for f in store.glob("*victim*.warc.gz"))

    wait_until(lambda: victim_bytes() > 20_000, 60, "victim writing")
    time.sleep(0.5)
    victim.signal(signal.SIGKILL)
    assert victim.proc.wait(10) == -signal.SIGKILL
    try:
        _, stderr = submit.communicate(timeout=120)
    finally:
        submit.kill()
    assert submit.returncode == 0, stderr.decode()[-2000:]
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert_each_index_once(results, n)
    for r in results:
        assert r["body"] == "x" * (100 + r["index"] % 500), r  # inlined from the store by --wait --body
        assert read_body(r["body_ref"], r["sha256"])
    by_worker = {w: sum(r["worker"] == w for r in results) for w in ("victim", "survivor")}
    print(f"{n} results after a SIGKILL, every reference resolved; results per worker: {by_worker}")
    assert by_worker["victim"] > 0 and by_worker["survivor"] > 0


def test_a_forged_reference_reads_nothing_and_shows_nothing(tmp_path: Path) -> None:
    """A body_ref is a result's (Redis) or the user's (`fetchfleet body REF`): one naming any file had
    its first bytes quoted in the error (file:///proc/self/environ: the environment, passwords too,
    into the result's body_error), and 10**12 bytes of /dev/zero was a MemoryError."""
    secret = "FETCHFLEET_REDIS_URL=redis://:hunter2-" + "Zq@h/0"
    plain = tmp_path / "environ"
    plain.write_text(secret + "\n")
    with pytest.raises(BodyUnavailable) as caught:
        read_body({"uri": plain.as_uri(), "offset": 0, "length": len(secret)}, None)
    assert "not a WARC record" in str(caught.value) and "hunter2" not in str(caught.value)
    for offset, length in ((0, 10**12), (-5, 10), (0, 0), (0, -1)):
        with pytest.raises(BodyUnavailable, match="out of range"):
            read_body({"uri": "file:///dev/zero", "offset": offset, "length": length}, None)
