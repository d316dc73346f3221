"""robots.txt per RFC 9309: the decision layer (every rule), and the fleet-wide cache with its one fetch."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from tests.chaos import assert_each_index_once, wait_started, wait_until, write_urls
from tests.support.polite_target import PoliteTarget
from tests.support.procs import fetchfleet_env, start_cli
from worker import errors
from worker.contract import BatchOptions, robots_keys
from worker.fetcher import Fetcher, FetchOutcome
from worker.politeness import HeldSlot, make_politeness
from worker.robots import (
    ALLOW,
    DISALLOW,
    ROBOTS_MAX_BYTES,
    RULES,
    RobotsCache,
    RobotsRules,
    host_of_origin,
    origin_of,
    product_token,
    robots_text,
    rules_from_fetch,
)
from worker.settings import load_settings


def outcome(status: int | None, body: bytes = b"", error: errors.FetchError | None = None) -> FetchOutcome:
    return FetchOutcome("http://h/robots.txt", None, status, len(body), None, None, 0, 1.0, body, error)


def rules(text: str, token: str = "fetchfleet") -> RobotsRules:
    return RobotsRules(RULES, "robots.txt 200", text, token)


def test_product_token_and_origin() -> None:
    assert product_token("FetchFleet/0.1 (+https://pypi.org/project/fetchfleet/)") == "fetchfleet"
    assert product_token("mybot") == "mybot"
    assert origin_of("http://Example.COM/a?b#c") == "http://example.com:80"
    assert origin_of("https://example.com:8443") == "https://example.com:8443"
    assert origin_of("https://user:pw@example.com/x") == "https://example.com:443"
    assert origin_of("http://[::1]:8080/x") == "http://[::1]:8080"
    assert origin_of("http://example.com:http/") is None
    assert host_of_origin("http://[::1]:8080") == "::1"
    assert host_of_origin("https://example.com:443") == "example.com"
    # Distinct ports are distinct origins (RFC 9309 2.3: scheme, host and port).
    assert origin_of("http://a.test:81/") != origin_of("http://a.test:82/")


@pytest.mark.parametrize(
    ("status", "state"),
    [(200, RULES), (404, ALLOW), (401, ALLOW), (403, ALLOW), (410, ALLOW), (500, DISALLOW), (503, DISALLOW),
     (429, DISALLOW)],
)  # fmt: skip
def test_status_classes(status: int, state: str) -> None:
    """2xx: parse it; 4xx: unavailable, so allow all; 5xx: unreachable, so disallow all (RFC 9309 2.3.1)."""
    verdict = rules_from_fetch(outcome(status, b"User-agent: *\nDisallow: /x\n"), "fetchfleet")
    assert verdict.state == state
    assert verdict.allows("http://h/y") is (state != DISALLOW)


@pytest.mark.parametrize(
    ("error", "state", "kind"),
    [
        (errors.ConnectFailed("refused"), DISALLOW, "connect"),
        (errors.FetchTimeout("slow"), DISALLOW, "timeout"),
        (errors.DNSFailed("nxdomain"), DISALLOW, "dns"),
        (errors.TooManyRedirects("more than 5"), ALLOW, None),  # 2.3.1.2: may be taken as unavailable
        (errors.Blocked("private"), ALLOW, None),  # the URL's own fetch is refused by the same guard
    ],
)
def test_fetch_failures(error: errors.FetchError, state: str, kind: str | None) -> None:
    verdict = rules_from_fetch(outcome(None, error=error), "fetchfleet")
    assert (verdict.state, verdict.error_kind) == (state, kind)


def test_longest_match_wins() -> None:
    r = rules("User-agent: *\nDisallow: /a\nAllow: /a/b\nDisallow: /a/b/c\n")
    assert not r.allows("http://h/a/x")
    assert r.allows("http://h/a/b/x")  # the longer Allow beats the shorter Disallow
    assert not r.allows("http://h/a/b/c/x")
    assert r.allows("http://h/other")


def test_allow_wins_a_tie() -> None:
    r = rules("User-agent: *\nDisallow: /page\nAllow: /page\n")
    assert r.allows("http://h/page")
    r = rules("User-agent: *\nAllow: /page\nDisallow: /page\n")  # order in the file does not matter
    assert r.allows("http://h/page")


def test_group_chosen_by_product_token() -> None:
    text = (
        "User-agent: *\nDisallow: /\n\n"
        "User-agent: FetchFleet\nDisallow: /private/\n\n"
        "User-agent: otherbot\nAllow: /\n"
    )
    ours = rules(text, product_token("fetchfleet/0.1 (+https://pypi.org/project/fetchfleet/)"))
    assert ours.allows("http://h/public") and not ours.allows("http://h/private/x")
    # Another product token falls back to the * group.
    assert not rules(text, "somebot").allows("http://h/public")
    # A token that merely contains a group's name is not that group.
    assert not rules(text, "notfetchfleet").allows("http://h/public")


def test_crawl_delay_per_group() -> None:
    r = rules("User-agent: *\nCrawl-delay: 7\n\nUser-agent: fetchfleet\nCrawl-delay: 1.5\n")
    assert r.crawl_delay == 1.5
    assert rules("User-agent: *\nDisallow:\n").crawl_delay is None


def test_at_least_500_kib_parsed() -> None:
    """A rule after 490 KiB of comments still counts; a file cut at the limit ends at its last line."""
    filler = b"# " + b"x" * 1000 + b"\n"
    body = b"User-agent: *\n" + filler * 490 + b"Disallow: /late\n"
    assert len(body) < ROBOTS_MAX_BYTES
    r = rules_from_fetch(outcome(200, body), "fetchfleet")
    assert not r.allows("http://h/late/page")
    long = body + filler * 100 + b"Disallow: /beyond"
    text = robots_text(long[: ROBOTS_MAX_BYTES + 1], truncated=True)
    assert len(text.encode()) <= ROBOTS_MAX_BYTES and text.endswith("\n")
    assert "Disallow: /late" in text and "/beyond" not in text


def test_robots_txt_itself_and_bad_bytes() -> None:
    r = rules_from_fetch(outcome(200, b"User-agent: *\nDisallow: /\n\xff\xfe"), "fetchfleet")
    assert not r.allows("http://h/anything")
    assert rules_from_fetch(outcome(200, b"\x00garbage"), "fetchfleet").allows("http://h/x")


def test_verdict_survives_the_cache() -> None:
    r = rules_from_fetch(outcome(None, error=errors.ConnectFailed("refused")), "fetchfleet")
    back = RobotsRules.load(r.dump(), "fetchfleet")
    assert (back.state, back.reason, back.error_kind) == (r.state, r.reason, r.error_kind)


# ---- the fleet-wide cache, against a real Redis and a real server -----------------------------------


@pytest.fixture
def site() -> Iterator[PoliteTarget]:
    t = PoliteTarget(200, "User-agent: *\nDisallow: /private/\n").start()
    yield t
    t.stop()


def _settings(redis_url: str, **extra: object):
    return load_settings(redis_url=redis_url, allow_private_networks=True, **extra)


async def test_one_fetch_for_many_workers(redis_url: str, site: PoliteTarget) -> None:
    """Four caches (four workers) asking at once for an uncached origin: one robots.txt request."""
    redis = Redis.from_url(redis_url)
    caches = [RobotsCache(_settings(redis_url), redis, f"w{i}") for i in range(4)]
    origin = origin_of(site.url("/"))
    assert origin is not None
    try:
        verdicts = await asyncio.gather(*(c.rules(origin) for c in caches for _ in range(25)))
        assert all(v.state == RULES for v in verdicts)
        assert not verdicts[0].allows(site.url("/private/a")) and verdicts[0].allows(site.url("/a"))
        assert site.hits["/robots.txt"] == 1
        key, lock = robots_keys(origin)
        assert 86_000_000 < await redis.pttl(key) <= 86_400_000  # cached for 24 h at most
        assert not await redis.exists(lock)
    finally:
        for c in caches:
            await c.close()
        await redis.aclose()


async def test_a_robots_txt_past_every_cap_is_parsed_up_to_500_kib(redis_url: str) -> None:
    """RFC 9309 2.5: a crawler parses at least the first 500 KiB. A robots.txt longer than the worker's
    body cap failed as "too large", which reads as unreachable: every URL of the origin refused."""
    late = "# " + "x" * 98 + "\n"
    text = "User-agent: *\nDisallow: /private/\n" + late * 6_000 + "Disallow: /late/\n"  # ~600 KB
    site = PoliteTarget(200, text).start()
    redis = Redis.from_url(redis_url)
    cache = RobotsCache(_settings(redis_url, max_body_bytes=100_000), redis, "w")
    try:
        origin = origin_of(site.url("/"))
        assert origin is not None
        rules = await cache.rules(origin)
        assert rules.state == RULES, rules.reason
        assert rules.allows(site.url("/a")) and not rules.allows(site.url("/private/a"))
        assert rules.allows(site.url("/late/a"))  # past 500 KiB: not read
    finally:
        await cache.close()
        await redis.aclose()
        site.stop()


async def test_memory_spares_redis(redis_url: str, site: PoliteTarget) -> None:
    """Once known, a verdict is served from memory: 1,000 checks, no Redis command."""
    redis = Redis.from_url(redis_url)
    cache = RobotsCache(_settings(redis_url), redis, "w")
    origin = origin_of(site.url("/"))
    assert origin is not None
    try:
        await cache.rules(origin)
        await redis.config_resetstat()
        for _ in range(1000):
            assert cache.cached(origin) is not None
            await cache.rules(origin)
        calls = (await redis.info("commandstats")).get("cmdstat_get", {}).get("calls", 0)
        assert calls == 0
    finally:
        await cache.close()
        await redis.aclose()


@pytest.mark.parametrize(("hops", "state"), [(5, RULES), (6, ALLOW)])
async def test_five_redirects_followed(redis_url: str, site: PoliteTarget, hops: int, state: str) -> None:
    """RFC 9309 2.3.1.2: five redirects are followed; more mean unavailable (allow all)."""
    site.robots_redirects = hops
    redis = Redis.from_url(redis_url)
    cache = RobotsCache(_settings(redis_url, max_redirects=0), redis, "w")  # the worker's own limit aside
    origin = origin_of(site.url("/"))
    assert origin is not None
    try:
        assert (await cache.rules(origin)).state == state
    finally:
        await cache.close()
        await redis.aclose()


async def test_unreachable_is_cached_for_a_bounded_time(redis_url: str, site: PoliteTarget) -> None:
    site.robots_status = 503
    redis = Redis.from_url(redis_url)
    cache = RobotsCache(_settings(redis_url, robots_unreachable_seconds=7), redis, "w")
    origin = origin_of(site.url("/"))
    assert origin is not None
    try:
        verdict = await cache.rules(origin)
        assert verdict.state == DISALLOW and not verdict.allows(site.url("/a"))
        assert 6000 < await redis.pttl(robots_keys(origin)[0]) <= 7000
        assert await redis.zscore("ff:robots-unreachable", origin) is not None  # for `fetchfleet stats`
        assert 60_000 < await redis.pttl("ff:robots-unreachable") <= 67_000  # and expires
    finally:
        await cache.close()
        await redis.aclose()


async def test_robots_fetch_goes_through_the_ssrf_guard(redis_url: str, site: PoliteTarget) -> None:
    """Without private networks allowed, robots.txt on loopback is never requested."""
    redis = Redis.from_url(redis_url)
    cache = RobotsCache(load_settings(redis_url=redis_url), redis, "w")
    origin = origin_of(site.url("/"))
    assert origin is not None
    try:
        verdict = await cache.rules(origin)
        assert verdict.state == ALLOW and verdict.reason.startswith("robots.txt not fetched"), verdict.reason
        assert site.hits["/robots.txt"] == 0
    finally:
        await cache.close()
        await redis.aclose()


def test_open_to_all_is_conservative() -> None:
    assert RobotsRules(ALLOW, token="fetchfleet").open_to_all
    assert rules("\x00 garbage, no groups").open_to_all
    assert rules("User-agent: otherbot\nDisallow: /\n").open_to_all
    assert not rules("User-agent: *\nDisallow:\n").open_to_all
    assert not rules("user-AGENT: FetchFleet # us\nDisallow: /x\n").open_to_all
    assert not rules("User-agent: fetch\nDisallow: /x\n").open_to_all  # shares text with our token
    assert not RobotsRules(DISALLOW, token="fetchfleet").open_to_all


async def test_gate_fast_path_still_applies_the_rules() -> None:
    """The per-origin memo of the hot path never lets a disallowed URL through, nor outlives the verdict."""
    settings = load_settings(redis_url="redis://127.0.0.1:1/0")  # never contacted: all from memory
    redis = Redis.from_url(settings.redis_url)
    polite = make_politeness(settings, redis, "w", None)
    assert polite is not None and polite.robots is not None
    opts = BatchOptions()
    polite.robots._remember("http://a.test:80", rules("User-agent: *\nDisallow: /private/\n"), 60)
    polite.robots._remember("http://b.test:80", rules("User-agent: *\nCrawl-delay: 2\n"), 0.2)
    for _ in range(3):  # the second and third times come through the memo
        ok = polite.gate("http://a.test/public", opts)
        no = polite.gate("http://A.test:80/private/x", opts)
        assert ok is not None and ok.refused is None and ok.host == "a.test"
        assert no is not None and no.refused is not None
    slow = polite.gate("http://b.test/x", opts)
    assert slow is not None and slow.interval_ms == 2000
    await asyncio.sleep(0.25)
    assert polite.gate("http://b.test/x", opts) is None  # verdict expired: ask Redis again
    assert polite.gate("http://c.test/x", opts) is None  # never seen
    assert (polite.allowed, polite.disallowed) == (4, 3)
    await redis.aclose()


async def test_a_cancelled_loader_does_not_fail_the_waiters(redis_url: str, site: PoliteTarget) -> None:
    """The URL loading an origin's robots.txt is cancelled (its chunk stopped): the others load it."""
    redis = Redis.from_url(redis_url)
    cache = RobotsCache(_settings(redis_url), redis, "w")
    origin = origin_of(site.url("/"))
    assert origin is not None
    try:
        await redis.set(robots_keys(origin)[1], "someone-else", px=400)  # first make everyone wait
        first = asyncio.create_task(cache.rules(origin))
        await asyncio.sleep(0.05)
        others = [asyncio.create_task(cache.rules(origin)) for _ in range(3)]
        await asyncio.sleep(0.05)
        first.cancel()
        verdicts = await asyncio.wait_for(asyncio.gather(*others), 10)
        assert all(v.state == RULES for v in verdicts)
        assert first.cancelled()
        assert site.hits["/robots.txt"] == 1
    finally:
        await cache.close()
        await redis.aclose()


async def test_the_url_loading_robots_txt_holds_a_slot_and_keeps_it(
    redis_url: str, site: PoliteTarget
) -> None:
    """The URL that loads its origin's robots.txt does it in a fetch slot and fetches in that same slot;
    URLs waiting for that load hold none; a refusal, or a Crawl-delay, gives the slot back."""
    redis = Redis.from_url(redis_url)
    settings = _settings(redis_url)
    slots = asyncio.Semaphore(5)
    held = HeldSlot(slots)
    opts = BatchOptions()
    closed = PoliteTarget(200, "User-agent: *\nDisallow: /\n").start()
    delayed = PoliteTarget(200, "User-agent: *\nCrawl-delay: 1\n").start()
    async with Fetcher(settings) as fetcher:
        polite = make_politeness(settings, redis, "w", None, fetcher)
        assert polite is not None and polite.robots is not None
        try:
            origin = origin_of(site.url("/"))
            assert origin is not None
            await redis.set(robots_keys(origin)[1], "someone-else", px=400)  # the load waits a while
            loader = asyncio.create_task(polite.admit(site.url("/a"), opts, slots, held))
            await asyncio.sleep(0.05)
            waiters = [
                asyncio.create_task(polite.admit(site.url(f"/b{i}"), opts, slots, held)) for i in range(3)
            ]
            await asyncio.sleep(0.1)
            assert slots._value == 4  # the loader's slot only, while robots.txt is on its way
            gate, slot = await asyncio.wait_for(loader, 10)
            assert gate.refused is None and slot is held  # kept for the fetch
            admitted = [slot, *(s for g, s in await asyncio.gather(*waiters) if g.refused is None)]
            assert len(admitted) == 4 and all(s in (held, slots) for s in admitted)
            for s in admitted:
                if s is held:  # taken already (as with adaptive backoff on): given back at the fetch's end
                    async with s:
                        pass
            assert slots._value == 5

            # Two URLs of a new origin while every slot is taken: the first to ask loads it, in the
            # first slot given back; the second waits for that load without taking the next one.
            for _ in range(5):
                await slots.acquire()
            await redis.set(robots_keys(origin_of(closed.url("/")) or "")[1], "someone-else", px=300)
            both = [asyncio.create_task(polite.admit(closed.url(f"/{p}"), opts, slots, held)) for p in "st"]
            await asyncio.sleep(0.05)
            slots.release()
            slots.release()
            await asyncio.sleep(0.1)
            assert slots._value == 1
            assert [g.refused is not None and s is None for g, s in await asyncio.gather(*both)] == [True] * 2
            assert slots._value == 2 and closed.hits["/robots.txt"] == 1
            for _ in range(3):
                slots.release()

            gate, slot = await polite.admit(closed.url("/x"), opts, slots, held)
            assert gate.refused is not None and slot is None and slots._value == 5

            gate, slot = await polite.admit(delayed.url("/y"), opts, slots, held)
            assert gate.interval_ms == 1000 and slot is not held and slot is not slots
            assert slots._value == 5  # its turn is the host limiter's, taken when the fetch starts
        finally:
            await polite.close()
            closed.stop()
            delayed.stop()
    await redis.aclose()


async def test_redirected_fetches_holding_every_slot_do_not_wait_for_a_url_without_one(
    redis_url: str, site: PoliteTarget
) -> None:
    """Every slot is held by a fetch redirected to a new origin, and a URL of that origin waits for a slot:
    the redirects load the origin's verdict themselves. (A URL that claimed the load while waiting for
    its slot left them waiting for it, and the slot never came.)"""
    redis = Redis.from_url(redis_url)
    settings = _settings(redis_url)
    slots = asyncio.Semaphore(2)
    held = HeldSlot(slots)
    opts = BatchOptions()
    async with Fetcher(settings) as fetcher:
        polite = make_politeness(settings, redis, "w", None, fetcher)
        assert polite is not None
        check = polite.hop_check(opts)
        assert check is not None
        try:
            for _ in range(2):  # two fetches elsewhere, each holding a slot
                await slots.acquire()
            page = asyncio.create_task(polite.admit(site.url("/public"), opts, slots, held))
            await asyncio.sleep(0.05)
            hops = [check(site.url(f"/private/{i}"), "http://elsewhere.test/") for i in range(2)]
            verdicts = await asyncio.wait_for(asyncio.gather(*hops), 10)
            assert all(v.refusal is not None for v in verdicts)  # robots.txt read, by the redirects
            slots.release()
            slots.release()
            gate, slot = await asyncio.wait_for(page, 10)
            assert gate.refused is None and slot is not None
            assert site.hits["/robots.txt"] == 1
        finally:
            await polite.close()
    await redis.aclose()


async def test_robots_txt_and_the_pages_after_it_share_a_connection(redis_url: str) -> None:
    """Through the worker's fetcher (pool_of), robots.txt leaves its connection, and its DNS answer, to
    the host's pages: a new host costs one TLS handshake, not two. Closing the cache leaves the
    worker's session open."""
    from worker.fetcher import Fetcher
    from worker.robots import ROBOTS_REDIRECTS

    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:
            while (await reader.readuntil(b"\r\n\r\n")) != b"":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    redis = Redis.from_url(redis_url)
    settings = _settings(redis_url)
    try:
        async with Fetcher(settings) as fetcher:
            cache = RobotsCache(settings, redis, "w", pool_of=fetcher)
            try:
                assert (await cache.rules(f"http://127.0.0.1:{port}")).allows(f"http://127.0.0.1:{port}/page")
                assert cache.fetcher is not None and cache.fetcher.limits.max_redirects == ROBOTS_REDIRECTS
            finally:
                await cache.close()
            page = await fetcher.fetch(f"http://127.0.0.1:{port}/page")
        assert page.status == 200 and connections == 1
    finally:
        server.close()
        await server.wait_closed()
        await redis.aclose()


async def test_origins_asked_in_one_turn_go_to_redis_in_one_call(redis_url: str) -> None:
    """A chunk of new hosts asks for 50 verdicts at once: one script call, each answered as its own
    would have been; a lock this worker already holds (a cancelled load's) is taken again."""
    redis = Redis.from_url(redis_url)
    cache = RobotsCache(_settings(redis_url), redis, "w1")
    origins = [f"http://h{i}.test:80" for i in range(50)]
    try:
        await redis.set(robots_keys(origins[0])[0], RobotsRules(ALLOW, "robots.txt 404").dump(), px=60_000)
        await redis.set(robots_keys(origins[1])[1], "another-worker", px=60_000)
        await redis.set(robots_keys(origins[2])[1], "w1", px=60_000)
        before = (await redis.info("commandstats")).get("cmdstat_evalsha", {}).get("calls", 0)
        answers = await asyncio.gather(*(cache._read_or_lock.ask(o) for o in origins))
        after = (await redis.info("commandstats")).get("cmdstat_evalsha", {}).get("calls", 0)
        assert after - before == 1
        found, raw, pttl = answers[0]
        assert found == 1 and RobotsRules.load(raw, "fetchfleet").state == ALLOW and 0 < pttl <= 60_000
        assert answers[1] == (3, b"", 0)  # another worker fetches it
        assert all(a == (2, b"", 0) for a in answers[2:])  # ours to fetch, the stale one of ours too
        assert await redis.get(robots_keys(origins[9])[1]) == b"w1"
    finally:
        await cache.close()
        await redis.aclose()


async def test_a_redis_error_reaches_every_origin_of_the_call() -> None:
    redis = Redis.from_url("redis://127.0.0.1:1/0")  # nothing listens there
    cache = RobotsCache(_settings("redis://127.0.0.1:1/0"), redis, "w")
    try:
        answers = await asyncio.gather(
            *(cache._read_or_lock.ask(f"http://h{i}.test:80") for i in range(3)), return_exceptions=True
        )
        assert all(isinstance(a, RedisError) for a in answers), answers
    finally:
        await cache.close()
        await redis.aclose()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_worker_killed_while_it_loads_robots_txt_holds_the_origin_up_for_a_lease_only(
    redis_url: str, spawn_worker, tmp_path: Path
) -> None:
    """The fetch lock was leased for FETCHFLEET_TOTAL_TIMEOUT + 5 s and never renewed: killed mid-fetch,
    its worker kept the whole fleet from the origin for 65 s, where its chunks ran again within the lease."""
    site = PoliteTarget(200, "User-agent: *\nAllow: /\n").start()
    site.robots_delay = 3.0
    try:
        n = 200
        urls = write_urls(tmp_path / "urls.txt", [site.url(f"/p{i}") for i in range(n)])
        settings = {"lease_seconds": 2, "chunk_size": 50}
        victim = spawn_worker(redis_url, worker_id="victim", **settings)
        wait_started(victim)
        out = tmp_path / "out.jsonl"
        command = ["submit", str(urls), "--wait", "-q", "-o", str(out)]
        submit = start_cli(command, fetchfleet_env(redis_url, **settings), stdout=subprocess.DEVNULL)
        try:
            wait_until(lambda: site.hits["/robots.txt"], 30, "the victim's robots.txt fetch")
            victim.signal(signal.SIGKILL)
            killed = time.monotonic()
            wait_started(spawn_worker(redis_url, worker_id="survivor", **settings))
            _, err = submit.communicate(timeout=120)
            took = time.monotonic() - killed
        finally:
            if submit.poll() is None:
                submit.kill()
                submit.wait(10)
        fetched = site.hits["/robots.txt"]
        print(f"\nkilled mid robots.txt fetch: batch done {took:.1f}s later; robots.txt fetched {fetched}x")
        assert submit.returncode == 0, err.decode()
        assert_each_index_once([json.loads(line) for line in out.read_text().splitlines()], n)
        # A lease (2 s), the survivor's start and its own 3 s fetch of robots.txt; 65 s and more before.
        assert took < 20, took
    finally:
        site.stop()
