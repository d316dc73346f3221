"""fetchfleet's worker side: the job contract, the settings and the fetcher.

`arq worker.WorkerSettings` starts a worker. WorkerSettings is built on first access, so importing the
contract or the settings (as the producer does) reads no settings and loads neither arq nor aiohttp.
"""

from __future__ import annotations

import sys
from typing import Any

from worker.errors import SettingsError
from worker.settings import get_settings

__all__ = ["WorkerSettings"]


def __getattr__(name: str) -> Any:
    if name == "WorkerSettings":
        # The one function-level import left (tests/test_import_graph.py): the producer imports this
        # package for the contract and settings, and must not load arq's worker or aiohttp.
        from worker.main import arq_command_settings

        try:
            settings = get_settings()
        except SettingsError as exc:
            print(f"fetchfleet: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        cls = arq_command_settings(settings)
        globals()["WorkerSettings"] = cls
        return cls
    raise AttributeError(f"module 'worker' has no attribute {name!r}")
