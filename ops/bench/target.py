"""The benchmark's HTTP target: nginx when it is on PATH, else a lean raw-asyncio server in N processes.

Run as `python -m ops.bench.target` it is one server process: every path answers 1 KiB at once,
`/slow` answers after `--slow-ms`, and `/stats` reports how many slow requests are open (to know when
1,000 are in flight).
It shares the machine's cores with what it measures, so it does as little as HTTP/1.1 keep-alive allows.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ops.bench.dnsserver import addresses
from producer.children import stop_process
from tests.support.procs import ROOT, stop_all

BODY_SIZE = 1024
BODY = b"x" * BODY_SIZE
OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (BODY_SIZE, BODY)


class Stats:
    open_slow = 0
    served = 0
    connections = 0  # accepted (for TLS: handshakes), to compare how many connections each side opens


class HttpServer(asyncio.Protocol):
    """Just enough HTTP/1.1 for GET with keep-alive; requests carry no body."""

    slow_s = 3.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buf = b""
        Stats.connections += 1

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            line = buf[: buf.find(b"\r\n")]
            buf = buf[end + 4 :]
            path = line.split(b" ", 2)[1] if line.count(b" ") >= 2 else b"/"
            Stats.served += 1
            if path.startswith(b"/d/"):  # /d/<ms>/...: the web profile's answer after <ms> milliseconds
                ms = int(path[3 : path.index(b"/", 3)])
                long = ms >= 1000  # the RSS row counts these to know when its fetches are all in flight
                Stats.open_slow += long
                asyncio.get_running_loop().call_later(ms / 1000, self._delayed_done, long)
            elif path.startswith(b"/slow"):
                Stats.open_slow += 1
                asyncio.get_running_loop().call_later(self.slow_s, self._slow_done)
            elif path.startswith(b"/stats"):
                body = b'{"open_slow": %d, "served": %d, "connections": %d}' % (
                    Stats.open_slow,
                    Stats.served,
                    Stats.connections,
                )
                self.transport.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                    % (len(body), body)
                )
            else:
                self.transport.write(OK)
        self.buf = buf

    def _delayed_done(self, long: bool) -> None:
        Stats.open_slow -= long
        if not self.transport.is_closing():
            self.transport.write(OK)

    def _slow_done(self) -> None:
        Stats.open_slow -= 1
        if not self.transport.is_closing():
            self.transport.write(OK)


async def serve(
    port: int, slow_ms: int, hosts: tuple[str, ...] = ("127.0.0.1",), tls: ssl.SSLContext | None = None
) -> None:
    HttpServer.slow_s = slow_ms / 1000
    servers = []
    for host in hosts:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Several processes bind the same port; the kernel spreads connections across them.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        loop = asyncio.get_running_loop()
        servers.append(await loop.create_server(HttpServer, sock=sock, backlog=4096, ssl=tls))
    await asyncio.gather(*(s.serve_forever() for s in servers))


def wait_listening(
    port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0, host: str = "127.0.0.1"
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"HTTP target exited at start (code {proc.returncode})")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("HTTP target did not start listening")


class PythonTarget:
    """`procs` copies of this script on one port (SO_REUSEPORT)."""

    def __init__(
        self,
        port: int,
        procs: int = 1,
        slow_ms: int = 3000,
        addresses: int = 0,
        cert: tuple[str, str] | None = None,
    ) -> None:
        """`addresses` > 0: listen on that many loopback addresses (dnsserver.addresses) instead of
        127.0.0.1; `cert`: (certificate chain PEM, key PEM) to serve HTTPS."""
        self.port = port
        self.kind = f"raw asyncio x{procs}" + (" TLS" if cert else "")
        args = [sys.executable, "-m", "ops.bench.target", "--port", str(port), "--slow-ms", str(slow_ms)]
        if addresses:
            args += ["--addresses", str(addresses)]
        if cert:
            args += ["--cert", cert[0], "--key", cert[1]]
        self.procs = [subprocess.Popen(args, cwd=ROOT) for _ in range(procs)]
        first = "127.0.1.1" if addresses else "127.0.0.1"
        for p in self.procs:
            wait_listening(port, p, host=first)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def close(self) -> None:
        stop_all(self.procs)


NGINX_CONF = """
worker_processes {procs};
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port} reuseport;
        default_type text/plain;
        location / {{ return 200 "{body}"; }}
    }}
}}
"""


class NginxTarget:
    """nginx answering 1 KiB from memory: a target that costs its host as little as possible."""

    def __init__(self, port: int, procs: int = 1) -> None:
        binary = shutil.which("nginx")
        if binary is None:
            raise RuntimeError("nginx is not on PATH")
        self.port = port
        self.kind = f"nginx x{procs}"
        self.dir = Path(tempfile.mkdtemp(prefix="fetchfleet-bench-nginx-"))
        conf = self.dir / "nginx.conf"
        conf.write_text(NGINX_CONF.format(procs=procs, dir=self.dir, port=port, body="x" * BODY_SIZE))
        self.proc = subprocess.Popen(
            [binary, "-c", str(conf), "-p", str(self.dir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_listening(port, self.proc)

    @property
    def pids(self) -> list[int]:
        """The master and its worker processes, which do the serving."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        return [self.proc.pid, *map(int, children)]

    def close(self) -> None:
        stop_process(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--slow-ms", type=int, default=3000)
    parser.add_argument("--addresses", type=int, default=0, help="listen on this many loopback addresses")
    parser.add_argument("--cert", help="certificate chain (PEM): serve HTTPS")
    parser.add_argument("--key", help="its private key (PEM)")
    args = parser.parse_args()
    hosts: tuple[str, ...] = ("127.0.0.1",)
    if args.addresses:
        hosts = tuple(addresses(args.addresses))
        # A listening socket per address, and thousands of connections on top.
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    tls = None
    if args.cert:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.cert, args.key)
    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        run = asyncio.run
    with contextlib.suppress(KeyboardInterrupt):
        run(serve(args.port, args.slow_ms, hosts, tls))


if __name__ == "__main__":
    main()
