"""One typed bridge over redis-py's command typing.

redis-py types every command as `Awaitable[X] | X` because one class serves the sync and the asyncio
clients. On `redis.asyncio` clients the result is always awaitable; `awaited` says so once, here, so
callers keep a precise `X` instead of sprinkling casts or ignores.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar, cast

T = TypeVar("T")


def awaited(result: Awaitable[T] | T) -> Awaitable[T]:
    """`result` of an asyncio redis command, typed as the awaitable it is."""
    return cast("Awaitable[T]", result)
