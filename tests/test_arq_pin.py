"""The arq that is installed is the one worker/arqseam.py was written against (docs/arq-seam.md).

FleetWorker overrides arq's methods and reads some of its private attributes; a release that renames
one would break it quietly. The pin in pyproject.toml says which releases are supported; this checks
the installed arq is inside it and that every name FleetWorker relies on is there, with the signature
its overrides assume.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import tomllib
from pathlib import Path

import pytest
from arq.connections import RedisSettings
from arq.worker import Worker
from packaging.requirements import Requirement

from worker.arqseam import FleetWorker

ROOT = Path(__file__).resolve().parent.parent

# Methods FleetWorker overrides or calls (the private ones only from worker/arqseam.py).
METHODS = (
    "_poll_iteration",
    "_release_sem_dec_counter_on_complete",
    "start_jobs",
    "run_job",
    "finish_job",
    "finish_failed_job",
    "record_health",
    "async_run",
    "close",
)
# Attributes of a Worker instance it reads or keeps in step (arq's own job accounting).
ATTRIBUTES = (
    "_last_health_check",
    "health_check_interval",
    "allow_pick_jobs",
    "job_counter",
    "sem",
    "tasks",
    "max_jobs",
    "main_task",
    "in_progress_timeout_s",
    "burst",
    "ctx",
    "jobs_complete",
    "jobs_failed",
    "jobs_retried",
)


def arq_requirement() -> Requirement:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found = [Requirement(d) for d in project["dependencies"] if Requirement(d).name == "arq"]
    assert len(found) == 1, found
    return found[0]


def test_the_pin_has_an_upper_bound() -> None:
    """arq drives through private names: every release past the tested one must be tried first."""
    assert any(spec.operator == "<" for spec in arq_requirement().specifier)


def test_installed_arq_is_inside_the_pin() -> None:
    installed = importlib.metadata.version("arq")
    assert arq_requirement().specifier.contains(installed), (installed, str(arq_requirement()))


@pytest.mark.parametrize("name", METHODS)
def test_the_methods_fleetworker_overrides_exist_with_its_signature(name: str) -> None:
    theirs = getattr(Worker, name)
    assert inspect.iscoroutinefunction(theirs) or callable(theirs)
    ours = FleetWorker.__dict__.get(name)
    if ours is not None:  # an override: the same parameters, or arq calls it with other arguments
        assert list(inspect.signature(ours).parameters) == list(inspect.signature(theirs).parameters)


async def noop(ctx: dict[str, object]) -> None:
    return None


async def test_the_attributes_fleetworker_reads_exist() -> None:
    worker = Worker(functions=[noop], redis_settings=RedisSettings(), handle_signals=False)
    missing = [name for name in ATTRIBUTES if not hasattr(worker, name)]
    assert missing == []
