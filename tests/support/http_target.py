"""A real HTTP server on 127.0.0.1 for tests, run in its own thread and event loop."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections import Counter

from aiohttp import web

from tests.support.loopthread import AppServer


class HttpTarget(AppServer):
    """Routes: /ok/{size} (size bytes of "x", after ?delay_ms=N), /status/{code}. Counts requests per path."""

    name = "http-target"

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self.hits: Counter[str] = Counter()
        self.app.router.add_get("/ok/{size}", self._ok)
        self.app.router.add_get("/status/{code}", self._status)

    async def _ok(self, request: web.Request) -> web.Response:
        self.hits[request.path] += 1
        if "delay_ms" in request.query:  # a server that takes its time, so a batch lasts a while
            await asyncio.sleep(int(request.query["delay_ms"]) / 1000)
        return web.Response(body=b"x" * int(request.match_info["size"]), content_type="text/plain")

    async def _status(self, request: web.Request) -> web.Response:
        self.hits[request.path] += 1
        return web.Response(status=int(request.match_info["code"]), text="status")


def main() -> None:
    """`python -m tests.support.http_target PORT`: serve on every address until SIGTERM (test_compose_real's
    target)."""
    # As a container's pid 1 a process gets no default SIGTERM action: without a handler `docker compose
    # stop` would wait out the grace period and kill it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    target = HttpTarget(host="0.0.0.0", port=int(sys.argv[1])).start()
    print(f"serving on {target.base}", flush=True)
    signal.pause()


if __name__ == "__main__":
    main()
