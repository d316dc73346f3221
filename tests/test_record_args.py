"""record.lua's packed arguments: every result's bytes and body come back exactly as given."""

from __future__ import annotations

import asyncio
import os

from redis.asyncio import Redis

from worker.contract import batch_key, done_key, results_key
from worker.recorder import Recorder
from worker.resultstream import page_results


async def test_packed_results_and_bodies_round_trip(redis_url: str) -> None:
    r = Redis.from_url(redis_url)
    rec = Recorder(r, ttl=600)
    rec.start()
    big = 10_000_007  # an index of a large batch, far from the others
    docs = {
        0: (b'{"index":0,"note":"spaces and , commas"}', None, False),
        1: (b'{"index":1}', os.urandom(3000), True),  # binary body, any byte value
        2: (b"{}", b"", False),  # an empty body is no body
        big: (b'{"index":"big"}', b"\x00 \r\n", True),
    }
    try:
        await r.hset(batch_key("b"), "submitted", 4)
        firsts = await asyncio.gather(
            *(
                rec.record("b", i, failed, payload, body, incarnation="")
                for i, (payload, body, failed) in docs.items()
            )
        )
        again = await rec.record("b", 1, False, b"{}", b"x", incarnation="")
    finally:
        await rec.close()
    try:
        assert firsts == [True] * 4 and again is False
        entries = page_results(await r.xrange(results_key("b")))
        got = {doc: body for _, doc, body in entries}
        assert got == {p: (b or None) for p, b, _ in docs.values()}
        meta = await r.hgetall(batch_key("b"))
        assert (meta[b"done"], meta[b"failed"]) == (b"4", b"2") and b"finished_ms" in meta
        assert await r.getbit(done_key("b"), big) == 1
    finally:
        await r.aclose()
