"""Lines for the user on stderr that never change the outcome: a closed or broken stderr is ignored."""

from __future__ import annotations

import os
import sys


class _State:
    broken = False


def stderr_usable() -> bool:
    return not _State.broken and sys.stderr is not None


def say(message: str, prefix: str = "fetchfleet: ") -> None:
    """Print one message on stderr. A closed stderr (`2>&-`) or one whose reader went away must not turn
    an exit code into another (a BrokenPipeError here once made exit 2 into exit 0), nor reach stdout
    (print(file=None) would write to stdout, where the results go)."""
    if not stderr_usable():
        return
    try:
        print(f"{prefix}{message}", file=sys.stderr, flush=True)
    except (OSError, ValueError):  # EPIPE, EBADF, or a closed file object
        mute_stderr()


def mute_stderr() -> None:
    """Point fd 2 at /dev/null so that nothing later (the interpreter's exit flush, a library's warning)
    fails on it again."""
    _State.broken = True
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
    except OSError:
        pass
