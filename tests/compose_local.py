"""Reading docker-compose.yml and turning its services into local processes (no Docker here)."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "ops" / "Dockerfile"


def load_compose(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    # safe_load resolves the file's YAML anchors and `<<` merges, as Compose does.
    return yaml.safe_load(path.read_text())


def image_entrypoint(dockerfile: Path = DOCKERFILE) -> list[str]:
    """The ENTRYPOINT of the Dockerfile's last stage, in exec form."""
    found = re.findall(r"^ENTRYPOINT\s+(\[.*\])\s*$", dockerfile.read_text(), re.MULTILINE)
    if not found:
        raise AssertionError("ops/Dockerfile has no exec-form ENTRYPOINT")
    return yaml.safe_load(found[-1])


def local_argv(service: dict[str, Any]) -> list[str]:
    """The service's entrypoint + command as a local process: `fetchfleet` is `python -m producer`."""
    entry = service.get("entrypoint") or image_entrypoint()
    command = service.get("command") or []
    if entry != ["fetchfleet"]:
        raise AssertionError(f"unexpected entrypoint {entry!r}")
    return [sys.executable, "-m", "producer", *command]


def service_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def rewrite_redis(env: dict[str, str], local_url: str) -> dict[str, str]:
    """Point FETCHFLEET_REDIS_URL at a local server: only the host and port change."""
    url = env["FETCHFLEET_REDIS_URL"]
    local_hostport = local_url.split("://", 1)[1].split("/", 1)[0].rpartition("@")[2]
    scheme, rest = url.split("://", 1)
    hostport, slash, path = rest.partition("/")
    creds = hostport.rpartition("@")[0]
    return {
        **env,
        "FETCHFLEET_REDIS_URL": f"{scheme}://{creds + '@' if creds else ''}{local_hostport}{slash}{path}",
    }


def rewrite_paths(args: list[str], mounts: dict[str, Path]) -> list[str]:
    """Container paths under a mounted folder become the matching local folder."""
    out = []
    for arg in args:
        for inside, outside in mounts.items():
            if arg == inside or arg.startswith(inside.rstrip("/") + "/"):
                arg = str(outside) + arg[len(inside.rstrip("/")) :]
        out.append(arg)
    return out


def bind_mounts(service: dict[str, Any]) -> dict[str, str]:
    """{container path: host path} for the service's bind mounts (short syntax)."""
    mounts = {}
    for vol in service.get("volumes") or []:
        if isinstance(vol, str):
            source, _, target = vol.partition(":")
            target = target.split(":", 1)[0]
            if source.startswith((".", "/")):
                mounts[target] = source
    return mounts


def duration_seconds(value: str | int | float) -> float:
    """Compose durations: `40s`, `1m30s`, `1500ms`, or a bare number of seconds."""
    if isinstance(value, int | float):
        return float(value)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", value)
    if not parts or "".join(n + u for n, u in parts) != value:
        raise ValueError(f"not a compose duration: {value!r}")
    return sum(float(n) * units[u] for n, u in parts)


def healthcheck_argv(service: dict[str, Any]) -> list[str]:
    """The service's `CMD` healthcheck as the container runs it: Compose turns `$$` into `$`.

    A single `$` would be interpolated by Compose from the host's environment, not the container's.
    """
    test = service["healthcheck"]["test"]
    if test[0] != "CMD":
        raise AssertionError(f"healthcheck is not in CMD form: {test!r}")
    for arg in test[1:]:
        if re.search(r"(?<!\$)\$(?!\$)", arg.replace("$$", "")):
            raise AssertionError(f"healthcheck argument interpolated by Compose on the host: {arg!r}")
    return [arg.replace("$$", "$") for arg in test[1:]]
