"""robots.txt per RFC 9309, fetched once per origin for the whole fleet and cached in Redis.

The decision layer (`RobotsRules`, `rules_from_fetch`) is pure; `RobotsCache` adds the fleet-wide cache:
one worker fetches an origin's robots.txt under a short Redis lock while the others wait on the cache
key, and every worker keeps the verdict in memory for a short while, so obeying robots costs about one
Redis read per origin and interval, not one per URL.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import orjson
from protego import Protego
from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from worker import errors
from worker.background import start_loop, stop_loop, stop_tasks
from worker.contract import ROBOTS_UNREACHABLE_KEY, robots_keys
from worker.fetcher import Fetcher, FetchOutcome
from worker.settings import Settings

log = logging.getLogger("fetchfleet.robots")

# RFC 9309 2.5: parse at least 500 KiB. What is kept of a longer file is cut at its last full line.
ROBOTS_MAX_BYTES = 500 * 1024
# RFC 9309 2.3.1.2: follow at least five consecutive redirects.
ROBOTS_REDIRECTS = 5
# How long a worker trusts its in-memory copy before reading Redis again.
MEMORY_SECONDS = 30.0
MEMORY_ORIGINS = 10_000  # origins remembered per process; the least recently used go first
WAIT_POLL_SECONDS = 0.05  # how often a worker waiting for another's fetch looks at the cache key
LOCK_MARGIN_SECONDS = 5.0
# For every origin asked: the cached verdict with its time to live, or else the fleet's fetch lock, in
# one round trip for all the origins one turn of the event loop asks for (a chunk of new hosts asks for
# as many at once). KEYS: each origin's cache key and lock, in pairs; ARGV: the locks' owner (this
# worker), their lease in ms. Three values an origin: 1, verdict, pttl (cached); 2, '', 0 (locked:
# fetch it); 3, '', 0 (another worker fetches it). A lock this worker holds already is stale (a load of
# this process was cancelled before it gave it back; one load an origin runs here at a time): taken again.
READ_OR_LOCK_LUA = """
local out = {}
for i = 1, #KEYS, 2 do
  local raw = redis.call('GET', KEYS[i])
  if raw then
    out[#out + 1] = 1
    out[#out + 1] = raw
    out[#out + 1] = redis.call('PTTL', KEYS[i])
  elseif redis.call('SET', KEYS[i + 1], ARGV[1], 'NX', 'PX', ARGV[2])
      or redis.call('GET', KEYS[i + 1]) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[i + 1], ARGV[2])
    out[#out + 1] = 2
    out[#out + 1] = ''
    out[#out + 1] = 0
  else
    out[#out + 1] = 3
    out[#out + 1] = ''
    out[#out + 1] = 0
  end
end
return out
"""

# The fetched verdict cached for the fleet and the fetch lock given back, in one script call (a
# MULTI/EXEC pipeline before: four commands, and redis-py's transaction handling, a new origin).
# An unreachable origin is also listed, for `fetchfleet stats`. KEYS: the cache key, the lock, the
# list of unreachable origins; ARGV: the verdict, its lifetime in ms, the lock's owner, and for an
# unreachable origin: the origin, its end of disallow and now (both ms since the epoch).
STORE_LUA = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if ARGV[4] then
  redis.call('ZADD', KEYS[3], ARGV[5], ARGV[4])
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[6])
  -- Every entry lasts as long as this newest one: the set expires with it.
  redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[2]) + 60000)
end
if redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
"""

ALLOW, DISALLOW, RULES = "allow", "unreachable", "rules"


def product_token(user_agent: str) -> str:
    """The product token of a User-Agent (`fetchfleet` of `fetchfleet/0.1 (+https://...)`), lowercased."""
    token = user_agent.strip().split("/", 1)[0].split(None, 1)
    return token[0].lower() if token else "*"


def origin_of(url: str) -> str | None:
    """`scheme://host:port` of an http(s) URL, lowercased, default port made explicit; None if unparsable.

    Plain string work (no URL object): it runs for every URL. A URL reaching here passed url_problem.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return None
    scheme = scheme.lower()
    end = len(rest)
    for ch in "/?#":
        i = rest.find(ch)
        if 0 <= i < end:
            end = i
    authority = rest[:end].rpartition("@")[2].lower()
    if authority.startswith("["):
        close = authority.find("]")
        if close < 0:
            return None
        host, port = authority[: close + 1], authority[close + 2 :]
    else:
        host, _, port = authority.partition(":")
    if not host:
        return None
    if not port:
        port = "443" if scheme == "https" else "80"
    elif not port.isdigit():
        return None
    return f"{scheme}://{host}:{int(port)}"


def host_of_origin(origin: str) -> str:
    """The politeness key (worker.hostlimits.host_of) of an origin: its host, without brackets or port."""
    host = origin.partition("://")[2].rpartition(":")[0]
    return host[1:-1] if host.startswith("[") else host


@dataclass(slots=True)
class RobotsRules:
    """What one origin's robots.txt says to this crawler's product token."""

    state: str  # RULES: a robots.txt was read; ALLOW: none (4xx); DISALLOW: unreachable (5xx, network)
    reason: str = ""
    body: str = ""
    token: str = "*"
    # For a network failure: the fetch error's kind, which the URL's result reports (its own fetch would
    # most likely fail the same way, and `robots` would hide why).
    error_kind: str | None = None
    parser: Protego | None = field(default=None, repr=False)
    crawl_delay: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.state == RULES and self.parser is None:
            self.parser = Protego.parse(self.body)
        if self.parser is not None:  # read once: asked for every URL of the origin
            self.crawl_delay = self.parser.crawl_delay(self.token)

    @property
    def open_to_all(self) -> bool:
        """True when no URL can be disallowed: no robots.txt, or no group that could be ours.

        Conservative on purpose (any `*` group, or a name sharing text with our token, counts as ours),
        so that skipping the per-URL check never skips a rule.
        """
        if self.state == ALLOW:
            return True
        if self.state != RULES:
            return False
        for line in self.body.splitlines():
            name, sep, value = line.partition(":")
            if sep and name.strip().lower() == "user-agent":
                agent = value.split("#", 1)[0].strip().lower()
                if agent == "*" or (agent and (agent in self.token or self.token in agent)):
                    return False
        return True

    def allows(self, url: str) -> bool:
        if self.state == ALLOW:
            return True
        if self.state == DISALLOW or self.parser is None:
            return False
        # Protego: longest match wins, Allow over Disallow on a tie, group chosen by the product token.
        return self.parser.can_fetch(url, self.token)

    def dump(self) -> bytes:
        doc = {"state": self.state, "reason": self.reason, "body": self.body, "error_kind": self.error_kind}
        return orjson.dumps(doc)

    @classmethod
    def load(cls, raw: bytes, token: str) -> RobotsRules:
        doc = orjson.loads(raw)
        return cls(doc["state"], doc.get("reason", ""), doc.get("body", ""), token, doc.get("error_kind"))


def robots_text(body: bytes, truncated: bool) -> str:
    """The text parsed: at most ROBOTS_MAX_BYTES, a cut file ending at its last full line."""
    if truncated or len(body) > ROBOTS_MAX_BYTES:
        body = body[:ROBOTS_MAX_BYTES]
        cut = body.rfind(b"\n")
        body = body[: cut + 1] if cut >= 0 else b""
    return body.decode("utf-8", errors="replace")


def rules_from_fetch(outcome: FetchOutcome, token: str) -> RobotsRules:
    """RFC 9309 2.3.1: what a robots.txt fetch's outcome means."""
    err = outcome.error
    if err is not None:
        if isinstance(err, errors.TooManyRedirects):
            # 2.3.1.2: more than five redirects MAY be taken as unavailable, i.e. as a 4xx.
            return RobotsRules(ALLOW, f"robots.txt: {err}", token=token)
        if isinstance(err, errors.Blocked | errors.InvalidURL):
            # The URL's own fetch meets the same guard and reports it as such; robots adds nothing.
            return RobotsRules(ALLOW, f"robots.txt not fetched: {err}", token=token)
        # 2.3.1.4: unreachable (network error, timeout, too large to read) -> disallow everything.
        reason = f"robots.txt unreachable ({err.kind}: {err})"
        return RobotsRules(DISALLOW, reason, token=token, error_kind=err.kind)
    status = outcome.status or 0
    if 200 <= status < 300:
        text = robots_text(outcome.body or b"", outcome.body_truncated)
        return RobotsRules(RULES, f"robots.txt {status}", text, token)
    if status == 429 or status >= 500:
        # 2.3.1.4: a server error means complete disallow; 429 says the same thing ("too busy") as 503.
        return RobotsRules(DISALLOW, f"robots.txt unreachable (HTTP {status})", token=token)
    # 2.3.1.3: 4xx (and a redirect that led nowhere) -> unavailable: everything allowed.
    return RobotsRules(ALLOW, f"robots.txt HTTP {status}", token=token)


class _ReadOrLock:
    """READ_OR_LOCK_LUA for many origins at once: the origins asked for in one turn of the event loop go
    to Redis in one call (one round trip a new origin before: a chunk of 100 new hosts made 100)."""

    def __init__(self, script: AsyncScript, owner: str, lease_ms: int) -> None:
        self._script = script
        self.lease_ms = lease_ms
        self._args: list[str | int] = [owner, lease_ms]
        self._asked: list[tuple[str, asyncio.Future[tuple[int, bytes, int]]]] = []
        self._calls: set[asyncio.Task[None]] = set()  # running calls, referenced until they end

    async def ask(self, origin: str) -> tuple[int, bytes, int]:
        """(1, verdict, pttl), (2, b"", 0) or (3, b"", 0), as the script says; RedisError as Redis does."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[tuple[int, bytes, int]] = loop.create_future()
        self._asked.append((origin, answer))
        if len(self._asked) == 1:  # the first of this turn: the call goes once the turn is over
            loop.call_soon(self._send)
        return await answer

    def _send(self) -> None:
        asked, self._asked = self._asked, []
        call = asyncio.create_task(self._call(asked), name="fetchfleet-robots-read")
        self._calls.add(call)
        call.add_done_callback(self._calls.discard)

    async def _call(self, asked: list[tuple[str, asyncio.Future[tuple[int, bytes, int]]]]) -> None:
        keys = [k for origin, _ in asked for k in robots_keys(origin)]
        try:
            flat = await self._script(keys=keys, args=self._args)
        except BaseException as exc:  # each asker meets it as its own call would have
            for _, answer in asked:
                if not answer.done():
                    if isinstance(exc, asyncio.CancelledError):
                        answer.cancel()
                    else:
                        answer.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        for i, (_, answer) in enumerate(asked):
            if not answer.done():
                answer.set_result((int(flat[3 * i]), flat[3 * i + 1], int(flat[3 * i + 2])))

    async def close(self) -> None:
        await stop_tasks(list(self._calls))  # Redis script calls: a cancel can be lost in one


@dataclass(slots=True)
class _Remembered:
    rules: RobotsRules
    until: float  # monotonic


@dataclass
class RobotsCache:
    """One per worker process: in-memory verdicts in front of the fleet's Redis cache and fetch lock."""

    settings: Settings
    redis: Redis
    owner: str = "?"
    token: str = field(init=False)
    # The worker's own fetcher: robots.txt goes through its connections and DNS cache, so the page
    # fetches after it reuse the connection (one DNS lookup and one TLS handshake a new host, not two).
    pool_of: Fetcher | None = field(default=None, repr=False)
    fetcher: Fetcher | None = field(default=None, init=False, repr=False)
    fetched: dict[str, int] = field(default_factory=dict)  # robots.txt fetched here, by resulting state
    _memory: OrderedDict[str, _Remembered] = field(default_factory=OrderedDict, init=False, repr=False)
    _loading: dict[str, asyncio.Future[RobotsRules]] = field(default_factory=dict, init=False, repr=False)
    _fetcher_lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False, repr=False)
    _read_or_lock: _ReadOrLock = field(init=False, repr=False)
    _store: AsyncScript = field(init=False, repr=False)
    # Fetch locks held now, renewed every third of their lease while their robots.txt is fetched: held
    # for the whole fetch timeout instead, the lock of a worker killed mid-fetch kept every worker from
    # that origin for 65 s (FETCHFLEET_TOTAL_TIMEOUT + 5 s), where its chunks ran again within the lease.
    _held: set[str] = field(default_factory=set, init=False, repr=False)
    _renewer: asyncio.Task[None] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.token = product_token(self.settings.user_agent)
        lease_ms = int(self.settings.lease_seconds * 1000)
        self._read_or_lock = _ReadOrLock(self.redis.register_script(READ_OR_LOCK_LUA), self.owner, lease_ms)
        self._store = self.redis.register_script(STORE_LUA)

    def cached(self, origin: str) -> RobotsRules | None:
        """The verdict held in memory, if still fresh."""
        seen = self.remembered(origin)
        return seen[0] if seen is not None else None

    def remembered(self, origin: str) -> tuple[RobotsRules, float] | None:
        """(verdict, monotonic time it is good until), if held in memory and still fresh."""
        seen = self._memory.get(origin)
        if seen is None:
            return None
        if seen.until < time.monotonic():
            del self._memory[origin]
            return None
        return seen.rules, seen.until

    def loading(self, origin: str) -> bool:
        """Whether a URL of this process is loading `origin`'s verdict now (others wait for it)."""
        return origin in self._loading

    async def rules(self, origin: str) -> RobotsRules:
        """The verdict for `origin`: memory, else Redis, else one fetch for the whole fleet."""
        while True:
            seen = self.cached(origin)
            if seen is not None:
                return seen
            loading = self._loading.get(origin)
            if loading is None:
                break
            try:  # another URL of this process asks already: one Redis read, not many
                return await asyncio.shield(loading)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                # The URL that was loading it was cancelled (its chunk stopped): load it ourselves.
        future: asyncio.Future[RobotsRules] = asyncio.get_running_loop().create_future()
        self._loading[origin] = future
        try:
            rules, ttl = await self._load(origin)
            self._remember(origin, rules, min(MEMORY_SECONDS, ttl))
            future.set_result(rules)
            return rules
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: a future nobody else awaited must not warn
            raise
        finally:
            del self._loading[origin]

    def _remember(self, origin: str, rules: RobotsRules, seconds: float) -> None:
        self._memory[origin] = _Remembered(rules, time.monotonic() + seconds)
        self._memory.move_to_end(origin)
        while len(self._memory) > MEMORY_ORIGINS:
            self._memory.popitem(last=False)

    async def _load(self, origin: str) -> tuple[RobotsRules, float]:
        key, lock = robots_keys(origin)
        # A holder that lives renews its lock until its fetch ends, within the fetch timeout.
        deadline = time.monotonic() + (self.settings.total_timeout + LOCK_MARGIN_SECONDS) * 2
        try:
            while True:
                found, raw, pttl = await self._read_or_lock.ask(origin)
                if found == 1:
                    return RobotsRules.load(raw, self.token), max(pttl, 0) / 1000
                if found == 2:
                    break
                if time.monotonic() > deadline:  # the holder is stuck beyond its lease: fetch ourselves
                    break
                await asyncio.sleep(WAIT_POLL_SECONDS)
        except RedisError as exc:
            log.warning("robots cache unavailable (%s); fetching %s/robots.txt for this worker", exc, origin)
            rules = await self._fetch(origin)
            return rules, self._ttl(rules)
        self._held.add(lock)
        self._renewer = start_loop(self._renewer, self._renew_locks, "fetchfleet-robots-locks")
        try:
            rules = await self._fetch(origin)
            ttl = self._ttl(rules)
            args: list[str | int | bytes] = [rules.dump(), int(ttl * 1000), self.owner]
            if rules.state == DISALLOW:
                now_ms = int(time.time() * 1000)
                args += [origin, now_ms + int(ttl * 1000), now_ms]
            await self._store(keys=[key, lock, ROBOTS_UNREACHABLE_KEY], args=args)
        except RedisError as exc:
            log.warning("could not cache robots.txt of %s: %s", origin, exc)
        finally:
            self._held.discard(lock)
        return rules, ttl

    async def _renew_locks(self) -> None:
        """Every third of a lease, the locks held now get a full lease again, in one round trip."""
        lease_ms = self._read_or_lock.lease_ms
        while True:
            await asyncio.sleep(lease_ms / 3000)
            held = list(self._held)
            if not held:
                continue
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for lock in held:
                        # A lock that lapsed meanwhile (Redis away for a lease) may be another's now:
                        # PEXPIRE leaves a missing key missing, and at worst two workers fetch it.
                        pipe.pexpire(lock, lease_ms)
                    await pipe.execute()
            except RedisError:
                pass  # Redis away: the waiters' own reads meet it too

    def _ttl(self, rules: RobotsRules) -> float:
        if rules.state == DISALLOW:
            return self.settings.robots_unreachable_seconds
        return float(self.settings.robots_cache_seconds)

    async def _fetch(self, origin: str) -> RobotsRules:
        fetcher = await self._robots_fetcher()
        outcome = await fetcher.fetch(f"{origin}/robots.txt", keep_body=True)
        rules = rules_from_fetch(outcome, self.token)
        self.fetched[rules.state] = self.fetched.get(rules.state, 0) + 1
        # One line for each robots.txt the fleet fetches (ops/bench counts them: one per origin), a
        # WARNING when its origin's URLs are all refused for a while (RFC 9309 2.3.1.4).
        log.log(
            logging.WARNING if rules.state == DISALLOW else logging.INFO,
            "%s/robots.txt: %s",
            origin,
            rules.reason,
        )
        return rules

    async def _robots_fetcher(self) -> Fetcher:
        """A Fetcher like the worker's (SSRF guard, timeouts, body cap), with RFC 9309's redirects and size.

        Through the worker fetcher's session when given one (`pool_of`): with a session of its own, every
        new host cost a second DNS lookup and TLS handshake (web profile of ops/bench: 2.3 handshakes a
        host against the gather script's 1).
        """
        async with self._fetcher_lock:
            if self.fetcher is None:
                # Read no more than the part parsed, whatever FETCHFLEET_MAX_BODY_BYTES says: a longer file
                # is cut, not "too large", which would refuse the whole origin (RFC 9309 2.5).
                cap = ROBOTS_MAX_BYTES + 1
                update = {
                    "max_redirects": ROBOTS_REDIRECTS,
                    "max_body_bytes": cap,
                    "max_stored_body_bytes": cap,
                }
                settings = self.settings.model_copy(update=update)
                fetcher = Fetcher(settings, pool_of=self.pool_of, cut_at_cap=True)
                await fetcher.start()
                self.fetcher = fetcher
            return self.fetcher

    async def close(self) -> None:
        await stop_loop(self._renewer)
        self._renewer = None
        await self._read_or_lock.close()
        if self.fetcher is not None:
            await self.fetcher.close()
            self.fetcher = None
