"""The fetcher against a hostile server: each behaviour in-process, then all at once in a worker."""

from __future__ import annotations

import base64
import ipaddress
import json
import socket
import ssl
import time
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trustme

from tests.support.fetch_target import BINARY, TEXT, FetchTarget, sha256
from tests.support.procs import fetchfleet_env, peak_rss_kib, run_cli
from tests.support.raw_target import RawTarget
from worker.batchpolicy import BatchPolicy
from worker.bodies import merge_body
from worker.contract import FetchRequest, url_problem
from worker.fetcher import MAX_NARROW_SESSIONS, Fetcher, FetchOutcome
from worker.results import build_result, result_doc, stored_body
from worker.settings import load_settings
from worker.warcrecords import build_records

MiB = 1 << 20


@pytest.fixture(scope="module")
def tls_target() -> Iterator[FetchTarget]:
    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    t = FetchTarget(ssl_context=ctx).start()
    yield t
    t.stop()


async def _fetcher(**overrides: object) -> Fetcher:
    overrides.setdefault("allow_private_networks", True)
    f = Fetcher(load_settings(**overrides))
    await f.start()
    return f


@pytest.fixture
async def fetcher() -> AsyncIterator[Fetcher]:
    f = await _fetcher(read_timeout=1, total_timeout=5, max_body_bytes=MiB)
    yield f
    await f.close()


def kind(o: FetchOutcome) -> str | None:
    return o.error.kind if o.error is not None else None


async def test_plain_get(fetcher: Fetcher, target: FetchTarget) -> None:
    o = await fetcher.fetch(target.url("/ok/1234"))
    assert (o.status, kind(o), o.size, o.redirects) == (200, None, 1234, 0)
    assert o.sha256 == sha256(b"x" * 1234)
    assert o.final_url == target.url("/ok/1234")


async def test_slow_headers_hit_the_read_timeout(target: FetchTarget) -> None:
    f = await _fetcher(read_timeout=0.3, total_timeout=30)
    try:
        started = time.monotonic()
        o = await f.fetch(target.url("/slow-headers/3"))
    finally:
        await f.close()
    assert kind(o) == "timeout" and o.status is None
    assert time.monotonic() - started < 2.0


async def test_dripping_body_hits_the_total_timeout(target: FetchTarget) -> None:
    # Every byte arrives well inside the read timeout; only a total per attempt stops this.
    f = await _fetcher(read_timeout=2, total_timeout=0.8)
    try:
        started = time.monotonic()
        o = await f.fetch(target.url("/drip/100/0.05"))
        elapsed = time.monotonic() - started
        short = await f.fetch(target.url("/drip/4/0.05"))
    finally:
        await f.close()
    assert kind(o) == "timeout" and "within 0.8s" in str(o.error)
    assert 0.7 < elapsed < 2.5
    assert (short.status, short.size, kind(short)) == (200, 4, None)


async def test_connect_timeout(fetcher: Fetcher) -> None:
    # A listener whose accept queue is full and never drained: the SYN is never answered.
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(0)
    port = lst.getsockname()[1]
    fillers = []
    try:
        for _ in range(8):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            fillers.append(s)
        time.sleep(0.2)
        f = await _fetcher(connect_timeout=0.5, total_timeout=10)
        try:
            started = time.monotonic()
            o = await f.fetch(f"http://127.0.0.1:{port}/")
        finally:
            await f.close()
    finally:
        for s in fillers:
            s.close()
        lst.close()
    assert kind(o) in ("timeout", "connect"), o.error
    assert time.monotonic() - started < 5


async def test_refused_connection_is_connect(fetcher: Fetcher) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    o = await fetcher.fetch(f"http://127.0.0.1:{port}/")
    assert kind(o) == "connect" and o.status is None


async def test_huge_body_stops_at_the_cap(fetcher: Fetcher, target: FetchTarget) -> None:
    started = time.monotonic()
    o = await fetcher.fetch(target.url("/huge"))  # claims 10 GiB
    assert kind(o) == "too_large" and o.status == 200
    assert MiB < o.size <= MiB + 64 * 1024
    assert time.monotonic() - started < 3


async def test_gzip_bomb_costs_no_more_than_the_cap(fetcher: Fetcher, target: FetchTarget) -> None:
    tracemalloc.start()
    try:
        o = await fetcher.fetch(target.url("/gzip-bomb"))  # 1 MiB on the wire, 1 GiB inflated
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"gzip bomb (1 GiB inflated) under a 1 MiB cap: peak Python allocation {peak / MiB:.1f} MiB")
    assert kind(o) == "too_large"
    assert MiB < o.size <= MiB + 256 * 1024  # decompressed bytes are what is counted
    # Peak Python allocation during the fetch: the cap and a few bounded buffers, not the gigabyte.
    assert peak < 8 * MiB, f"peak {peak / MiB:.1f} MiB"


async def test_gzip_bomb_under_a_large_cap_is_read_in_full(target: FetchTarget) -> None:
    # Control for the test above: the size counted really is the inflated size.
    f = await _fetcher(max_body_bytes=2 << 30, total_timeout=60, read_timeout=30)
    try:
        o = await f.fetch(target.url("/gzip-bomb"))
    finally:
        await f.close()
    assert (o.status, kind(o), o.size) == (200, None, 1 << 30)


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br"])
async def test_content_encodings_are_decoded(fetcher: Fetcher, target: FetchTarget, coding: str) -> None:
    o = await fetcher.fetch(target.url(f"/encoded/{coding}"))
    assert (o.status, kind(o), o.size, o.sha256) == (200, None, len(TEXT), sha256(TEXT))


async def test_redirects_are_followed_and_counted(fetcher: Fetcher, target: FetchTarget) -> None:
    o = await fetcher.fetch(target.url("/redirect/3"))
    assert (o.status, o.redirects, kind(o)) == (200, 3, None)
    assert o.final_url == target.url("/redirect/0")


async def test_redirect_limit(target: FetchTarget) -> None:
    f = await _fetcher(max_redirects=2)
    try:
        within = await f.fetch(target.url("/redirect/2"))
        past = await f.fetch(target.url("/redirect/3"))
        before = target.hits["/loop"]
        loop = await f.fetch(target.url("/loop"))
    finally:
        await f.close()
    assert (within.status, within.redirects) == (200, 2)
    assert kind(past) == "too_many_redirects" and past.status is None
    assert kind(loop) == "too_many_redirects"
    assert target.hits["/loop"] - before == 3  # the first request and two redirects, then stop


async def test_redirect_methods(fetcher: Fetcher, target: FetchTarget) -> None:
    see_other = await fetcher.fetch(
        FetchRequest(url=target.url("/redirect/1?status=303"), method="POST", body="payload")
    )
    temporary = await fetcher.fetch(
        FetchRequest(url=target.url("/redirect/1?status=307"), method="POST", body="payload"), keep_body=True
    )
    assert see_other.status == 200 and see_other.redirects == 1
    assert temporary.body is not None
    assert json.loads(temporary.body) == {"method": "POST", "body": "payload", "at": "end"}


async def test_connection_reset_mid_body(fetcher: Fetcher, target: FetchTarget) -> None:
    o = await fetcher.fetch(target.url("/reset"))
    assert kind(o) == "protocol" and o.status == 200
    assert o.sha256 is None


async def test_invalid_http(fetcher: Fetcher, target: FetchTarget) -> None:
    o = await fetcher.fetch(target.url("/invalid"))
    assert kind(o) == "protocol" and o.status is None


def _raw(status_line: bytes, rest: bytes = b"Content-Length: 2\r\nConnection: close\r\n\r\nok") -> bytes:
    return status_line + b"\r\n" + rest


ODD_STATUSES = {
    "/000": (_raw(b"HTTP/1.1 000 Zero"), 0, "protocol"),
    "/099": (_raw(b"HTTP/1.1 099 Low"), 99, "protocol"),
    "/101": (
        _raw(b"HTTP/1.1 101 Switching Protocols", b"Upgrade: x\r\nConnection: Upgrade\r\n\r\nzz"),
        101,
        "protocol",
    ),
    "/103": (_raw(b"HTTP/1.1 103 Early Hints", b"Link: </a>\r\n\r\n" + _raw(b"HTTP/1.1 200 OK")), 200, None),
    "/999": (_raw(b"HTTP/1.1 999 Request denied"), 999, None),  # LinkedIn's; shown as sent, not ok
}


async def test_a_status_that_is_no_final_status_is_a_protocol_error(fetcher: Fetcher) -> None:
    """aiohttp hands on `HTTP/1.1 000` and an unasked-for 101 as final responses: they were results with
    `ok: true`. Interim 1xx before a final response, and 6xx-9xx, are read as before."""
    raw = RawTarget({path: response for path, (response, _, _) in ODD_STATUSES.items()}).start()
    try:
        for path, (_, status, want) in ODD_STATUSES.items():
            o = await fetcher.fetch(raw.url(path))
            doc = result_doc(0, o, 1, "w")
            assert (o.status, kind(o)) == (status, want), (path, o)
            assert doc["ok"] is (status < 400 and want is None), (path, doc)
    finally:
        raw.stop()


async def test_self_signed_tls_is_refused_by_default(tls_target: FetchTarget) -> None:
    f = await _fetcher()
    g = await _fetcher(verify_tls=False)
    try:
        refused = await f.fetch(tls_target.url("/ok/5"))
        allowed = await g.fetch(tls_target.url("/ok/5"))
    finally:
        await f.close()
        await g.close()
    assert kind(refused) == "tls" and refused.status is None
    assert (allowed.status, allowed.size) == (200, 5)


async def test_methods_headers_and_user_agent(target: FetchTarget) -> None:
    f = await _fetcher(user_agent="polite-bot/9")
    try:
        post = await f.fetch(
            FetchRequest(url=target.url("/echo"), method="POST", headers={"X-Trace": "t1"}, body="a=1"),
            keep_body=True,
        )
        head = await f.fetch(FetchRequest(url=target.url("/ok/300"), method="HEAD"))
    finally:
        await f.close()
    assert post.body is not None
    seen = json.loads(post.body)
    assert seen["method"] == "POST" and seen["body"] == "a=1"
    assert seen["headers"]["X-Trace"] == "t1"
    assert seen["headers"]["User-Agent"] == "polite-bot/9"
    assert "br" in seen["headers"]["Accept-Encoding"]
    assert (head.status, head.size) == (200, 0)


async def test_input_headers_do_not_follow_a_redirect_to_another_origin(target: FetchTarget) -> None:
    """Default: every header of the input is dropped on a cross-origin hop (curl's rule for
    Authorization, applied to all, since X-Api-Key-style headers are credentials too); headers
    listed in FETCHFLEET_REDIRECT_KEEP_HEADERS are kept, credentials never; same origin keeps all."""
    other = f"http://localhost:{target.port}/echo"
    given = {"Authorization": "Bearer secret", "X-Api-Key": "k", "X-Keep": "1"}

    async def seen(url: str, **settings: object) -> dict[str, str]:
        f = await _fetcher(**settings)
        try:
            o = await f.fetch(FetchRequest(url=url, headers=given), keep_body=True)
        finally:
            await f.close()
        assert o.status == 200 and o.body is not None and o.redirects == 1
        return json.loads(o.body)["headers"]

    cross = target.url(f"/redirect-to?url={other}")
    dropped = await seen(cross)
    assert not set(given) & set(dropped)
    kept = await seen(cross, redirect_keep_headers="X-Keep, authorization")
    assert kept["X-Keep"] == "1" and "Authorization" not in kept and "X-Api-Key" not in kept
    same = await seen(target.url(f"/redirect-to?url={target.url('/echo')}"))
    assert all(same[k] == v for k, v in given.items())


async def test_kept_bodies_are_capped_compressed_and_decoded(target: FetchTarget) -> None:
    f = await _fetcher(max_stored_body_bytes=100)
    try:
        small = await f.fetch(target.url("/encoded/br"), keep_body=False)
        text = await f.fetch(target.url("/ok/50"), keep_body=True)
        cut = await f.fetch(target.url("/ok/500"), keep_body=True)
        binary = await f.fetch(target.url("/binary"), keep_body=True)
    finally:
        await f.close()
    assert small.body is None and stored_body(small) is None
    docs = {}
    for name, o in (("text", text), ("cut", cut), ("binary", binary)):
        packed = stored_body(o)
        assert packed is not None
        doc = build_result(0, o, 1, "w").model_dump_json().encode()
        docs[name] = json.loads(merge_body(doc, packed))
    assert docs["text"]["body"] == "x" * 50 and docs["text"]["body_encoding"] == "text"
    assert docs["text"]["body_truncated"] is False
    assert docs["cut"]["body"] == "x" * 100 and docs["cut"]["body_truncated"] is True
    assert docs["cut"]["size"] == 500 and docs["cut"]["sha256"] == sha256(b"x" * 500)
    assert docs["binary"]["body_encoding"] == "base64"
    assert base64.b64decode(docs["binary"]["body"]) == BINARY[:100] and len(cut.body or b"") == 100


async def test_kept_request_records_show_no_credentials(fetcher: Fetcher, target: FetchTarget) -> None:
    """A WARC request record (FETCHFLEET_BODY_STORE) held the URL's password as `Authorization: Basic`
    (base64 of user:password) and the input's Authorization and Cookie values as sent."""
    secret = "s3cr3t-" + "pw9"
    url = target.url("/ok/5").replace("http://", f"http://bob:{secret}@")
    headers = {"Cookie": f"session={secret}", "Proxy-Authorization": secret, "X-Kept": "visible"}
    outcomes = [
        await fetcher.fetch(url, keep_body=True),
        await fetcher.fetch(FetchRequest(url=target.url("/ok/5"), headers=headers), keep_body=True),
        await fetcher.fetch(FetchRequest(url=target.url("/ok/5"), headers={"Authorization": secret}), True),
    ]
    hidden = (secret, base64.b64encode(f"bob:{secret}".encode()).decode())
    for o in outcomes:
        assert o.status == 200 and o.exchange is not None and o.body is not None
        response, request = build_records(o.exchange, o.body, o.sha256)
        written = zlib.decompress(response, 47).decode() + zlib.decompress(request, 47).decode()
        assert not [h for h in hidden if h in written], written
        assert "***" in written
    assert ("X-Kept", "visible") in (outcomes[1].exchange.request_headers if outcomes[1].exchange else ())


@pytest.mark.slow
def test_worker_survives_every_hostile_endpoint_in_one_batch(
    redis_url: str, spawn_worker, target: FetchTarget, tls_target: FetchTarget, tmp_path: Path
) -> None:
    """All the hostile endpoints, several times over, in one batch with bodies kept: the worker
    lives, every URL gets its kind, and peak RSS stays under max_body_bytes x concurrency."""
    concurrency, max_body = 16, 10 * MiB  # the default body cap
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    dead.close()
    cases = [
        (target.url("/ok/2000"), 200, None),
        (target.url("/slow-headers/5"), None, "timeout"),
        (target.url("/drip/200/0.05"), None, "timeout"),
        (target.url("/huge"), 200, "too_large"),
        (target.url("/gzip-bomb"), 200, "too_large"),
        (target.url("/encoded/br"), 200, None),
        (target.url("/encoded/deflate"), 200, None),
        (target.url("/loop"), None, "too_many_redirects"),
        (target.url("/reset"), 200, "protocol"),
        (target.url("/invalid"), None, "protocol"),
        (tls_target.url("/ok/10"), None, "tls"),
        (f"http://127.0.0.1:{dead_port}/", None, "connect"),
        (target.url("/flaky/batch/1/503"), 200, None),
        (target.url("/flaky/batch429/1/429?retry_after=1"), 200, None),
        (target.url("/redirect/3"), 200, None),
        (target.url("/redirect-to?url=http://10.0.0.1/"), None, "blocked"),
    ]
    rounds = 4  # heavy endpoints (huge, bomb) run concurrently several times
    lines = [u for _ in range(rounds) for u, _, _ in cases]
    urls = tmp_path / "urls.txt"
    urls.write_text("\n".join(lines) + "\n")
    settings = {
        "concurrency": concurrency,
        "chunk_size": 16,
        "max_body_bytes": max_body,
        "read_timeout": 1.5,
        "total_timeout": 4,
        "retry_backoff_base": 0.05,
        # Only the 10.x redirect target is refused; the test servers on loopback are allowed.
        "allow_private_networks": False,
        "allowed_networks": "127.0.0.1/32",
    }
    worker = spawn_worker(redis_url, **settings)
    out = tmp_path / "out.jsonl"
    proc = run_cli(
        ["submit", str(urls), "--wait", "--store-body", "-o", str(out)],
        fetchfleet_env(redis_url, **settings),
        timeout=150,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert worker.proc.poll() is None, worker.log()[-3000:]
    peak = peak_rss_kib(worker.pid) * 1024
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["index"] for r in results) == list(range(len(lines)))
    for r in results:
        _url, status, want = cases[r["index"] % len(cases)]
        assert (r["error"] or {}).get("kind") == want, r
        assert r["status"] == status, r
    ok = [r for r in results if r["url"].endswith("/ok/2000")]
    assert all(r["body"] == "x" * 2000 and r["body_encoding"] == "text" for r in ok)
    bound = max_body * concurrency
    print(f"worker peak RSS {peak / MiB:.1f} MiB; bound max_body_bytes x concurrency = {bound / MiB:.0f} MiB")
    assert peak < bound


async def test_unfetchable_urls_fail_as_invalid_url(fetcher: Fetcher, target: FetchTarget) -> None:
    bad_idna = await fetcher.fetch("http://xn--a.com/")
    not_a_url = await fetcher.fetch("http://[::1/")  # a job not written by our producer
    to_file = await fetcher.fetch(target.url("/redirect-to?url=file:///etc/passwd"))
    for o in (bad_idna, not_a_url, to_file):
        assert kind(o) == "invalid_url" and o.status is None, o.error
    assert to_file.redirects == 1


async def test_batches_with_their_own_networks_never_use_up_a_worker(
    fetcher: Fetcher, target: FetchTarget
) -> None:
    """Each distinct --only-networks list gets its own session, and they were never closed: after 64
    lists in a worker's life, every URL of every new such batch was `blocked` ("too many distinct batch
    network lists"), whoever submitted it, until the worker restarted. Idle ones are closed now."""
    lists = [(ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network(f"10.{i}.0.0/16")) for i in range(80)]
    for networks in lists:
        o = await fetcher.fetch(target.url("/ok/3"), batch=BatchPolicy(networks=networks))
        assert (o.status, kind(o)) == (200, None), (networks, o.error)
    assert len(fetcher._narrow) <= MAX_NARROW_SESSIONS


async def test_url_credentials_follow_a_redirect_within_their_origin_only(
    fetcher: Fetcher, target: FetchTarget
) -> None:
    """A relative redirect was joined to aiohttp's response URL, which has no userinfo: the next hop of
    `http://user:pw@host/a` -> `Location: /b` went without credentials (a 401 where curl gets the page)."""
    creds = base64.b64encode(b"bob:pw-1").decode()
    start = target.url("/redirect-to?url=/echo").replace("http://", "http://bob:pw-1@", 1)
    o = await fetcher.fetch(start, keep_body=True)
    assert o.status == 200 and o.redirects == 1, o.error
    assert json.loads(o.body or b"")["headers"].get("Authorization") == f"Basic {creds}"
    assert build_result(0, o, 1, "w").final_url == target.url("/echo")  # as answered: no userinfo
    other = target.url(f"/redirect-to?url={target.url('/echo').replace('127.0.0.1', 'localhost')}")
    o = await fetcher.fetch(other.replace("http://", "http://bob:pw-1@", 1), keep_body=True)  # cross-origin
    assert o.status == 200 and "Authorization" not in json.loads(o.body or b"")["headers"]


async def test_a_bare_url_the_worker_refuses_says_why(fetcher: Fetcher) -> None:
    """A bare string in a chunk (Client.submit, a line changed after the check, a planted job) that fails
    the URL checks had pydantic's last line as its message: 'For further information visit https://...'."""
    for url in ("ftp://x/", "not a url", "http://exa mple.com/", "http://h:0/", "http://" + "x" * 9000):
        o = await fetcher.fetch(url)
        assert kind(o) == "invalid_url" and str(o.error) == url_problem(url), (url[:40], str(o.error))


@pytest.mark.slow
def test_json_lines_requests_through_a_worker(
    redis_url: str, spawn_worker, target: FetchTarget, tmp_path: Path
) -> None:
    """Method, headers and body from JSON-lines input reach the server; bodies come back decoded."""
    lines = [
        {"url": target.url("/echo"), "method": "POST", "headers": {"X-Job": "7"}, "body": "k=v"},
        {"url": target.url("/ok/40"), "method": "HEAD"},
        {"url": target.url("/binary")},
    ]
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    spawn_worker(redis_url, user_agent="ff-test/1")
    out = tmp_path / "out.jsonl"
    proc = run_cli(["submit", str(path), "--wait", "--store-body", "-o", str(out)], fetchfleet_env(redis_url))
    assert proc.returncode == 0, proc.stderr.decode()
    results = {r["index"]: r for r in map(json.loads, out.read_text().splitlines())}
    echo = json.loads(results[0]["body"])
    assert (echo["method"], echo["body"], echo["headers"]["X-Job"]) == ("POST", "k=v", "7")
    assert echo["headers"]["User-Agent"] == "ff-test/1"
    assert results[0]["body_encoding"] == "text"
    assert (results[1]["status"], results[1]["size"]) == (200, 0)
    assert results[2]["body_encoding"] == "base64" and results[2]["body_truncated"] is False
    assert base64.b64decode(results[2]["body"]) == BINARY
