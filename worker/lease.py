"""Short, renewed leases on the chunks a worker runs, so a killed worker's chunks run again within seconds."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Self

from redis.asyncio import Redis

from worker.background import start_loop, stop_loop
from worker.rediserrors import RedisProblem, classify, describe

log = logging.getLogger("fetchfleet.lease")


class Leases:
    """The claim keys this process holds, kept alive by renewing them every third of the lease.

    The queue marks a running chunk with a claim key whose expiry is when another worker may run it
    again. Held for the whole job timeout, a SIGKILLed worker's chunks would wait minutes; held for a
    short lease that only a living process renews, they wait at most `lease_s`.
    """

    def __init__(self, redis: Redis, key_prefix: str, lease_s: float) -> None:
        self._redis = redis
        self._prefix = key_prefix
        self.lease_ms = int(lease_s * 1000)
        self.held: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._failing_since: float | None = None

    @property
    def interval(self) -> float:
        return self.lease_ms / 3000

    def track(self, job_id: str) -> None:
        """Track a job claimed for one lease already (claim.lua): renewed from now on."""
        self.held.add(job_id)

    def release(self, job_id: str) -> None:
        self.held.discard(job_id)

    async def renew(self) -> None:
        """Renew every held lease in one round trip.

        PEXPIRE first: it is not refused by a full Redis (it adds nothing), so a chunk waiting for room
        keeps its claim however long Redis stays full. Then SET for any claim that expired while Redis
        was away longer than a lease (or restarted without it): it is taken back, so other workers do
        not start a second run of a chunk still running.
        """
        held = list(self.held)
        if not held:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id in held:
                pipe.pexpire(self._prefix + job_id, self.lease_ms)
            renewed = await pipe.execute()
        lost = [job_id for job_id, ok in zip(held, renewed, strict=True) if not ok]
        if lost:
            async with self._redis.pipeline(transaction=False) as pipe:
                for job_id in lost:
                    pipe.set(self._prefix + job_id, b"1", px=self.lease_ms)
                await pipe.execute()

    def start(self) -> None:
        self._task = start_loop(self._task, self._run, "fetchfleet-leases")

    async def close(self) -> None:
        await stop_loop(self._task)
        self._task = None

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.renew()
            except Exception as exc:
                # One warning per outage; the chunks keep running and recording retries by itself.
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                    # An unreachable Redis is announced once by the poll loop; other problems here.
                    unreachable = classify(exc) is RedisProblem.UNREACHABLE
                    level = logging.DEBUG if unreachable else logging.WARNING
                    log.log(level, "renewing %d leases failed (%s); retrying", len(self.held), describe(exc))
                continue
            if self._failing_since is not None:
                log.debug("leases renewed again after %.1fs", time.monotonic() - self._failing_since)
                self._failing_since = None
