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

# Ranges Python's is_global misses or that we name explicitly, so the policy reads as data.
_FORBIDDEN: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",  # CGNAT
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local: cloud metadata endpoints
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, and broadcast
        "::/96",  # unspecified, loopback and the deprecated IPv4-compatible form
        "64:ff9b::/96",
        "64:ff9b:1::/48",
        "100::/64",
        "2001::/23",
        "2001:db8::/32",
        "fc00::/7",
        "fe80::/10",
        "fec0::/10",
        "ff00::/8",
    )
)


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
        if isinstance(ip, ipaddress.IPv6Address):
            # Addresses that carry an IPv4 address inside (mapped, 6to4) are judged by that address;
            # Teredo (2001::/32) stays refused with 2001::/23.
            inner = ip.ipv4_mapped or ip.sixtofour
            if inner is not None:
                ip = inner
        if any(ip in net for net in self.allowed if net.version == ip.version):
            return True
        if any(ip in net for net in _FORBIDDEN if net.version == ip.version):
            return False
        return ip.is_global

    def check_host(self, host: str) -> None:
        """Refuse an IP-literal host before DNS or connect; names are checked at connect time."""
        if self.allow_all:  # nothing to refuse: skip parsing the host on every request
            return
        ip = parse_host_ip(host)
        if ip is not None and not self.is_allowed(ip):
            raise Blocked(f"address {ip} is not allowed (private, loopback, link-local or reserved)")

    def socket_factory(self, addr_info: tuple) -> socket.socket:  # type: ignore[type-arg]
        """aiohttp's socket factory: the last word on the address actually connected to."""
        family, type_, proto, _canon, sockaddr = addr_info
        ip = ipaddress.ip_address(sockaddr[0].split("%", 1)[0])
        if not self.is_allowed(ip):
            raise BlockedAddress(f"address {ip} is not allowed (private, loopback, link-local or reserved)")
        sock = socket.socket(family=family, type=type_, proto=proto)
        sock.setblocking(False)
        return sock
