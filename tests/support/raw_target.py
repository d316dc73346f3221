"""Hostile parts for tests: a raw HTTP server sending what no framework would, and an ops-port flood.

aiohttp's server refuses to write odd header bytes; this one writes whatever `responses` holds, so a
test can send a charset named `punycode`, a Content-Type with control bytes or invalid UTF-8, or a
binary body, exactly as a hostile server on the network would. Runs in its own thread and loop on
127.0.0.1, and counts requests per path.
"""

from __future__ import annotations

import asyncio
import socket
from collections import Counter

from tests.support.loopthread import LoopServer


def response(head: bytes, body: bytes, status: bytes = b"200 OK") -> bytes:
    """One HTTP/1.1 response: `head` holds the header lines (CRLF-separated, no final blank line)."""
    lines = [b"HTTP/1.1 " + status, b"Content-Length: " + str(len(body)).encode(), b"Connection: close"]
    if head:
        lines.append(head)
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class RawTarget(LoopServer):
    name = "raw-target"

    def __init__(self, responses: dict[str, bytes]) -> None:
        super().__init__()
        self.responses = responses
        self.hits: Counter[str] = Counter()
        self._server: asyncio.Server | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            path = head.split(b" ", 2)[1].decode("latin-1")
            self.hits[path] += 1
            writer.write(self.responses.get(path, response(b"", b"no such path", b"404 Not Found")))
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, IndexError):
            pass
        finally:
            writer.close()

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


PUNY_BODY = b"a" * 300_000  # Python's punycode decoder takes ~20 s on this (quadratic)

# What hostile servers send: charsets that are not charsets, header bytes of every shape, binary.
HOSTILE_RESPONSES = {
    "/undefined": response(b"Content-Type: text/plain; charset=undefined", b"hello"),
    "/punycode": response(b"Content-Type: text/plain; charset=punycode", PUNY_BODY),
    "/utf7": response(b"Content-Type: text/plain; charset=utf-7", b"+AGEAYgBj-" * 1000),
    "/zlib": response(b"Content-Type: text/plain; charset=zlib", b"x\x9c\x03\x00\x00\x00\x00\x01"),
    "/bad-utf8-header": response(b"Content-Type: text/\xff\xfe; charset=\xc3\x28", b"\xc3\x28 body"),
    "/control-header": response(b"Content-Type: text/plain\x01\x1b[31m; charset=utf-8", b"ok"),
    "/latin1-header": response(b"Content-Type: text/plain; charset=\xe9t\xe9", "é".encode("latin-1")),
    "/binary": response(b"Content-Type: application/octet-stream", bytes(range(256)) * 64),
    "/binary-as-text": response(b"Content-Type: text/html; charset=utf-8", bytes(range(256)) * 64),
    "/no-type": response(b"", "naïve".encode()),
    "/long-type": response(b"Content-Type: text/plain; " + b"a=b; " * 1500 + b"charset=shift_jis", b"ok"),
    "/two-types": response(b"Content-Type: text/plain; charset=punycode\r\nContent-Type: x/y", b"a" * 1000),
    "/shift-jis": response(b"Content-Type: text/plain; charset=Shift_JIS", "日本".encode("cp932")),
}


def flood(port: int, n: int) -> list[socket.socket]:
    """n connections: half send nothing, half send part of a request head and stop."""
    held = []
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        if i % 2:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: worker\r\nX-Slow: ")
        held.append(s)
    return held
