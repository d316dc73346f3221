"""Batches cannot reach into each other's keys: id grammar, type-first keys, and a record script that
checks everything before it writes anything."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio import Redis

from producer.client import Client
from tests.chaos import assert_each_index_once, wait_started, wait_until, write_urls
from tests.support.http_target import HttpTarget
from tests.support.procs import fetchfleet_env, run_cli
from tests.support.redisserver import RedisProcess
from worker.contract import ChunkJob, batch_key, batch_keys, done_key, results_key
from worker.enqueue import enqueue_chunks
from worker.errors import InvalidBatchId
from worker.recorder import RECORD_LUA, Pending, Recorder, reversed_keys, script_args
from worker.rediserrors import RedisProblem, classify
from worker.settings import load_settings

BAD_IDS = ["nightly:done", "a b", "", "x" * 65, "semi;colon", "new\nline", "ünï", "a/b", "*"]


@given(st.text(max_size=20), st.text(max_size=20))
def test_no_id_names_another_batchs_key(a: str, b: str) -> None:
    """Even without the grammar: a key of one type is never a key of another type, whatever the ids."""
    keys_a, keys_b = batch_keys(a), batch_keys(b)
    for i, key_a in enumerate(keys_a):
        for j, key_b in enumerate(keys_b):
            if i != j:
                assert key_a != key_b
    if a != b:
        assert not set(keys_a) & set(keys_b)


@pytest.mark.parametrize("bad", BAD_IDS)
async def test_client_refuses_ids_outside_the_grammar(bad: str, redis_url: str) -> None:
    async with Client(load_settings(redis_url=redis_url)) as client:
        for call in (
            lambda: client.submit(["http://example.test/"], batch_id=bad),
            lambda: client.status(bad),
            lambda: client.cancel(bad),
        ):
            with pytest.raises(InvalidBatchId, match="batch id"):
                await call()
        with pytest.raises(InvalidBatchId):
            async for _ in client.results(bad):
                pass
        assert await client.redis.dbsize() == 0  # refused before anything was written
    with pytest.raises(ValueError):
        ChunkJob(batch_id=bad, requests=["http://example.test/"])


async def _record(
    r: Redis, batch: str, items: list[tuple[int, bytes]], incarnation: str = "", rec: Recorder | None = None
) -> list[bool]:
    """Record `items` through `rec` (one worker's recorder), or through a recorder of their own."""
    own = rec is None
    if rec is None:
        rec = Recorder(r, ttl=600)
        rec.start()
    try:
        return list(
            await asyncio.gather(
                *(rec.record(batch, i, False, doc, incarnation=incarnation) for i, doc in items)
            )
        )
    finally:
        if own:
            await rec.close()


async def _snapshot(r: Redis) -> dict[bytes, object]:
    """Every key with its type and content: what a failed write must leave exactly as it was."""
    out: dict[bytes, object] = {}
    for key in await r.keys("*"):
        kind = (await r.type(key)).decode()
        if kind == "hash":
            out[key] = (kind, await r.hgetall(key))
        elif kind == "string":
            out[key] = (kind, await r.get(key))
        elif kind == "stream":
            out[key] = (kind, await r.xrange(key))
        elif kind == "list":
            out[key] = (kind, await r.lrange(key, 0, -1))
        else:
            out[key] = (kind, None)
    return out


@pytest.mark.parametrize(
    ("where", "plant"),
    [
        ("stream", lambda r: r.set(results_key("b"), "planted")),
        ("bitmap", lambda r: r.lpush(done_key("b"), "planted")),
        ("hash", lambda r: r.set(batch_key("b"), "planted")),
    ],
)
async def test_wrong_type_fails_cleanly_with_nothing_written(where: str, plant, redis_url: str) -> None:
    r = Redis.from_url(redis_url)
    try:
        if where != "hash":
            await r.hset(batch_key("b"), mapping={"submitted": 3, "incarnation": "tok"})
        await plant(r)
        before = await _snapshot(r)
        with pytest.raises(redis.ResponseError) as caught:
            await _record(r, "b", [(0, b'{"index":0}'), (1, b'{"index":1}')], "tok")
        assert classify(caught.value) is RedisProblem.WRONG_TYPE, caught.value
        assert await _snapshot(r) == before  # no bit set, no entry added, no counter moved
    finally:
        await r.aclose()


async def test_out_of_range_index_fails_before_any_write(redis_url: str) -> None:
    r = Redis.from_url(redis_url)
    try:
        await r.hset(batch_key("b"), mapping={"submitted": 3})
        before = await _snapshot(r)
        for bad in (2**32, -1):
            with pytest.raises(ValueError):  # refused by the recorder, before it joins a flush
                await _record(r, "b", [(bad, b"{}")])
        # and by the script itself, should malformed arguments reach it some other way
        script = r.register_script(RECORD_LUA)
        good = script_args(600, [Pending("b", i, False, b"{}", b"", asyncio.Future()) for i in (0, 1)])
        broken = [
            [*good[:1], good[1][:-1], *good[2:]],  # numbers cut short
            [*good[:1], good[1][:4] + b"\x02" + good[1][5:], *good[2:]],  # failed neither 0 nor 1
            [*good[:5], b'{}\n{"a":1}'],  # a document longer than its length says
            [*good[:2], b"x", *good[3:]],  # a body nobody has
            good[:5],  # no documents
            [*good[:4], 0, *good[5:]],  # no results per entry
        ]
        for args in broken:
            with pytest.raises(redis.ResponseError, match="malformed"):
                await script(keys=reversed_keys("b"), args=args)
        assert await _snapshot(r) == before
    finally:
        await r.aclose()


async def test_vanished_or_recreated_batch_gets_nothing(redis_url: str, caplog) -> None:
    r = Redis.from_url(redis_url)
    rec = Recorder(r, ttl=600)
    rec.start()
    try:
        with caplog.at_level(logging.WARNING, logger="fetchfleet.recorder"):
            assert await _record(r, "gone", [(0, b"{}"), (1, b"{}")], "tok", rec) == [False, False]
            assert await _record(r, "gone", [(2, b"{}")], "tok", rec) == [False]
            assert await r.dbsize() == 0  # no stray hash, bitmap or stream
            await r.hset(batch_key("again"), mapping={"submitted": 2, "incarnation": "new"})
            assert await _record(r, "again", [(0, b"{}")], "old", rec) == [False]
            assert not await r.exists(done_key("again"), results_key("again"))
            assert await _record(r, "again", [(0, b"{}")], "new", rec) == [True]
        lost = [m.getMessage() for m in caplog.records if "no longer exists" in m.getMessage()]
        assert [m.split()[1] for m in lost] == ["gone", "again"], lost  # one warning per batch
    finally:
        await rec.close()
        await r.aclose()


@pytest.mark.slow
@pytest.mark.parametrize("first", ["nightly", "nightly:done"])
def test_nightly_and_nightly_done_in_either_order(
    first: str, redis_url: str, http_target: HttpTarget, spawn_worker, tmp_path: Path
) -> None:
    """The issue's reproduction: `nightly:done` used to be the done bitmap of `nightly`."""
    wait_started(spawn_worker(redis_url))
    env = fetchfleet_env(redis_url)
    n = 120
    urls = write_urls(tmp_path / "urls.txt", [http_target.url(f"/ok/{i}") for i in range(n)])
    order = ["nightly", "nightly:done"] if first == "nightly" else ["nightly:done", "nightly"]
    runs = {bid: run_cli(["submit", str(urls), "--batch-id", bid, "--wait", "-q"], env, 90) for bid in order}
    bad = runs["nightly:done"]
    err = bad.stderr.decode()
    assert bad.returncode == 2, err
    assert err.count("\n") == 1 and "batch id" in err and "Traceback" not in err, err
    good = runs["nightly"]
    assert good.returncode == 0, good.stderr.decode()
    assert_each_index_once([json.loads(line) for line in good.stdout.decode().splitlines()], n)
    for command in (["status"], ["results"], ["cancel"]):
        refused = run_cli([*command, "nightly:done"], env, 30)
        assert refused.returncode == 2 and refused.stderr.decode().count("\n") == 1, refused.stderr


@pytest.mark.slow
def test_planted_job_with_bad_batch_id_is_dropped(
    redis_url: str, redis_server: RedisProcess, http_target: HttpTarget, spawn_worker, tmp_path: Path
) -> None:
    """A Redis writer plants chunks whose batch ids break the grammar: dropped, nothing recorded."""
    settings = load_settings(redis_url=redis_url)
    n = 100
    planted = [
        ChunkJob.model_construct(
            batch_id=bad, incarnation="", first_index=0, requests=[http_target.url("/ok/1")], indexes=None
        )
        for bad in ["nightly:done", "nightly:results", "x" * 65]
    ]

    async def plant() -> None:
        r = Redis.from_url(redis_url)
        try:
            await enqueue_chunks(r, settings, [(f"planted{i}", job) for i, job in enumerate(planted)])
        finally:
            await r.aclose()

    w = spawn_worker(redis_url)
    wait_started(w)
    urls = write_urls(tmp_path / "urls.txt", [http_target.url(f"/ok/{i}") for i in range(n)])
    env = fetchfleet_env(redis_url)
    first = run_cli(["submit", str(urls), "--batch-id", "nightly"], env, 60)
    assert first.returncode == 0, first.stderr.decode()
    asyncio.run(plant())
    with redis_server.client() as r:
        wait_until(lambda: r.zcard("fetchfleet:queue") == 0, 30, "every job to be taken")
        wait_until(lambda: w.log().count("names no valid batch id") == 3, 10, "three warnings")
        done = run_cli(["results", "nightly", "--follow", "-q"], env, 60)
        assert done.returncode == 0, done.stderr.decode()
        assert_each_index_once([json.loads(line) for line in done.stdout.decode().splitlines()], n)
        assert int(r.hget(batch_key("nightly"), "done")) == n  # (collected results leave the stream)
        names = sorted(k.decode() for k in r.keys("ff:*"))
        assert all(("nightly:" not in k) and ("xxxx" not in k) for k in names), names
    assert "Traceback" not in w.log()
