"""A real HTTP server on 127.0.0.1 for tests, run in its own thread and event loop."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter

from aiohttp import web


class HttpTarget:
    """Routes: /ok/{size} (size bytes of "x", after ?delay_ms=N), /status/{code}. Counts requests per path."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port  # 0: a free one, known once started
        self.hits: Counter[str] = Counter()
        self.app = web.Application()
        self.app.router.add_get("/ok/{size}", self._ok)
        self.app.router.add_get("/status/{code}", self._status)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    async def _ok(self, request: web.Request) -> web.Response:
        self.hits[request.path] += 1
        if "delay_ms" in request.query:  # a server that takes its time, so a batch lasts a while
            await asyncio.sleep(int(request.query["delay_ms"]) / 1000)
        return web.Response(body=b"x" * int(request.match_info["size"]), content_type="text/plain")

    async def _status(self, request: web.Request) -> web.Response:
        self.hits[request.path] += 1
        return web.Response(status=int(request.match_info["code"]), text="status")

    def start(self) -> HttpTarget:
        self._thread = threading.Thread(target=self._serve, name="http-target", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("HTTP target did not start")
        return self

    def _serve(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        self._runner = web.AppRunner(self.app, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, self.host, self.port, backlog=1024)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)


def main() -> None:
    """`python http_target.py PORT`: serve on every address until SIGTERM (test_compose_real's target)."""
    import signal
    import sys

    # As a container's pid 1 a process gets no default SIGTERM action: without a handler `docker compose
    # stop` would wait out the grace period and kill it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    target = HttpTarget(host="0.0.0.0", port=int(sys.argv[1])).start()
    print(f"serving on {target.base}", flush=True)
    signal.pause()


if __name__ == "__main__":
    main()
