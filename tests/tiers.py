"""The fast tier's promise kept: a test not marked `slow` fails if it starts a process.

`pytest -m "not slow"` is the developer's one-minute answer; one unmarked test that spawns workers
puts minutes back into it. Session fixtures (the private redis-server, the HTTP target) are the
exception: they start once per run, whatever the tier. Detection uses Python's audit events, so it
sees `subprocess`, `asyncio`'s subprocesses and `multiprocessing` alike without patching them.
"""

from __future__ import annotations

import sys
from collections.abc import Generator
from typing import Any

import pytest

# The audit events that start a process (docs.python.org/3/library/audit_events.html).
_SPAWNS = frozenset(
    {"subprocess.Popen", "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.exec", "os.system"}
)


class _Watch:
    """What the running unmarked test has started; `None` while nothing is watched."""

    seen: list[str] | None = None
    fixture_scopes: list[str] = []  # the fixtures being set up now, innermost last


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event not in _SPAWNS or _Watch.seen is None:
        return  # every audited call (open, import, ...) passes here: return at once
    if _Watch.fixture_scopes and _Watch.fixture_scopes[-1] == "session":
        return
    what = args[1] if event == "subprocess.Popen" else args[:2]
    _Watch.seen.append(f"{event} {what!r}"[:200])


sys.addaudithook(_audit)  # hooks cannot be removed; `_Watch.seen is None` turns it off


def _watched(item: pytest.Item) -> bool:
    return item.get_closest_marker("slow") is None


def _check(item: pytest.Item) -> None:
    seen, _Watch.seen = _Watch.seen, None
    if seen:
        pytest.fail(
            f"{item.nodeid} starts a process but is not marked slow; mark it "
            f"@pytest.mark.slow, or drive the code in-process: {seen[0]}",
            pytrace=False,
        )


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef[Any]) -> Generator[None, Any, Any]:
    _Watch.fixture_scopes.append(fixturedef.scope)
    try:
        return (yield)
    finally:
        _Watch.fixture_scopes.pop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    _Watch.seen = [] if _watched(item) else None
    try:
        result = yield
    except BaseException:
        _Watch.seen = None
        raise
    _check(item)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    _Watch.seen = [] if _watched(item) else None
    try:
        result = yield
    except BaseException:
        _Watch.seen = None  # the test's own failure says more than ours would
        raise
    _check(item)
    return result
