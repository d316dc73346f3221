"""Redis holds what is uncollected: a follower deletes what it wrote out; status and exactly-once hold."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import orjson
import pytest
import redis
from redis.asyncio import Redis

from producer.client import Client
from tests.chaos import assert_each_index_once, wait_until, write_urls
from tests.support.http_target import HttpTarget
from tests.support.procs import fetchfleet_env, run_cli, start_cli
from tests.test_recorder import _record_all
from worker.contract import batch_key, done_key, results_key
from worker.resultstream import page_results
from worker.settings import load_settings


async def test_forget_deletes_up_to_the_cursor_and_the_gate_still_holds(redis_url: str) -> None:
    r = Redis.from_url(redis_url)
    try:
        await r.hset(batch_key("k"), mapping={"submitted": 10, "complete": 1})
        await _record_all(r, "k", list(range(10)))
        ids = [entry_id.decode() for entry_id, _ in await r.xrange(results_key("k"))]
        async with Client(load_settings(redis_url=redis_url)) as client:
            assert await client.forget_results("k", ids[3]) == 4  # up to and including the cursor
            rest = [orjson.loads(f[b"r"])["index"] for _, f in await r.xrange(results_key("k"))]
            assert rest == list(range(4, 10))
            assert await client.forget_results("k", ids[-1]) == 6
            assert await r.xlen(results_key("k")) == 0
            # The stream is empty, yet the batch is complete: `done`, not the stream, says so.
            assert await client._all_recorded("k")
            st = await client.status("k")
            assert (st.state.value, st.done, st.submitted) == ("done", 10, 10)
            # A chunk that runs again after its results were collected adds nothing.
            await _record_all(r, "k", list(range(10)))
            assert await r.xlen(results_key("k")) == 0
            assert int(await r.hget(batch_key("k"), "done")) == 10
            # and following the collected batch ends at once, with nothing left to give
            assert [d async for d in client.results("k", follow=True)] == []
    finally:
        await r.aclose()


async def test_not_all_recorded_while_done_is_short(redis_url: str) -> None:
    r = Redis.from_url(redis_url)
    try:
        await r.hset(batch_key("s"), mapping={"submitted": 5, "complete": 1})
        await _record_all(r, "s", [0, 1, 2])
        async with Client(load_settings(redis_url=redis_url)) as client:
            assert not await client._all_recorded("s")
    finally:
        await r.aclose()


@pytest.mark.slow
@pytest.mark.parametrize("how", ["submit --wait", "results --follow"])
def test_collected_batch_leaves_an_empty_stream_and_a_right_status(
    how: str,
    redis_url: str,
    http_target: HttpTarget,
    spawn_worker,
    tmp_path: Path,
) -> None:
    n = 2500  # more than one deletion round (every 1000 results written)
    spawn_worker(redis_url, chunk_size=100)
    urls = write_urls(tmp_path / "urls.txt", [http_target.url(f"/ok/{i % 300}") for i in range(n)])
    out = tmp_path / "out.jsonl"
    env = fetchfleet_env(redis_url)
    if how == "submit --wait":
        proc = run_cli(["submit", str(urls), "--batch-id", "ret", "--wait", "-q", "-o", str(out)], env)
    else:
        assert run_cli(["submit", str(urls), "--batch-id", "ret"], env).returncode == 0
        proc = run_cli(["results", "ret", "--follow", "-q", "-o", str(out)], env)
    assert proc.returncode == 0, proc.stderr.decode()
    assert_each_index_once([json.loads(line) for line in out.read_text().splitlines()], n)
    with redis.Redis.from_url(redis_url) as r:
        left = r.xlen(results_key("ret"))
        memory = r.memory_usage(results_key("ret")) or 0
        bits = r.bitcount(done_key("ret"))
        ttl = r.ttl(done_key("ret"))
    print(f"{how}: {n} results collected; stream left with {left} entries, {memory} bytes")
    assert left == 0
    assert bits == n and ttl > 0  # the exactly-once gate stays until the TTL
    status = json.loads(run_cli(["status", "ret", "--json"], env).stdout)
    assert (status["state"], status["done"], status["submitted"], status["remaining"]) == ("done", n, n, 0)
    assert status["collected"] == n
    # Reading the collected batch again ends at once, and says why it is short instead of ending silently.
    again = run_cli(["results", "ret"], env)
    assert again.returncode == 0 and again.stdout == b""
    notice = again.stderr.decode()
    assert f"{n} results of batch ret were already written out" in notice, notice
    assert "FETCHFLEET_RESULT_RETENTION" in notice


@pytest.mark.slow
def test_retention_ttl_keeps_every_result(
    redis_url: str, http_target: HttpTarget, spawn_worker, tmp_path: Path
) -> None:
    spawn_worker(redis_url)
    urls = write_urls(tmp_path / "urls.txt", [http_target.url("/ok/10")] * 50)
    env = fetchfleet_env(redis_url, result_retention="ttl")
    proc = run_cli(
        ["submit", str(urls), "--batch-id", "keep", "--wait", "-q", "-o", str(tmp_path / "o")], env
    )
    assert proc.returncode == 0, proc.stderr.decode()
    with redis.Redis.from_url(redis_url) as r:
        assert len(page_results(r.xrange(results_key("keep")))) == 50
    again = run_cli(["results", "keep"], env)
    assert len(again.stdout.splitlines()) == 50


# What another follower does in one step: two results come, and it writes out and deletes everything.
OTHER_FOLLOWER_LUA = """
redis.call('XADD', KEYS[1], '*', 'r', ARGV[1])
redis.call('XADD', KEYS[1], '*', 'r', ARGV[2])
redis.call('XTRIM', KEYS[1], 'MAXLEN', 0)
redis.call('HINCRBY', KEYS[2], 'collected', 3)
redis.call('HSET', KEYS[2], 'done', 3)
"""


@pytest.mark.slow
def test_a_follower_says_what_another_collected_while_it_ran(redis_url: str, tmp_path: Path) -> None:
    """Two followers of one batch, default retention: one wrote out and deleted results before the other
    read them. The other ended short, exit 0, without a word (observed: 5,999 of 6,000 lines)."""
    out = tmp_path / "out.jsonl"
    with redis.Redis.from_url(redis_url) as r:
        r.hset(batch_key("two"), mapping={"submitted": 3, "complete": 1, "done": 1, "incarnation": "x"})
        r.xadd(results_key("two"), {"r": b'{"index":0,"url":"http://h/0"}'})
        command = ["results", "two", "--follow", "-q", "-o", str(out)]
        proc = start_cli(command, fetchfleet_env(redis_url), stdout=subprocess.DEVNULL)
        try:
            wait_until(lambda: out.exists() and out.read_text().count("\n") == 1, 15, "index 0 written")
            docs = [b'{"index":1,"url":"http://h/1"}', b'{"index":2,"url":"http://h/2"}']
            r.eval(OTHER_FOLLOWER_LUA, 2, results_key("two"), batch_key("two"), *docs)
            _, err = proc.communicate(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    notice = err.decode()
    print(notice)
    assert proc.returncode == 0
    assert [json.loads(line)["index"] for line in out.read_text().splitlines()] == [0]
    assert "2 results of batch two were written out and removed from Redis by another" in notice
    assert "FETCHFLEET_RESULT_RETENTION=ttl" in notice
