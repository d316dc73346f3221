"""Redis errors classified by what they are, from the server's own replies where a server can give them."""

from __future__ import annotations

import pytest
import redis
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.support.redisserver import RedisProcess
from worker.rediserrors import RedisProblem, classify, is_transient


@pytest.mark.parametrize(
    ("exc", "problem"),
    [
        (RedisConnectionError("Connection refused"), RedisProblem.UNREACHABLE),
        (ConnectionResetError(), RedisProblem.UNREACHABLE),
        (BusyLoadingError("LOADING"), RedisProblem.UNREACHABLE),
        (AuthenticationError("invalid password"), RedisProblem.AUTH),
        (ReadOnlyError("You can't write against a read only replica."), RedisProblem.READONLY),
        (NoScriptError("No matching script."), RedisProblem.NO_SCRIPT),
        (OutOfMemoryError("command not allowed when used memory > maxmemory"), RedisProblem.FULL),
        (ResponseError("OOM command not allowed when used memory > 'maxmemory'."), RedisProblem.FULL),
        (ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
         RedisProblem.WRONG_TYPE),
        (ResponseError("ERR unknown command"), RedisProblem.OTHER),
    ],
)  # fmt: skip
def test_classify(exc: BaseException, problem: RedisProblem) -> None:
    assert classify(exc) is problem
    assert is_transient(exc) == (problem in (RedisProblem.UNREACHABLE, RedisProblem.FULL))


def test_real_server_replies_are_classified(redis_server: RedisProcess) -> None:
    """The classes come from what a real server sends, not from strings we wrote ourselves."""
    with redis_server.client() as c:
        c.flushall()
        c.set("k", "v")
        with pytest.raises(redis.RedisError) as wrong:
            c.hset("k", "f", "v")
        assert classify(wrong.value) is RedisProblem.WRONG_TYPE
        c.config_set("maxmemory", "1")
        try:
            with pytest.raises(redis.RedisError) as full:
                c.set("x" * 10, "y" * 1000)
            assert classify(full.value) is RedisProblem.FULL
        finally:
            c.config_set("maxmemory", "0")
        with pytest.raises(redis.RedisError) as noscript:
            c.evalsha("0" * 40, 0)
        assert classify(noscript.value) is RedisProblem.NO_SCRIPT
