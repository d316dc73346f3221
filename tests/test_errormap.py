"""Error kinds from aiohttp's real exceptions, where a live server cannot produce them on loopback."""

from __future__ import annotations

import socket

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver

from worker import errors
from worker.errormap import map_exception


class NoSuchHost(AbstractResolver):
    """Answers every lookup as a resolver does for a name that does not exist (no query leaves)."""

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list:
        raise OSError(socket.EAI_NONAME, "Name or service not known")

    async def close(self) -> None:
        return None


async def test_failed_lookup_is_kind_dns() -> None:
    connector = aiohttp.TCPConnector(resolver=NoSuchHost())
    async with aiohttp.ClientSession(connector=connector) as session:
        with pytest.raises(aiohttp.ClientError) as caught:
            await session.get("http://no-such-host.example/")
    err = map_exception(caught.value)
    assert isinstance(err, errors.DNSFailed) and err.kind == "dns"
    assert "DNS lookup failed" in str(err)
