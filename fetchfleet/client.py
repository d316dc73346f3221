"""`fetchfleet.Client`: the producer's Client with typed results instead of (cursor, bytes) pairs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

from fetchfleet.result import Result
from producer.client import BatchStatus
from producer.client import Client as ProducerClient
from worker.contract import FetchRequest
from worker.errors import UsageError
from worker.resultstream import START
from worker.settings import Settings

FORGET_EVERY = 1000  # results taken between deletions of collected ones from Redis


def refuse_one_string(urls: object) -> None:
    """A str (or bytes) where a list of URLs goes is iterated character by character: one URL a letter."""
    if isinstance(urls, str | bytes):
        raise UsageError(f"urls is one {type(urls).__name__}, not a list of URLs: pass [url]")


class Client:
    """A connection to one fetchfleet cluster (its Redis). Use as `async with Client() as client:`.

    `producer` is the underlying `producer.Client`, whose `results` yields the raw JSON documents.
    """

    def __init__(self, settings: Settings | None = None) -> None:
        self.producer = ProducerClient(settings)

    @property
    def settings(self) -> Settings:
        return self.producer.settings

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.producer.close()

    async def submit(
        self, urls: Iterable[str | FetchRequest], *, body: bool = False, batch_id: str | None = None
    ) -> str:
        """Queue the URLs as a batch and return its id; `body=True` keeps every response body."""
        refuse_one_string(urls)
        return await self.producer.submit(urls, batch_id=batch_id, store_body=body)

    async def results(
        self, batch_id: str, *, follow: bool = False, cursor: str = START, forget: bool | None = None
    ) -> AsyncIterator[Result]:
        """Yield each result as a `Result`, in completion order; `result.cursor` resumes after it.

        With `follow`, keep waiting until every URL of the batch has its result. `forget`: delete from
        Redis the results this loop has taken (default: when following, unless
        FETCHFLEET_RESULT_RETENTION=ttl); a result counts as taken once the loop asks for the next.
        """
        if forget is None:
            forget = follow and self.producer.forgets_collected
        taken = 0
        last = cursor
        async for entry_cursor, document, stored in self.producer.entries(
            batch_id, follow=follow, cursor=cursor
        ):
            if forget and taken and taken % FORGET_EVERY == 0:
                await self.producer.forget_results(batch_id, last)
            yield Result.from_entry(entry_cursor, document, stored)
            taken += 1
            last = entry_cursor
        if forget:
            await self.producer.forget_results(batch_id, last)

    async def status(self, batch_id: str) -> BatchStatus:
        return await self.producer.status(batch_id)

    async def cancel(self, batch_id: str) -> BatchStatus:
        return await self.producer.cancel(batch_id)
