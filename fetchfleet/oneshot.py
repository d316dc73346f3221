"""`fetch` and `afetch`: a list of URLs in, a list of `Result`s out, with or without a cluster."""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Iterable

from fetchfleet.client import Client, refuse_one_string
from fetchfleet.result import Result
from producer.local import REDIS_URL_ENV, LocalCluster, default_workers, guarded
from worker.contract import FetchRequest, url_problem
from worker.errors import UsageError
from worker.settings import Settings, load_settings

MAX_PROBLEMS_SHOWN = 5


def _checked(urls: Iterable[str | FetchRequest]) -> list[str | FetchRequest]:
    """The URLs as a list; any that cannot be fetched as written stops the call before anything runs."""
    refuse_one_string(urls)
    items = list(urls)
    problems = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            problem = url_problem(item)
            if problem:
                problems.append(f"urls[{i}]: {problem}")
        elif not isinstance(item, FetchRequest):
            problems.append(f"urls[{i}]: not a str or FetchRequest ({type(item).__name__})")
    if problems:
        more = len(problems) - MAX_PROBLEMS_SHOWN
        shown = problems[:MAX_PROBLEMS_SHOWN] + ([f"... and {more} more"] if more > 0 else [])
        raise UsageError(f"{len(problems)} bad URL(s); nothing was fetched:\n  " + "\n  ".join(shown))
    return items


async def _collect(settings: Settings, urls: list[str | FetchRequest], body: bool) -> list[Result]:
    async with Client(settings) as client:
        await client.producer.ping()
        batch_id = await client.submit(urls, body=body)
        return [result async for result in client.results(batch_id, follow=True)]


async def afetch(
    urls: Iterable[str | FetchRequest],
    *,
    body: bool = True,
    ordered: bool = False,
    workers: int | None = None,
) -> list[Result]:
    """Fetch every URL once and return one `Result` each: in input order with `ordered=True`, else in
    completion order.

    With FETCHFLEET_REDIS_URL set, the batch goes to that cluster's workers. Otherwise a private
    server and local worker processes (`fetchfleet run`'s) start for this call and stop before it
    returns; `workers` caps them (default: one per core, and no more than there are chunks).
    """
    items = _checked(urls)
    settings = load_settings()
    if not items:
        return []
    if REDIS_URL_ENV in os.environ:
        results = await _collect(settings, items, body)
    else:
        chunks = math.ceil(len(items) / settings.chunk_size)
        cluster = LocalCluster(settings, max(1, min(workers or default_workers(), chunks)))
        try:
            # In this thread, not a pool thread: the children's parent-death signal is tied to the
            # thread that forks them (producer.children). It blocks the loop for the server's start.
            cluster.start()
            results = await guarded(_collect(cluster.settings, items, body), cluster)
        finally:
            await asyncio.to_thread(cluster.close)
    if ordered:
        results.sort(key=lambda r: r.index)
    return results


def fetch(
    urls: Iterable[str | FetchRequest],
    *,
    body: bool = True,
    ordered: bool = False,
    workers: int | None = None,
) -> list[Result]:
    """`afetch` for code without an event loop; inside one, `await fetchfleet.afetch(...)` instead."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(afetch(urls, body=body, ordered=ordered, workers=workers))
    raise UsageError("fetchfleet.fetch() called inside a running event loop: use `await fetchfleet.afetch()`")
