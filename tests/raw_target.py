"""A raw HTTP server for hostile-response tests: each path answers with bytes no framework would send.

aiohttp's server refuses to write odd header bytes; this one writes whatever `responses` holds, so a
test can send a charset named `punycode`, a Content-Type with control bytes or invalid UTF-8, or a
binary body, exactly as a hostile server on the network would. Runs in its own thread and loop on
127.0.0.1, and counts requests per path.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter


def response(head: bytes, body: bytes, status: bytes = b"200 OK") -> bytes:
    """One HTTP/1.1 response: `head` holds the header lines (CRLF-separated, no final blank line)."""
    lines = [b"HTTP/1.1 " + status, b"Content-Length: " + str(len(body)).encode(), b"Connection: close"]
    if head:
        lines.append(head)
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class RawTarget:
    def __init__(self, responses: dict[str, bytes]) -> None:
        self.responses = responses
        self.hits: Counter[str] = Counter()
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

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

    def start(self) -> RawTarget:
        self._thread = threading.Thread(target=self._serve, name="raw-target", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("raw target did not start")
        return self

    def _serve(self) -> None:
        self._loop = loop = asyncio.new_event_loop()
        server = loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0, backlog=1024))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        loop.run_forever()
        server.close()
        loop.run_until_complete(server.wait_closed())
        loop.close()

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
