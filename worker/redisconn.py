"""Redis connections from settings: URL, password, TLS CA file, and reconnect-with-backoff."""

from __future__ import annotations

from typing import Any

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from worker.settings import Settings


def pool_kwargs(settings: Settings) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "retry": Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=5),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError, ConnectionResetError],
        # No health_check_interval: with it, redis-py 5.3 recurses forever (PING in on_connect, retried,
        # reconnecting, PING again) when the server refuses the connection's first command, e.g. NOAUTH.
        # A dead idle connection is caught by the retry on ConnectionError instead.
        "socket_connect_timeout": 5,
    }
    if not settings.redis_url.startswith("unix://"):  # a unix socket connection takes no TCP options
        kwargs["socket_keepalive"] = True
    if settings.redis_password is not None:
        kwargs["password"] = settings.redis_password.get_secret_value()
    if settings.redis_url.startswith("rediss://") and settings.redis_ca_file:
        kwargs["ssl_ca_certs"] = settings.redis_ca_file
    return kwargs


def make_pool(settings: Settings) -> ConnectionPool:
    return ConnectionPool.from_url(settings.redis_url, **pool_kwargs(settings))


def make_redis(settings: Settings) -> Redis:
    return Redis(connection_pool=make_pool(settings))


def redact(url: str) -> str:
    """The URL with any password replaced, for logs and messages."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return url
    creds, _, hostpart = rest.partition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user + ':' if user else ''}***@{hostpart}"
