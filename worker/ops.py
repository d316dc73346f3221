"""A worker's operations side as one component: monitor (heartbeat, health) and metrics server."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Self

from worker.chunks import Runtime
from worker.monitor import Monitor, Probes
from worker.opsserver import OpsServer
from worker.politeness import PolitenessCounters


class Ops:
    """Heartbeat always (for `fetchfleet stats`); /metrics and /healthz if FETCHFLEET_METRICS_PORT is set.

    Entered, the heartbeat runs and the port serves; a port that cannot be bound fails the entry
    (SettingsError) with the heartbeat stopped again and its Redis client closed."""

    def __init__(self, rt: Runtime, poll_due: Callable[[], float | None] | None = None) -> None:
        s = rt.settings
        limiter = rt.polite.limiter if rt.polite is not None else rt.host_limiter
        if rt.polite is not None:
            rt.metrics.registry.register(PolitenessCounters(rt.polite))
        rt.metrics.bind(
            rt.worker_id,
            lambda: rt.in_flight,
            rt.recorder.stalled_for,
            lambda: limiter.waits if limiter is not None else 0,
        )
        probes = Probes(
            in_flight=lambda: rt.in_flight,
            fetches=lambda: rt.fetches,
            recorder_stalled=rt.recorder.stalled_for,
            poll_due=poll_due or (lambda: None),
            redis_full=lambda: rt.recorder.pressure.describe() if rt.recorder.pressure.full else None,
        )
        self.monitor = Monitor(s, rt.worker_id, rt.metrics, probes)
        self.server = OpsServer(self.monitor, s.metrics_host, s.metrics_port) if s.metrics_port else None
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> Self:
        async with AsyncExitStack() as stack:
            # The monitor's Redis client exists from its construction: closed on every way out.
            await stack.enter_async_context(self.monitor)
            if self.server is not None:
                await stack.enter_async_context(self.server)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()
