"""Security: no pickle on the queue, Redis AUTH and TLS against real servers, and no secret in any log."""

from __future__ import annotations

import json
import pickle
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from producer.children import stop_process
from tests.chaos import assert_each_index_once, wait_started, wait_until, write_urls
from tests.support.http_target import HttpTarget
from tests.support.procs import ARQ_WORKER, WORKER, fetchfleet_env, run_cli
from tests.support.redisserver import RedisProcess, free_port, redis_binary

pytestmark = pytest.mark.slow  # every test here starts processes

QUEUE = "fetchfleet:queue"


class Planted:
    """Unpickling this creates a file: proof that a payload ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def test_pickled_payload_is_refused_unrun(
    redis_url: str, redis_server: RedisProcess, http_target: HttpTarget, spawn_worker, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    job = {"t": 1, "f": "fetch_chunk", "a": (Planted(marker),), "k": {}, "et": 0}
    payload = pickle.dumps(job)
    pickle.loads(pickle.dumps(Planted(tmp_path / "control"))).close()  # it does run when unpickled
    assert (tmp_path / "control").exists()
    with redis_server.client() as r:
        r.set("arq:job:planted", payload)
        r.zadd(QUEUE, {"planted": 1})
        w = spawn_worker(redis_url)
        wait_until(lambda: r.zscore(QUEUE, "planted") is None, 20, "the worker to take the planted job")
        assert not r.exists("arq:job:planted")
    assert not marker.exists(), "a pickled payload was run"
    assert "planted" in w.log()  # refused loudly: arq names the job it could not deserialize

    urls = write_urls(tmp_path / "urls.txt", [http_target.url(f"/ok/{i}") for i in range(50)])
    done = run_cli(["submit", str(urls), "--wait", "-q"], fetchfleet_env(redis_url), timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    assert w.proc.poll() is None


PASSWORD = "s3cr3t-" + secrets.token_hex(8)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    files = {"ca": d / "ca.pem", "cert": d / "server.pem", "key": d / "server.key"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    cert.cert_chain_pems[0].write_to_path(str(files["cert"]))
    cert.private_key_pem.write_to_path(str(files["key"]))
    return files


@pytest.fixture(scope="module")
def secure_redis(tls_files: dict[str, Path]) -> Iterator[tuple[RedisProcess, int]]:
    """requirepass on both ports; TLS on the second (the plain one only serves the fixtures' checks)."""
    tls_port = free_port()
    server = RedisProcess(
        "--tls-port", str(tls_port),
        "--tls-cert-file", str(tls_files["cert"]),
        "--tls-key-file", str(tls_files["key"]),
        "--tls-ca-cert-file", str(tls_files["ca"]),
        "--tls-auth-clients", "no",
        password=PASSWORD,
    ).start()  # fmt: skip
    yield server, tls_port
    server.close()


def check_batch(env: dict[str, str], http_target: HttpTarget, tmp_path: Path, n: int = 200) -> str:
    urls = write_urls(tmp_path / "urls.txt", [http_target.url(f"/ok/{i}") for i in range(n)])
    done = run_cli(["submit", str(urls), "--wait"], env, timeout=90)
    assert done.returncode == 0, done.stderr.decode()
    assert_each_index_once([json.loads(line) for line in done.stdout.decode().splitlines()], n)
    return done.stdout.decode() + done.stderr.decode()


def test_password_in_url_or_setting(
    secure_redis: tuple[RedisProcess, int], http_target: HttpTarget, spawn_worker, tmp_path: Path
) -> None:
    server, _tls = secure_redis
    plain = f"redis://127.0.0.1:{server.port}/0"
    w1 = spawn_worker(server.url, worker_id="url-pass", log_level="DEBUG")  # password in the URL
    w2 = spawn_worker(plain, worker_id="env-pass", redis_password=PASSWORD, log_level="DEBUG")
    wrong = spawn_worker(f"redis://:wrong-{PASSWORD}@127.0.0.1:{server.port}/0", worker_id="wrong")
    for w in (w1, w2):
        wait_started(w)
    outputs = [check_batch(fetchfleet_env(plain, redis_password=PASSWORD), http_target, tmp_path)]

    refused = run_cli(["status", "x"], fetchfleet_env(f"redis://:bad-{PASSWORD}@127.0.0.1:{server.port}/0"))
    assert refused.returncode == 1 and b"Traceback" not in refused.stderr
    # Said as what it is, on one line: a wrong password is no unreachable Redis.
    assert refused.stderr.decode().count("\n") == 1 and b"refused the credentials" in refused.stderr
    outputs.append(refused.stdout.decode() + refused.stderr.decode())
    no_pass = run_cli(["status", "x"], fetchfleet_env(plain))
    assert no_pass.returncode == 1 and b"Traceback" not in no_pass.stderr
    outputs.append(no_pass.stdout.decode() + no_pass.stderr.decode())

    wait_until(lambda: "refused the credentials" in wrong.log(), 20, "the wrong password to be reported")
    assert wrong.proc.poll() is None  # it keeps trying, quietly, until the password is fixed
    assert wrong.log().count("refused the credentials") == 1
    assert "cannot reach Redis" not in wrong.log()
    for w in (w1, w2, wrong):
        w.stop()
        outputs.append(w.log_path.read_text())
    assert all(PASSWORD not in text for text in outputs), "the Redis password was written to a log"


def test_tls_with_ca_file(
    secure_redis: tuple[RedisProcess, int],
    tls_files: dict[str, Path],
    http_target: HttpTarget,
    spawn_worker,
    tmp_path: Path,
) -> None:
    _server, tls_port = secure_redis
    url = f"rediss://127.0.0.1:{tls_port}/0"
    tls = {"redis_password": PASSWORD, "redis_ca_file": str(tls_files["ca"])}
    w = spawn_worker(url, worker_id="tls", log_level="DEBUG", **tls)
    wait_started(w)
    outputs = [check_batch(fetchfleet_env(url, **tls), http_target, tmp_path)]

    # Without the CA the server's certificate is not trusted: verification is really on.
    untrusted = run_cli(["status", "x"], fetchfleet_env(url, redis_password=PASSWORD))
    assert untrusted.returncode == 1, untrusted.stderr.decode()
    assert b"certificate verify failed" in untrusted.stderr and b"Traceback" not in untrusted.stderr
    outputs.append(untrusted.stderr.decode())
    w.stop()
    outputs.append(w.log_path.read_text())
    assert all(PASSWORD not in text for text in outputs)


@pytest.mark.parametrize("command", [WORKER, ARQ_WORKER], ids=["fetchfleet", "arq"])
def test_sentinel_over_tls_with_passwords(
    command: tuple[str, ...],
    secure_redis: tuple[RedisProcess, int],
    tls_files: dict[str, Path],
    http_target: HttpTarget,
    spawn_worker,
    tmp_path: Path,
) -> None:
    """`rediss+sentinel://`: TLS to a sentinel that has a password of its own and to the primary it
    names (password too); a batch runs through it and no password reaches a log."""
    _server, tls_port = secure_redis
    sentinel_password = "sentinel-" + secrets.token_hex(8)
    port, d = free_port(), tmp_path / "sentinel"
    d.mkdir()
    conf = d / "sentinel.conf"
    conf.write_text(
        f"port 0\ntls-port {port}\nbind 127.0.0.1\ndaemonize no\ndir {d}\n"
        f"tls-cert-file {tls_files['cert']}\ntls-key-file {tls_files['key']}\n"
        f"tls-ca-cert-file {tls_files['ca']}\ntls-auth-clients no\ntls-replication yes\n"
        f"requirepass {sentinel_password}\n"
        f"sentinel monitor svc 127.0.0.1 {tls_port} 1\nsentinel auth-pass svc {PASSWORD}\n"
    )
    binary = redis_binary()
    assert binary is not None
    sentinel = subprocess.Popen([binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL)
    try:
        url = f"rediss+sentinel://127.0.0.1:{port}/svc/0"
        tls = {
            "redis_password": PASSWORD,
            "redis_sentinel_password": sentinel_password,
            "redis_ca_file": str(tls_files["ca"]),
        }
        w = spawn_worker(url, command, worker_id="sentinel-tls", log_level="DEBUG", **tls)
        wait_started(w)
        outputs = [check_batch(fetchfleet_env(url, **tls), http_target, tmp_path)]
        # The sentinel's password is checked: without it the primary's address is not given out.
        no_pass = {k: v for k, v in tls.items() if k != "redis_sentinel_password"}
        refused = run_cli(["status", "x"], fetchfleet_env(url, **no_pass))
        assert refused.returncode == 1 and b"Traceback" not in refused.stderr, refused.stderr.decode()
        assert b"a sentinel refused the credentials" in refused.stderr, refused.stderr.decode()
        outputs.append(refused.stderr.decode())
        w.stop()
        outputs.append(w.log_path.read_text())
        assert all(PASSWORD not in t and sentinel_password not in t for t in outputs)
    finally:
        stop_process(sentinel)
