"""Starting a worker process: logging, the event loop, and a clean message for a bad setting."""

from __future__ import annotations

import asyncio
import logging
import sys

from worker.errors import SettingsError
from worker.settings import Settings, load_settings


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # arq logs every job's arguments, which are URLs that may carry credentials: keep it to warnings.
    logging.getLogger("arq").setLevel(logging.WARNING)


def install_event_loop() -> None:
    try:
        import uvloop
    except ImportError:  # uvloop is optional where it cannot build
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def serve(settings: Settings | None = None) -> int:
    """Run one worker until SIGTERM or SIGINT; returns the process exit code."""
    try:
        settings = settings or load_settings()
    except SettingsError as exc:
        print(f"fetchfleet: {exc}", file=sys.stderr)
        return 2
    configure_logging()
    install_event_loop()
    from worker.engine import run_worker

    try:
        asyncio.run(run_worker(settings))
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    raise SystemExit(serve())
