"""FETCHFLEET_DNS_SERVERS and FETCHFLEET_CA_FILE: names resolved by the servers given, a private CA."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import trustme
from dnslib import QTYPE, RCODE, RR, A, DNSRecord

from tests.support.fetch_target import FetchTarget
from worker.errors import SettingsError
from worker.fetcher import Fetcher, describe_policy
from worker.settings import load_settings

NAME = "site.fetchfleet.test"  # .test is reserved (RFC 6761): no real resolver answers it


class NameServer(asyncio.DatagramProtocol):
    """Answers A for NAME with 127.0.0.1, NXDOMAIN for anything else; counts the questions."""

    def __init__(self) -> None:
        self.questions: list[str] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        request = DNSRecord.parse(data)
        name = str(request.q.qname).rstrip(".")
        self.questions.append(name)
        reply = request.reply()
        if name != NAME:
            reply.header.rcode = RCODE.NXDOMAIN
        elif request.q.qtype == QTYPE.A:
            reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A("127.0.0.1"), ttl=60))
        self.transport.sendto(reply.pack(), addr)


@pytest.fixture
async def nameserver() -> AsyncIterator[tuple[str, NameServer]]:
    transport, proto = await asyncio.get_running_loop().create_datagram_endpoint(
        NameServer, local_addr=("127.0.0.1", 0)
    )
    yield f"127.0.0.1:{transport.get_extra_info('sockname')[1]}", proto
    transport.close()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def named_tls_target(ca: trustme.CA) -> Iterator[FetchTarget]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(NAME).configure_cert(ctx)
    t = FetchTarget(ssl_context=ctx).start()
    yield t
    t.stop()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


async def fetch(url: str, **overrides: object) -> tuple[int | None, str | None]:
    f = Fetcher(load_settings(**{"total_timeout": 10, **overrides}))
    await f.start()
    try:
        o = await f.fetch(url)
    finally:
        await f.close()
    return o.status, (o.error.kind if o.error is not None else None)


async def test_name_resolved_by_the_given_server_and_private_ca_trusted(
    nameserver: tuple[str, NameServer], named_tls_target: FetchTarget, ca_file: str
) -> None:
    server, proto = nameserver
    url = f"https://{NAME}:{named_tls_target.port}/ok/5"
    status, kind = await fetch(url, dns_servers=server, ca_file=ca_file, allow_private_networks=True)
    assert (status, kind) == (200, None)
    assert NAME in proto.questions


async def test_without_the_ca_file_the_private_ca_is_refused(
    nameserver: tuple[str, NameServer], named_tls_target: FetchTarget
) -> None:
    url = f"https://{NAME}:{named_tls_target.port}/ok/5"
    status, kind = await fetch(url, dns_servers=nameserver[0], allow_private_networks=True)
    assert (status, kind) == (None, "tls")


async def test_the_ssrf_guard_judges_what_the_given_server_answers(
    nameserver: tuple[str, NameServer], named_tls_target: FetchTarget, ca_file: str
) -> None:
    url = f"https://{NAME}:{named_tls_target.port}/ok/5"
    status, kind = await fetch(url, dns_servers=nameserver[0], ca_file=ca_file)
    assert (status, kind) == (None, "blocked")


async def test_a_name_the_server_does_not_know_is_a_dns_error(nameserver: tuple[str, NameServer]) -> None:
    status, kind = await fetch(
        "https://nowhere.fetchfleet.test/", dns_servers=nameserver[0], allow_private_networks=True
    )
    assert (status, kind) == (None, "dns")
    assert "nowhere.fetchfleet.test" in nameserver[1].questions


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("FETCHFLEET_DNS_SERVERS", "127.0.0.1:53,dns.example", "'dns.example': not an IP address"),
        ("FETCHFLEET_DNS_SERVERS", "127.0.0.1:99999", "'127.0.0.1:99999': bad port"),
        ("FETCHFLEET_CA_FILE", "/nonexistent/ca.pem", "FETCHFLEET_CA_FILE: Value error, no such file"),
    ],
)
def test_bad_values_are_named(monkeypatch: pytest.MonkeyPatch, variable: str, value: str, says: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert says in str(caught.value)


def test_a_file_that_is_no_ca_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    monkeypatch.setenv("FETCHFLEET_CA_FILE", str(bad))
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert "FETCHFLEET_CA_FILE: Value error, not a readable PEM file of CA certificates" in str(caught.value)


async def test_resolvers_made_for_the_servers_are_closed(nameserver: tuple[str, NameServer]) -> None:
    f = Fetcher(load_settings(dns_servers=nameserver[0]))
    await f.start()
    [made] = f._resolvers
    await f.close()
    assert made._resolver is None  # type: ignore[attr-defined]  (aiohttp clears it on close)


def test_server_forms_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FETCHFLEET_DNS_SERVERS", " 127.0.0.1 , 127.0.0.1:5353, ::1, [::1]:5353 ")
    assert load_settings().dns_servers == ("127.0.0.1", "127.0.0.1:5353", "::1", "[::1]:5353")


def test_start_up_line_names_them(ca_file: str) -> None:
    line = describe_policy(load_settings(ca_file=ca_file, dns_servers="127.0.0.1:5353"))
    assert f"CA file {ca_file} trusted too" in line
    assert "name servers 127.0.0.1:5353" in line
    assert "name servers" not in describe_policy(load_settings())


async def test_the_resolver_is_async_by_default() -> None:
    """aiodns, not aiohttp's thread pool of getaddrinfo calls: a thousand new hosts at once would queue
    behind a handful of threads (docs/benchmark.md)."""
    f = Fetcher(load_settings())
    await f.start()
    try:
        assert isinstance(f.session.connector._resolver, aiohttp.AsyncResolver)  # type: ignore[union-attr]
    finally:
        await f.close()
