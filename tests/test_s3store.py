"""The s3:// body store against a real S3-compatible server process (moto's server mode)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import obstore
import pytest

from tests.chaos import assert_each_index_once, wait_started, wait_until, write_urls
from tests.support.http_target import HttpTarget
from tests.support.procs import fetchfleet_env, run_cli, start_cli
from tests.support.redisserver import free_port
from tests.test_warcstore import WARCIO, exchange
from worker.s3store import S3WarcStore, make_store
from worker.settings import get_settings
from worker.warcstore import read_body

pytestmark = pytest.mark.slow
MOTO = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
AWS = {
    "AWS_ACCESS_KEY_ID": "fetchfleet-test",
    "AWS_SECRET_ACCESS_KEY": "fetchfleet-test-secret",
    "AWS_REGION": "us-east-1",
}


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("wb")
    proc = subprocess.Popen([MOTO, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(endpoint) or proc.poll() is not None, 30, "moto_server start")
        assert proc.poll() is None, "moto_server exited"
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


@pytest.fixture
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """The S3 credentials, in the environment every process of the test reads (workers, producer)."""
    for name, value in AWS.items():
        monkeypatch.setenv(name, value)


def _answers(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(endpoint, timeout=1):
            return True
    except OSError:
        return False


def make_bucket(endpoint: str, name: str) -> None:
    """moto does not check signatures: a bare PUT creates the bucket."""
    with urllib.request.urlopen(urllib.request.Request(f"{endpoint}/{name}", method="PUT"), timeout=10):
        pass


def download_all(endpoint: str, bucket: str, prefix: str, into: Path) -> list[Path]:
    store = make_store(bucket, endpoint)
    paths = []
    for batch in obstore.list(store, prefix=prefix):
        for meta in batch:
            path = into / meta["path"].rsplit("/", 1)[-1]
            path.write_bytes(bytes(obstore.get(store, meta["path"]).bytes()))
            paths.append(path)
    return paths


def test_segments_upload_and_references_resolve(
    s3_endpoint: str, aws_credentials: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FETCHFLEET_S3_ENDPOINT_URL", s3_endpoint)
    get_settings.cache_clear()
    make_bucket(s3_endpoint, "unit")
    bodies = {n: f"page {n} ".encode() * (n + 1) for n in range(30)}

    async def put_all() -> list:
        async with S3WarcStore("s3://unit/warcs", "w1", 1 << 30, 0.2, 10, s3_endpoint) as store:
            started = time.monotonic()
            refs = await asyncio.gather(*(store.put(exchange(n), b) for n, b in bodies.items()))
            return [refs, time.monotonic() - started]

    try:
        refs, took = asyncio.run(put_all())
        assert all(r.uri.startswith("s3://unit/warcs/") for r in refs)
        assert took < 5, took  # one flush interval plus an upload, not a timeout
        for n, ref in enumerate(refs):
            assert read_body(ref.model_dump(), None) == bodies[n]
        files = download_all(s3_endpoint, "unit", "warcs", tmp_path)
        check = subprocess.run([WARCIO, "check", *map(str, files)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
    finally:
        get_settings.cache_clear()


def test_worker_sigkilled_mid_batch_every_reference_resolves(
    s3_endpoint: str,
    redis_url: str,
    http_target: HttpTarget,
    spawn_worker,
    tmp_path: Path,
    aws_credentials: None,
) -> None:
    make_bucket(s3_endpoint, "fleet")
    n = 2000
    settings = {
        "body_store": "s3://fleet/run1",
        "s3_endpoint_url": s3_endpoint,
        "s3_flush_seconds": 0.5,
        "chunk_size": 50,
        "concurrency": 20,
        "lease_seconds": 2,
    }
    victim = spawn_worker(redis_url, worker_id="victim", **settings)
    survivor = spawn_worker(redis_url, worker_id="survivor", **settings)
    wait_started(victim)
    wait_started(survivor)
    pages = [http_target.url(f"/ok/{100 + i % 500}?delay_ms=5") for i in range(n)]
    urls = write_urls(tmp_path / "urls.txt", pages)
    out = tmp_path / "out.jsonl"
    env = fetchfleet_env(redis_url, **settings)
    submit = start_cli(
        ["submit", str(urls), "--body", "--wait", "-q", "-o", str(out)],
        env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    wait_until(lambda: out.exists() and out.stat().st_size > 20_000, 60, "first results")
    victim.signal(signal.SIGKILL)
    assert victim.proc.wait(10) == -signal.SIGKILL
    try:
        _, stderr = submit.communicate(timeout=180)
    finally:
        submit.kill()
    assert submit.returncode == 0, stderr.decode()[-2000:]
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert_each_index_once(results, n)
    for r in results:
        assert r["body_ref"]["uri"].startswith("s3://fleet/run1/"), r
        assert r["body"] == "x" * (100 + r["index"] % 500), r  # read back from S3 by --wait --body
    by_worker = {w: sum(r["worker"] == w for r in results) for w in ("victim", "survivor")}
    files = download_all(s3_endpoint, "fleet", "run1", tmp_path)
    check = subprocess.run([WARCIO, "check", *map(str, files)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout[-2000:] + check.stderr[-2000:]
    print(f"{n} results after a SIGKILL, bodies read back from S3; {by_worker}; {len(files)} objects")


def test_body_command_reads_one_body_back_from_s3(
    s3_endpoint: str,
    redis_url: str,
    http_target: HttpTarget,
    spawn_worker,
    tmp_path: Path,
    aws_credentials: None,
) -> None:
    """`fetchfleet body REF` (and `results --index N --body`) on an s3:// reference a worker wrote."""
    make_bucket(s3_endpoint, "single")
    settings = {
        "body_store": "s3://single/one",
        "s3_endpoint_url": s3_endpoint,
        "s3_flush_seconds": 0.2,
        "chunk_size": 10,
    }
    spawn_worker(redis_url, worker_id="w1", **settings)
    env = fetchfleet_env(redis_url, allow_private_networks=True, **settings)
    urls = [http_target.url(f"/ok/{2000 + i}") for i in range(25)]
    proc = run_cli(["submit", str(write_urls(tmp_path / "urls.txt", urls)), "--body", "-q"], env)
    assert proc.returncode == 0, proc.stderr.decode()
    batch = proc.stdout.decode().strip()
    # the follower keeps the references (no --body): what a user pipes into `body` later
    proc = run_cli(["results", batch, "--follow", "-q", "-o", str(tmp_path / "refs.jsonl")], env)
    assert proc.returncode == 0, proc.stderr.decode()
    lines = {json.loads(line)["index"]: line for line in (tmp_path / "refs.jsonl").read_text().splitlines()}
    assert sorted(lines) == list(range(25))
    doc = json.loads(lines[13])
    assert doc["body_ref"]["uri"].startswith("s3://single/one/") and "body" not in doc

    out = run_cli(["body", lines[13]], env)
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout == b"x" * 2013
    assert hashlib.sha256(out.stdout).hexdigest() == doc["sha256"]
    # from stdin, to a file; then only the body_ref object (no sha256 to check: the bytes still match)
    out = run_cli(["body", "-", "-o", str(tmp_path / "page")], env, stdin=lines[4].encode() + b"\n")
    assert out.returncode == 0 and (tmp_path / "page").read_bytes() == b"x" * 2004, out.stderr.decode()
    out = run_cli(["body", json.dumps(json.loads(lines[21])["body_ref"])], env)
    assert hashlib.sha256(out.stdout).hexdigest() == json.loads(lines[21])["sha256"]
    # an object that is not there: one line (obstore's error runs over many), exit 2
    gone = json.dumps({**doc["body_ref"], "uri": "s3://single/one/no-such-object.warc.gz"})
    out = run_cli(["body", gone], env)
    stderr = out.stderr.decode()
    assert out.returncode == 2 and out.stdout == b"" and len(stderr.strip().splitlines()) == 1, stderr
    assert "no-such-object.warc.gz" in stderr and "not found" in stderr, stderr
