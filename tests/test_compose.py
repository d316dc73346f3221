"""docker-compose.yml kept honest without Docker: the schema, its promises, and its services run locally."""

from __future__ import annotations

import copy
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.compose_local import (
    COMPOSE_FILE,
    ROOT,
    bind_mounts,
    duration_seconds,
    healthcheck_argv,
    load_compose,
    local_argv,
    rewrite_paths,
    rewrite_redis,
    service_env,
)
from tests.support.http_target import HttpTarget
from tests.support.procs import stop_all
from tests.support.redisserver import RedisProcess, free_port
from worker.settings import ENV_PREFIX, Settings, unknown_variables

# The Compose spec sits beside the repository (shared/ next to the clone, in CI too).
COMPOSE_SPEC = ROOT.parent / "shared" / "compose-spec.json"


def check_jsonschema() -> str:
    found = shutil.which("check-jsonschema") or str(Path(sys.executable).parent / "check-jsonschema")
    assert Path(found).exists(), "check-jsonschema is missing: pip install -e '.[dev]'"
    return found


def schema_errors(data: dict[str, Any], tmp_path: Path) -> list[str]:
    """Problems of a compose document: against ../shared/compose-spec.json, else check-jsonschema's copy."""
    if COMPOSE_SPEC.is_file():
        validator = jsonschema.Draft7Validator(json.loads(COMPOSE_SPEC.read_text()))
        return sorted(
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(data)
        )
    return builtin_schema_errors(data, tmp_path)


def builtin_schema_errors(data: dict[str, Any], tmp_path: Path) -> list[str]:
    path = tmp_path / "compose-under-test.yml"
    path.write_text(yaml.safe_dump(data))
    proc = subprocess.run(
        [check_jsonschema(), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    return [] if proc.returncode == 0 else [proc.stdout + proc.stderr]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.mark.slow
def test_compose_file_is_valid_and_the_check_catches_mistakes(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    assert schema_errors(compose, tmp_path) == []
    assert builtin_schema_errors(compose, tmp_path) == []  # the vendored schema agrees

    typo = copy.deepcopy(compose)
    typo["services"]["worker"]["restrat"] = "always"
    assert any("restrat" in e for e in schema_errors(typo, tmp_path))
    bad_value = copy.deepcopy(compose)
    bad_value["services"]["worker"]["depends_on"]["redis"]["condition"] = "service_ready"
    assert schema_errors(bad_value, tmp_path)


def test_redis_is_persistent_with_a_healthcheck(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    args = redis["command"]
    assert args[args.index("--appendonly") + 1] == "yes"
    named = {v.split(":", 1)[0]: v.split(":", 2)[1] for v in redis["volumes"]}
    data_volume = next(name for name, target in named.items() if target == "/data")
    assert data_volume in compose["volumes"], "the data directory must be a named volume"
    assert "ping" in " ".join(redis["healthcheck"]["test"])
    assert redis["restart"] == "unless-stopped"


def test_worker_is_scalable_with_a_healthcheck_and_drain_grace(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    assert "container_name" not in worker, "`--scale worker=N` needs generated container names"
    assert "ports" not in worker, "a fixed host port would collide at the second replica"
    assert worker["build"]["dockerfile"] == "ops/Dockerfile"
    assert worker["restart"] == "unless-stopped"
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    env = service_env(worker)
    assert int(env["FETCHFLEET_METRICS_PORT"]) > 0
    assert "/healthz" in " ".join(worker["healthcheck"]["test"])
    # Docker must not SIGKILL before the worker's own drain is over.
    grace = float(env.get("FETCHFLEET_DRAIN_GRACE", Settings.model_fields["drain_grace"].default))
    stop = duration_seconds(worker["stop_grace_period"])
    assert grace + 5 <= stop <= grace + 30, (grace, stop)


def test_monitoring_is_a_profile_provisioned_from_ops(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"]
        for source in bind_mounts(services[name]).values():
            assert (ROOT / source).exists(), source
    prom = yaml.safe_load((ROOT / "ops/prometheus/prometheus.yml").read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "fetchfleet-worker")
    sd = job["dns_sd_configs"][0]
    assert sd["names"] == ["worker"]
    assert sd["port"] == int(service_env(services["worker"])["FETCHFLEET_METRICS_PORT"])


def fetchfleet_variables(compose: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {
        name: {k: v for k, v in service_env(svc).items() if k.upper().startswith(ENV_PREFIX)}
        for name, svc in compose["services"].items()
    }


def test_every_fetchfleet_variable_in_the_file_is_a_setting(compose: dict[str, Any]) -> None:
    found = fetchfleet_variables(compose)
    assert found["worker"] and found["producer"]
    for name, env in found.items():
        assert unknown_variables(env) == [], name

    renamed = copy.deepcopy(compose)
    worker_env = renamed["services"]["worker"]["environment"]
    worker_env["FETCHFLEET_CONCURENCY"] = worker_env.pop("FETCHFLEET_CONCURRENCY")
    assert unknown_variables(fetchfleet_variables(renamed)["worker"]) == ["FETCHFLEET_CONCURENCY"]


def wait_healthy(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"worker on :{port} never became healthy")


def run_healthcheck(service: dict[str, Any], env: dict[str, str]) -> int:
    """The service's healthcheck command, run here as the container would run it."""
    argv = healthcheck_argv(service)
    if argv[0] == "python":
        argv[0] = sys.executable
    return subprocess.run(argv, env=env, capture_output=True, timeout=30, check=False).returncode


class StubHealth(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: Any) -> None:  # quiet
        pass


@pytest.mark.slow
def test_the_worker_healthcheck_tells_200_from_503_and_from_silence(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), StubHealth)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    env = {**os.environ, "FETCHFLEET_METRICS_PORT": str(server.server_address[1])}
    try:
        StubHealth.status = 200
        assert run_healthcheck(worker, env) == 0
        StubHealth.status = 503
        assert run_healthcheck(worker, env) != 0
    finally:
        server.shutdown()
        server.server_close()
    assert run_healthcheck(worker, {**env, "FETCHFLEET_METRICS_PORT": str(free_port())}) != 0


class LocalCluster:
    """The compose services as local processes, with only what a laptop cannot share rewritten."""

    def __init__(self, compose: dict[str, Any], redis: RedisProcess, data_dir: Path, logs: Path) -> None:
        self.compose, self.redis, self.data_dir, self.logs = compose, redis, data_dir, logs
        self.procs: list[subprocess.Popen[bytes]] = []

    def env(self, service: str, **extra: str) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.upper().startswith(ENV_PREFIX)}
        env = rewrite_redis(service_env(self.compose["services"][service]), self.redis.url)
        # The test's HTTP targets are on loopback, which the file rightly leaves blocked.
        env["FETCHFLEET_ALLOW_PRIVATE_NETWORKS"] = "true"
        if "FETCHFLEET_BODY_STORE" in env:  # the `bodies` volume: a directory every process shares
            env["FETCHFLEET_BODY_STORE"] = (self.data_dir / "bodies").as_uri()
        return {**base, **env, **extra, "PYTHONUNBUFFERED": "1"}

    def argv(self, service: str, command: list[str] | None = None) -> list[str]:
        svc = dict(self.compose["services"][service])
        if command is not None:  # `docker compose run --rm producer COMMAND...`
            svc["command"] = command
        mounts = {inside: self.data_dir for inside in bind_mounts(svc)}
        return rewrite_paths(local_argv(svc), mounts)

    def start(self, service: str, **extra: str) -> subprocess.Popen[bytes]:
        with (self.logs / f"{service}-{len(self.procs)}.log").open("wb") as log:  # the child keeps its copy
            proc = subprocess.Popen(
                self.argv(service),
                env=self.env(service, **extra),
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        return proc

    def run(
        self, service: str, command: list[str] | None = None, timeout: float = 180, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(service, command),
            env=self.env(service),
            cwd=ROOT,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def healthcheck(self, service: str, env: dict[str, str]) -> int:
        return run_healthcheck(self.compose["services"][service], env)

    def stop(self) -> None:
        stop_all(self.procs, 45)


@pytest.mark.slow
def test_compose_services_run_as_local_processes(
    compose: dict[str, Any], http_target: HttpTarget, tmp_path: Path
) -> None:
    # Redis from the file's own command; only the address and the data directory are the test's.
    redis_args = compose["services"]["redis"]["command"]
    assert redis_args[0] == "redis-server"
    redis = RedisProcess(*redis_args[1:]).start()
    data = tmp_path / "data"
    data.mkdir()
    cluster = LocalCluster(compose, redis, data, tmp_path)
    try:
        with redis.client() as c:
            assert c.config_get("appendonly")["appendonly"] == "yes"

        ports = [free_port(), free_port()]  # one network namespace here, not one per container
        workers = [cluster.start("worker", FETCHFLEET_METRICS_PORT=str(p)) for p in ports]
        for port in ports:
            wait_healthy(port)
        for port in ports:
            env = cluster.env("worker", FETCHFLEET_METRICS_PORT=str(port))
            assert cluster.healthcheck("worker", env) == 0  # the file's own healthcheck command

        stats = cluster.run("producer", ["stats", "--json"])
        assert stats.returncode == 0, stats.stderr
        assert len(json.loads(stats.stdout)["workers"]) == 2

        expected = {}
        for i in range(1000):
            size = 50 + i % 500
            expected[i] = (http_target.url(f"/ok/{size}"), size)
        urls = "".join(f"{u}\n" for u, _ in expected.values())
        proc = cluster.run("producer", stdin=urls)  # the file's default: submit - --wait
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr

        results = [json.loads(line) for line in proc.stdout.splitlines()]
        assert sorted(r["index"] for r in results) == list(range(1000))
        for r in results:
            url, size = expected[r["index"]]
            assert (r["url"], r["status"], r["size"]) == (url, 200, size)
        assert len(Counter(r["worker"] for r in results)) == 2, "both workers fetched"
        assert all(w.poll() is None for w in workers)
    finally:
        cluster.stop()
        redis.close()

    # FETCHFLEET_LOG_FORMAT=json from the file: every worker log line is one JSON object.
    for log in tmp_path.glob("worker-*.log"):
        lines = log.read_text().splitlines()
        assert lines
        assert all(isinstance(json.loads(line), dict) for line in lines), log


@pytest.mark.slow
def test_a_renamed_setting_in_the_file_stops_the_worker(
    compose: dict[str, Any], redis_server: RedisProcess, tmp_path: Path
) -> None:
    renamed = copy.deepcopy(compose)
    env = renamed["services"]["worker"]["environment"]
    env["FETCHFLEET_CONCURENCY"] = env.pop("FETCHFLEET_CONCURRENCY")
    cluster = LocalCluster(renamed, redis_server, tmp_path, tmp_path)
    proc = cluster.start("worker", FETCHFLEET_METRICS_PORT=str(free_port()))
    assert proc.wait(60) == 2
    out = (tmp_path / "worker-0.log").read_text()
    assert "FETCHFLEET_CONCURENCY: not a fetchfleet setting (did you mean FETCHFLEET_CONCURRENCY?)" in out
    assert "Traceback" not in out
    assert COMPOSE_FILE.read_text().count("FETCHFLEET_CONCURRENCY") == 1  # the real file was not touched
