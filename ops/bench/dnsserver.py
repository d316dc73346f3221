"""The web profile's name server: `h<N>-<anything>.bench.test` -> a loopback address, one process, UDP.

Host N gets address number N % addresses of `addresses(count)` (spread over 127.0.0.0/8), so a run can
use thousands of distinct names that all land on the benchmark's own target. Any other name gets
NXDOMAIN; AAAA and other types get an empty answer. Run as a script it serves until killed:

    python ops/bench/dnsserver.py --port 5353 --addresses 1000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import socket
import subprocess
import sys
import time

from dnslib import QTYPE, DNSRecord

DOMAIN = "bench.test"
TTL = 300
_HOST = re.compile(r"h(\d+)-[a-z0-9-]*\.bench\.test$")


def addresses(count: int) -> list[str]:
    """`count` loopback addresses, 127.0.1.1 onwards, 250 per /24 (never .0 or .255, never 127.0.0.1)."""
    return [f"127.0.{1 + k // 250}.{1 + k % 250}" for k in range(count)]


def host_name(n: int, run: str) -> str:
    return f"h{n}-{run}.{DOMAIN}"


class Resolver(asyncio.DatagramProtocol):
    """Answers from the wire bytes directly: a burst of a thousand hosts (two queries each, A and AAAA)
    must not queue behind a parser. dnslib's parse and pack cost ~10 times as much, enough on a loaded
    machine for resolvers to time out (ops/bench saw it at 1,000 hosts at once)."""

    def __init__(self, table: list[str]) -> None:
        self.table = [socket.inet_aton(ip) for ip in table]
        self.answered = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = answer(data, self.table)
        if reply is not None:
            self.answered += 1
            self.transport.sendto(reply, addr)


def answer(query: bytes, table: list[bytes]) -> bytes | None:
    """The reply to one query (RFC 1035, section 4.1), or None for what is not a plain query."""
    if len(query) < 17 or query[2] & 0x80 or int.from_bytes(query[4:6], "big") != 1:
        return None
    labels, pos = [], 12
    while pos < len(query) and query[pos]:
        size = query[pos]
        labels.append(query[pos + 1 : pos + 1 + size])
        pos += 1 + size
    end = pos + 5  # the root label, QTYPE, QCLASS
    if end > len(query):
        return None
    qtype = int.from_bytes(query[pos + 1 : pos + 3], "big")
    question = query[12:end]
    rd = query[2] & 0x01
    found = _HOST.match(b".".join(labels).decode("ascii", "replace").lower())
    if found is None:  # NXDOMAIN
        return query[:2] + bytes([0x84 | rd, 0x83]) + b"\x00\x01\x00\x00\x00\x00\x00\x00" + question
    head = query[:2] + bytes([0x84 | rd, 0x80])
    if qtype != QTYPE.A:  # the name exists, with no record of this type
        return head + b"\x00\x01\x00\x00\x00\x00\x00\x00" + question
    ip = table[int(found.group(1)) % len(table)]
    record = b"\xc0\x0c\x00\x01\x00\x01" + TTL.to_bytes(4, "big") + b"\x00\x04" + ip
    return head + b"\x00\x01\x00\x01\x00\x00\x00\x00" + question + record


RECEIVE_BUFFER = 8 << 20
SO_RCVBUFFORCE = 33  # Linux's value; Python's socket module does not name it


async def serve(host: str, port: int, count: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    # A run opens up to a thousand hosts at once: a default-sized receive buffer (about 200 kB, some
    # 270 queries with their kernel overhead) drops the rest, and each drop costs the client a resolver
    # timeout of seconds. As root SO_RCVBUFFORCE passes net.core.rmem_max; elsewhere we get that max.
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
    sock.bind((host, port))
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(lambda: Resolver(addresses(count)), sock=sock)
    await asyncio.Event().wait()


def ask(host: str, port: int, name: str, timeout: float = 0.5) -> list[str]:
    """One A query (for readiness checks and tests): the addresses answered."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(DNSRecord.question(name, "A").pack(), (host, port))
        reply = DNSRecord.parse(s.recv(4096))
    return [str(rr.rdata) for rr in reply.rr if rr.rtype == QTYPE.A]


class DnsServer:
    """This script as a process on 127.0.0.1:`port`; `close()` stops it."""

    def __init__(self, port: int, count: int) -> None:
        self.host, self.port = "127.0.0.1", port
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--port", str(port), "--addresses", str(count)]
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"DNS server exited at start (code {self.proc.returncode})")
            with contextlib.suppress(OSError):
                if ask(self.host, port, host_name(0, "ready")):
                    return
            time.sleep(0.05)
        self.close()
        raise RuntimeError("DNS server did not answer")

    @property
    def nameserver(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--addresses", type=int, default=1000)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port, args.addresses))


if __name__ == "__main__":
    main()
