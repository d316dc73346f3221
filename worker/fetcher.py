"""Fetching one URL with aiohttp: redirects followed by hand, body streamed under a cap, errors mapped.

The fetcher knows nothing of queues or Redis; it turns a FetchRequest into a FetchOutcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import ssl
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, replace
from typing import Any, Self, TypedDict

import aiohttp
from yarl import URL

from worker import errors
from worker.batchpolicy import BatchPolicy, NarrowedPolicy
from worker.contract import FetchRequest, RejectedRequest, body_too_long, mask_password, url_problem
from worker.deadlines import Deadline, Watchdog
from worker.errormap import map_exception
from worker.settings import Settings
from worker.ssrf import AddressPolicy, IPNetwork
from worker.warcstore import Exchange

log = logging.getLogger("fetchfleet.fetcher")

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
READ_CHUNK = 64 * 1024
MAX_NARROW_SESSIONS = 64  # sessions for batches with their own network lists, per worker

# Asked with a redirect's new URL before it is followed: None to follow, or why not (robots.txt).


@dataclass(frozen=True, slots=True)
class HopVerdict:
    """What politeness says of a redirect's target before the fetcher follows it."""

    refusal: str | None = None  # not followed, and why (its robots.txt)
    # The target host's turn (Crawl-delay, host limit, backoff), held while that hop's request runs;
    # None when the target needs none (or is the host whose turn the fetch already holds).
    slot: AbstractAsyncContextManager[float | None] | None = None


FOLLOW = HopVerdict()
# Asked before each redirect is followed: (the target URL, the fetch's first URL).
HopCheck = Callable[[str, str], Awaitable[HopVerdict]]


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
    body_truncated: bool = False
    exchange: Exchange | None = None  # with a kept body: what a WARC record needs besides it
    hop_wait_ms: float = 0.0  # waiting for redirect targets' turns (in politeness_wait_ms, not the server)


@dataclass(frozen=True, slots=True)
class FetchLimits:
    connect_timeout: float
    read_timeout: float
    total_timeout: float
    max_redirects: int
    max_body_bytes: int
    max_stored_body_bytes: int = 0
    # Past max_body_bytes: stop reading and keep what came (marked truncated), rather than fail the
    # fetch with TooLarge. robots.txt's (RFC 9309 2.5: a crawler parses at least the first 500 KiB).
    cut_at_cap: bool = False

    def __post_init__(self) -> None:
        if min(self.connect_timeout, self.read_timeout, self.total_timeout) <= 0:
            raise ValueError("timeouts must be positive")
        if min(self.max_redirects, self.max_body_bytes, self.max_stored_body_bytes) < 0:
            raise ValueError("limits must not be negative")

    @classmethod
    def from_settings(cls, s: Settings) -> FetchLimits:
        return cls(
            s.connect_timeout,
            s.read_timeout,
            s.total_timeout,
            s.max_redirects,
            s.max_body_bytes,
            # A body store holds whole bodies; only Redis needs the smaller cap.
            s.max_body_bytes if s.body_store else s.max_stored_body_bytes,
        )


class Fetcher:
    """One aiohttp session per worker process, shared by every fetch it makes."""

    def __init__(self, settings: Settings, pool_of: Fetcher | None = None, cut_at_cap: bool = False) -> None:
        """`pool_of`: a started Fetcher whose session (connections, DNS cache) this one fetches through,
        with its own limits; it is not closed here. `cut_at_cap`: see FetchLimits."""
        self.settings = settings
        self._pool_of = pool_of
        self.limits = replace(FetchLimits.from_settings(settings), cut_at_cap=cut_at_cap)
        self.policy = AddressPolicy.from_settings(settings.allow_private_networks, settings.allowed_networks)
        self._session: aiohttp.ClientSession | None = None
        self.watchdog = Watchdog(self.limits.read_timeout, self.limits.total_timeout)
        # Sessions of batches that narrow the networks (BatchOptions.only_networks): their connections
        # are checked against both rules and never shared with other batches' pooled connections.
        self._narrow: OrderedDict[tuple[IPNetwork, ...], aiohttp.ClientSession] = OrderedDict()
        self._narrow_users: Counter[tuple[IPNetwork, ...]] = Counter()  # fetches running, per list
        self._closing: set[asyncio.Future[None]] = set()
        self._tls: ssl.SSLContext | bool = settings.verify_tls
        # Resolvers we made for FETCHFLEET_DNS_SERVERS: a connector closes only the ones it made itself.
        self._resolvers: list[aiohttp.abc.AbstractResolver] = []

    async def start(self) -> None:
        log.info("%s", describe_policy(self.settings))
        self.watchdog.start()
        self._tls = tls_context(self.settings)
        if self._pool_of is not None:
            self._session = self._pool_of.session
            return
        self._session = self._new_session(None if self.policy.allow_all else self.policy.socket_factory)

    def _new_session(self, socket_factory: Any) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=0,  # the worker's own slots bound concurrency; a second cap here would only queue
            limit_per_host=0,
            ttl_dns_cache=300,
            ssl=self._tls,
            resolver=self._resolver(),
            socket_factory=socket_factory,
            enable_cleanup_closed=False,
        )
        return aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),  # a crawl must not carry cookies between URLs
            headers={"User-Agent": self.settings.user_agent},
            # The read and total timeouts are kept by self.watchdog (worker.deadlines): aiohttp's
            # sock_read re-arms a timer on every read, ~5 us a URL under uvloop (ops/bench).
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.limits.connect_timeout),
            auto_decompress=True,
        )

    def _resolver(self) -> aiohttp.abc.AbstractResolver | None:
        made = resolver(self.settings)
        if made is not None:
            self._resolvers.append(made)
        return made

    async def close(self) -> None:
        await self.watchdog.close()
        for narrow in self._narrow.values():
            await narrow.close()
        self._narrow.clear()
        await asyncio.gather(*self._closing)
        if self._session is not None:
            if self._pool_of is None:
                await self._session.close()
            self._session = None
        for made in self._resolvers:
            await made.close()
        self._resolvers.clear()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("Fetcher.start() was not awaited")
        return self._session

    def session_for(self, batch: BatchPolicy | None) -> aiohttp.ClientSession:
        if batch is None or batch.networks is None:
            return self.session
        narrow = self._narrow.get(batch.networks)
        if narrow is not None:
            self._narrow.move_to_end(batch.networks)  # least recently used first
            return narrow
        if len(self._narrow) >= MAX_NARROW_SESSIONS:
            self._close_idle_narrow()
        policy = NarrowedPolicy(self.policy.allow_all, self.policy.allowed, networks=batch.networks)
        narrow = self._narrow[batch.networks] = self._new_session(policy.socket_factory)
        return narrow

    def _close_idle_narrow(self) -> None:
        """Close the least recently used batch session no fetch is using. They were never closed: after
        64 network lists in a worker's life, every URL of every new such batch was `blocked`."""
        idle = next((key for key in self._narrow if not self._narrow_users[key]), None)
        if idle is None:
            raise errors.Blocked("too many distinct batch network lists in flight on this worker at once")
        closing = asyncio.ensure_future(self._narrow.pop(idle).close())
        self._closing.add(closing)  # referenced until done; close() waits for the rest
        closing.add_done_callback(self._closing.discard)
        del self._narrow_users[idle]

    def _end(self, d: _Hop) -> None:
        self.watchdog.end(d)
        if d.batch is not None and d.batch.networks is not None:
            key = d.batch.networks
            self._narrow_users[key] -= 1
            if not self._narrow_users[key] and key not in self._narrow:  # its session was closed
                del self._narrow_users[key]

    async def fetch(
        self,
        request: FetchRequest | RejectedRequest | str,
        keep_body: bool = False,
        batch: BatchPolicy | None = None,
        hop_check: HopCheck | None = None,
    ) -> FetchOutcome:
        """Fetch once (no retries here). Never raises for a URL's own failure: the outcome carries it.

        `batch`: the batch's own limits; the stricter of them and the worker's apply. `hop_check`: asked
        before each redirect is followed (robots.txt of the new URL's origin); a refusal ends the fetch."""
        started = time.perf_counter()
        try:
            req = self._checked(request)
        except ValueError as exc:  # a job not written by our producer: fail the URL, not the chunk
            err: errors.FetchError = errors.InvalidURL(str(exc).splitlines()[-1].strip())
            url = mask_password(request if isinstance(request, str) else request.url)
            return FetchOutcome(url, None, None, 0, None, None, 0, 0.0, error=err)
        state = d = _Hop(url=req.url, batch=batch)
        self.watchdog.begin(d)
        if batch is not None:  # tighten this fetch's deadlines; the watchdog reads them per fetch
            d.read_timeout = batch.timeout(d.read_timeout, batch.read_timeout)
            d.end = min(d.end, d.last + batch.timeout(self.limits.total_timeout, batch.total_timeout))
            if batch.networks is not None:  # its session is not closed while this fetch runs
                self._narrow_users[batch.networks] += 1
        try:
            outcome = await self._follow(req, state, started, keep_body, hop_check)
            if d.fired is not None and d.task is not None:  # the cancel was swallowed on the way
                d.task.uncancel()
            return outcome
        except (Exception, asyncio.CancelledError) as exc:
            if d.fired is None:
                if isinstance(exc, asyncio.CancelledError):
                    raise
                err = map_exception(exc)
            elif (
                d.task is not None
                and d.task.uncancel() > d.cancelling
                and isinstance(exc, asyncio.CancelledError)
            ):
                raise  # cancelled from outside too (asyncio.timeout's rule): not a timeout
            elif d.fired == "total":
                total = (
                    self.limits.total_timeout
                    if batch is None
                    else batch.timeout(self.limits.total_timeout, batch.total_timeout)
                )
                err = errors.FetchTimeout(f"no complete response within {total:g}s")
            else:
                err = errors.FetchTimeout(f"no data for {d.read_timeout:g}s")
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
                hop_wait_ms=state.hop_wait_ms,
            )
        finally:
            self._end(d)

    def _checked(self, request: FetchRequest | RejectedRequest | str) -> FetchRequest | _PlainGet:
        """The request to send, or ValueError with why not (a job not written by our producer)."""
        if isinstance(request, str):
            problem = url_problem(request)  # the model's checks, ~1 us cheaper
            if problem is not None:  # its reason: a ValidationError's last line is a link to pydantic's docs
                raise ValueError(problem)
            return _PlainGet(request)
        if isinstance(request, RejectedRequest):
            raise ValueError(request.reason)
        if request.body is not None and body_too_long(request.body, self.settings.max_request_body_bytes):
            raise ValueError(f"body longer than {self.settings.max_request_body_bytes} bytes")
        return request

    async def _follow(
        self,
        req: FetchRequest | _PlainGet,
        state: _Hop,
        started: float,
        keep_body: bool,
        hop_check: HopCheck | None,
    ) -> FetchOutcome:
        method, body = req.method, req.body
        headers = req.headers or None
        origin = _origin(URL(state.url, encoded=False)) if headers else None  # a URL parse per fetch saved
        hop_slot: AbstractAsyncContextManager[float | None] | None = None
        while True:
            async with contextlib.AsyncExitStack() as held:
                if hop_slot is not None:  # the redirect target's turn, for this hop's request
                    with self.watchdog.paused(state):  # waiting for it is not the server being slow
                        waited: float | None = await held.enter_async_context(hop_slot)
                    state.hop_wait_ms += waited or 0.0
                    hop_slot = None
                if state.redirects:  # a new hop: the read timeout counts from now
                    state.progress()
                url = URL(state.url, encoded=False)
                # raw_host: the host as sent to DNS and the socket (IDNA-encoded). yarl's `host` decodes
                # IDNA again on every call beyond its cache of 256 hosts (~70 us a URL over many hosts).
                host = url.raw_host
                if url.scheme not in ("http", "https") or not host:
                    raise errors.InvalidURL(f"not an http(s) URL: {state.url}")
                # IP literals in any notation are refused here, before DNS or a socket; names are
                # refused by the socket factory once resolved, at every hop.
                self.policy.check_host(host)
                if state.batch is not None:
                    state.batch.check_host(host)
                if headers and _origin(url) != origin:
                    # Headers given for one site do not follow a redirect to another, unless listed in
                    # FETCHFLEET_REDIRECT_KEEP_HEADERS; credentials never do.
                    keep = self.settings.redirect_keep_headers
                    headers = {
                        k: v
                        for k, v in headers.items()
                        if k.lower() in keep and k.lower() not in _CREDENTIAL_HEADERS
                    }
                async with self.session_for(state.batch).request(
                    method,
                    url,
                    headers=headers,
                    data=body.encode() if body is not None else None,
                    allow_redirects=False,
                    **_connect_timeout(state.batch, self.limits.connect_timeout),
                ) as resp:
                    state.status = resp.status
                    _check_final(resp.status)
                    location = resp.headers.get("Location")
                    if resp.status in REDIRECT_STATUSES and location:
                        if state.redirects >= self.limits.max_redirects:
                            raise errors.TooManyRedirects(
                                f"more than {self.limits.max_redirects} redirects (last to {location})"
                            )
                        state.redirects += 1
                        # Joined to the URL asked for, not resp.url: aiohttp takes a user:password@ off
                        # that, and a relative hop (same origin) went without the credentials.
                        state.url = str(url.join(URL(location)))
                        if hop_check is not None:
                            hop_slot = await self._hop_verdict(hop_check, state.url, req.url)
                        if resp.status == 303 or (resp.status in (301, 302) and method == "POST"):
                            method, body = ("HEAD" if method == "HEAD" else "GET"), None
                        continue
                    digest, size, kept = await self._read_body(resp, state, keep_body and method != "HEAD")
                    truncated = kept is not None and size > len(kept)
                    exchange = None
                    if kept is not None:
                        exchange = Exchange(
                            url=str(resp.url),
                            method=method,
                            request_headers=_masked(resp.request_info.headers.items()),
                            status=resp.status,
                            reason=resp.reason or "",
                            version=f"{resp.version.major}.{resp.version.minor}" if resp.version else "",
                            response_headers=tuple(resp.headers.items()),
                        )
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
                        body_truncated=truncated,
                        exchange=exchange,
                        hop_wait_ms=state.hop_wait_ms,
                    )

    @staticmethod
    async def _hop_verdict(
        hop_check: HopCheck, url: str, first: str
    ) -> AbstractAsyncContextManager[float | None] | None:
        verdict = await hop_check(url, first)
        if verdict.refusal is not None:
            raise errors.RobotsDisallowed(verdict.refusal)
        return verdict.slot

    async def _read_body(
        self, resp: aiohttp.ClientResponse, state: _Hop, keep: bool
    ) -> tuple[str, int, bytes | None]:
        cap = (
            self.limits.max_body_bytes if state.batch is None else state.batch.cap(self.limits.max_body_bytes)
        )
        keep_cap = min(cap, self.limits.max_stored_body_bytes) if keep else 0
        sha = hashlib.sha256()
        parts: list[bytes] | None = [] if keep else None
        kept = 0
        size = 0
        # Decompressed bytes are counted (aiohttp inflates at most a bounded slice per network read),
        # so a gzip bomb stops at the cap like any large body.
        async for block in resp.content.iter_chunked(READ_CHUNK):
            state.progress()
            size += len(block)
            state.size = size
            if size > cap:
                if self.limits.cut_at_cap:  # what was kept is shorter than `size`: marked truncated
                    break
                raise errors.TooLarge(f"body larger than {cap} bytes")
            sha.update(block)
            if parts is not None and kept < keep_cap:
                piece = block[: keep_cap - kept]
                parts.append(piece)
                kept += len(piece)
        return sha.hexdigest(), size, (b"".join(parts) if parts is not None else None)


def tls_context(s: Settings) -> ssl.SSLContext | bool:
    """False (no verification), True (aiohttp's default context: the system CAs), or a context that also
    trusts FETCHFLEET_CA_FILE. One context per worker, built once: loading CAs costs milliseconds."""
    if not s.verify_tls or not s.ca_file:
        return s.verify_tls
    context = ssl.create_default_context()
    context.load_verify_locations(cafile=s.ca_file)
    return context


def resolver(s: Settings) -> aiohttp.abc.AbstractResolver | None:
    """aiodns asking FETCHFLEET_DNS_SERVERS, or None: aiohttp's default (aiodns on the system's servers
    when aiodns is installed, as fetchfleet's dependencies make it)."""
    if not s.dns_servers:
        return None
    return aiohttp.AsyncResolver(nameservers=list(s.dns_servers))


def describe_policy(s: Settings) -> str:
    """One line for the worker's start-up log: the fetch policy in force, since only workers read it."""
    if s.allow_private_networks:
        guard = "off (FETCHFLEET_ALLOW_PRIVATE_NETWORKS=true: private and loopback targets allowed)"
    else:
        allowed = ",".join(s.allowed_networks) or "none"
        guard = f"on (private and loopback targets refused; allowed networks: {allowed})"
    return (
        f"fetch policy: SSRF guard {guard}; body cap {s.max_body_bytes} bytes, stored body cap "
        f"{s.max_stored_body_bytes}; timeouts connect {s.connect_timeout:g}s, read {s.read_timeout:g}s, "
        f"total {s.total_timeout:g}s; redirects {s.max_redirects}; "
        f"TLS verify {'on' if s.verify_tls else 'off'}; attempts {s.max_attempts}; "
        f"concurrency {s.concurrency}"
        + (f"; CA file {s.ca_file} trusted too" if s.ca_file else "")
        + (f"; name servers {','.join(s.dns_servers)}" if s.dns_servers else "")
    )


def _check_final(status: int) -> None:
    """ProtocolFailed unless a final response may have `status`. Below 100 is no HTTP status (RFC 9110 15)
    and a 1xx is never final: aiohttp passes 000-099 and 101 (no upgrade was asked for) on, read as `ok`."""
    if status < 200:
        raise errors.ProtocolFailed(f"status {status} is not a final HTTP status")


_CREDENTIAL_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})


def _masked(headers: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """Request headers as a WARC request record keeps them: credentials shown as `***`, like the URL's
    password in results (aiohttp turns `user:password@` into `Authorization: Basic`, which is base64)."""
    return tuple((k, "***" if k.lower() in _CREDENTIAL_HEADERS else v) for k, v in headers)


def _origin(url: URL) -> tuple[str, str | None, int | None]:
    return url.scheme, url.host, url.port


class _TimeoutArg(TypedDict, total=False):
    timeout: aiohttp.ClientTimeout


def _connect_timeout(batch: BatchPolicy | None, worker_value: float) -> _TimeoutArg:
    """A per-request connect timeout only when the batch sets a shorter one (the session's otherwise)."""
    if batch is None or batch.connect_timeout is None or batch.connect_timeout >= worker_value:
        return {}
    return {"timeout": aiohttp.ClientTimeout(total=None, sock_connect=batch.connect_timeout)}


@dataclass(eq=False, slots=True)
class _Hop(Deadline):
    url: str = ""
    batch: BatchPolicy | None = None
    redirects: int = 0
    status: int | None = None
    size: int = 0
    hop_wait_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class _PlainGet:
    """What FetchRequest(url=...) holds for a bare URL of a chunk, once url_problem found it fine."""

    url: str
    method: str = "GET"
    headers: None = None
    body: None = None
