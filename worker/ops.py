"""Starting and stopping a worker's operations side: monitor (heartbeat, health) and metrics server."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from worker.chunks import Runtime
from worker.monitor import Monitor, Probes
from worker.opsserver import OpsServer
from worker.politeness import PolitenessCounters


@dataclass
class Ops:
    monitor: Monitor
    server: OpsServer | None

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()
        await self.monitor.close()


async def start_ops(rt: Runtime, poll_due: Callable[[], float | None] | None = None) -> Ops:
    """Heartbeat always (for `fetchfleet stats`); /metrics and /healthz if FETCHFLEET_METRICS_PORT is set."""
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
    monitor = Monitor(s, rt.worker_id, rt.metrics, probes)
    server = OpsServer(monitor, s.metrics_host, s.metrics_port) if s.metrics_port else None
    if server is not None:
        try:
            await server.start()
        except BaseException:
            await server.close()
            await monitor.close()
            raise
    monitor.start()
    return Ops(monitor, server)
