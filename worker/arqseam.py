"""arq behind one seam: `FleetWorker`, arq's Worker subclassed with overridden methods.

Claims through worker/claim.lua, survives a full Redis, blocks idle on the wake list, and repairs its
job accounting after its poll loop died. No other module touches arq's private attributes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from importlib.resources import files
from typing import Any

from arq.utils import timestamp_ms
from arq.worker import Worker
from redis.commands.core import AsyncScript

from worker.awaited import awaited
from worker.chunks import Runtime
from worker.claimsize import ClaimSizer
from worker.contract import wake_key
from worker.enqueue import IN_PROGRESS_KEY_PREFIX, JOB_KEY_PREFIX, RETRY_KEY_PREFIX
from worker.rediserrors import REDIS_ERRORS, RedisProblem, classify, describe

log = logging.getLogger("fetchfleet.worker")

# Results waiting this long without the recorder making progress: claim nothing more for now.
STALLED_NO_CLAIM_S = 1.0
# An idle worker's longest wait on the wake list (FleetWorker.wait_for_work): how late, at most, an idle
# worker takes over a chunk whose claim lapsed after its lease (its worker died; nobody announces
# that). Each wait costs two commands (a read of the queue's first entry and the BLPOP): 0.5/s at the
# default 4 s, of the <= 1 a second an idle worker may cost (issue 16). Busy workers poll every
# poll_delay anyway. The wait stays WAKE_MARGIN_S inside the connection's FETCHFLEET_REDIS_SOCKET_TIMEOUT
# (5 s by default), whose timer would otherwise cut the BLPOP as a lost connection.
WAKE_CAP_S = 4.0
WAKE_MARGIN_S = 1.0
WAKE_MIN_S = 0.01  # a shorter wait is not worth a round trip: poll again

CLAIM_LUA = files("worker").joinpath("claim.lua").read_text()


class FleetWorker(Worker):
    """arq's Worker, surviving a full Redis: a refused write there must not end the poll loop.

    Idle, it blocks on the wake list instead of polling every poll_delay (~100 commands/s a worker):
    a submit or a retry pushes a token and the worker claims at once, through the claim script still.

    Every claim is made by worker/claim.lua, its size set by free fetch slots (worker/claimsize.py);
    the claim is a lease of `lease_seconds` from its first moment (on_job_start renews it).
    This is the only module that touches arq's internals (`_poll_iteration`, `_last_health_check`,
    `_release_sem_dec_counter_on_complete`); none of them is assigned.
    """

    def __init__(self, *, lease_seconds: float, **kwargs: Any) -> None:
        # The claim script scans the queue itself: arq's poll only needs to see that one job is due.
        kwargs["queue_read_limit"] = 1
        super().__init__(**kwargs)
        self.in_progress_timeout_s = lease_seconds
        self.claim_script: AsyncScript | None = None
        self.sizer: ClaimSizer | None = None
        # When a wake-up last claimed (loop time): arq's loop polls again at once after an iteration
        # that blocked longer than poll_delay, which would send a second claim right behind the first.
        self.woke_at: float | None = None
        # The score claim.lua gave each running chunk (the end of its first lease) less the score it
        # had: what finish_job takes off again when the chunk goes back to the queue.
        self.score_moved: dict[str, int] = {}

    def wake_cap_s(self) -> float:
        """The longest wait on the wake list: WAKE_CAP_S, inside the connection's socket timeout."""
        timeout = self.pool.connection_pool.connection_kwargs.get("socket_timeout")
        return WAKE_CAP_S if not timeout else min(WAKE_CAP_S, float(timeout) - WAKE_MARGIN_S)

    def poll_due(self) -> float | None:
        """When arq's poll loop is due to renew its health stamp (renewed from inside the loop)."""
        stamp = self._last_health_check  # 0 until the first poll
        return stamp + self.health_check_interval if stamp else None

    def stop_claiming(self) -> None:
        """Claim no more chunks (a drain); running ones carry on."""
        self.allow_pick_jobs = False

    def release_slot(self, _task: asyncio.Task[Any]) -> None:
        # arq's own accounting, as its start_jobs keeps it: one semaphore slot and one count per task
        self._release_sem_dec_counter_on_complete()

    async def _poll_iteration(self) -> None:
        if self.woke_at is not None:
            # The poll after a wake-up comes poll_delay after it, as arq's own cadence would have it:
            # at once, it would run the claim script again in the middle of the first chunk's start.
            wait = self.woke_at + self.poll_delay_s - asyncio.get_running_loop().time()
            self.woke_at = None
            if wait > 0:
                await asyncio.sleep(wait)
        if self.job_counter and self.allow_pick_jobs and self.claim_room() <= 0:
            # Slots full for the claim's horizon: no claim would be made, so arq's queue read is
            # skipped too (with many chunks held, a busy worker read it every poll_delay for nothing).
            await self.tidy()
            return
        await super()._poll_iteration()
        # Nothing running and nothing claimed: wait for work on Redis, then claim at once (not
        # poll_delay later, which would be most of a one-URL batch's latency).
        while self.allow_pick_jobs and self.job_counter == 0 and not self.burst:
            if await self.wait_for_work():
                # Straight to the claim script, which reads the queue itself: arq's poll would read it
                # first, one round trip more between the wake-up and the claim (issue 16, pickup).
                await self.claim()
                self.woke_at = asyncio.get_running_loop().time()
            else:
                await self.heart_beat()  # arq's health record (once a minute), as its poll does

    async def tidy(self) -> None:
        """What arq's poll does besides claiming: forget finished tasks (raising what one raised, as
        arq does) and renew its health record."""
        for job_id, t in list(self.tasks.items()):
            if t.done():
                del self.tasks[job_id]
                t.result()
        await self.heart_beat()

    def claim_room(self) -> int:
        """Chunks a claim may take now: free places under max_jobs, sized by free fetch slots; none
        while results wait for Redis (a new chunk would only add to them)."""
        free = self.max_jobs - self.job_counter
        rt: Runtime | None = self.ctx.get("runtime")
        if rt is None or free <= 0:
            return free
        if rt.recorder.pressure.full or rt.recorder.stalled_for() > STALLED_NO_CLAIM_S:
            return 0
        if self.sizer is None:
            self.sizer = ClaimSizer(rt.settings.concurrency, rt.settings.chunk_size)
        sized = self.sizer.chunks(
            now=time.monotonic(),
            fetches=rt.fetches,
            in_flight=rt.in_flight,
            waiting=rt.waiting,
            reserved=sum(rt.reserved.values()),
        )
        return min(free, sized)

    async def wait_for_work(self) -> bool:
        """Block until a wake token arrives, the next deferred chunk falls due, or wake_cap_s passes;
        returns whether a poll may find a chunk to claim.

        One read before blocking, the queue's first entry: an empty queue with no token within the cap
        has nothing to claim, so an idle worker costs that read and the BLPOP per cap. A running chunk
        is scored at the end of its first lease (claim.lua), so it reads as deferred until then: a
        worker that died leaves its chunk to be tried when that lease would have ended. A chunk due
        already (running longer than a lease on another worker, or its claim lapsed) is tried again
        after the cap; then a second read finds when the next deferred chunk falls due.
        """
        now = timestamp_ms()
        first = await self.pool.zrange(self.queue_name, 0, 0, withscores=True)
        if first and float(first[0][1]) <= now:
            first = await self.pool.zrangebyscore(
                self.queue_name, f"({now}", "+inf", start=0, num=1, withscores=True
            )
            queued = True
        else:
            queued = bool(first)
        wait = self.wake_cap_s()
        if first:
            wait = min(wait, (float(first[0][1]) - now) / 1000)
        if wait < WAKE_MIN_S:
            return True
        # BLPOP takes fractional seconds; redis-py's stub says int
        token = await awaited(self.pool.blpop([wake_key(self.queue_name)], timeout=wait))  # type: ignore[arg-type]
        return token is not None or queued

    async def run_job(self, job_id: str, score: int) -> None:
        ran = self.jobs_complete + self.jobs_failed + self.jobs_retried
        try:
            await super().run_job(job_id, score)
        except REDIS_ERRORS as exc:
            # arq's start (GET, INCR) or finish transaction met a full, unreachable or otherwise
            # refusing Redis: no try was counted (or the run is over), and the job is still queued. The
            # claim's lease runs out and the chunk runs again after it (what it recorded is skipped).
            # Raised on, it would end this task with an exception nobody retrieves (a traceback in
            # the log of a worker whose Redis restarted mid-batch).
            problem = classify(exc)
            stage = "end" if self.jobs_complete + self.jobs_failed + self.jobs_retried > ran else "start"
            # Unreachable: the poll loop announces the outage once; a line per chunk would flood.
            level = logging.DEBUG if problem is RedisProblem.UNREACHABLE else logging.WARNING
            log.log(
                level, "chunk %s: %s at its %s; it runs again after its lease", job_id, describe(exc), stage
            )
            rt: Runtime | None = self.ctx.get("runtime")
            if rt is not None and problem is RedisProblem.FULL:
                rt.recorder.pressure.full_now()
        finally:
            self.score_moved.pop(job_id, None)
            rt = self.ctx.get("runtime")
            if rt is not None:
                rt.reserved.pop(job_id, None)

    async def finish_job(
        self,
        job_id: str,
        finish: bool,
        result_data: bytes | None,
        result_timeout_s: float | None,
        keep_result_forever: bool,
        incr_score: int | None,
        keep_in_progress: float | None,
    ) -> None:
        if not finish:
            # Run again: arq adds incr_score to the score the chunk had when claimed (none: due at once),
            # but claim.lua moved it on to its lease's end; the move is taken off here.
            incr_score = (incr_score or 0) - self.score_moved.pop(job_id, 0) or None
        try:
            await super().finish_job(
                job_id,
                finish,
                result_data,
                result_timeout_s,
                keep_result_forever,
                incr_score,
                keep_in_progress,
            )
        except REDIS_ERRORS as exc:
            if classify(exc) is not RedisProblem.FULL:
                raise
            # A full Redis refuses every command queued in a MULTI, even DEL and ZREM; left there, a
            # finished chunk would stay queued and run a second time. Outside a transaction those run.
            # (A deferral is a ZINCRBY, which it refuses anyway: the chunk then runs again when the
            # lease claim.lua scored it with would have ended.)
            await self._finish_without_transaction(job_id, finish)

    async def finish_failed_job(self, job_id: str, result_data: bytes | None) -> None:
        try:
            await super().finish_failed_job(job_id, result_data)
        except REDIS_ERRORS as exc:
            if classify(exc) is not RedisProblem.FULL:
                raise
            await self._finish_without_transaction(job_id, True)

    async def _finish_without_transaction(self, job_id: str, finish: bool) -> None:
        # Off the queue first: a worker dying between the two leaves a job key to expire, never a
        # queued id without its job.
        async with self.pool.pipeline(transaction=False) as pipe:
            if finish:
                pipe.zrem(self.queue_name, job_id)
                pipe.delete(RETRY_KEY_PREFIX + job_id, JOB_KEY_PREFIX + job_id)
            pipe.delete(IN_PROGRESS_KEY_PREFIX + job_id)
            await pipe.execute()

    async def record_health(self) -> None:
        # arq's shared health-check key (a write): skipped while Redis is full, /healthz tells instead.
        try:
            await super().record_health()
        except REDIS_ERRORS as exc:
            if classify(exc) is not RedisProblem.FULL:
                raise

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """arq's start_jobs, with every claim of a poll made by one script (worker/claim.lua).

        arq claims one job at a time in four round trips (WATCH, EXISTS, ZSCORE, MULTI/EXEC), and pays
        them again for every job it finds running on another worker: per chunk of 100 URLs that was ~11 us
        a URL of a worker's CPU (ops/bench). The script scans the queue itself, so arq's poll only needs
        to see that one job is due (queue_read_limit 1). Never waits for a slot: the next poll, poll_delay
        later, claims again.

        Never claims a chunk this worker runs already: if its claim lapsed (Redis away longer than a
        lease), a second run in the same process would share one entry in arq's task table (a KeyError at
        the end).
        """
        if job_ids:
            await self.claim()

    async def claim(self) -> None:
        """One claim by worker/claim.lua, as many chunks as `claim_room` allows; each started as arq's
        start_jobs starts a job."""
        free = self.claim_room()
        if free <= 0:
            return
        rt: Runtime | None = self.ctx.get("runtime")
        running = self.tasks
        lease_ms = int(self.in_progress_timeout_s * 1000)
        # The ids this worker runs are not passed to the script (claim.lua could skip them): a worker
        # holds up to chunks_held of them, and packing them at every claim cost a slow worker more
        # than its claims. Only a claim that lapsed while it ran (Redis away longer than a lease) can
        # come back here; it is skipped below, its key set anew, which the lease renewal would do too.
        now = timestamp_ms()
        args: list[int | str] = [now, lease_ms, free, IN_PROGRESS_KEY_PREFIX]
        try:
            if self.claim_script is None:
                self.claim_script = self.pool.register_script(CLAIM_LUA)
            claimed = await self.claim_script(keys=[self.queue_name], args=args)
        except REDIS_ERRORS as exc:
            if classify(exc) is not RedisProblem.FULL or rt is None:
                raise
            rt.recorder.pressure.full_now()  # the claim's first write was refused: nothing claimed
            return
        for i in range(0, len(claimed), 2):
            job_id, score = claimed[i].decode(), int(float(claimed[i + 1]))
            if job_id in running and not running[job_id].done():
                continue  # runs here already: a second run would share its entry in arq's task table
            self.score_moved[job_id] = now + lease_ms - score  # claim.lua's ZADD
            if rt is not None:
                rt.reserved[job_id] = rt.settings.chunk_size
            # arq's own accounting, as its start_jobs keeps it: one semaphore slot and one count per task
            await self.sem.acquire()
            self.job_counter += 1
            t = asyncio.get_running_loop().create_task(self.run_job(job_id, score))
            t.add_done_callback(self.release_slot)
            running[job_id] = t

    async def repair_after_crash(self) -> None:
        """Make arq's job accounting true again after its poll loop died mid-claim.

        `start_jobs` takes a semaphore slot and bumps `job_counter` before its Redis calls and gives neither
        back when one raises; after a few outages the worker would hold no free slot. Running chunks keep
        running (they are separate tasks) and release the fresh semaphore when they end.
        """
        for job_id, t in list(self.tasks.items()):
            if t.done():
                del self.tasks[job_id]
                if not t.cancelled() and t.exception() is not None:
                    log.debug("job %s ended with %r", job_id, t.exception())
        self.job_counter = len(self.tasks)
        self.sem = asyncio.BoundedSemaphore(self.max_jobs + 1)
        for _ in self.tasks:
            await self.sem.acquire()
