"""Retries run through the worker's fetch slots: re-queued URLs travel as chunks, not one job each."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.chaos import wait_started, write_urls
from tests.support.procs import fetchfleet_env, run_cli

N = 2_000
TIMEOUT_S = 5


class SilentServer:
    """Accepts every TCP connection and never answers: each fetch runs into its read timeout."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self.accepted = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="silent-server", daemon=True)

    def start(self) -> SilentServer:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("silent server did not start")
        return self

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        held: list[asyncio.StreamWriter] = []

        async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.accepted += 1
            held.append(writer)  # kept open, never written to

        server = self.loop.run_until_complete(
            asyncio.start_server(hold, "127.0.0.1", 0, family=socket.AF_INET, backlog=4096)
        )
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self.loop.run_forever()
        for w in held:
            w.transport.abort()
        server.close()
        self.loop.run_until_complete(server.wait_closed())
        self.loop.close()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_retries_of_a_never_answering_server_use_every_slot(
    redis_url: str, spawn_worker, tmp_path: Path
) -> None:
    server = SilentServer().start()
    try:
        urls = write_urls(tmp_path / "urls.txt", [f"http://127.0.0.1:{server.port}/u{i}" for i in range(N)])
        settings = {
            "concurrency": 250,
            "read_timeout": TIMEOUT_S,
            "total_timeout": TIMEOUT_S,
            "max_attempts": 2,
            "retry_backoff_base": 0.1,
            "retry_backoff_cap": 0.5,
        }
        workers = [spawn_worker(redis_url, worker_id=f"w{i}", **settings) for i in range(2)]
        for w in workers:
            wait_started(w)
        out = tmp_path / "out.jsonl"
        started = time.monotonic()
        proc = run_cli(["submit", str(urls), "--wait", "-q", "-o", str(out)], fetchfleet_env(redis_url), 240)
        elapsed = time.monotonic() - started
        assert proc.returncode == 0, proc.stderr.decode()
    finally:
        server.stop()
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["index"] for r in results) == list(range(N))
    shape = Counter(((r["error"] or {}).get("kind"), r["attempts"]) for r in results)
    by_worker = Counter(r["worker"] for r in results)
    # Two attempts of 5 s for 2,000 URLs over 2 x 250 slots: 4 waves each, 40 s; one job per retry and
    # 8 jobs per worker would take 2,000 / 16 x 5 s = 625 s for the retries alone.
    print(f"\n{N:,} never-answered URLs, 2 attempts of {TIMEOUT_S}s each: {elapsed:.1f}s")
    print(f"results: {dict(shape)}; per worker: {dict(by_worker)}")
    assert shape == Counter({("timeout", 2): N}), shape
    assert elapsed < 60, elapsed
