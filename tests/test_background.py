"""worker.background.stop_loop: a loop ends on shutdown even when a cancel is lost inside it."""

from __future__ import annotations

import asyncio

from worker.background import stop_loop


async def test_a_loop_that_swallows_its_cancel_still_stops() -> None:
    """A cancel that lands in a library call can come out as another error, which a loop's own
    `except Exception` takes for a failed step (the heartbeat did, 1-2 ms after start-up): the loop
    must stop all the same, not sleep on with shutdown waiting for it."""
    lost = 0
    in_call = asyncio.Event()

    async def beat_loop() -> None:
        nonlocal lost
        while True:
            try:
                in_call.set()
                await asyncio.sleep(10)  # the library call the first cancel lands in
            except asyncio.CancelledError:
                if lost:
                    raise  # a race: only the first cancel is lost this way
                lost += 1  # turned into "the call failed": the loop goes on
            await asyncio.sleep(0.05)

    task = asyncio.create_task(beat_loop())
    await in_call.wait()
    stopping = asyncio.ensure_future(stop_loop(task))
    await asyncio.wait({stopping}, timeout=3)  # waits without cancelling it: no second cancel from here
    assert stopping.done(), "stop_loop still waiting on a loop that lost its cancel"
    assert task.done() and lost == 1


async def test_a_loop_that_failed_is_stopped_quietly() -> None:
    async def broken() -> None:
        raise asyncio.CancelledError

    task = asyncio.create_task(broken())
    await asyncio.sleep(0)
    await stop_loop(task)
    await stop_loop(None)
    assert task.done()
