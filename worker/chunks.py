"""Running one chunk job: skip what is already recorded, fetch the rest in the worker's slots, record."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from redis.asyncio import Redis

from worker.contract import ChunkJob, ErrorKind, FetchRequest, batch_key, done_key
from worker.fetcher import Fetcher
from worker.recorder import Recorder
from worker.results import build_result, encode, error_result
from worker.settings import Settings

log = logging.getLogger("fetchfleet.chunks")


@dataclass
class Runtime:
    """What one worker process shares between all the chunks it runs."""

    settings: Settings
    redis: Redis
    fetcher: Fetcher
    recorder: Recorder
    worker_id: str
    slots: asyncio.Semaphore = field(init=False)
    in_flight: int = 0
    fetches: int = 0

    def __post_init__(self) -> None:
        self.slots = asyncio.Semaphore(self.settings.concurrency)


@dataclass(frozen=True, slots=True)
class ChunkSummary:
    fetched: int
    skipped: int
    recorded: int


async def chunk_state(redis: Redis, job: ChunkJob, indexes: list[int]) -> tuple[bool, list[bool]]:
    """(batch cancelled?, done flag per index) in one round trip."""
    args: list[str | int] = []
    for i in indexes:
        args += ["GET", "u1", i]
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hget(batch_key(job.batch_id), "cancelled")
        if args:
            pipe.execute_command("BITFIELD", done_key(job.batch_id), *args)
        replies = await pipe.execute()
    cancelled = bool(replies[0] and replies[0] != b"0")
    flags = [bool(v) for v in replies[1]] if args else []
    return cancelled, flags


async def run_chunk(rt: Runtime, job: ChunkJob) -> ChunkSummary:
    entries = job.entries()
    cancelled, flags = await chunk_state(rt.redis, job, [e[0] for e in entries])
    pending = [e for e, done in zip(entries, flags, strict=True) if not done]
    if cancelled:
        for index, req, tries in pending:
            url = req if isinstance(req, str) else req.url
            result = error_result(index, url, ErrorKind.CANCELLED, "batch was cancelled", tries, rt.worker_id)
            await rt.recorder.record(job.batch_id, index, True, encode(result))
        return ChunkSummary(fetched=0, skipped=len(entries), recorded=len(pending))
    outcomes = await asyncio.gather(*(fetch_one(rt, job, index, req, tries) for index, req, tries in pending))
    return ChunkSummary(fetched=len(pending), skipped=len(entries) - len(pending), recorded=sum(outcomes))


async def fetch_one(rt: Runtime, job: ChunkJob, index: int, req: FetchRequest | str, tries: int) -> int:
    """Fetch and record one URL; a fault in here fails this URL only, never the chunk."""
    url = req if isinstance(req, str) else req.url
    attempts = tries + 1
    try:
        async with rt.slots:
            rt.in_flight += 1
            try:
                outcome = await rt.fetcher.fetch(req, keep_body=job.options.store_body)
            finally:
                rt.in_flight -= 1
                rt.fetches += 1
        result = build_result(index, outcome, attempts, rt.worker_id)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.exception("internal error fetching batch %s index %d", job.batch_id, index)
        result = error_result(
            index, url, ErrorKind.INTERNAL, f"{exc.__class__.__name__}: {exc}", attempts, rt.worker_id
        )
    return int(await rt.recorder.record(job.batch_id, index, not result.ok, encode(result)))
