"""A site with opinions about crawlers, for politeness tests: a robots.txt the test sets, and a rate limit.

Runs in its own thread and event loop on 127.0.0.1; every port is its own origin. It records every
request (path and arrival time) and every answer's status, so a test can prove what reached it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter, deque

from aiohttp import web

from tests.support.loopthread import AppServer


class PoliteTarget(AppServer):
    name = "polite-target"

    def __init__(self, robots_status: int = 404, robots_body: str = "", rate_limit: int = 0) -> None:
        super().__init__()
        # What /robots.txt answers; a test may change these while the server runs.
        self.robots_status = robots_status
        self.robots_body = robots_body
        self.robots_redirects = 0  # answer /robots.txt with this many redirects first
        self.robots_delay = 0.0  # seconds /robots.txt takes to answer
        # More than `rate_limit` requests in the last second -> 429 with Retry-After: 2 (0: no limit).
        self.rate_limit = rate_limit
        self.hits: Counter[str] = Counter()
        self.log: list[tuple[float, str, int]] = []  # (monotonic arrival, path, status answered)
        self._recent: deque[float] = deque()
        self._lock = threading.Lock()
        self.app.router.add_get("/robots.txt", self._robots)
        self.app.router.add_get("/hop/{n}", self._hop)
        self.app.router.add_get("/redirect", self._redirect)
        self.app.router.add_get("/{tail:.*}", self._page)

    def _note(self, path: str, status: int) -> None:
        with self._lock:
            self.hits[path] += 1
            self.log.append((time.monotonic(), path, status))

    def pages(self) -> list[tuple[float, str, int]]:
        """Every request but robots.txt and its redirects, in arrival order."""
        with self._lock:
            return [e for e in self.log if e[1] != "/robots.txt" and not e[1].startswith("/hop/")]

    async def _robots(self, request: web.Request) -> web.Response:
        if self.robots_redirects:
            self._note("/robots.txt", 302)
            raise web.HTTPFound(f"/hop/{self.robots_redirects - 1}")
        self._note("/robots.txt", self.robots_status)
        if self.robots_delay:  # counted on arrival, answered later
            await asyncio.sleep(self.robots_delay)
        return web.Response(status=self.robots_status, text=self.robots_body)

    async def _hop(self, request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        if n > 0:
            self._note(request.path, 302)
            raise web.HTTPFound(f"/hop/{n - 1}")
        self._note(request.path, self.robots_status)
        return web.Response(status=self.robots_status, text=self.robots_body)

    async def _redirect(self, request: web.Request) -> web.Response:
        """302 to `?to=URL`, anywhere (another origin's page, for robots.txt on redirects)."""
        self._note(request.path, 302)
        raise web.HTTPFound(request.query["to"])

    async def _page(self, request: web.Request) -> web.Response:
        status = 200
        if self.rate_limit:
            now = time.monotonic()
            with self._lock:
                self._recent.append(now)
                while self._recent and now - self._recent[0] > 1.0:
                    self._recent.popleft()
                if len(self._recent) > self.rate_limit:
                    status = 429
        self._note(request.path, status)
        if status == 429:
            return web.Response(status=429, text="slow down", headers={"Retry-After": "2"})
        return web.Response(text="page")
