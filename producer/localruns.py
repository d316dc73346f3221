"""The private server of a `fetchfleet run` going on, for `stats`, `status`, `results` and `cancel`.

`run` starts its own server with a random password; a newcomer who types `fetchfleet stats` in a second
terminal would otherwise meet "cannot reach Redis" at localhost:6379, or a password nobody told them.
`run` leaves where its server is (`redis.json`, mode 0600, in its own 0700 directory); these commands
read it when FETCHFLEET_REDIS_URL is not set, and say so on stderr.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from worker.redact import register_secret
from worker.settings import Settings, env_name

DIR_PREFIX = "fetchfleet-run-"
CONNECTION_FILE = "redis.json"
READERS = frozenset({"stats", "status", "results", "cancel"})


@dataclass(frozen=True, slots=True)
class LocalRun:
    pid: int
    url: str
    password: str
    started: float


def write_connection(run_dir: Path, url: str, password: str) -> None:
    path = run_dir / CONNECTION_FILE
    path.touch(mode=0o600)  # before the password is in it
    path.write_text(json.dumps({"url": url, "password": password}))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process with a recycled pid
        return False
    return True


def live_runs(tmp: Path | None = None) -> list[LocalRun]:
    """This user's runs whose process is alive, newest first."""
    found = []
    for d in Path(tmp or tempfile.gettempdir()).glob(f"{DIR_PREFIX}*-*"):
        pid = d.name[len(DIR_PREFIX) :].split("-", 1)[0]
        path = d / CONNECTION_FILE
        try:
            if not pid.isdigit() or d.stat().st_uid != os.getuid() or not _alive(int(pid)):
                continue
            doc = json.loads(path.read_text())
            found.append(LocalRun(int(pid), str(doc["url"]), str(doc["password"]), path.stat().st_mtime))
        except (OSError, ValueError, KeyError, TypeError):  # not written yet, or by something else
            continue
    return sorted(found, key=lambda r: r.started, reverse=True)


def settings_for(command: str, settings: Settings, environ: Mapping[str, str]) -> tuple[Settings, str | None]:
    """`settings` pointed at the newest live run's server when `command` reads a batch and no Redis
    was named; with the line to say about it (None when nothing changed)."""
    if command not in READERS or env_name("redis_url") in environ:
        return settings, None
    runs = live_runs()
    if not runs:
        return settings, None
    run = runs[0]
    register_secret(run.password)
    others = f"; {len(runs) - 1} more runs going on" if len(runs) > 1 else ""
    note = (
        f"reading the private server of `fetchfleet run` (pid {run.pid}){others}; "
        "set FETCHFLEET_REDIS_URL to read another Redis"
    )
    update = {"redis_url": run.url, "redis_password": SecretStr(run.password), "redis_ca_file": None}
    return settings.model_copy(update=update), note
