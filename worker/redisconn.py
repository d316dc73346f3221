"""Redis connections from settings: URL, password, TLS CA file, and reconnect-with-backoff."""

from __future__ import annotations

import logging
import socket
from typing import Any

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedSSLConnection
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from worker.errors import UnsafeRedis
from worker.redact import redact
from worker.settings import Settings, is_sentinel_url, parse_sentinel_url

__all__ = [
    "check_eviction_policy",
    "make_pool",
    "make_redis",
    "maxmemory_policy",
    "pool_kwargs",
    "redact",
]


def pool_kwargs(settings: Settings) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "retry": Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=5),
        # Not TimeoutError: a reply that did not come within the socket timeout has cost that long
        # already; retried five times, a silent network cut would go unnoticed for half a minute.
        "retry_on_error": [RedisConnectionError, ConnectionResetError],
        # No health_check_interval: with it, redis-py 5.3 recurses forever (PING in on_connect, retried,
        # reconnecting, PING again) when the server refuses the connection's first command, e.g. NOAUTH.
        # A dead idle connection is caught by the retry on ConnectionError instead.
        "socket_connect_timeout": 5,
        # No reply within this: the connection is taken for dead (TimeoutError, classified unreachable)
        # rather than waited on for ever behind a silent network cut.
        "socket_timeout": settings.redis_socket_timeout,
    }
    if not settings.redis_url.startswith("unix://"):  # a unix socket connection takes no TCP options
        kwargs["socket_keepalive"] = True
        kwargs["socket_keepalive_options"] = keepalive_options()
    if settings.redis_password is not None:
        kwargs["password"] = settings.redis_password.get_secret_value()
    if settings.redis_url.startswith("rediss://") and settings.redis_ca_file:
        kwargs["ssl_ca_certs"] = settings.redis_ca_file
    return kwargs


def keepalive_options() -> dict[int, int]:
    """Probe an idle connection after 10 s, every 5 s, 3 times: a dead peer is found in about 25 s
    even with nothing to send (the kernel default waits two hours)."""
    wanted = {"TCP_KEEPIDLE": 10, "TCP_KEEPINTVL": 5, "TCP_KEEPCNT": 3}
    return {getattr(socket, name): value for name, value in wanted.items() if hasattr(socket, name)}


def make_pool(settings: Settings, **extra: Any) -> ConnectionPool:
    if is_sentinel_url(settings.redis_url):
        return sentinel_pool(settings, **extra)
    return ConnectionPool.from_url(settings.redis_url, **pool_kwargs(settings), **extra)


class ClosingSentinelPool(SentinelConnectionPool):
    """A Sentinel-managed pool that also closes its connections to the sentinels when it is closed."""

    async def disconnect(self, inuse_connections: bool = True) -> None:
        await super().disconnect(inuse_connections)
        for sentinel in self.sentinel_manager.sentinels:
            await sentinel.aclose()


def sentinel_pool(settings: Settings, **extra: Any) -> ConnectionPool:
    """Connections to the current primary of a Sentinel-watched service: the pool asks the sentinels
    where it is for every new connection, and a demoted primary's READONLY reads as a lost connection,
    so a failover is an outage like any other (reconnect with backoff)."""
    target = parse_sentinel_url(settings.redis_url)
    kwargs = pool_kwargs(settings)
    sentinel_kwargs = {
        k: v for k, v in kwargs.items() if k.startswith("socket_") or k in ("retry", "retry_on_error")
    }
    kwargs.update(extra)
    if target.tls:  # both hops verified against the same CA file (or the system's)
        kwargs["connection_class"] = SentinelManagedSSLConnection
        sentinel_kwargs["ssl"] = True
        if settings.redis_ca_file:
            kwargs["ssl_ca_certs"] = sentinel_kwargs["ssl_ca_certs"] = settings.redis_ca_file
    if settings.redis_sentinel_password is not None:
        sentinel_kwargs["password"] = settings.redis_sentinel_password.get_secret_value()
    kwargs["db"] = target.db
    if target.username:
        kwargs["username"] = target.username
    if target.password is not None and "password" not in kwargs:
        kwargs["password"] = target.password
    # The sentinels themselves: the same timeouts (sentinel_kwargs above), their own password if any.
    # redis-py leaves both constructors unannotated (type: ignore below: no-untyped-call only).
    sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call]
    return ClosingSentinelPool(target.service, sentinel, **kwargs)  # type: ignore[no-untyped-call]


def make_redis(settings: Settings) -> Redis:
    return Redis(connection_pool=make_pool(settings))


async def maxmemory_policy(redis: Redis) -> str | None:
    """The server's maxmemory-policy: CONFIG GET, else INFO memory (CONFIG is often renamed or denied
    on managed services); None if neither tells."""
    try:
        reply = await redis.config_get("maxmemory-policy")
        for key, value in reply.items():
            if _text(key) == "maxmemory-policy" and value:
                return _text(value)
    except ResponseError:  # unknown command (renamed), NOPERM: INFO says it too
        pass
    try:
        info = await redis.info("memory")
    except ResponseError:
        return None
    value = info.get("maxmemory_policy")
    return _text(value) if value else None


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def check_eviction_policy(redis: Redis, settings: Settings, log: logging.Logger) -> None:
    """Refuse to start on a Redis that may evict keys: evicted queue and batch keys are lost work that
    nothing notices (UnsafeRedis), unless FETCHFLEET_ALLOW_EVICTION accepts that risk."""
    policy = await maxmemory_policy(redis)
    where = redact(settings.redis_url)
    if policy == "noeviction":
        return
    if policy is None:
        log.warning("could not read maxmemory-policy of Redis at %s; make sure it is noeviction", where)
        return
    if settings.allow_eviction:
        log.warning(
            "Redis at %s has maxmemory-policy %s: evicted keys are lost work "
            "(started anyway: FETCHFLEET_ALLOW_EVICTION=true)",
            where,
            policy,
        )
        return
    raise UnsafeRedis(
        f"Redis at {where} has maxmemory-policy {policy}: it may evict queued chunks and batch keys and "
        "lose work silently. Set maxmemory-policy to noeviction (CONFIG SET maxmemory-policy noeviction, "
        "and in redis.conf), or set FETCHFLEET_ALLOW_EVICTION=true to accept the risk"
    )
