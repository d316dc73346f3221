"""The benchmark's `--profile web`: HTTPS from a private CA, 1,000 host names through a local name server,
50 ms per response and a few slow hosts, against the gather script on the same names (docs/benchmark.md).

Every run (gather or fetchfleet) uses host names no run used before (`h<N>-<run>.bench.test`), so each
side pays DNS, TCP and TLS for every host, as a fleet does on a crawl, and nobody starts with a warm
cache or pool. The name server maps names to loopback addresses spread over 127.0.0.0/8, and the
target listens on each of them.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import ssl
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import trustme

from ops.bench import target
from ops.bench.dnsserver import DOMAIN, DnsServer, addresses, host_name
from ops.bench.harness import Bench, Profile, Row, fetchfleet_run, print_table
from producer.client import Client
from tests.support import procs
from tests.support import redisserver as redisproc


@dataclass(frozen=True)
class WebProfile:
    hosts: int  # distinct host names per run
    urls: int  # per throughput run
    rounds: int
    concurrency: int  # the worker's, and the gather script's at equal concurrency
    user_concurrency: int  # what a user would pick for latency: the second gather row
    rss_concurrency: int  # the worker's FETCHFLEET_CONCURRENCY for the RSS row
    hold_ms: int  # how long the RSS row's fetches stay open
    delay_ms: int = 50  # every response
    slow_ms: int = 1000  # responses of the slow hosts
    slow_every: int = 50  # every 50th host (2 %) is slow
    target_procs: int = 2


WEB_PROFILES = {
    "full": WebProfile(
        hosts=1000, urls=20_000, rounds=2, concurrency=500, user_concurrency=1000, rss_concurrency=2000,
        hold_ms=30_000,
    ),
    "quick": WebProfile(
        hosts=100, urls=1000, rounds=1, concurrency=100, user_concurrency=200, rss_concurrency=300,
        hold_ms=8000, target_procs=1,
    ),
}  # fmt: skip


class WebSite:
    """The private CA and its files, the name server, the HTTPS target and a slow one for the RSS row."""

    def __init__(self, workdir: Path, p: WebProfile) -> None:
        self.p = p
        ca = trustme.CA()
        cert = ca.issue_cert(f"*.{DOMAIN}")
        self.ca_file = str(workdir / "ca.pem")
        ca.cert_pem.write_to_path(self.ca_file)
        chain, key = str(workdir / "chain.pem"), str(workdir / "key.pem")
        cert.cert_chain_pems[0].write_to_path(chain)
        for extra in cert.cert_chain_pems[1:]:
            extra.write_to_path(chain, append=True)
        cert.private_key_pem.write_to_path(key)
        self._closers: list = []
        try:
            self.dns = DnsServer(redisproc.free_port(), p.hosts)
            self._closers.append(self.dns.close)
            self.port = redisproc.free_port()
            self.http = target.PythonTarget(self.port, p.target_procs, 3000, p.hosts, (chain, key))
            self._closers.append(self.http.close)
            self.slow_port = redisproc.free_port()
            self.slow = target.PythonTarget(self.slow_port, 1, 3000, p.hosts, (chain, key))
            self._closers.append(self.slow.close)
        except BaseException:
            self.close()
            raise
        self._runs = itertools.count()

    def close(self) -> None:
        for close in reversed(self._closers):
            close()

    def run_tag(self) -> str:
        return f"r{next(self._runs)}"

    def urls(self, n: int, port: int | None = None, delay_ms: int | None = None) -> list[str]:
        """n URLs over the profile's hosts (interleaved), on names no earlier run used."""
        p, tag = self.p, self.run_tag()
        out = []
        for i in range(n):
            h = i % p.hosts
            ms = delay_ms or (p.slow_ms if h % p.slow_every == 0 else p.delay_ms)
            out.append(f"https://{host_name(h, tag)}:{port or self.port}/d/{ms}/{i}")
        return out

    def worker_env(self) -> dict[str, object]:
        return {"ca_file": self.ca_file, "dns_servers": self.dns.nameserver}

    def gather_args(self) -> tuple[str, ...]:
        return ("--ca-file", self.ca_file, "--dns-servers", self.dns.nameserver)

    def cpu(self) -> float:
        return sum(procs.cpu_seconds(pid) for pid in self.http.pids)

    def open_slow(self) -> int:
        """Requests the slow target holds open now (its /stats, over TLS on its first address)."""
        ctx = ssl.create_default_context(cafile=self.ca_file)
        ctx.check_hostname = False  # the probe goes to an address; the certificate names hosts
        url = f"https://{addresses(1)[0]}:{self.slow_port}/stats"
        with urllib.request.urlopen(url, timeout=5, context=ctx) as resp:
            return int(json.loads(resp.read())["open_slow"])


@dataclass
class Run:
    rate: float
    cpu: float  # CPU seconds per URL of the fetching processes (gather copies, or workers)


def gather_run(b: Bench, site: WebSite, nprocs: int, concurrency: int, n: int) -> Run:
    per = n // nprocs
    copies = []
    for i in range(nprocs):
        path = b.workdir / f"web-urls-{i}.txt"
        path.write_text("\n".join(site.urls(per)) + "\n")
        extra = ("--urls-file", str(path), *site.gather_args())
        copies.append(procs.GatherProc("", 0, per, concurrency, b.loop, extra=extra))
    for c in copies:
        c.wait_ready()
    for c in copies:
        c.go()
    figs = [c.figures() for c in copies]
    for f in figs:
        if f["ok"] != f["count"]:
            raise RuntimeError(f"gather baseline lost fetches: {f}")
    span = max(f["end"] for f in figs) - min(f["start"] for f in figs)
    return Run(per * nprocs / span, sum(f["cpu"] for f in figs) / (per * nprocs))


_logs = itertools.count()


def spawn(b: Bench, site: WebSite, n: int, concurrency: int, queue: str) -> list[procs.WorkerProcess]:
    env = procs.fetchfleet_env(
        b.settings().redis_url,
        queue_name=queue,
        allow_private_networks=True,
        concurrency=concurrency,
        chunk_size=b.chunk_size,
        **site.worker_env(),
    )
    logs = [b.workdir / f"web-worker-{next(_logs)}.log" for _ in range(n)]
    workers = [procs.WorkerProcess(env, log, procs.worker_command(b.loop)) for log in logs]
    for w in workers:
        w.wait_ready()
    return workers


def fleet_run(b: Bench, site: WebSite, workers: list[procs.WorkerProcess], n: int) -> Run:
    cpu0 = sum(procs.cpu_seconds(w.pid) for w in workers)
    e2e = asyncio.run(fetchfleet_run(b, workers, n, 0, site.urls(n)))
    cpu = sum(procs.cpu_seconds(w.pid) for w in workers) - cpu0
    return Run(e2e.rate, cpu / n)


def throughput(b: Bench, site: WebSite, nworkers: int) -> tuple[Run, Run, Run]:
    """(fetchfleet, gather at equal concurrency, gather at the user's concurrency): best of rounds each."""
    p = site.p
    workers = spawn(b, site, nworkers, p.concurrency, b.settings().queue_name)
    try:
        fleet_run(b, site, workers, min(p.urls, 2000))  # warm the code paths (on other names)
        ours, equal, user = [], [], []
        for _ in range(p.rounds):
            equal.append(gather_run(b, site, nworkers, p.concurrency, p.urls))
            ours.append(fleet_run(b, site, workers, p.urls))
            user.append(gather_run(b, site, nworkers, p.user_concurrency, p.urls))
    finally:
        for w in workers:
            w.stop()
    print(
        f"web, {nworkers} worker(s): {[round(r.rate) for r in ours]} URLs/s; gather x{nworkers} at "
        f"{p.concurrency}: {[round(r.rate) for r in equal]}; at {p.user_concurrency}: "
        f"{[round(r.rate) for r in user]}",
        file=sys.stderr,
    )

    def best(runs: list[Run]) -> Run:
        return max(runs, key=lambda r: r.rate)

    return best(ours), best(equal), best(user)


def wait_open(site: WebSite, want: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    held = 0
    while time.monotonic() < deadline:
        held = site.open_slow()
        if held >= want:
            return held
        time.sleep(0.1)
    raise RuntimeError(f"only {held} of {want} requests reached the slow target")


def wait_closed(site: WebSite, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and site.open_slow():
        time.sleep(0.2)


def rss(b: Bench, site: WebSite) -> tuple[float, float]:
    """(worker RSS MB, gather RSS MB) while `rss_concurrency` HTTPS fetches over the hosts are open."""
    p = site.p
    n = p.rss_concurrency
    queue = "fetchfleet:bench:webrss"
    [worker] = spawn(b, site, 1, n, queue)
    try:
        urls = site.urls(n + n // 2, site.slow_port, p.hold_ms)

        async def submit() -> None:
            async with Client(b.settings(queue_name=queue)) as client:
                await client.submit(urls)

        asyncio.run(submit())
        wait_open(site, n, p.hold_ms / 1000 * 0.8)
        ours = procs.rss_mb(worker.pid)
    finally:
        worker.proc.kill()  # a drain would wait for the held fetches
        worker.proc.wait()
    wait_closed(site, p.hold_ms / 1000 + 10)
    path = b.workdir / "web-rss-urls.txt"
    path.write_text("\n".join(site.urls(n, site.slow_port, p.hold_ms)) + "\n")
    extra = ("--urls-file", str(path), *site.gather_args())
    gather = procs.GatherProc("", 0, n, n, b.loop, extra=extra)
    try:
        gather.wait_ready()
        gather.go()
        wait_open(site, n, p.hold_ms / 1000 * 0.8)
        theirs = procs.rss_mb(gather.proc.pid)
    finally:
        gather.proc.kill()
        gather.proc.communicate()
    wait_closed(site, p.hold_ms / 1000 + 10)
    return ours, theirs


def run(b: Bench, site: WebSite) -> None:
    """The web rows into b.rows; `b.http` and `b.slow` are the site's targets."""
    p = site.p
    print(
        f"web: {p.hosts} hosts through a name server at {site.dns.nameserver}, HTTPS ({site.http.kind}), "
        f"{p.delay_ms} ms per response, every {p.slow_every}th host {p.slow_ms} ms; {p.urls:,} URLs per "
        f"run, best of {p.rounds}; concurrency {p.concurrency} (user's: {p.user_concurrency})",
        file=sys.stderr,
    )
    one, g1, u1 = throughput(b, site, 1)
    two, g2, u2 = throughput(b, site, 2)
    mem, mem_gather = rss(b, site)
    c, uc = f"{p.concurrency:,}", f"{p.user_concurrency:,}"
    b.rows += [
        Row(f"web throughput, 1 worker at {c} (URLs/s)", one.rate, f"gather, 1 process at {c}", g1.rate,
            ">= 1.0x", one.rate >= g1.rate),
        Row("web throughput, 1 worker (same run)", one.rate, f"gather, 1 process at {uc}", u1.rate),
        Row(f"web throughput, 2 workers at {c} (URLs/s)", two.rate, f"gather, 2 processes at {c}", g2.rate,
            ">= 0.95x", two.rate >= 0.95 * g2.rate),
        Row("web throughput, 2 workers (same run)", two.rate, f"gather, 2 processes at {uc}", u2.rate),
        Row(f"web worker RSS, {p.rss_concurrency:,} in flight (MB)", mem,
            f"gather, {p.rss_concurrency:,} in flight", mem_gather, "<= 250 MB", mem <= 250),
        Row("web CPU us/URL, 1 worker", one.cpu * 1e6, "the gather process", g1.cpu * 1e6),
    ]  # fmt: skip


def main(
    args: argparse.Namespace, profile: Profile, workdir: Path, red: redisproc.RedisProcess, cleanup: list
) -> int:
    """`--profile web`: its own site (CA, name server, HTTPS targets); the rows of this module."""
    wp = WEB_PROFILES["quick" if args.quick else "full"]
    overrides = {"rounds": args.rounds, "urls": args.urls, "concurrency": args.concurrency}
    wp = WebProfile(**{**wp.__dict__, **{k: v for k, v in overrides.items() if v}})
    site = WebSite(workdir, wp)
    cleanup.append(site.close)
    b = Bench(profile, wp.concurrency, args.chunk_size, args.loop, workdir, red, site.http, site.slow)
    load = os.getloadavg()[0]
    run(b, site)
    print()
    print(
        f"fetchfleet benchmark, web profile: {os.cpu_count()} CPUs (load {load:.2f} at start, "
        f"{os.getloadavg()[0]:.2f} at the end); {args.loop}; {wp.hosts} hosts; concurrency {wp.concurrency}; "
        f"chunk {args.chunk_size}; {wp.urls:,} URLs x best of {wp.rounds}"
    )
    print_table(b)
    if args.json:
        Path(args.json).write_text(json.dumps([{**r.__dict__, "ratio": r.ratio} for r in b.rows], indent=2))
    failed = [r.name for r in b.rows if r.ok is False]
    return 1 if failed and not args.quick else 0
