"""What a Redis error means for fetchfleet: one classification that every caller handles by kind.

Only an unreachable Redis is an outage to wait out by reconnecting. A full Redis (OOM) is waited out
too, but by backing off without reconnecting, and it never costs a URL's attempts or a chunk's tries.
The rest (read-only replica, wrong key type, missing script, refused auth, anything else) are reported
as what they are, never as "Redis unreachable".
"""

from __future__ import annotations

from enum import Enum

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
        text = str(exc)
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
