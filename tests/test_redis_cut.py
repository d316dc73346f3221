"""A silent network cut (no RST, traffic black-holed): socket timeouts make the worker notice it, and it
says so once when Redis is lost and once when it is back."""

from __future__ import annotations

import asyncio
import re
import threading
import time

import pytest

from producer.embedded import free_port
from tests.chaos import wait_started, wait_until
from tests.support.redisserver import RedisProcess
from worker.redisconn import keepalive_options, pool_kwargs
from worker.settings import load_settings


class BlackholeProxy:
    """A TCP proxy to Redis on 127.0.0.1 that can be cut silently: while cut, bytes go nowhere and
    nothing is closed, as when a switch drops traffic."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.cut = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def start(self) -> BlackholeProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        if self.cut:
            await self._swallow(reader)
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._writers.add(up_writer)
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )
        for w in (writer, up_writer):
            w.close()

    async def _swallow(self, reader: asyncio.StreamReader) -> None:
        while await reader.read(65536):
            pass

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            if not self.cut:
                writer.write(data)
                await writer.drain()

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for w in self._writers:
                w.transport.abort()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in others:
                t.cancel()
            await asyncio.gather(*others, return_exceptions=True)
            if self._server is not None:
                await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def test_every_connection_has_a_timeout_and_keepalive() -> None:
    kwargs = pool_kwargs(load_settings(redis_url="redis://127.0.0.1:1/0", redis_socket_timeout=7))
    assert kwargs["socket_timeout"] == 7 and kwargs["socket_keepalive"] is True
    assert kwargs["socket_keepalive_options"] == keepalive_options() and keepalive_options()


@pytest.mark.slow
def test_silent_cut_logged_once_each_way(redis_url: str, redis_server: RedisProcess, spawn_worker) -> None:
    proxy = BlackholeProxy(redis_server.port).start()
    try:
        w = spawn_worker(f"redis://127.0.0.1:{proxy.port}/0", redis_socket_timeout=2, heartbeat_interval=0.5)
        wait_started(w)
        time.sleep(1)
        proxy.cut = True
        cut_at = time.monotonic()
        wait_until(lambda: "cannot reach Redis" in w.log(), 30, "the cut to be noticed")
        noticed = time.monotonic() - cut_at
        time.sleep(6)  # several more failed attempts, none of them logged again
        proxy.cut = False
        back_at = time.monotonic()
        wait_until(lambda: "answers again" in w.log(), 30, "Redis to be found again")
        again = time.monotonic() - back_at
        time.sleep(2)
        log = w.log()
        warnings = [line for line in log.splitlines() if re.search(r" (WARNING|ERROR) ", line)]
        assert len(warnings) == 1 and "cannot reach Redis" in warnings[0], log[-3000:]
        assert log.count("answers again") == 1, log[-3000:]
        assert w.proc.poll() is None and "Traceback" not in log
        print(f"\nsilent cut: noticed after {noticed:.1f}s, found again {again:.1f}s after the cut ended")
    finally:
        proxy.stop()
