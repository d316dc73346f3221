"""Fetching one URL with aiohttp: redirects followed by hand, body streamed under a cap, errors mapped.

The fetcher knows nothing of queues or Redis; it turns a FetchRequest into a FetchOutcome.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass

import aiohttp
from yarl import URL

from worker import errors
from worker.contract import FetchRequest
from worker.errormap import map_exception
from worker.settings import Settings
from worker.ssrf import AddressPolicy

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
READ_CHUNK = 64 * 1024


@dataclass(frozen=True, slots=True)
class FetchOutcome:
    url: str
    final_url: str | None
    status: int | None
    size: int
    sha256: str | None
    content_type: str | None
    redirects: int
    elapsed_ms: float
    body: bytes | None = None
    error: errors.FetchError | None = None
    retry_after: str | None = None


@dataclass(frozen=True, slots=True)
class FetchLimits:
    connect_timeout: float
    read_timeout: float
    total_timeout: float
    max_redirects: int
    max_body_bytes: int

    def __post_init__(self) -> None:
        if min(self.connect_timeout, self.read_timeout, self.total_timeout) <= 0:
            raise ValueError("timeouts must be positive")
        if self.max_redirects < 0 or self.max_body_bytes < 0:
            raise ValueError("limits must not be negative")

    @classmethod
    def from_settings(cls, s: Settings) -> FetchLimits:
        return cls(s.connect_timeout, s.read_timeout, s.total_timeout, s.max_redirects, s.max_body_bytes)


class Fetcher:
    """One aiohttp session per worker process, shared by every fetch it makes."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.limits = FetchLimits.from_settings(settings)
        self.policy = AddressPolicy.from_settings(
            settings.allow_private_networks, getattr(settings, "allowed_networks", ())
        )
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=0,  # the worker's own slots bound concurrency; a second cap here would only queue
            limit_per_host=0,
            ttl_dns_cache=300,
            ssl=None if self.settings.verify_tls else False,
            socket_factory=None if self.policy.allow_all else self.policy.socket_factory,
            enable_cleanup_closed=False,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),  # a crawl must not carry cookies between URLs
            headers={"User-Agent": self.settings.user_agent},
            timeout=aiohttp.ClientTimeout(
                total=None,
                sock_connect=self.limits.connect_timeout,
                sock_read=self.limits.read_timeout,
            ),
            auto_decompress=True,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("Fetcher.start() was not awaited")
        return self._session

    async def fetch(self, request: FetchRequest | str, keep_body: bool = False) -> FetchOutcome:
        """Fetch once (no retries here). Never raises for a URL's own failure: the outcome carries it."""
        req = FetchRequest(url=request) if isinstance(request, str) else request
        started = time.perf_counter()
        state = _Hop(url=req.url)
        try:
            async with asyncio.timeout(self.limits.total_timeout):
                return await self._follow(req, state, started, keep_body)
        except (Exception, TimeoutError) as exc:
            err = map_exception(exc)
            if isinstance(exc, TimeoutError) and not isinstance(exc, errors.FetchError):
                err = errors.FetchTimeout(f"no complete response within {self.limits.total_timeout:g}s")
            return FetchOutcome(
                url=req.url,
                final_url=state.url if state.redirects else None,
                status=state.status if isinstance(err, errors.TooLarge | errors.ProtocolFailed) else None,
                size=state.size,
                sha256=None,
                content_type=None,
                redirects=state.redirects,
                elapsed_ms=round((time.perf_counter() - started) * 1000, 3),
                error=err,
            )

    async def _follow(self, req: FetchRequest, state: _Hop, started: float, keep_body: bool) -> FetchOutcome:
        method, body = req.method, req.body
        while True:
            url = URL(state.url, encoded=False)
            if url.scheme not in ("http", "https") or not url.host:
                raise errors.InvalidURL(f"not an http(s) URL: {state.url}")
            self.policy.check_host(url.host)
            async with self.session.request(
                method,
                url,
                headers=req.headers or None,
                data=body.encode() if body is not None else None,
                allow_redirects=False,
            ) as resp:
                state.status = resp.status
                location = resp.headers.get("Location")
                if resp.status in REDIRECT_STATUSES and location:
                    if state.redirects >= self.limits.max_redirects:
                        raise errors.TooManyRedirects(
                            f"more than {self.limits.max_redirects} redirects (last to {location})"
                        )
                    state.redirects += 1
                    state.url = str(resp.url.join(URL(location)))
                    if resp.status == 303 or (resp.status in (301, 302) and method == "POST"):
                        method, body = ("HEAD" if method == "HEAD" else "GET"), None
                    continue
                digest, size, kept = await self._read_body(resp, state, keep_body and method != "HEAD")
                return FetchOutcome(
                    url=req.url,
                    final_url=str(resp.url),
                    status=resp.status,
                    size=size,
                    sha256=digest,
                    content_type=resp.headers.get("Content-Type"),
                    redirects=state.redirects,
                    elapsed_ms=round((time.perf_counter() - started) * 1000, 3),
                    body=kept,
                    retry_after=resp.headers.get("Retry-After"),
                )

    async def _read_body(
        self, resp: aiohttp.ClientResponse, state: _Hop, keep: bool
    ) -> tuple[str, int, bytes | None]:
        cap = self.limits.max_body_bytes
        sha = hashlib.sha256()
        parts: list[bytes] | None = [] if keep else None
        size = 0
        # Decompressed bytes are counted, so a gzip bomb stops at the cap like any large body.
        async for block in resp.content.iter_chunked(READ_CHUNK):
            size += len(block)
            state.size = size
            if size > cap:
                raise errors.TooLarge(f"body larger than {cap} bytes")
            sha.update(block)
            if parts is not None:
                parts.append(block)
        return sha.hexdigest(), size, (b"".join(parts) if parts is not None else None)


@dataclass(slots=True)
class _Hop:
    url: str
    redirects: int = 0
    status: int | None = None
    size: int = 0
