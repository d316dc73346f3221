"""A copy of the repository as a compose project, and its commands run as a normal Linux user."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.compose_local import ROOT
from tests.docker_engine import sh

IGNORED_NAMES = (
    ".git",
    ".venv",
    "venv",
    "*.egg-info",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    "build",
    "dist",
    "results.jsonl",
    "urls.txt",
    "data",
    "docker-compose.override.yml",
)
USER_UID = 4242  # a normal Linux user: neither root nor the image's 10001


@dataclass
class Project:
    """A copy of the repository brought up under its own compose project name."""

    name: str
    directory: Path
    home: Path  # the normal user's HOME, with the compose plugin
    user: tuple[int, int, list[int]] | None  # uid, gid, groups; None: run as ourselves
    timings: dict[str, float]

    def env(self) -> dict[str, str]:
        keep = {k: v for k, v in os.environ.items() if k in ("PATH", "DOCKER_HOST", "LANG")}
        return {**keep, "COMPOSE_PROJECT_NAME": self.name}

    def compose(
        self, *args: str, timeout: float = 300, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """`docker compose ARGS` for the test's own steps, as the test's own user (root in CI)."""
        return sh(
            "docker", "compose", *args, cwd=self.directory, env=self.env(), timeout=timeout, check=check
        )

    def _as_user(self) -> dict[str, Any]:
        """subprocess arguments that run a command as the normal user, in the project directory."""
        extra: dict[str, Any] = {"cwd": self.directory, "env": {**self.env(), "HOME": str(self.home)}}
        if self.user is not None:
            uid, gid, groups = self.user
            extra.update(user=uid, group=gid, extra_groups=groups)
        return extra

    def as_user(self, command: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """A README line, through bash, as the normal user."""
        return sh("bash", "-c", command, timeout=timeout, check=False, **self._as_user())

    def user_popen(self, command: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["bash", "-c", command],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            **self._as_user(),
        )

    def write(self, name: str, text: str) -> Path:
        path = self.directory / name
        path.write_text(text)
        if self.user is not None:
            os.chown(path, self.user[0], self.user[1])
        return path

    def containers(self, service: str | None = None, all_: bool = False) -> list[dict[str, Any]]:
        args = ["ps", *(["-a"] if all_ else []), "--format", "json", *([service] if service else [])]
        out = self.compose(*args).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def ip(self, container_id: str) -> str:
        fmt = "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}"
        return sh("docker", "inspect", "-f", fmt, container_id).stdout.split()[0]

    def redis_cli(self, *args: str) -> str:
        return self.compose("exec", "-T", "redis", "redis-cli", *args).stdout.strip()

    def wait_healthy(self, timeout: float = 90) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            rows = self.containers()
            if all(r["State"] == "running" and r.get("Health", "") in ("", "healthy") for r in rows):
                return rows
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"not all healthy: {[(r['Name'], r['State'], r.get('Health')) for r in rows]}"
                )
            time.sleep(1)


def user_home(base: Path, uid: int | None) -> Path:
    """A HOME whose ~/.docker/cli-plugins holds the compose plugin the test's own docker uses."""
    home = base / "home"
    plugins = home / ".docker" / "cli-plugins"
    plugins.mkdir(parents=True)
    info = json.loads(sh("docker", "info", "--format", "{{json .ClientInfo.Plugins}}").stdout)
    (compose_path,) = [p["Path"] for p in info if p["Name"] == "compose"]
    shutil.copy2(compose_path, plugins / "docker-compose")
    if uid is not None:
        for path in (home, home / ".docker", plugins, plugins / "docker-compose"):
            os.chown(path, uid, uid)
    return home


def image_id(image: str) -> str:
    return sh("docker", "image", "inspect", "-f", "{{.Id}}", image, check=False).stdout.strip()


def docker_socket_gid() -> int:
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    return os.stat(host.removeprefix("unix://")).st_gid


def override(prometheus_config: str) -> dict[str, Any]:
    return {
        "services": {
            # Docker's DNS answers `target` with a private address, which the shipped file rightly blocks.
            "worker": {"environment": {"FETCHFLEET_ALLOW_PRIVATE_NETWORKS": "true"}},
            "target": {
                "image": "fetchfleet:local",
                "entrypoint": ["python", "-m", "tests.support.http_target", "8080"],
                "working_dir": "/target",
                "volumes": ["./tests:/target/tests:ro"],
            },
            "prometheus": {
                "ports": [],  # replaced by !reset below: no host port, the test reads it on its own address
                "volumes": [f"./{prometheus_config}:/etc/prometheus/prometheus.yml:ro"],
            },
        }
    }


def fast_prometheus_config() -> str:
    """ops/prometheus/prometheus.yml with every interval at 1 s, so a test sees scrapes within seconds."""
    config = yaml.safe_load((ROOT / "ops" / "prometheus" / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    for job in config["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            sd["refresh_interval"] = "1s"
    return yaml.safe_dump(config)


def write_override(project: Project) -> None:
    project.write("prometheus-test.yml", fast_prometheus_config())
    text = yaml.safe_dump(override("prometheus-test.yml"), sort_keys=False)
    project.write("docker-compose.override.yml", text.replace("ports: []", "ports: !reset []"))
