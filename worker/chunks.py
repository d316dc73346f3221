"""Running one chunk job: skip what is already recorded, fetch the rest in the worker's slots, record."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from worker.batchpolicy import batch_policy
from worker.cancel import CancelWatch
from worker.contract import (
    INCARNATION_FIELD,
    ChunkJob,
    ErrorKind,
    FetchRequest,
    RejectedRequest,
    batch_key,
    done_key,
    retried_key,
)
from worker.errors import BodyStoreError, HandBack, RobotsDisallowed
from worker.fetcher import Fetcher, FetchOutcome
from worker.hostlimits import HostLimiter, fetch_slot, host_of
from worker.metrics import WorkerMetrics
from worker.politeness import Gate, HeldSlot, Politeness
from worker.recorder import Recorder
from worker.requeue import Requeuer
from worker.results import encode, encode_doc, error_result, final_outcome, result_doc, stored_body
from worker.retry import RetryPolicy
from worker.settings import Settings
from worker.warcstore import BodyStore

log = logging.getLogger("fetchfleet.chunks")

Entry = tuple[int, FetchRequest | RejectedRequest | str, int]  # ChunkJob.entries(): index, request, tries
VERIFY_ROUNDS = 3  # a chunk whose results vanish from Redis again and again fails and runs later


@dataclass
class Runtime:
    """What one worker process shares between all the chunks it runs (opened by worker/lifecycle.py)."""

    settings: Settings
    redis: Redis
    fetcher: Fetcher
    recorder: Recorder
    worker_id: str
    cancels: CancelWatch
    requeuer: Requeuer
    # None when no per-host limit is set: then a fetch costs no Redis round trip for politeness.
    host_limiter: HostLimiter | None
    # robots.txt, Crawl-delay, limits and adaptive backoff together; None when none of them applies.
    polite: Politeness | None
    # FETCHFLEET_BODY_STORE: kept bodies go to WARC files, results carry a body_ref instead.
    body_store: BodyStore | None
    slots: asyncio.Semaphore = field(init=False)
    in_flight: int = 0
    fetches: int = 0
    metrics: WorkerMetrics = field(default_factory=WorkerMetrics)
    # Set on SIGTERM: fetches not yet started are handed back to the queue instead (errors.HandBack).
    stopping: bool = False

    # URLs of running chunks not yet through a fetch slot, and chunks claimed whose URLs are not
    # counted there yet (job id -> URLs expected): what the claim sizing subtracts from free slots.
    waiting: int = 0
    reserved: dict[str, int] = field(default_factory=dict)

    retry: RetryPolicy = field(init=False)
    held: HeldSlot = field(init=False)

    def __post_init__(self) -> None:
        self.slots = asyncio.Semaphore(self.settings.concurrency)
        self.retry = RetryPolicy.from_settings(self.settings)
        self.held = HeldSlot(self.slots)
        if self.polite is not None and self.polite.throttle is not None:
            self.polite.throttle.busy = self.busy

    def busy(self) -> bool:
        """URLs claimed, waiting for a slot or in flight here: background reads that only matter for
        work (the throttled hosts) pause while this is false."""
        return bool(self.in_flight or self.waiting or self.reserved)


@dataclass(frozen=True, slots=True)
class ChunkSummary:
    fetched: int
    skipped: int
    recorded: int


def ask_bits(pipe: Any, key: str, indexes: list[int]) -> Callable[[Any], list[bool]]:
    """Queue on `pipe` one read of the bits `indexes` of bitmap `key` (at least one index); returns what
    turns its reply into a flag per index."""
    lo = indexes[0]
    # A chunk's indexes are usually consecutive: then GETRANGE reads their bytes of the bitmap, where
    # BITFIELD needs three arguments per index (ops/bench: ~2 us a URL of client-side packing).
    if indexes == list(range(lo, lo + len(indexes))):
        pipe.getrange(key, lo >> 3, indexes[-1] >> 3)
        first = lo >> 3  # bit i is the high-order-first bit (i & 7) of byte i >> 3
        return lambda bits: [
            (i >> 3) - first < len(bits) and bits[(i >> 3) - first] & (0x80 >> (i & 7)) != 0 for i in indexes
        ]
    args: list[str | int] = []
    for i in indexes:
        args += ["GET", "u1", i]
    pipe.execute_command("BITFIELD", key, *args)
    return lambda values: [bool(v) for v in values]


async def chunk_state(redis: Redis, job: ChunkJob, indexes: list[int]) -> tuple[bool, list[bool]]:
    """(batch cancelled?, done flag per index) in one round trip."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hget(batch_key(job.batch_id), "cancelled")
        read = ask_bits(pipe, done_key(job.batch_id), indexes) if indexes else None
        replies = await pipe.execute()
    cancelled = bool(replies[0] and replies[0] != b"0")
    return cancelled, read(replies[1]) if read is not None else []


async def unrecorded(rt: Runtime, job: ChunkJob, entries: list[Entry]) -> list[Entry]:
    """The entries with neither a result nor a retry queued in Redis: at the end of a run, the results
    Redis lost while it ran (restarted from an older snapshot, failed over to a replica that lagged).

    One round trip, two when some index has no result (a retry of it this run queued is attempt
    tries + 2: see Requeuer.add). None when the batch itself is gone or was submitted again.
    """
    async with rt.redis.pipeline(transaction=False) as pipe:
        read = ask_bits(pipe, done_key(job.batch_id), [e[0] for e in entries])
        flags = read((await pipe.execute())[0])
    missing = [e for e, done in zip(entries, flags, strict=True) if not done]
    if not missing:
        return []
    by_attempt: dict[int, list[Entry]] = {}
    for entry in missing:
        by_attempt.setdefault(entry[2] + 2, []).append(entry)
    async with rt.redis.pipeline(transaction=False) as pipe:
        pipe.hmget(batch_key(job.batch_id), ["complete", INCARNATION_FIELD])
        reads = [
            ask_bits(pipe, retried_key(job.batch_id, a), [e[0] for e in group])
            for a, group in by_attempt.items()
        ]
        (complete, token), *replies = await pipe.execute()
    if complete is None or (token or b"").decode() != job.incarnation:
        return []  # Redis lost the whole batch: nothing of it is recorded again (record.lua)
    lost: list[Entry] = []
    for group, read, reply in zip(by_attempt.values(), reads, replies, strict=True):
        lost += [e for e, queued in zip(group, read(reply), strict=True) if not queued]
    return sorted(lost)


async def run_chunk(rt: Runtime, job: ChunkJob) -> ChunkSummary:
    entries = job.entries()
    state = chunk_state(rt.redis, job, [e[0] for e in entries])
    throttle = rt.polite.throttle if rt.polite is not None else None
    if throttle is not None and throttle.stale():
        # The throttled hosts, not read while the worker was idle: read beside the chunk's own first
        # round trip (one round trip's wait, not two), and before any fetch, so that a host paused by a
        # 429 elsewhere is not asked again at once.
        (cancelled, flags), _ = await asyncio.gather(state, throttle.fresh())
    else:
        cancelled, flags = await state
    pending = [e for e, done in zip(entries, flags, strict=True) if not done]
    if cancelled:
        records = []
        for index, req, tries in pending:
            url = req if isinstance(req, str) else req.url
            result = error_result(index, url, ErrorKind.CANCELLED, "batch was cancelled", tries, rt.worker_id)
            records.append(
                rt.recorder.record(job.batch_id, index, True, encode(result), incarnation=job.incarnation)
            )
        await asyncio.gather(*records)  # one flush for the whole chunk, not a round trip per URL
        return ChunkSummary(fetched=0, skipped=len(entries), recorded=len(pending))
    rt.cancels.note(job.batch_id, cancelled)  # watched while this chunk runs
    try:
        recorded = await fetch_all(rt, job, pending)
        for _ in range(VERIFY_ROUNDS):
            # The job leaves the queue when this returns: a result Redis lost meanwhile would never be
            # recorded again, and every follower would wait for it for ever.
            lost = await unrecorded(rt, job, entries) if pending else []
            if not lost or rt.recorder.is_lost(job.batch_id, job.incarnation):
                break
            log.warning(
                "batch %s: %d results recorded by this chunk are gone from Redis (restarted from an older "
                "state, or failed over?); fetching them again",
                job.batch_id,
                len(lost),
            )
            recorded += await fetch_all(rt, job, lost)
        else:
            # Not this chunk's doing, but a loop here would never end: the chunk fails and runs again later.
            raise RuntimeError(f"results of batch {job.batch_id} keep vanishing from Redis")
    finally:
        rt.cancels.done(job.batch_id)
    return ChunkSummary(fetched=len(pending), skipped=len(entries) - len(pending), recorded=recorded)


async def fetch_all(rt: Runtime, job: ChunkJob, pending: list[Entry]) -> int:
    """Fetch and record every entry; how many were recorded first here (or queued for a retry)."""
    rt.waiting += len(pending)  # counted until each holds a slot (claim sizing)
    outcomes = await asyncio.gather(*(fetch_one(rt, job, index, req, tries) for index, req, tries in pending))
    if rt.stopping and sum(outcomes) < len(pending):
        # Every fetch this chunk started has finished and is recorded; the rest go back to the queue.
        raise HandBack(job.batch_id, len(pending) - sum(outcomes))
    return sum(outcomes)


async def fetch_one(
    rt: Runtime, job: ChunkJob, index: int, req: FetchRequest | RejectedRequest | str, tries: int
) -> int:
    """Fetch and record one URL; a fault in here fails this URL only, never the chunk."""
    url = req if isinstance(req, str) else req.url
    attempts = tries + 1
    body: bytes | None = None
    waiting = True  # counted in rt.waiting until it holds a slot
    polite = rt.polite
    gate: Gate | None = None
    waited: float | None = None
    slot: AbstractAsyncContextManager[float | None, bool | None]
    try:
        if rt.recorder.pressure.full:
            # Redis is full: a fetch now would only add a result that cannot be recorded (memory).
            await rt.recorder.pressure.wait_room()
        if polite is None or isinstance(req, RejectedRequest):
            # A rejected entry is refused by the fetcher and sends nothing: no robots.txt read for it.
            # Waiting for a polite host holds no slot: other hosts' URLs keep flowing meanwhile.
            # Without a host limit the bare semaphore is the slot (fetch_slot's wrapper costs ~3 us a URL).
            slot = rt.slots if rt.host_limiter is None else fetch_slot(rt.host_limiter, rt.slots, url)
        else:
            # robots.txt: see Politeness.admit for when its wait holds a slot.
            gate, admitted = await polite.admit(url, job.options, rt.slots, rt.held)
            if admitted is None:
                rt.waiting -= 1
                waiting = False
                return await _refused(rt, job, index, req, attempts, gate)
            slot = admitted
        async with slot as waited:
            rt.waiting -= 1
            waiting = False
            skipped = await _skip_in_slot(rt, job, index, url, tries)
            if skipped is not None:
                return skipped
            outcome = await _counted_fetch(rt, job, req)
        kind = outcome.error.kind if outcome.error is not None else None
        if gate is not None and polite is not None:
            await _host_feedback(polite, gate, outcome, kind)
        method = "GET" if isinstance(req, str) else req.method
        if rt.retry.should_retry(attempts, outcome.status, kind, method) and await _retry_later(
            rt, job, index, req, attempts, rt.retry.delay(attempts, outcome.retry_after)
        ):
            rt.metrics.retried(kind or "http_status")
            return 1  # handled: the next attempt waits in the queue, not in this worker
        outcome = final_outcome(outcome, rt.retry.statuses)
        wait_ms = round(
            (gate.waited_ms if gate is not None else 0.0) + (waited or 0.0) + outcome.hop_wait_ms, 3
        )
        doc, body = await _doc_and_body(rt, index, outcome, attempts, wait_ms)
        payload = encode_doc(doc)
    except asyncio.CancelledError:
        if waiting:
            rt.waiting -= 1
        raise
    except BodyStoreError:
        raise  # not this URL's fault: the chunk fails and runs again (with backoff), nothing recorded
    except Exception as exc:
        log.exception("internal error fetching batch %s index %d", job.batch_id, index)
        if waiting:
            rt.waiting -= 1
            waiting = False
        result = error_result(
            index, url, ErrorKind.INTERNAL, f"{exc.__class__.__name__}: {exc}", attempts, rt.worker_id
        )
        doc, payload = result.model_dump(mode="json"), encode(result)
    rt.metrics.fetched_doc(doc)
    return int(
        await rt.recorder.record(
            job.batch_id, index, not doc["ok"], payload, body, incarnation=job.incarnation
        )
    )


async def _skip_in_slot(rt: Runtime, job: ChunkJob, index: int, url: str, tries: int) -> int | None:
    """Not fetched after all: 0 when the worker is stopping (the URL goes back), the recorded
    `cancelled` result when the batch was cancelled meanwhile; None to go ahead and fetch."""
    if rt.stopping:
        return 0
    if rt.cancels.is_cancelled(job.batch_id):
        result = error_result(index, url, ErrorKind.CANCELLED, "batch was cancelled", tries, rt.worker_id)
        return int(
            await rt.recorder.record(job.batch_id, index, True, encode(result), incarnation=job.incarnation)
        )
    return None


async def _counted_fetch(
    rt: Runtime, job: ChunkJob, req: FetchRequest | RejectedRequest | str
) -> FetchOutcome:
    """One fetch, counted in flight while it runs (claim sizing, metrics)."""
    rt.in_flight += 1
    try:
        return await rt.fetcher.fetch(
            req,
            keep_body=job.options.store_body,
            batch=batch_policy(job.options),
            hop_check=None if rt.polite is None else rt.polite.hop_check(job.options),
        )
    finally:
        rt.in_flight -= 1
        rt.fetches += 1


async def _host_feedback(polite: Politeness, gate: Gate, outcome: FetchOutcome, kind: str | None) -> None:
    """Tell the fleet's politeness when the host said "slow down" (429/503, a run of failures)."""
    if outcome.redirects and outcome.final_url is not None:
        # The host that answered, not the one that redirected there (a link shortener is not the site
        # that is overloaded).
        answered = host_of(outcome.final_url)
        if answered != gate.host:
            gate = Gate(answered)
    event = polite.slow_down(gate, outcome.status, kind)
    if event is not None:
        await polite.report(gate, event, outcome.retry_after)


async def _doc_and_body(
    rt: Runtime, index: int, outcome: FetchOutcome, attempts: int, wait_ms: float
) -> tuple[dict[str, Any], bytes | None]:
    """The result document and the body to keep in Redis (None when there is none, or a store has it)."""
    doc = result_doc(index, outcome, attempts, rt.worker_id, wait_ms)
    if rt.body_store is not None and outcome.exchange is not None and outcome.body is not None:
        if outcome.error is None:
            # Durable before it is recorded: a result never points at bytes a crash could lose.
            ref = await rt.body_store.put(outcome.exchange, outcome.body, outcome.sha256)
            doc["body_ref"] = ref.model_dump()
        return doc, None
    return doc, stored_body(outcome)


async def _refused(
    rt: Runtime,
    job: ChunkJob,
    index: int,
    req: FetchRequest | RejectedRequest | str,
    attempts: int,
    gate: Gate,
) -> int:
    """A URL robots.txt keeps us from: nothing is sent to its origin (RFC 9309 2.3.1.4).

    Disallowed by the rules: a final `robots` result. robots.txt answered 5xx: another attempt once the
    disallow-all period is over. robots.txt could not be reached at all (connect, DNS, timeout): the
    URL fails with that kind and is retried as such, as its own fetch would have been.
    """
    url = req if isinstance(req, str) else req.url
    refused = gate.refused
    assert refused is not None
    method = "GET" if isinstance(req, str) else req.method
    kind, message = ErrorKind(RobotsDisallowed.kind), "disallowed by robots.txt"
    if gate.unreachable:
        message = refused.reason
        if refused.error_kind is not None:
            kind = ErrorKind(refused.error_kind)
            delay = rt.retry.delay(attempts)
        else:
            # A little past the cached verdict's expiry, so the next attempt meets a fresh robots.txt.
            delay = rt.settings.robots_unreachable_seconds * random.uniform(1.05, 1.2)
        retry_as = kind.value if kind != ErrorKind.ROBOTS else ErrorKind.CONNECT.value
        if rt.retry.should_retry(attempts, None, retry_as, method) and await _retry_later(
            rt, job, index, req, attempts, delay
        ):
            rt.metrics.retried("robots")
            return 1
    result = error_result(index, url, kind, message, attempts, rt.worker_id, gate.waited_ms)
    rt.metrics.fetched(result)
    return int(
        await rt.recorder.record(job.batch_id, index, True, encode(result), incarnation=job.incarnation)
    )


async def _retry_later(
    rt: Runtime,
    job: ChunkJob,
    index: int,
    req: FetchRequest | RejectedRequest | str,
    attempts: int,
    delay: float,
) -> bool:
    try:
        await rt.requeuer.add(job, index, req, attempts, delay)
    except Exception:  # Redis away for good: record this attempt's outcome rather than lose the URL
        log.warning("could not queue a retry of batch %s index %d; recording it", job.batch_id, index)
        return False
    return True
