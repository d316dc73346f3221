"""The address policy is the IANA special-purpose registries: every range of them, tested."""

from __future__ import annotations

import ipaddress

import pytest

from worker.errors import Blocked
from worker.ssrf import (
    EXTRA_FORBIDDEN,
    IPV4_SPECIAL,
    IPV6_SPECIAL,
    AddressPolicy,
    SpecialRange,
    embedded_ipv4,
    special_range,
)

POLICY = AddressPolicy()
ROWS = IPV4_SPECIAL + IPV6_SPECIAL + EXTRA_FORBIDDEN
# Prefixes judged by the IPv4 address inside, not by their own row.
CARRIERS = {"::ffff:0:0/96", "64:ff9b::/96", "2002::/16"}


def samples(row: SpecialRange) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """First, middle and last address of the range, where no more specific row decides instead."""
    net = row.network
    picks = {net.network_address, net[net.num_addresses // 2], net.broadcast_address}
    return sorted(a for a in picks if special_range(a) == row)


@pytest.mark.parametrize(
    "row", [r for r in ROWS if str(r.network) not in CARRIERS], ids=lambda r: str(r.network)
)
def test_every_range_is_treated_per_the_registry(row: SpecialRange) -> None:
    addrs = samples(row)
    assert addrs, f"no address of {row.network} is decided by its own row"
    for addr in addrs:
        assert POLICY.is_allowed(addr) is (row.globally_reachable is True), (addr, row)


@pytest.mark.parametrize("prefix", sorted(CARRIERS))
def test_carrier_prefixes_are_judged_by_the_ipv4_inside(prefix: str) -> None:
    net = ipaddress.IPv6Network(prefix)
    for inner in ("127.0.0.1", "10.1.2.3", "169.254.169.254", "100.64.0.1", "0.0.0.0", "255.255.255.255"):
        if prefix == "2002::/16":
            addr = ipaddress.IPv6Address(int(net.network_address) | int(ipaddress.IPv4Address(inner)) << 80)
        else:
            addr = ipaddress.IPv6Address(int(net.network_address) | int(ipaddress.IPv4Address(inner)))
        assert embedded_ipv4(addr) == ipaddress.IPv4Address(inner)
        assert not POLICY.is_allowed(addr), addr
    public = ipaddress.IPv4Address("8.8.8.8")
    shift = 80 if prefix == "2002::/16" else 0
    addr = ipaddress.IPv6Address(int(net.network_address) | int(public) << shift)
    assert POLICY.is_allowed(addr), addr


@pytest.mark.parametrize(
    "addr",
    [
        "::ffff:0:7f00:1",  # IPv4-translated 127.0.0.1 (RFC 6145)
        "::ffff:0:a9fe:a9fe",  # IPv4-translated 169.254.169.254
        "64:ff9b::7f00:1",  # NAT64 to loopback
        "64:ff9b:1::808:808",  # local-use NAT64
        "3fff::1",  # documentation (RFC 9637)
        "3fff:fff:ffff::1",
        "5f00::1",  # SRv6 SIDs (RFC 9602)
        "100:0:0:1::1",  # dummy prefix (RFC 9780)
        "4000::1",  # outside 2000::/3: reserved by the IETF
        "::2",
        "2001::1",  # Teredo
        "2001:10::1",  # deprecated ORCHID
    ],
)
def test_the_gaps_of_issue_12_are_closed(addr: str) -> None:
    assert not POLICY.is_allowed(ipaddress.ip_address(addr))
    with pytest.raises(Blocked):
        POLICY.check_host(f"[{addr}]")


@pytest.mark.parametrize("addr", ["2001:3::1", "2001:20::1", "2620:4f:8000::1", "192.0.0.9", "192.31.196.1"])
def test_globally_reachable_rows_inside_refused_blocks_are_allowed(addr: str) -> None:
    assert POLICY.is_allowed(ipaddress.ip_address(addr))


def test_allowed_networks_open_a_translated_address_by_its_ipv4() -> None:
    policy = AddressPolicy.from_settings(False, ["127.0.0.0/8"])
    assert policy.is_allowed(ipaddress.ip_address("::ffff:0:7f00:1"))
    assert policy.is_allowed(ipaddress.ip_address("64:ff9b::7f00:1"))
    assert not policy.is_allowed(ipaddress.ip_address("::ffff:0:a00:1"))


def test_rows_are_well_formed() -> None:
    for row in ROWS:
        assert row.rfc.startswith("RFC") and row.name
    assert len({(str(r.network), r.name) for r in ROWS}) == len(ROWS)


def test_a_refusal_names_the_registry_row() -> None:
    with pytest.raises(Blocked, match=r"Documentation, RFC 9637"):
        POLICY.check_host("[3fff::1]")
    with pytest.raises(Blocked, match=r"via 169\.254\.169\.254: Link Local, RFC 3927"):
        POLICY.check_host("[::ffff:0:a9fe:a9fe]")
