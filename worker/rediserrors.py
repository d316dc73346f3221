"""What a Redis error means for fetchfleet: one classification that every caller handles by kind.

Only an unreachable Redis is an outage to wait out by reconnecting. A full Redis (OOM) is waited out
too, but by backing off without reconnecting, and it never costs a URL's attempts or a chunk's tries.
The rest (read-only replica, wrong key type, missing script, refused auth, anything else) are reported
as what they are, never as "Redis unreachable".
"""

from __future__ import annotations

import re
from enum import Enum

from redis.asyncio.sentinel import MasterNotFoundError
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from worker.redact import redact


class RedisProblem(str, Enum):
    UNREACHABLE = "unreachable"  # no connection, reset, timed out, still loading its data
    FULL = "full"  # OOM: maxmemory reached under noeviction
    READONLY = "readonly"  # a replica, e.g. mid-failover
    WRONG_TYPE = "wrong_type"  # a key holds another type than fetchfleet wrote there
    NO_SCRIPT = "no_script"
    AUTH = "auth"  # NOAUTH / WRONGPASS
    OTHER = "other"


# The one tuple of "Redis is unreachable" errors: reconnect with backoff and try again. AuthenticationError
# subclasses ConnectionError in redis-py but waiting does not fix a wrong password: classify() tells it apart.
REDIS_DOWN: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    OSError,
)

# Every error a Redis call can raise that fetchfleet handles by kind (classify() says which).
REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, ConnectionError, OSError)


def classify(exc: BaseException) -> RedisProblem:
    """The kind of a Redis error, most specific first."""
    if isinstance(exc, AuthenticationError):
        return RedisProblem.AUTH
    if isinstance(exc, MasterNotFoundError) and "AuthenticationError" in str(exc):
        return RedisProblem.AUTH  # a sentinel refused our password (redis-py puts its errors in the text)
    if isinstance(exc, BusyLoadingError):
        return RedisProblem.UNREACHABLE
    if isinstance(exc, OutOfMemoryError):  # redis-py's own class for an OOM reply
        return RedisProblem.FULL
    if isinstance(exc, ReadOnlyError):
        return RedisProblem.READONLY
    if isinstance(exc, NoScriptError):
        return RedisProblem.NO_SCRIPT
    if isinstance(exc, REDIS_DOWN):
        return RedisProblem.UNREACHABLE
    if isinstance(exc, ResponseError):
        return _reply_problem(str(exc))
    return RedisProblem.OTHER


def _reply_problem(text: str) -> RedisProblem:
    """The kind of an error reply redis-py has no class for, read from the server's words."""
    if text.startswith("OOM") or "OOM command not allowed" in text:
        return RedisProblem.FULL
    if text.startswith("WRONGTYPE") or "WRONGTYPE" in text:
        return RedisProblem.WRONG_TYPE
    if text.startswith("READONLY") or "READONLY" in text:
        return RedisProblem.READONLY
    if text.startswith(("NOAUTH", "WRONGPASS")):
        return RedisProblem.AUTH
    if text.startswith("NOSCRIPT"):
        return RedisProblem.NO_SCRIPT
    return RedisProblem.OTHER


def is_transient(exc: BaseException) -> bool:
    """Worth waiting out (reconnect or back off) rather than failing: unreachable or full."""
    return classify(exc) in (RedisProblem.UNREACHABLE, RedisProblem.FULL)


# redis-py rewrites a pipeline's error as "Command # N (SET key <job payload>) of pipeline caused error:
# ...": the arguments are job payloads, URLs with their passwords. Only the server's own words are kept.
_PIPELINE_PREFIX = re.compile(r"^Command # \d+ \(.*\) of pipeline caused error: ", re.DOTALL)
MAX_MESSAGE = 200

WHAT = {
    RedisProblem.UNREACHABLE: "cannot reach Redis at {where}",
    RedisProblem.FULL: "Redis at {where} is full (maxmemory reached, OOM)",
    RedisProblem.READONLY: "Redis at {where} is a read-only replica (READONLY): point FETCHFLEET_REDIS_URL "
    "at the primary",
    RedisProblem.WRONG_TYPE: "Redis at {where} holds a key of another type where fetchfleet expects its "
    "own (WRONGTYPE): something else wrote to fetchfleet's keys",
    RedisProblem.NO_SCRIPT: "Redis at {where} lost a script fetchfleet loaded (NOSCRIPT)",
    RedisProblem.AUTH: "Redis at {where} refused the credentials (NOAUTH/WRONGPASS): check the password "
    "in FETCHFLEET_REDIS_URL or FETCHFLEET_REDIS_PASSWORD (a sentinel's own: "
    "FETCHFLEET_REDIS_SENTINEL_PASSWORD)",
    RedisProblem.OTHER: "Redis at {where} answered with an error",
}


_NO_MASTER = re.compile(r"No master found for '([^']*)'")


def server_message(exc: BaseException) -> str:
    """What the server (or the socket) said, on one line, without any command arguments, secrets masked."""
    text = _PIPELINE_PREFIX.sub("", str(exc)) or type(exc).__name__
    if isinstance(exc, MasterNotFoundError):
        # redis-py's text holds the repr of every sentinel client it asked; say what it means instead.
        found = _NO_MASTER.search(text)
        service = found.group(1) if found else "?"
        refused = "AuthenticationError" in text
        why = "a sentinel refused the credentials" if refused else "none answered with its address"
        text = f"no sentinel named the primary of {service!r}: {why}"
    text = " ".join(redact(text).split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def describe(exc: BaseException, where: str = "") -> str:
    """One line saying what kind of Redis problem `exc` is, for logs and CLI messages.

    `where` is the (already redacted) address. The server's words follow in parentheses, except for a
    full Redis: its message carries nothing more, and the command it refused may carry job payloads.
    """
    problem = classify(exc)
    head = WHAT[problem].format(where=where or "the configured address")
    if problem is RedisProblem.FULL:
        return head
    return f"{head} ({server_message(exc)})"
