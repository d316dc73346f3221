"""Starting a worker process: logging, the event loop, and a clean message for a bad setting.

The worker's entry point (`python -m worker`, and `fetchfleet worker`, which becomes this process): it
loads arq's worker, aiohttp and the fetcher, so nothing on the producer side imports it.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from worker.engine import run_worker
from worker.errors import SettingsError, UnsafeRedis
from worker.logs import setup_logging
from worker.loop import install_event_loop
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
        stopped_by = asyncio.run(run_worker(settings))
    except KeyboardInterrupt:
        return 130
    except SettingsError as exc:  # one found only at start-up, e.g. FETCHFLEET_METRICS_PORT taken
        print(f"fetchfleet: {exc}", file=sys.stderr)
        return 2
    except UnsafeRedis as exc:  # an evicting maxmemory-policy, found once Redis answered
        print(f"fetchfleet: {exc}", file=sys.stderr)
        return 1
    # Ctrl-C (SIGINT) is an interruption, 130 as for every command; SIGTERM is the normal way to stop a
    # worker (Docker, Kubernetes, `fetchfleet run`) and drains: 0.
    return 130 if stopped_by == signal.SIGINT else 0


if __name__ == "__main__":
    raise SystemExit(serve())
