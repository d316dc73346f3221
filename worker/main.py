"""Starting a worker process: logging, the event loop, and a clean message for a bad setting.

The worker's entry point for both commands, `python -m worker` (what `fetchfleet worker` becomes) and
`arq worker.WorkerSettings`: it loads arq's worker, aiohttp and the fetcher, so nothing on the producer
side imports it.

arq 0.28's command line always builds arq's own `Worker` (`create_worker` is `Worker(**kwargs)`; no
setting names a class). Under `arq worker.WorkerSettings` that worker only hosts: its `on_startup` runs
the runner `fetchfleet worker` runs (`run_worker`: FleetWorker, claim.lua, the draining SIGTERM, hand-back,
restarts after a Redis outage) until it stops, then ends the process with its exit code, so arq's own
poll loop never starts. One code path for both commands, and no arq attribute patched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from typing import Any

from worker.engine import arq_pool, build_worker_settings, run_worker
from worker.errors import SettingsError, UnsafeRedis
from worker.logs import setup_logging
from worker.loop import install_event_loop
from worker.rediserrors import REDIS_ERRORS
from worker.settings import Settings, load_settings


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Text or JSON lines on stderr (FETCHFLEET_LOG_FORMAT), credentials masked (worker.logs)."""
    setup_logging(level, fmt)


def serve(settings: Settings | None = None) -> int:
    """Run one worker until SIGTERM or SIGINT; returns the process exit code."""
    try:
        settings = settings or load_settings()
    except SettingsError as exc:
        print(f"fetchfleet: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    install_event_loop()
    try:
        return asyncio.run(serve_async(settings))
    except KeyboardInterrupt:  # Ctrl-C before the worker's own handler was installed
        return 130


async def serve_async(settings: Settings) -> int:
    """Run one worker in the running loop until SIGTERM or SIGINT; returns the process exit code."""
    try:
        stopped_by = await run_worker(settings)
    except SettingsError as exc:  # one found only at start-up, e.g. FETCHFLEET_METRICS_PORT taken
        print(f"fetchfleet: {exc}", file=sys.stderr)
        return 2
    except UnsafeRedis as exc:  # an evicting maxmemory-policy, found once Redis answered
        print(f"fetchfleet: {exc}", file=sys.stderr)
        return 1
    # Ctrl-C (SIGINT) is an interruption, 130 as for every command; SIGTERM is the normal way to stop a
    # worker (Docker, Kubernetes, `fetchfleet run`) and drains: 0.
    return 130 if stopped_by == signal.SIGINT else 0


CLOSE_HOST_POOL_S = 1.0


class ArqCommandHost:
    """`on_startup` of the arq Worker that `arq worker.WorkerSettings` builds: run our worker inside it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def on_startup(self, ctx: dict[str, Any]) -> None:
        # arq's command line has just applied its own logging config: ours again, as `python -m worker`.
        configure_logging(self.settings.log_level, self.settings.log_format)
        code = await serve_async(self.settings)
        # Our worker has stopped and closed everything it opened. The process ends here, before arq's
        # poll loop, with the code `fetchfleet worker` gives (130 after Ctrl-C). Not by raising: arq's
        # run() would then close its own worker, whose first step is a Redis command (deleting its health
        # key) that ends in a traceback when the stop came during an outage. Its pool is closed here.
        with contextlib.suppress(*REDIS_ERRORS, TimeoutError):
            await asyncio.wait_for(ctx["redis"].aclose(close_connection_pool=True), CLOSE_HOST_POOL_S)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def arq_command_settings(settings: Settings) -> type:
    """The class `arq worker.WorkerSettings` reads (only its own attributes count).

    The task, queue and Redis settings are the real ones, so `arq --check` reads the same health key
    and arq's worker passes its own checks; the hooks are replaced by the host, which starts everything.
    """
    attrs = {k: v for k, v in vars(build_worker_settings(settings)).items() if not k.startswith("__")}
    attrs.update(
        # arq's worker asks Redis for its INFO before on_startup: through our own client, so it meets
        # the same TLS, Sentinel, password and CA file settings, and arq's create_pool (whose retry
        # lines print connection details) is never used. (`arq --check` reads redis_settings.)
        redis_pool=arq_pool(settings),
        on_startup=ArqCommandHost(settings).on_startup,
        on_shutdown=None,
        on_job_start=None,
        on_job_end=None,
    )
    return type("WorkerSettings", (), attrs)


if __name__ == "__main__":
    raise SystemExit(serve())
