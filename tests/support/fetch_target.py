"""A hostile HTTP server for fetcher tests: one endpoint per way a real server misbehaves.

It runs in its own thread and event loop on a loopback address, counts every TCP connection it
accepts (so a test can prove that nothing reached it), every request per path, and the concurrency
and arrival times of `/polite/...` requests (so a test can check per-host limits).
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import hashlib
import socket
import ssl
import struct
import threading
import time
import zlib
from collections import Counter
from typing import Any, Self

import brotli
from aiohttp import web

from tests.support.loopthread import AppServer

TEXT = ("fetchfleet decodes this body. " * 200).encode()
BINARY = bytes(reversed(range(256))) * 4  # starts with 0xff: never valid UTF-8
BOMB_INFLATED = 1 << 30  # 1 GiB of zeros, about 1 MiB on the wire


GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"  # deflate, no name, no mtime, best compression


@functools.lru_cache(maxsize=1)
def gzip_bomb() -> bytes:
    """One gzip member of BOMB_INFLATED zeros. Deflating a gigabyte takes seconds; a full flush after
    one MiB resets the compressor, so every further MiB deflates to the very same bytes: deflate one,
    repeat it, and write the gzip header and trailer (CRC-32 and length of the whole) around them."""
    block = bytes(1 << 20)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate: the gzip frame is ours
    segment = c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(BOMB_INFLATED >> 20):
        crc = zlib.crc32(block, crc)
    trailer = struct.pack("<II", crc, BOMB_INFLATED & 0xFFFFFFFF)
    return GZIP_HEADER + segment * (BOMB_INFLATED >> 20) + c.flush() + trailer


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FetchTarget(AppServer):
    start_timeout = 20.0

    def __init__(
        self, host: str = "127.0.0.1", ssl_context: ssl.SSLContext | None = None, ipv6: bool = False
    ) -> None:
        super().__init__(host)
        self.name = f"fetch-target-{host}"
        self.ipv6 = ipv6  # also listen on [::1], same port if free, counted together
        self.ssl_context = ssl_context
        self.port6 = 0
        self.connections = 0
        self.hits: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.arrivals: list[float] = []  # monotonic seconds of each /polite request
        self.times: dict[str, list[float]] = {}  # monotonic seconds of each request, per path
        self._lock = threading.Lock()
        r = self.app.router
        r.add_route("*", "/ok/{size}", self._ok)
        r.add_route("*", "/echo", self._echo)
        r.add_get("/slow-headers/{secs}", self._slow_headers)
        r.add_get("/drip/{count}/{interval}", self._drip)
        r.add_get("/huge", self._huge)
        r.add_get("/gzip-bomb", self._bomb)
        r.add_get("/encoded/{coding}", self._encoded)
        r.add_get("/binary", self._binary)
        r.add_route("*", "/redirect/{n}", self._redirect)
        r.add_get("/loop", self._loop_redirect)
        r.add_get("/redirect-to", self._redirect_to)
        r.add_get("/flaky/{key}/{fails}/{status}", self._flaky)
        r.add_get("/reset", self._reset)
        r.add_get("/invalid", self._invalid)
        r.add_get("/polite/{ms}", self._polite)
        self._servers: list[asyncio.AbstractServer] = []

    # -- addresses -------------------------------------------------------------------------------
    @property
    def base(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def reset_counts(self) -> None:
        with self._lock:
            self.connections = 0
            self.hits.clear()
            self.in_flight = self.max_in_flight = 0
            self.arrivals.clear()
            self.times.clear()

    def max_in_window(self, window: float = 1.0) -> int:
        """The most /polite arrivals seen in any `window` seconds (a sliding window)."""
        times = sorted(self.arrivals)
        best, lo = 0, 0
        for hi, t in enumerate(times):
            while t - times[lo] >= window:
                lo += 1
            best = max(best, hi - lo + 1)
        return best

    # -- handlers --------------------------------------------------------------------------------
    def _hit(self, request: web.Request) -> None:
        with self._lock:
            self.hits[request.path] += 1
            self.times.setdefault(request.path, []).append(time.monotonic())

    async def _ok(self, request: web.Request) -> web.Response:
        self._hit(request)
        return web.Response(body=b"x" * int(request.match_info["size"]), content_type="text/plain")

    async def _echo(self, request: web.Request) -> web.Response:
        self._hit(request)
        body = await request.read()
        return web.json_response(
            {"method": request.method, "headers": dict(request.headers), "body": body.decode()}
        )

    async def _slow_headers(self, request: web.Request) -> web.Response:
        self._hit(request)
        await asyncio.sleep(float(request.match_info["secs"]))
        return web.Response(text="late")

    async def _drip(self, request: web.Request) -> web.StreamResponse:
        """Each byte well within the read timeout, the whole body far past the total timeout."""
        self._hit(request)
        count, interval = int(request.match_info["count"]), float(request.match_info["interval"])
        resp = web.StreamResponse(headers={"Content-Length": str(count), "Content-Type": "text/plain"})
        await resp.prepare(request)
        try:
            for _ in range(count):
                await resp.write(b".")
                await asyncio.sleep(interval)
        except ConnectionError:  # the client gave up, as it should
            pass
        return resp

    async def _huge(self, request: web.Request) -> web.StreamResponse:
        """Claims 10 GiB and streams until the client goes away."""
        self._hit(request)
        resp = web.StreamResponse(headers={"Content-Length": str(10 << 30)})
        await resp.prepare(request)
        block = b"h" * (1 << 16)
        try:
            for _ in range((10 << 30) >> 16):
                await resp.write(block)
        except (ConnectionError, RuntimeError):
            pass
        return resp

    async def _bomb(self, request: web.Request) -> web.Response:
        self._hit(request)
        return web.Response(
            body=gzip_bomb(), headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"}
        )

    async def _encoded(self, request: web.Request) -> web.Response:
        self._hit(request)
        coding = request.match_info["coding"]
        body = {
            "gzip": lambda: gzip.compress(TEXT),
            "deflate": lambda: zlib.compress(TEXT),
            "br": lambda: brotli.compress(TEXT),
        }[coding]()
        return web.Response(
            body=body, headers={"Content-Encoding": coding, "Content-Type": "text/plain; charset=utf-8"}
        )

    async def _binary(self, request: web.Request) -> web.Response:
        self._hit(request)
        return web.Response(body=BINARY, content_type="application/octet-stream")

    async def _redirect(self, request: web.Request) -> web.Response:
        self._hit(request)
        n = int(request.match_info["n"])
        if n <= 0:
            body = await request.read()
            return web.json_response({"method": request.method, "body": body.decode(), "at": "end"})
        status = int(request.query.get("status", "302"))
        query = f"?status={status}" if "status" in request.query else ""
        raise _redirect(status, f"/redirect/{n - 1}{query}")

    async def _loop_redirect(self, request: web.Request) -> web.Response:
        self._hit(request)
        raise web.HTTPFound("/loop")

    async def _redirect_to(self, request: web.Request) -> web.Response:
        self._hit(request)
        raise web.HTTPFound(request.query["url"])

    async def _flaky(self, request: web.Request) -> web.Response:
        """The first `fails` requests for `key` get `status` (with ?retry_after=...), then 200."""
        self._hit(request)
        key = f"flaky:{request.match_info['key']}"
        with self._lock:
            self.hits[key] += 1
            seen = self.hits[key]
        if seen <= int(request.match_info["fails"]):
            headers = {}
            if "retry_after" in request.query:
                headers["Retry-After"] = request.query["retry_after"]
            return web.Response(status=int(request.match_info["status"]), text="later", headers=headers)
        return web.Response(text=f"fine after {seen - 1}")

    async def _reset(self, request: web.Request) -> web.StreamResponse:
        """Promises 100 kB, sends 1 kB, then resets the connection (RST, not a clean close)."""
        self._hit(request)
        resp = web.StreamResponse(headers={"Content-Length": "100000"})
        await resp.prepare(request)
        await resp.write(b"r" * 1000)
        await asyncio.sleep(0.05)
        transport = request.transport
        assert transport is not None
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
        return resp

    async def _invalid(self, request: web.Request) -> web.Response:
        """Bytes that are not an HTTP response at all."""
        self._hit(request)
        transport = request.transport
        assert transport is not None
        transport.write(b"HTTP/1.1 twohundred NOT OK\r\nthis is not a header\r\n\x00\x01\r\n\r\n")
        transport.close()
        return web.Response(text="never sent")

    async def _polite(self, request: web.Request) -> web.Response:
        with self._lock:
            self.hits["/polite"] += 1
            self.arrivals.append(time.monotonic())
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(int(request.match_info["ms"]) / 1000)
        finally:
            with self._lock:
                self.in_flight -= 1
        return web.Response(text="polite")

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> Self:
        gzip_bomb()  # built once up front (under a second), so no request waits for it
        return super().start()

    def _factory(self) -> Any:
        with self._lock:
            self.connections += 1
        assert self._runner is not None and self._runner.server is not None
        return self._runner.server()

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        # A stop does not wait out handlers still sleeping for a test (aiohttp's default: 60 s).
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        server = await loop.create_server(self._factory, self.host, 0, ssl=self.ssl_context, backlog=1024)
        self._servers.append(server)
        self.port = server.sockets[0].getsockname()[1]
        if self.ipv6:
            server6 = await loop.create_server(self._factory, "::1", 0, ssl=self.ssl_context)
            self._servers.append(server6)
            self.port6 = server6.sockets[0].getsockname()[1]

    async def close(self) -> None:
        for s in self._servers:
            s.close()
        await super().close()
        current = asyncio.current_task()
        pending = [t for t in asyncio.all_tasks() if t is not current]  # handlers the short shutdown left
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


def _redirect(status: int, location: str) -> web.HTTPException:
    cls = {
        301: web.HTTPMovedPermanently,
        302: web.HTTPFound,
        303: web.HTTPSeeOther,
        307: web.HTTPTemporaryRedirect,
        308: web.HTTPPermanentRedirect,
    }
    return cls[status](location)
