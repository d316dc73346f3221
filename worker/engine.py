"""The queue engine seam: the worker side of arq.

Enqueueing lives in worker/enqueue.py (the producer imports that, never this module). This one
adapts the arq task to `run_chunk`, builds `WorkerSettings`, and runs
the worker with what arq lacks: short renewed leases, a draining SIGTERM, and surviving Redis restarts.
Moving to another engine means rewriting this module and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

from arq.connections import ArqRedis, RedisSettings
from arq.typing import WorkerCoroutine
from arq.worker import Retry, func
from pydantic import ValidationError

from worker.arqseam import FleetWorker
from worker.background import cancel_until_done
from worker.chunks import Runtime, run_chunk
from worker.claimsize import chunks_held
from worker.codec import dump_job, load_job
from worker.contract import CHUNK_TASK, ChunkJob, ErrorKind, batch_id_problem
from worker.enqueue import RETRY_KEY_PREFIX
from worker.errors import HandBack
from worker.lifecycle import WorkerCtx, WorkerHooks
from worker.logs import bind_job
from worker.recorder import done_flags
from worker.redisconn import make_pool, redact
from worker.rediserrors import REDIS_ERRORS, RedisProblem, classify, describe
from worker.results import encode, error_result
from worker.settings import Settings, is_sentinel_url, parse_sentinel_url

log = logging.getLogger("fetchfleet.worker")

RECONNECT_CAP_S = 5.0
STILL_DOWN_EVERY_S = 60.0
# arq's own try limit and job timeout, set out of reach: when arq reaches either it deletes the job
# with no result for its URLs (ARQ-NOTES). fetch_chunk counts the tries that matter itself (a run
# that failed or died, never a wait for a full or unreachable Redis) and keeps its own deadline,
# which stops while Redis is full, so it always has the last word and its last word is a result.
# (arq's timeout is the job key's own lifetime, FETCHFLEET_RESULT_TTL: past that arq drops it anyway.)
ARQ_MAX_TRIES = 1_000_000
# Redis problems a chunk waits out instead of failing: none of them is the chunk's doing.
WAIT_OUT = frozenset({RedisProblem.UNREACHABLE, RedisProblem.FULL, RedisProblem.READONLY, RedisProblem.AUTH})
RUNNING_WELL_S = 10.0  # a poll loop that ran this long before failing meets a new problem


def arq_pool(settings: Settings) -> ArqRedis:
    """A client that arq's own calls can use; it never pickles."""
    return ArqRedis(
        connection_pool=make_pool(settings),
        job_serializer=dump_job,
        job_deserializer=load_job,
        default_queue_name=settings.queue_name,
    )


# ---- the task ------------------------------------------------------------------------------------


async def fetch_chunk(ctx: WorkerCtx, payload: dict[str, Any]) -> int:
    """Run one chunk; whatever goes wrong, its URLs end up with results, never lost and never looping.

    Only `Retry` or a result count leaves this function: any other exception would make arq delete
    the job with its URLs unrecorded.
    """
    job_id = ctx.get("job_id", "?")
    try:
        return await _fetch_chunk(ctx, payload)
    except (Retry, asyncio.CancelledError):
        raise
    except REDIS_ERRORS as exc:
        problem = classify(exc)
        if problem not in WAIT_OUT:
            # Recording its failure met a key of another type (or the like): this batch's keys cannot
            # take a result, now or on any later run. Said as what it is; running it again would loop.
            log.error("chunk %s: %s; its URLs cannot be recorded, so it is dropped", job_id, describe(exc))
            return 0
        # Recording a failure met Redis away or full: not the chunk's fault, run it again.
        level = logging.DEBUG if problem is RedisProblem.UNREACHABLE else logging.WARNING
        log.log(level, "chunk %s will run again: %s", job_id, describe(exc))
        await forget_try(ctx)
        raise Retry(defer=0 if problem is RedisProblem.FULL else 1) from None
    except Exception:
        log.exception("chunk %s: unexpected failure; it will run again", job_id)
        raise Retry(defer=5) from None
    finally:
        rt: Runtime | None = ctx.get("runtime")
        if rt is not None:
            rt.reserved.pop(job_id, None)


def _readable_job(job_id: str, payload: dict[str, Any]) -> ChunkJob | None:
    """The chunk job in `payload`, or None (logged) when it cannot be one of ours."""
    claimed = payload.get("batch_id") if isinstance(payload, dict) else None
    if not isinstance(claimed, str) or batch_id_problem(claimed):
        # Planted by a Redis writer (the producer checks ids): such an id could name keys of another
        # batch, so nothing of it is recorded anywhere. Shown by repr, cut short: it may hold anything.
        log.warning("job %s names no valid batch id (%.80r); dropped", job_id, claimed)
        return None
    try:
        return ChunkJob.model_validate(payload)
    except ValidationError as exc:
        # Not a chunk this version can read: nothing to record it under, and a re-run cannot help.
        log.error("job %s is not a chunk job (%d problems); dropped", job_id, exc.error_count())
        return None


async def _redis_failed(ctx: WorkerCtx, job: ChunkJob, exc: BaseException) -> int:
    """A chunk that met a Redis error: waited out without a try when it is Redis's state, else failed."""
    rt, settings = ctx["runtime"], ctx["settings"]
    job_id, job_try = ctx.get("job_id", "?"), ctx.get("job_try", 1)
    problem = classify(exc)
    if problem in WAIT_OUT:
        # Not the chunk's fault: it runs again once Redis is back, has room, is writable again (a
        # failover in progress) or takes the password again, and this run does not count against
        # its tries. (A full Redis: no deferral, which is a write.)
        # Unreachable: the poll loop announces the outage once; a line per chunk would flood.
        level = logging.DEBUG if problem is RedisProblem.UNREACHABLE else logging.WARNING
        log.log(level, "chunk %s will run again: %s", job_id, describe(exc))
        await forget_try(ctx)
        defer = {RedisProblem.FULL: 0, RedisProblem.UNREACHABLE: 1}.get(problem, 5)
        raise Retry(defer=defer) from None
    # WRONGTYPE, NOSCRIPT, ...: said as what it is; the chunk fails like any other error.
    log.error("chunk %s failed on try %d: %s", job_id, job_try, describe(exc))
    rt.metrics.chunk_done("failed")
    if job_try >= settings.chunk_max_tries:
        return await record_internal(rt, job, describe(exc))
    raise Retry(defer=min(2 ** (job_try - 1), 30)) from None


async def _fetch_chunk(ctx: WorkerCtx, payload: dict[str, Any]) -> int:
    rt, settings = ctx["runtime"], ctx["settings"]
    job_id, job_try = ctx.get("job_id", "?"), ctx.get("job_try", 1)
    job = _readable_job(job_id, payload)
    if job is None:
        return 0
    bind_job(job.batch_id, job_id)  # every log line of this chunk carries its batch and chunk ids
    if job_try > settings.chunk_max_tries:
        # Started this often without finishing: it crashes its worker (or the worker was killed each
        # time). Record its URLs as failed instead of crash-looping the cluster on it.
        log.error("chunk %s started %d times without finishing; recording it as failed", job_id, job_try - 1)
        return await record_internal(rt, job, f"chunk did not finish in {job_try - 1} runs")
    if rt.stopping:
        await forget_try(ctx)
        raise Retry(defer=0)
    try:
        # Our own deadline, inside arq's: arq's timeout would drop the job and every URL still without a
        # result with it. Here what finished stays recorded and the rest runs in the next try. Its
        # clock stops while Redis is full: waiting for room is not the chunk taking too long.
        async with rt.recorder.pressure.deadline(settings.job_timeout):
            # From here its URLs count as waiting for a slot, no longer as a claimed chunk.
            rt.reserved.pop(job_id, None)
            summary = await run_chunk(rt, job)
    except HandBack as back:
        log.info("chunk %s: %d unstarted URLs handed back to the queue", job_id, back.handed_back)
        rt.metrics.chunk_done("handed_back")
        await forget_try(ctx)  # a graceful stop is not a failure of the chunk
        raise Retry(defer=0) from None
    except asyncio.CancelledError:
        raise
    except TimeoutError:  # before REDIS_ERRORS: TimeoutError is an OSError
        rt.metrics.chunk_done("timed_out")
        if job_try >= settings.chunk_max_tries:
            message = f"chunk did not finish within FETCHFLEET_JOB_TIMEOUT ({settings.job_timeout}s)"
            return await record_internal(rt, job, f"{message} in {job_try} runs", ErrorKind.TIMEOUT)
        log.warning("chunk %s ran out of time on try %d; the rest of it runs again", job_id, job_try)
        raise Retry(defer=0) from None
    except REDIS_ERRORS as exc:
        return await _redis_failed(ctx, job, exc)
    except Exception as exc:
        log.exception("chunk %s failed on try %d of %d", job_id, job_try, settings.chunk_max_tries)
        rt.metrics.chunk_done("failed")
        if job_try >= settings.chunk_max_tries:
            return await record_internal(rt, job, f"{exc.__class__.__name__}: {exc}")
        raise Retry(defer=min(2 ** (job_try - 1), 30)) from None
    rt.metrics.chunk_done("done")
    return summary.recorded


async def record_internal(
    rt: Runtime, job: ChunkJob, message: str, kind: ErrorKind = ErrorKind.INTERNAL
) -> int:
    """Give every URL of the chunk still without a result a final error result (`internal` by default)."""
    entries = job.entries()
    flags = await done_flags(rt.redis, job.batch_id, [e[0] for e in entries])
    records = []
    for (index, req, tries), done in zip(entries, flags, strict=True):
        if not done:
            url = req if isinstance(req, str) else req.url
            result = error_result(index, url, kind, message, tries + 1, rt.worker_id)
            records.append(
                rt.recorder.record(job.batch_id, index, True, encode(result), incarnation=job.incarnation)
            )
    return sum(map(int, await asyncio.gather(*records)))


async def forget_try(ctx: WorkerCtx) -> None:
    """Undo arq's try count for a chunk handed back on a graceful stop, so drains never exhaust it."""
    try:
        await ctx["redis"].decr(RETRY_KEY_PREFIX + ctx["job_id"])
    except REDIS_ERRORS as exc:
        log.debug("could not undo the try count of %s: %s", ctx.get("job_id"), exc)


def arq_redis_settings(settings: Settings) -> RedisSettings:
    """arq's own connection settings (read by `arq --check`; the worker itself passes its own pool): a
    redis+sentinel:// URL becomes arq's sentinel form."""
    if not is_sentinel_url(settings.redis_url):
        parts = urlsplit(settings.redis_url)
        # arq reads `redis://host:6379/` (path "/", db 0 to redis-py) as int(""): a traceback at start.
        dsn = urlunsplit(parts._replace(path="")) if parts.path == "/" else settings.redis_url
        return RedisSettings.from_dsn(dsn)
    target = parse_sentinel_url(settings.redis_url)
    return RedisSettings(
        host=list(target.sentinels),
        sentinel=True,
        sentinel_master=target.service,
        database=target.db,
        username=target.username,
        password=target.password,
    )


def build_worker_settings(settings: Settings, hooks: WorkerHooks | None = None) -> type:
    """arq's Worker settings for our worker (run_worker), also read by `arq --check` (worker/main.py)."""
    hooks = hooks or WorkerHooks(settings)
    redis_settings = arq_redis_settings(settings)
    if settings.redis_password is not None:
        redis_settings.password = settings.redis_password.get_secret_value()
    if settings.redis_ca_file:
        redis_settings.ssl_ca_certs = settings.redis_ca_file
    attrs: dict[str, Any] = {
        # arq's try limit and timeout out of reach (ARQ_MAX_TRIES): fetch_chunk has the last word.
        "functions": [
            func(
                cast("WorkerCoroutine", fetch_chunk),
                name=CHUNK_TASK,
                keep_result=0,
                max_tries=ARQ_MAX_TRIES,
                timeout=settings.result_ttl,
            )
        ],
        "queue_name": settings.queue_name,
        "redis_settings": redis_settings,
        "job_serializer": dump_job,
        "job_deserializer": load_job,
        "on_startup": hooks.on_startup,
        "on_shutdown": hooks.on_shutdown,
        "on_job_start": hooks.on_job_start,
        "on_job_end": hooks.on_job_end,
        # Claims are sized by free fetch slots (claimsize.py): the count of chunks held is a memory bound.
        "max_jobs": chunks_held(settings.concurrency, settings.chunk_size),
        # Every running job stays in the queue zset; reading far past what the whole cluster can hold
        # at once is what lets a second worker find work (ARQ-NOTES: read limit vs. in-flight jobs).
        "queue_read_limit": 1000,
        "poll_delay": settings.poll_delay,
        # fetch_chunk keeps its own deadline at job_timeout; arq's default for other functions.
        "job_timeout": settings.job_timeout + 60,
        "keep_result": 0,
        "expires_extra_ms": settings.result_ttl * 1000,
        "health_check_interval": 60,
        "handle_signals": True,
    }
    return type("WorkerSettings", (), attrs)


# ---- running a worker: `fetchfleet worker` --------------------------------------------------------


class Stopper:
    """SIGTERM/SIGINT: stop picking chunks, hand back unstarted URLs, wait for fetches in flight."""

    def __init__(self, worker: FleetWorker, grace: float) -> None:
        self.worker = worker
        self.grace = grace
        self.event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.signal: signal.Signals | None = None  # the first stop signal: SIGINT makes the exit code 130

    @property
    def requested(self) -> bool:
        return self.event.is_set()

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.begin, sig)

    def begin(self, sig: signal.Signals) -> None:
        w = self.worker
        if self.requested:
            log.warning("second %s: stopping now", sig.name)
            self._cancel_all()
            return
        self.event.set()
        self.signal = sig
        w.stop_claiming()
        rt: Runtime | None = w.ctx.get("runtime")
        if rt is not None:
            rt.stopping = True
        running = sum(not t.done() for t in w.tasks.values())
        log.info(
            "%s: taking no more chunks; %d chunks running, %d fetches in flight, up to %.0fs to finish",
            sig.name,
            running,
            rt.in_flight if rt else 0,
            self.grace,
        )
        self._task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        # Waits on the chunk tasks themselves; a claim that was under way when the signal came may
        # still add one, so the set is read again until none runs or the grace period is over.
        deadline = time.monotonic() + self.grace
        while (running := self._running()) and (left := deadline - time.monotonic()) > 0:
            await asyncio.wait(running, timeout=left)
        if running := self._running():
            log.warning(
                "grace period over: cancelling %d chunks; their unfinished URLs run elsewhere", len(running)
            )
        self._cancel_all()
        # One cancel is not always enough: a CancelledError that lands while a library is handling a
        # timeout of its own can be swallowed there, and arq's poll loop then runs on with nothing to
        # claim (seen on a Ctrl-C just after start-up); redis-py loses some that land in a command
        # (worker/background.py stop_tasks). Cancelled again until they end; the outcomes are arq's and
        # supervise's to read.
        for task in self._running():
            await cancel_until_done(task)
        if self.worker.main_task is not None:
            await cancel_until_done(self.worker.main_task)

    def _running(self) -> set[asyncio.Task[Any]]:
        return {t for t in self.worker.tasks.values() if not t.done()}

    def _cancel_all(self) -> None:
        # A cancelled chunk is re-queued by arq at once ("cancelled, will be run again").
        for t in self._running():
            t.cancel()
        if self.worker.main_task is not None:
            self.worker.main_task.cancel()


async def _until_redis_answers(
    worker: FleetWorker, stopper: Stopper, where: str, said: RedisProblem | None, delay: float
) -> tuple[RedisProblem | None, float]:
    """Ping with a growing delay until Redis answers (or a stop is asked for): a line when the problem
    changes, a reminder each minute it stays. Returns the problem last said and the next delay."""
    last_said = time.monotonic()
    while not stopper.requested:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopper.event.wait(), delay)
        delay = min(delay * 2, RECONNECT_CAP_S)
        try:
            await worker.pool.ping()
        except REDIS_ERRORS as exc:
            problem = classify(exc)
            if problem is not said or time.monotonic() - last_said > STILL_DOWN_EVERY_S:
                still = "still: " if problem is said else ""
                said, last_said = problem, time.monotonic()
                log.warning("%s%s", still, describe(exc, where))
            continue
        break
    return said, delay


async def supervise(worker: FleetWorker, settings: Settings, stopper: Stopper) -> None:
    """Run arq's poll loop, starting it again whenever Redis comes back (arq #435, #498).

    One warning when Redis goes away, saying what went wrong by kind (a reminder each minute it stays
    so), one line when it answers again: no traceback per attempt. Chunks already running carry on;
    their results wait in the recorder.
    """
    where = redact(settings.redis_url)
    said: RedisProblem | None = None  # the problem last announced, until the loop runs well again
    down = False  # a loss announced and not yet followed by "answers again"
    down_since = 0.0
    delay = 0.5
    while not stopper.requested:
        started = time.monotonic()
        try:
            await worker.async_run()
            return
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if stopper.requested and not (task and task.cancelling()):
                return
            raise
        except REDIS_ERRORS as exc:
            if stopper.requested:
                return
            if time.monotonic() - started > RUNNING_WELL_S:
                said, delay = None, 0.5  # the loop ran well for a while: this is a new problem
            problem = classify(exc)
            rt: Runtime | None = worker.ctx.get("runtime")
            if problem is RedisProblem.FULL and rt is not None:
                # Said once a minute by the pressure watch, with the figures; not a lost connection.
                rt.recorder.pressure.full_now()
                log.debug("poll loop met a full Redis (%s); restarting it", exc)
            elif problem is not said:
                # A relapse right after Redis answered again (connections the restart broke) is the
                # same outage: not announced twice.
                said, down, down_since = problem, True, time.monotonic()
                log.warning("%s; retrying", describe(exc, where))
        await worker.repair_after_crash()
        said, delay = await _until_redis_answers(worker, stopper, where, said, delay)
        if down and said in (RedisProblem.UNREACHABLE, RedisProblem.AUTH):
            # A ping answers: that problem is over. (A WRONGTYPE or READONLY is not seen by a ping; it
            # stays announced, and the poll loop restarts with a growing delay, until the loop runs.)
            log.info("Redis at %s answers again after %.1fs", where, time.monotonic() - down_since)
            down, delay = False, 0.5


async def run_worker(settings: Settings) -> signal.Signals | None:
    """`fetchfleet worker`: build the arq Worker inside the running loop and run it until stopped;
    returns the signal that stopped it."""
    hooks = WorkerHooks(settings)
    cls = build_worker_settings(settings, hooks)
    kwargs = {k: v for k, v in vars(cls).items() if not k.startswith("__")}
    del kwargs["redis_settings"]
    # Our own pool: reconnect with backoff, password and CA file from the settings; never arq's
    # create_pool, whose retry messages print connection details.
    pool = kwargs["redis_pool"] = arq_pool(settings)
    kwargs["handle_signals"] = False  # the Stopper's
    # The claim itself is a lease from the first moment (claim.lua); on_job_start has it renewed.
    worker = FleetWorker(lease_seconds=settings.lease_seconds, **kwargs)
    worker.ctx["poll_due"] = worker.poll_due  # read by /healthz
    stopper = Stopper(worker, settings.drain_grace)
    stopper.install()
    async with contextlib.AsyncExitStack() as stack:
        # Closed in reverse, each once, however the run ends: arq's close (it waits for its tasks,
        # deletes its health key, runs on_shutdown and closes the pool); when Redis refused that
        # half-way, the components (on_shutdown is a no-op once it ran) and the pool all the same.
        stack.push_async_callback(pool.aclose, close_connection_pool=True)
        stack.push_async_callback(hooks.on_shutdown, cast("WorkerCtx", worker.ctx))
        stack.push_async_callback(_close_arq, worker, settings)
        await supervise(worker, settings, stopper)
    return stopper.signal


async def _close_arq(worker: FleetWorker, settings: Settings) -> None:
    try:
        await worker.close()
    except REDIS_ERRORS as exc:
        log.warning("while stopping: %s", describe(exc, redact(settings.redis_url)))
