"""The worker's small HTTP server: /metrics for Prometheus and /healthz for Docker and Kubernetes."""

from __future__ import annotations

import logging

import orjson
from aiohttp import web

from worker.errors import SettingsError
from worker.metrics import CONTENT_TYPE
from worker.monitor import Monitor

log = logging.getLogger("fetchfleet.ops")


def make_app(monitor: Monitor) -> web.Application:
    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(body=monitor.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def healthz(_request: web.Request) -> web.Response:
        health = await monitor.health()
        return web.Response(
            body=orjson.dumps(health.as_dict()),
            status=200 if health.ok else 503,
            content_type="application/json",
        )

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    return app


class OpsServer:
    def __init__(self, monitor: Monitor, host: str, port: int) -> None:
        self._runner = web.AppRunner(make_app(monitor), access_log=None, handle_signals=False)
        self.host, self.port = host, port

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            # Fail the start-up, clearly: a worker nobody can probe would be restarted as unhealthy.
            # (A SettingsError, not an OSError, which the engine would take for Redis being away.)
            raise SettingsError(
                f"FETCHFLEET_METRICS_PORT: cannot serve /metrics on {self.host}:{self.port}: {exc.strerror}"
            ) from None
        log.info("metrics and health on http://%s:%d/metrics and /healthz", self.host, self.port)

    async def close(self) -> None:
        await self._runner.cleanup()
