"""`import fetchfleet`: typed results, the Client that streams them, and the one-call fetch helpers."""

from __future__ import annotations

import dataclasses
import json

import pytest

import fetchfleet
from fetchfleet import BodyUnavailable, ErrorKind, Result
from ops.bench import oneshot
from tests.support.http_target import HttpTarget
from tests.support.procs import fetchfleet_env
from tests.support.redisserver import free_port
from worker.bodies import pack

DOC = {
    "index": 3,
    "url": "http://a.test/",
    "final_url": "http://a.test/",
    "status": 200,
    "ok": True,
    "error": None,
    "size": 5,
    "sha256": "00" * 32,
    "content_type": "text/plain; charset=latin1",  # a WHATWG label (worker.charsets)
    "elapsed_ms": 1.5,
    "attempts": 1,
    "redirects": 0,
    "worker": "w",
}


def entry(content: bytes | None, **fields: object) -> Result:
    doc = json.dumps({**DOC, **fields}).encode()
    return Result.from_entry("5-0", doc, pack(content) if content is not None else None)


def test_result_is_typed_and_frozen() -> None:
    r = entry(b"caf\xe9")
    assert (r.index, r.status, r.ok, r.cursor, r.content) == (3, 200, True, "5-0", b"caf\xe9")
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.status = 500  # type: ignore[misc]


def test_text_uses_the_declared_charset() -> None:
    assert entry(b"caf\xe9").text() == "café"
    assert entry("café".encode(), content_type="text/html").text() == "café"  # no charset: UTF-8


def test_text_of_undecodable_bytes_replaces_instead_of_raising() -> None:
    r = entry(b"ok \xff\xfe", content_type="text/plain; charset=utf-8")
    assert r.text() == "ok \ufffd\ufffd"
    assert r.content == b"ok \xff\xfe"


def test_unknown_charset_is_not_an_error() -> None:
    assert entry(b"plain", content_type="text/plain; charset=no-such-codec").text() == "plain"


def test_json_body() -> None:
    assert entry(b'{"a": [1, 2]}', content_type="application/json").json() == {"a": [1, 2]}
    with pytest.raises(ValueError):
        entry(b"<html>", content_type="text/html").json()


def test_error_result_has_a_typed_error_and_no_body() -> None:
    r = entry(None, status=None, ok=False, error={"kind": "timeout", "message": "slow"})
    assert r.error is not None and r.error.kind is ErrorKind.TIMEOUT and r.error.message == "slow"
    assert r.content is None
    with pytest.raises(BodyUnavailable, match="no body kept"):
        r.text()


def test_corrupt_stored_body_is_reported_not_raised() -> None:
    r = Result.from_entry("1-0", json.dumps(DOC).encode(), b"\x00not zlib")
    assert r.content is None and r.body_error and "unreadable" in r.body_error
    with pytest.raises(BodyUnavailable, match="unreadable"):
        r.text()


def test_bad_urls_stop_fetch_before_anything_starts() -> None:
    with pytest.raises(fetchfleet.UsageError, match=r"(?s)2 bad URL\(s\).*urls\[1\]"):
        fetchfleet.fetch(["http://a.test/", "ftp://x/", "not a url"])


def test_one_string_for_the_url_list_is_refused() -> None:
    """`fetch("https://...")` named every character a bad URL: a str is iterable."""
    for one in ("https://example.com/", b"https://example.com/"):
        with pytest.raises(fetchfleet.UsageError, match=r"urls is one (str|bytes), not a list of URLs"):
            fetchfleet.fetch(one)  # type: ignore[arg-type]


async def test_one_string_is_not_submitted_as_a_batch_of_letters(monkeypatch: pytest.MonkeyPatch) -> None:
    """`Client.submit("https://...")` queued a batch of 20 one-character URLs."""
    monkeypatch.setenv("FETCHFLEET_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")  # never reached
    async with fetchfleet.Client() as client:
        with pytest.raises(fetchfleet.UsageError, match=r"urls is one str, not a list of URLs: pass \[url\]"):
            await client.submit("https://example.com/")


async def test_fetch_inside_a_loop_points_at_afetch() -> None:
    with pytest.raises(fetchfleet.UsageError, match="afetch"):
        fetchfleet.fetch(["http://a.test/"])


@pytest.mark.slow
async def test_client_streams_typed_results_and_resumes_from_a_cursor(
    redis_url: str, http_target: HttpTarget, spawn_worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    spawn_worker(redis_url)
    for name, value in fetchfleet_env(redis_url).items():
        if name.startswith("FETCHFLEET_"):
            monkeypatch.setenv(name, value)
    dead = f"http://127.0.0.1:{free_port()}/x"
    urls = [http_target.url(f"/ok/{n}") for n in (1, 2, 3)] + [http_target.url("/status/404"), dead]
    async with fetchfleet.Client() as client:
        batch = await client.submit(urls, body=True)
        results = [r async for r in client.results(batch, follow=True, forget=False)]
        assert sorted(r.index for r in results) == [0, 1, 2, 3, 4]
        by_index = {r.index: r for r in results}
        for i, n in enumerate((1, 2, 3)):
            assert by_index[i].ok and by_index[i].text() == "x" * n and by_index[i].content == b"x" * n
        assert by_index[3].status == 404 and not by_index[3].ok and by_index[3].text() == "status"
        assert by_index[4].error is not None and by_index[4].error.kind is ErrorKind.CONNECT
        rest = [r async for r in client.results(batch, cursor=results[1].cursor)]
        assert [r.index for r in rest] == [r.index for r in results[2:]]
        assert (await client.status(batch)).done == 5


@pytest.mark.slow
def test_fetch_on_a_fresh_process_starts_and_stops_its_own_cluster(http_target: HttpTarget) -> None:
    """No FETCHFLEET_REDIS_URL: the embedded server and a local worker start inside `fetch`, typed
    results come back in input order, every page whole. How fast is ops/bench/oneshot.py's row (goal
    < 1.5 s): a timed test fails on a busy shared machine without anything being wrong."""
    urls = [http_target.url(f"/ok/{100 + i}") for i in range(100)]
    doc = oneshot.one_run(urls)  # asserts order, types and pages inside the fresh process
    print(f"{doc['results']} results in {doc['seconds']:.3f}s (import {doc['import']:.3f}s)")
    assert doc["results"] == 100
