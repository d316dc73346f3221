"""A batch's own fetch limits (BatchOptions), applied as the stricter of them and the worker's settings.

A batch can lower the body cap and the timeouts and narrow the networks its URLs may reach; nothing in
it can raise a cap or open an address the worker's guard refuses.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from dataclasses import dataclass

from worker.contract import BatchOptions
from worker.errors import Blocked
from worker.ssrf import AddressPolicy, BlockedAddress, IPAddress, IPNetwork, parse_host_ip


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    max_body_bytes: int | None = None
    connect_timeout: float | None = None
    read_timeout: float | None = None
    total_timeout: float | None = None
    networks: tuple[IPNetwork, ...] | None = None

    def cap(self, worker_cap: int) -> int:
        return worker_cap if self.max_body_bytes is None else min(worker_cap, self.max_body_bytes)

    def timeout(self, worker_value: float, batch_value: float | None) -> float:
        return worker_value if batch_value is None else min(worker_value, batch_value)

    def in_networks(self, ip: IPAddress) -> bool:
        if self.networks is None:
            return True
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.networks if net.version == ip.version)

    def check_host(self, host: str) -> None:
        """An IP-literal host outside the batch's networks is refused before DNS; names at connect."""
        if self.networks is None:
            return
        ip = parse_host_ip(host)
        if ip is not None and not self.in_networks(ip):
            raise Blocked(f"address {ip} is outside the batch's networks ({_names(self.networks)})")


def _names(networks: tuple[IPNetwork, ...]) -> str:
    return ",".join(str(n) for n in networks)


@functools.lru_cache(maxsize=256)  # chunks of one batch carry equal options: built once, not per URL
def batch_policy(options: BatchOptions) -> BatchPolicy | None:
    """None when the batch sets no limit of its own (the common case: no cost per fetch)."""
    nets = options.only_networks
    policy = BatchPolicy(
        max_body_bytes=options.max_body_bytes,
        connect_timeout=options.connect_timeout,
        read_timeout=options.read_timeout,
        total_timeout=options.total_timeout,
        networks=tuple(ipaddress.ip_network(n, strict=False) for n in nets) if nets is not None else None,
    )
    return None if policy == BatchPolicy() else policy


@dataclass(frozen=True)
class NarrowedPolicy(AddressPolicy):
    """The worker's address policy AND a batch's networks: what a batch's own connections may reach."""

    networks: tuple[IPNetwork, ...] = ()

    def is_allowed(self, ip: IPAddress) -> bool:
        return super().is_allowed(ip) and BatchPolicy(networks=self.networks).in_networks(ip)

    def socket_factory(self, addr_info: tuple) -> socket.socket:  # type: ignore[type-arg]
        ip = ipaddress.ip_address(addr_info[4][0].split("%", 1)[0])
        if super().is_allowed(ip) and not self.is_allowed(ip):
            # The wording keeps errormap's test for a blocked address (its text survives aiohttp folding
            # several connect errors into one) and says which rule refused it.
            raise BlockedAddress(
                f"address {ip} is not allowed (private, loopback, link-local or reserved, or outside the "
                f"batch's networks {_names(self.networks)})"
            )
        return super().socket_factory(addr_info)
