"""The SSRF guard: which addresses a worker may connect to.

The check runs on the address a socket is about to connect to (after DNS, at every redirect hop),
and on IP literals in a URL before anything is sent, whatever notation they use.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field

from worker.errors import Blocked

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class SpecialRange:
    """One row of an IANA special-purpose address registry (or of the few extra rows below)."""

    network: IPNetwork
    name: str
    rfc: str
    globally_reachable: bool | None  # None: "N/A" in the registry (deprecated or transition ranges)


def _rows(*rows: tuple[str, str, str, bool | None]) -> tuple[SpecialRange, ...]:
    return tuple(SpecialRange(ipaddress.ip_network(n), name, rfc, g) for n, name, rfc, g in rows)


# The policy is these registries, as data: Address Block, Name, RFC, Globally Reachable.
# https://www.iana.org/assignments/iana-ipv4-special-registry/ (RFC 6890, updated by RFC 8190)
IPV4_SPECIAL = _rows(
    ("0.0.0.0/8", "This network", "RFC 791, section 3.2", False),
    ("0.0.0.0/32", "This host on this network", "RFC 1122, section 3.2.1.3", False),
    ("10.0.0.0/8", "Private-Use", "RFC 1918", False),
    ("100.64.0.0/10", "Shared Address Space", "RFC 6598", False),
    ("127.0.0.0/8", "Loopback", "RFC 1122, section 3.2.1.3", False),
    ("169.254.0.0/16", "Link Local", "RFC 3927", False),  # cloud metadata endpoints live here
    ("172.16.0.0/12", "Private-Use", "RFC 1918", False),
    ("192.0.0.0/24", "IETF Protocol Assignments", "RFC 6890, section 2.1", False),
    ("192.0.0.0/29", "IPv4 Service Continuity Prefix", "RFC 7335", False),
    ("192.0.0.8/32", "IPv4 dummy address", "RFC 7600", False),
    ("192.0.0.9/32", "Port Control Protocol Anycast", "RFC 7723", True),
    ("192.0.0.10/32", "Traversal Using Relays around NAT Anycast", "RFC 8155", True),
    ("192.0.0.170/32", "NAT64/DNS64 Discovery", "RFC 8880, RFC 7050", False),
    ("192.0.0.171/32", "NAT64/DNS64 Discovery", "RFC 8880, RFC 7050", False),
    ("192.0.2.0/24", "Documentation (TEST-NET-1)", "RFC 5737", False),
    ("192.31.196.0/24", "AS112-v4", "RFC 7535", True),
    ("192.52.193.0/24", "AMT", "RFC 7450", True),
    ("192.88.99.0/24", "Deprecated (6to4 Relay Anycast)", "RFC 7526", None),
    ("192.168.0.0/16", "Private-Use", "RFC 1918", False),
    ("192.175.48.0/24", "Direct Delegation AS112 Service", "RFC 7534", True),
    ("198.18.0.0/15", "Benchmarking", "RFC 2544", False),
    ("198.51.100.0/24", "Documentation (TEST-NET-2)", "RFC 5737", False),
    ("203.0.113.0/24", "Documentation (TEST-NET-3)", "RFC 5737", False),
    ("240.0.0.0/4", "Reserved", "RFC 1112, section 4", False),
    ("255.255.255.255/32", "Limited Broadcast", "RFC 8190, RFC 919, section 7", False),
)

# https://www.iana.org/assignments/iana-ipv6-special-registry/ (RFC 6890, updated by RFC 8190)
IPV6_SPECIAL = _rows(
    ("::1/128", "Loopback Address", "RFC 4291", False),
    ("::/128", "Unspecified Address", "RFC 4291", False),
    ("::ffff:0:0/96", "IPv4-mapped Address", "RFC 4291", False),
    ("64:ff9b::/96", "IPv4-IPv6 Translat.", "RFC 6052", True),
    ("64:ff9b:1::/48", "IPv4-IPv6 Translat.", "RFC 8215", False),
    ("100::/64", "Discard-Only Address Block", "RFC 6666", False),
    ("100:0:0:1::/64", "Dummy IPv6 Prefix", "RFC 9780", False),
    ("2001::/23", "IETF Protocol Assignments", "RFC 2928", False),
    ("2001::/32", "TEREDO", "RFC 4380, RFC 8190", None),
    ("2001:1::1/128", "Port Control Protocol Anycast", "RFC 7723", True),
    ("2001:1::2/128", "Traversal Using Relays around NAT Anycast", "RFC 8155", True),
    ("2001:1::3/128", "DNS-SD Service Registration Protocol Anycast", "RFC 9665", True),
    ("2001:2::/48", "Benchmarking", "RFC 5180, RFC Errata 1752", False),
    ("2001:3::/32", "AMT", "RFC 7450", True),
    ("2001:4:112::/48", "AS112-v6", "RFC 7535", True),
    ("2001:10::/28", "Deprecated (previously ORCHID)", "RFC 4843", None),
    ("2001:20::/28", "ORCHIDv2", "RFC 7343", True),
    ("2001:30::/28", "Drone Remote ID Protocol Entity Tags (DETs) Prefix", "RFC 9374", True),
    ("2001:db8::/32", "Documentation", "RFC 3849", False),
    ("2002::/16", "6to4", "RFC 3056", None),
    ("2620:4f:8000::/48", "Direct Delegation AS112 Service", "RFC 7534", True),
    ("3fff::/20", "Documentation", "RFC 9637", False),
    ("5f00::/16", "Segment Routing (SRv6) SIDs", "RFC 9602", False),
    ("fc00::/7", "Unique-Local", "RFC 4193, RFC 8190", False),
    ("fe80::/10", "Link-Local Unicast", "RFC 4291", False),
)

# Not special-purpose rows, but no fetch target either: multicast (the IANA multicast address space
# registries), the deprecated site-local and IPv4-compatible forms.
EXTRA_FORBIDDEN = _rows(
    ("224.0.0.0/4", "Multicast", "RFC 5771", False),
    ("ff00::/8", "Multicast", "RFC 4291", False),
    ("fec0::/10", "Site-local (deprecated)", "RFC 3879", False),
    ("::/96", "IPv4-compatible (deprecated)", "RFC 4291, section 2.5.5.1", False),
)

# The IANA IPv6 Address Space registry allocates only 2000::/3 as global unicast; everything else is
# reserved by the IETF, so an IPv6 address outside it is refused whatever later assignments say.
IPV6_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")

# Prefixes whose addresses carry an IPv4 address, judged by that address (the rule of each RFC):
# IPv4-mapped (RFC 4291), IPv4-translated (RFC 6145, which no registry row names), the NAT64
# well-known prefix (RFC 6052: the translator connects to the IPv4 inside) and 6to4 (RFC 3056).
# Teredo (2001::/32) stays refused as the registry's N/A row: its inner address is obfuscated.
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")

# Most specific first: a globally reachable row inside a larger non-global one (192.0.0.9/32 in
# 192.0.0.0/24, 2001:3::/32 in 2001::/23) decides for its own addresses, as the registries mean.
_TABLE: tuple[SpecialRange, ...] = tuple(
    sorted(IPV4_SPECIAL + IPV6_SPECIAL + EXTRA_FORBIDDEN, key=lambda r: -r.network.prefixlen)
)


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for under a translation rule, or None."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip in _MAPPED or ip in _TRANSLATED or ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


def special_range(ip: IPAddress) -> SpecialRange | None:
    """The most specific row of the tables holding `ip`, or None."""
    for row in _TABLE:
        if row.network.version == ip.version and ip in row.network:
            return row
    return None


@functools.lru_cache(maxsize=8192)  # runs per connect; a crawl meets the same addresses over and over
def registry_allows(ip: IPAddress) -> bool:
    """The registries' verdict: only globally reachable addresses may be fetched."""
    inner = embedded_ipv4(ip)
    if inner is not None:
        ip = inner
    row = special_range(ip)
    if row is not None:
        return row.globally_reachable is True
    return ip.version == 4 or ip in IPV6_GLOBAL_UNICAST


def refusal(ip: IPAddress) -> str:
    """Why `ip` is refused, naming the registry row that decides it (errormap matches the start)."""
    inner = embedded_ipv4(ip)
    row = special_range(inner or ip)
    via = f" via {inner}" if inner is not None else ""
    reason = f"{row.name}, {row.rfc}" if row is not None else "outside 2000::/3, reserved by the IETF"
    return f"address {ip} is not allowed (private, loopback, link-local or reserved){via}: {reason}"


class BlockedAddress(ConnectionRefusedError):
    """Raised from the socket factory; aiohttp wraps it, the error mapping turns it into `blocked`."""


@functools.lru_cache(maxsize=4096)  # runs per fetch; a crawl asks about the same hosts over and over
def parse_host_ip(host: str) -> IPAddress | None:
    """The address an IP-literal host denotes, accepting the notations inet_aton does (127.1, 0x7f000001)."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        pass
    if not host or not all(c in "0123456789abcdefxABCDEFX." for c in host):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


@dataclass(frozen=True)
class AddressPolicy:
    allow_all: bool = False
    allowed: tuple[IPNetwork, ...] = field(default_factory=tuple)

    @classmethod
    def from_settings(cls, allow_private: bool, allowed_networks: Iterable[str] = ()) -> AddressPolicy:
        return cls(allow_private, tuple(ipaddress.ip_network(n, strict=False) for n in allowed_networks))

    def is_allowed(self, ip: IPAddress) -> bool:
        if self.allow_all:
            return True
        if self.allowed:
            inner = embedded_ipv4(ip)
            for addr in (ip, inner) if inner is not None else (ip,):
                if any(addr in net for net in self.allowed if net.version == addr.version):
                    return True
        return registry_allows(ip)

    def check_host(self, host: str) -> None:
        """Refuse an IP-literal host before DNS or connect; names are checked at connect time."""
        if self.allow_all:  # nothing to refuse: skip parsing the host on every request
            return
        ip = parse_host_ip(host)
        if ip is not None and not self.is_allowed(ip):
            raise Blocked(refusal(ip))

    def socket_factory(self, addr_info: tuple) -> socket.socket:  # type: ignore[type-arg]
        """aiohttp's socket factory: the last word on the address actually connected to."""
        family, type_, proto, _canon, sockaddr = addr_info
        ip = ipaddress.ip_address(sockaddr[0].split("%", 1)[0])
        if not self.is_allowed(ip):
            raise BlockedAddress(refusal(ip))
        sock = socket.socket(family=family, type=type_, proto=proto)
        sock.setblocking(False)
        return sock
