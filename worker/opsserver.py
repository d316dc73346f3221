"""The worker's small HTTP server: /metrics for Prometheus and /healthz for Docker and Kubernetes.

Anyone who can reach the port can open connections to it, so it holds as little as it can: one
request per connection (`Connection: close`), a request head of at most 8 KiB that must arrive
whole within HEAD_TIMEOUT, and at most MAX_CONNECTIONS open at once. When a connection comes in
at the cap, the one that has waited longest for its request head is dropped: idle and half-sent
connections cannot keep a probe out, and the worker's file descriptors stay free for fetching.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Self

import orjson

from worker.errors import SettingsError
from worker.metrics import CONTENT_TYPE
from worker.monitor import Monitor

log = logging.getLogger("fetchfleet.ops")

HEAD_TIMEOUT = 5.0  # seconds for the whole request head: a probe sends it at once
WRITE_TIMEOUT = 10.0  # seconds for a reader to take the response
MAX_HEAD_BYTES = 8192
MAX_CONNECTIONS = 64
# A connection younger than this is never dropped to make room, so a burst of new connections
# cannot push out a probe that has just arrived and not yet been read; the newcomer is refused.
MIN_AGE_TO_DROP = 1.0
BACKLOG = 128

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}


def _response(status: int, body: bytes, content_type: str, head_only: bool = False) -> bytes:
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode("ascii")
    return head if head_only else head + body


class OpsServer:
    def __init__(self, monitor: Monitor, host: str, port: int) -> None:
        self.monitor = monitor
        self.host, self.port = host, port
        self._server: asyncio.Server | None = None
        # Open connections in arrival order, with when each arrived if it still waits for its request
        # head (None once it is being answered).
        self._conns: dict[asyncio.StreamWriter, float | None] = {}
        self.dropped = 0  # connections closed to make room (for tests and logs)

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(
                self._serve,
                self.host,
                self.port,
                reuse_address=True,
                limit=MAX_HEAD_BYTES,
                backlog=BACKLOG,
            )
        except OSError as exc:
            # Fail the start-up, clearly: a worker nobody can probe would be restarted as unhealthy.
            # (A SettingsError, not an OSError, which the engine would take for Redis being away.)
            raise SettingsError(
                f"FETCHFLEET_METRICS_PORT: cannot serve /metrics on {self.host}:{self.port}: {exc.strerror}"
            ) from None
        log.info("metrics and health on http://%s:%d/metrics and /healthz", self.host, self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._conns):
                writer.transport.abort()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _make_room(self) -> bool:
        """At the cap: drop the connection waiting longest for its head, if it has waited a while.

        False when there is none such: the newcomer is refused instead.
        """
        if len(self._conns) < MAX_CONNECTIONS:
            return True
        now = time.monotonic()
        for writer, since in self._conns.items():
            if since is None:
                continue
            if now - since < MIN_AGE_TO_DROP:
                return False  # arrival order: every later one is younger still
            self.dropped += 1
            writer.transport.abort()  # its handler ends at once
            del self._conns[writer]
            return True
        return False

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._make_room():  # every slot is young or busy answering: come back later
            writer.transport.abort()
            return
        self._conns[writer] = time.monotonic()
        try:
            async with asyncio.timeout(HEAD_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            if writer in self._conns:
                self._conns[writer] = None
            writer.write(await self._answer(head))
            async with asyncio.timeout(WRITE_TIMEOUT):
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass  # too slow, too long, or gone: nothing to answer
        finally:
            self._conns.pop(writer, None)
            writer.transport.abort()

    async def _answer(self, head: bytes) -> bytes:
        try:
            method, target, _version = head.split(b"\r\n", 1)[0].decode("ascii").split(" ")
        except (UnicodeDecodeError, ValueError):
            return _response(400, b"bad request\n", "text/plain")
        if method not in ("GET", "HEAD"):
            return _response(405, b"GET or HEAD\n", "text/plain")
        head_only = method == "HEAD"
        path = target.split("?", 1)[0]
        if path == "/metrics":
            return _response(200, self.monitor.metrics.render(), CONTENT_TYPE, head_only)
        if path == "/healthz":
            started = time.monotonic()
            health = await self.monitor.health()
            log.debug("health answered in %.3fs", time.monotonic() - started)
            status = 200 if health.ok else 503
            return _response(status, orjson.dumps(health.as_dict()), "application/json", head_only)
        return _response(404, b"not found: /metrics or /healthz\n", "text/plain")
