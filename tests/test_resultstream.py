"""One stream entry per flush: documents are its lines, cursors point inside it, collecting counts results."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
from redis.asyncio import Redis

from fetchfleet.client import Client as ApiClient
from producer.client import Client
from tests.support.http_target import HttpTarget
from worker.contract import ErrorKind, batch_key, done_key, results_key
from worker.recorder import Recorder
from worker.results import encode, encode_doc, error_result
from worker.resultstream import RESULTS_PER_ENTRY, Cursor, entry_results, page_entries, parse_cursor
from worker.settings import load_settings

# Every ASCII character, the Unicode line breaks JSON leaves alone, and a lone surrogate (a header
# that was not UTF-8): none may reach a document as a raw newline byte.
TEXT = "".join(map(chr, range(128))) + "\u2028\u2029\u0085 end"
NASTY = TEXT + "\udcff"


def test_documents_are_one_line_whatever_their_strings_hold() -> None:
    doc = {
        "index": 3,
        "url": f"http://a.test/{NASTY}",
        "final_url": NASTY,
        "error": {"kind": "protocol", "message": NASTY},
        "content_type": NASTY,
        "body": NASTY,
        "body_ref": {"uri": NASTY, "offset": 0},
    }
    assert b"\n" not in encode_doc(doc)
    assert orjson.loads(encode_doc(doc))["body"] == TEXT + "\ufffd"
    result = error_result(3, f"http://a.test/{TEXT}", ErrorKind.INTERNAL, TEXT, 1, TEXT)
    result = result.model_copy(update={"body": TEXT, "content_type": TEXT})
    assert b"\n" not in encode(result)
    assert orjson.loads(encode(result))["body"] == TEXT


async def test_recorder_refuses_a_document_of_two_lines(redis_url: str) -> None:
    r = Redis.from_url(redis_url)
    try:
        async with Recorder(r, ttl=60) as rec:
            with pytest.raises(ValueError, match="not one line"):
                await rec.record("b", 0, False, b'{"index":0,\n"x":1}', incarnation="")
        assert await r.dbsize() == 0
    finally:
        await r.aclose()


def test_cursors() -> None:
    assert parse_cursor("0-0") == Cursor("0-0")
    assert parse_cursor("17-3/5") == Cursor("17-3", 5)
    assert parse_cursor("17-3").trim_below == "17-4"
    assert parse_cursor("17-3/5").trim_below == "17-3"  # the entry itself stays
    for bad in ("", "x", "17-3/", "17-3/x", "(17-3", "17-3/1/2", "$"):
        with pytest.raises(ValueError, match="not a result cursor"):
            parse_cursor(bad)
    fields = {b"r": b'{"index":0}\n{"index":1}\n{"index":2}'}
    assert [c for c, _d, _b in entry_results(b"5-0", fields)] == ["5-0/1", "5-0/2", "5-0"]
    assert [d for _c, d, _b in entry_results("5-0", fields, 2)] == [b'{"index":2}']
    assert entry_results("5-0", fields, 3) == []
    assert entry_results("6-0", {b"r": b"{}", b"b": b"zz"}) == [("6-0", b"{}", b"zz")]
    assert page_entries(0, 0) == 1000 // RESULTS_PER_ENTRY
    assert page_entries(1000, 1000) == 1000 and page_entries(5000, 50) == 10


def doc_of(index: int) -> bytes:
    return orjson.dumps({"index": index, "url": f"http://a.test/{index}"})


async def _flush_of(r: Redis, batch: str, indexes: list[int], bodies: dict[int, bytes] | None = None) -> None:
    """Record `indexes` as one flush: queued together before the recorder runs."""
    bodies = bodies or {}
    rec = Recorder(r, ttl=600)
    pending = [
        asyncio.ensure_future(
            rec.record(
                batch,
                i,
                i % 7 == 0,
                orjson.dumps({"index": i, "url": f"u{i}"}),
                bodies.get(i),
                incarnation="",
            )
        )
        for i in indexes
    ]
    await asyncio.sleep(0)  # every record() queued
    rec.start()
    await asyncio.gather(*pending)
    await rec.close()


async def _all(
    client: Client, batch: str, cursor: str = "0-0", follow: bool = False
) -> list[tuple[str, int]]:
    return [
        (c, orjson.loads(doc)["index"])
        async for c, doc in client.results(batch, cursor=cursor, follow=follow)
    ]


async def test_a_flush_is_one_entry_and_every_cursor_resumes_exactly(redis_url: str) -> None:
    r = Redis.from_url(redis_url)
    n = 2 * RESULTS_PER_ENTRY + 37
    try:
        await r.hset(batch_key("g"), mapping={"submitted": n + 3, "complete": 1})
        await _flush_of(r, "g", list(range(n)))
        await _flush_of(r, "g", [n, n + 1, n + 2])
        page = await r.xrange(results_key("g"))
        assert [f[b"r"].count(b"\n") + 1 for _, f in page] == [RESULTS_PER_ENTRY, RESULTS_PER_ENTRY, 37, 3]
        meta = await r.hgetall(batch_key("g"))
        assert int(meta[b"done"]) == n + 3 and int(meta[b"failed"]) == len(range(0, n + 3, 7))
        async with Client(load_settings(redis_url=redis_url)) as client:
            everything = await _all(client, "g")
            assert [i for _c, i in everything] == list(range(n + 3))
            cursors = [c for c, _i in everything]
            assert len(set(cursors)) == n + 3 and cursors[RESULTS_PER_ENTRY - 1] == page[0][0].decode()
            for k, cursor in enumerate(cursors):
                assert await _all(client, "g", cursor) == everything[k + 1 :], cursor
            for k in (0, 5, RESULTS_PER_ENTRY - 1, n - 1, n):  # following too: XREAD after the entry
                assert await _all(client, "g", cursors[k], follow=True) == everything[k + 1 :]
        async with ApiClient(load_settings(redis_url=redis_url)) as api:
            got = [(res.cursor, res.index) async for res in api.results("g", cursor=cursors[150])]
            assert got == everything[151:]
        async with Client(load_settings(redis_url=redis_url)) as client:
            assert orjson.loads(await client.result_at("g", 150))["index"] == 150
    finally:
        await r.aclose()


async def test_forget_mid_entry_keeps_the_entry_and_counts_results(redis_url: str) -> None:
    r = Redis.from_url(redis_url)
    n = 2 * RESULTS_PER_ENTRY + 37
    try:
        await r.hset(batch_key("f"), mapping={"submitted": n, "complete": 1})
        await _flush_of(r, "f", list(range(n)))
        async with Client(load_settings(redis_url=redis_url)) as client:
            cursors = [c for c, _i in await _all(client, "f")]
            assert "/" in cursors[10] and await client.forget_results("f", cursors[10]) == 0
            assert await r.xlen(results_key("f")) == 3  # nothing whole was collected yet
            mid = RESULTS_PER_ENTRY + 20
            assert await client.forget_results("f", cursors[mid]) == RESULTS_PER_ENTRY
            assert [i for _c, i in await _all(client, "f", cursors[mid])] == list(range(mid + 1, n))
            # what a reader from the start still finds: the entry the cursor is inside, then the rest
            assert [i for _c, i in await _all(client, "f")] == list(range(RESULTS_PER_ENTRY, n))
            assert await client.forget_results("f", cursors[2 * RESULTS_PER_ENTRY - 1]) == RESULTS_PER_ENTRY
            assert await client.forget_results("f", cursors[-1]) == 37
            assert await r.xlen(results_key("f")) == 0
            st = await client.status("f")
            assert st.collected == n and st.done == n
            assert await client.forget_results("f", cursors[-1]) == 0  # nothing left: counted once
            assert (await client.status("f")).collected == n
    finally:
        await r.aclose()


async def test_repeats_and_kept_bodies_in_one_flush(redis_url: str) -> None:
    r = Redis.from_url(redis_url)
    try:
        await r.hset(batch_key("m"), mapping={"submitted": 12, "complete": 1})
        await _flush_of(r, "m", [0, 1, 2])
        await _flush_of(r, "m", [1, 3, 4, 2, 5, 6, 0, 7, 8, 9, 10, 11], {4: b"\x00\n\n4", 9: b"9"})
        page = await r.xrange(results_key("m"))
        lines = [f[b"r"].count(b"\n") + 1 for _, f in page]
        assert lines == [3, 1, 1, 7]  # index 4's body entry, index 9's, then the other fresh ones
        async with Client(load_settings(redis_url=redis_url)) as client:
            got = [(orjson.loads(doc)["index"], body) async for _c, doc, body in client.entries("m")]
            assert sorted(i for i, _b in got) == list(range(12))
            assert dict(got)[4] == b"\x00\n\n4" and dict(got)[9] == b"9" and dict(got)[5] is None
            assert await client.forget_results("m", page[-1][0].decode()) == 12
        assert int(await r.hget(batch_key("m"), "done")) == 12
    finally:
        await r.aclose()


async def test_a_stream_of_one_result_per_entry_still_reads(redis_url: str) -> None:
    """As workers wrote it before grouping (and as a worker of that version still may, mid-upgrade)."""
    r = Redis.from_url(redis_url)
    try:
        await r.hset(batch_key("old"), mapping={"submitted": 6, "complete": 1, "done": 6})
        for i in range(6):
            await r.setbit(done_key("old"), i, 1)
        for i in range(5):
            await r.xadd(results_key("old"), {"r": orjson.dumps({"index": i})})
        await r.xadd(results_key("old"), {"r": orjson.dumps({"index": 5}), "b": b"body"})
        ids = [e.decode() for e, _f in await r.xrange(results_key("old"))]
        async with Client(load_settings(redis_url=redis_url)) as client:
            everything = await _all(client, "old")
            assert everything == [(ids[i], i) for i in range(6)]  # a cursor is the entry id, as before
            assert await _all(client, "old", ids[2], follow=True) == everything[3:]
            assert orjson.loads(await client.result_at("old", 3))["index"] == 3
            assert await client.forget_results("old", ids[3]) == 4
            assert (await client.status("old")).collected == 4
    finally:
        await r.aclose()


@pytest.mark.slow
async def test_workers_write_grouped_entries_that_resume_from_every_cursor(
    redis_url: str, http_target: HttpTarget, spawn_worker, tmp_path: Path
) -> None:
    n = 400
    spawn_worker(redis_url, chunk_size=100)
    async with Client(load_settings(redis_url=redis_url)) as client:
        batch = await client.submit([http_target.url(f"/ok/{i % 50}") for i in range(n)], batch_id="w")
        followed = await _all(client, batch, follow=True)
        assert sorted(i for _c, i in followed) == list(range(n))
        page = await client.redis.xrange(results_key(batch))
        assert len(page) < n and max(f[b"r"].count(b"\n") + 1 for _, f in page) > 1
        everything = await _all(client, batch)
        assert everything == followed
        for k, (cursor, _i) in enumerate(everything):
            assert await _all(client, batch, cursor) == everything[k + 1 :], cursor
