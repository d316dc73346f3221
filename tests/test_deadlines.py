"""The fetcher's read and total timeouts, kept by one watchdog: never early, and never a stray cancel."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from tests.support.fetch_target import FetchTarget
from worker.fetcher import Fetcher, HopVerdict
from worker.settings import load_settings


async def _fetcher(**overrides: object) -> Fetcher:
    f = Fetcher(load_settings(allow_private_networks=True, **overrides))
    await f.start()
    return f


async def test_read_timeout_fires_late_by_little_never_early(target: FetchTarget) -> None:
    f = await _fetcher(read_timeout=0.4, total_timeout=30)
    try:
        started = time.monotonic()
        o = await f.fetch(target.url("/slow-headers/5"))
        took = time.monotonic() - started
        assert o.error is not None and o.error.kind == "timeout" and "no data for 0.4s" in str(o.error)
        assert 0.4 <= took < 0.4 * 1.5 + 0.5  # the watchdog's slack, plus a loaded machine's
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0  # the timeout's cancel was taken back
        after = await f.fetch(target.url("/ok/10"))  # and this task can go on fetching
        assert after.status == 200 and after.error is None
    finally:
        await f.close()


async def test_a_cancel_from_outside_is_not_turned_into_a_timeout(target: FetchTarget) -> None:
    f = await _fetcher(read_timeout=5, total_timeout=30)
    try:
        fetch = asyncio.ensure_future(f.fetch(target.url("/slow-headers/5")))
        await asyncio.sleep(0.3)
        fetch.cancel()
        with pytest.raises(asyncio.CancelledError):
            await fetch
        assert not f.watchdog._live  # a cancelled fetch leaves nothing behind to watch
    finally:
        await f.close()


async def test_many_fetches_share_the_watchdog(target: FetchTarget) -> None:
    f = await _fetcher(read_timeout=0.5, total_timeout=30)
    try:
        slow = [f.fetch(target.url("/slow-headers/5")) for _ in range(5)]
        fast = [f.fetch(target.url(f"/ok/{i}")) for i in range(1, 50)]
        outcomes = await asyncio.gather(*slow, *fast)
    finally:
        await f.close()
    kinds = [o.error.kind if o.error else o.status for o in outcomes]
    assert kinds == ["timeout"] * 5 + [200] * 49


async def test_waiting_for_a_redirect_targets_turn_is_not_a_timeout(target: FetchTarget) -> None:
    """A hop held back by the target host's politeness (worker.politeness.hop_check) waits outside both
    timeouts: the wait here is twice the total timeout, and the fetch still succeeds."""
    f = await _fetcher(read_timeout=0.3, total_timeout=0.4)
    waited: list[float] = []

    @contextlib.asynccontextmanager
    async def turn() -> AsyncIterator[float]:
        started = time.monotonic()
        await asyncio.sleep(0.8)
        waited.append(time.monotonic() - started)
        yield 800.0

    async def hop_check(url: str, first: str) -> HopVerdict:
        return HopVerdict(slot=turn())

    try:
        o = await f.fetch(target.url("/redirect/1"), hop_check=hop_check)
        assert o.error is None and o.status == 200 and o.redirects == 1, o.error
        assert waited and waited[0] >= 0.8
        assert o.hop_wait_ms == 800.0  # the turn's wait, as the slot reported it
        slow = await f.fetch(target.url("/slow-headers/5"))  # the same timeouts still fire elsewhere
        assert slow.error is not None and slow.error.kind == "timeout"
    finally:
        await f.close()
