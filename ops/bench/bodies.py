"""Bodies at scale, measured: the file body store against a gather script that keeps every page, and
Redis memory while a collector follows a 1,000,000-URL batch whose bodies go to the store.

    python -m ops.bench.bodies            # several minutes; --quick runs tiny inputs in seconds

Same set-up as bench.py (private redis-server, local 1 KiB target, workers as processes). Rows:
- throughput with `--body` to a directory store (workers write and fsync WARC files, a collector writes
  every result line) against gather_baseline.py `--write`, which keeps every page's text in one file;
  best of --rounds, the sides interleaved;
- CPU per 1,000 URLs (least of the rounds), which a busy machine bends less than URLs/s: the worker
  with bodies to the store, the worker with no body kept (the store's share is the difference), Redis
  plus the collector, against the gather script's own;
- Redis `used_memory` at its peak (sampled every 0.1 s) while `--wait`'s collector follows the big
  batch, and the Redis bytes per result left once it is collected (FETCHFLEET_RESULT_RETENTION
  default: collected results leave the stream; the bitmap and counters stay).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from ops.bench import target
from ops.bench.harness import precompile
from producer.cli import collect
from producer.client import Client
from tests.support import procs
from tests.support import redisserver as redisproc
from worker.contract import batch_keys
from worker.settings import Settings, load_settings

QUEUE = "fetchfleet:bench-bodies"


@dataclass(frozen=True)
class Profile:
    urls: int
    rounds: int
    big: int


PROFILES = {"full": Profile(20_000, 3, 1_000_000), "quick": Profile(1_000, 1, 20_000)}


@dataclass
class Setup:
    redis: redisproc.RedisProcess
    base: str
    store: Path
    work: Path
    concurrency: int
    chunk_size: int
    loop: str
    workers: list[procs.WorkerProc] = field(default_factory=list)

    def settings(self) -> Settings:
        return load_settings(
            redis_url=self.redis.url,
            queue_name=QUEUE,
            allow_private_networks=True,
            concurrency=self.concurrency,
            chunk_size=self.chunk_size,
        )

    def spawn(self, n: int) -> list[procs.WorkerProcess]:
        env = procs.fetchfleet_env(
            self.redis.url,
            queue_name=QUEUE,
            allow_private_networks=True,
            concurrency=self.concurrency,
            chunk_size=self.chunk_size,
            body_store=self.store.as_uri(),
        )
        workers = [
            procs.WorkerProcess(env, self.work / f"worker-{i}.log", procs.worker_command(self.loop))
            for i in range(n)
        ]
        for w in workers:
            w.wait_ready()
        self.workers = workers
        return workers


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process so far (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Cpu:
    """CPU seconds a throughput run cost, by process: less sensitive than URLs/s to a busy machine."""

    worker: float = 0.0
    redis: float = 0.0
    collector: float = 0.0

    @property
    def total(self) -> float:
        return self.worker + self.redis + self.collector


def check(out: Path, n: int, body: bool = True) -> None:
    """Every index once, each a 200 whose body is in the store (a reference, no body through Redis)."""
    seen = bytearray(n)
    for line in out.read_bytes().splitlines():
        doc = orjson.loads(line)
        if seen[doc["index"]] or doc["status"] != 200 or bool(doc.get("body_ref")) != body or "body" in doc:
            raise RuntimeError(f"bad or duplicate result: {doc}")
        seen[doc["index"]] = 1
    if not all(seen):
        raise RuntimeError(f"{n - sum(seen)} results missing of {n}")


async def store_run(s: Setup, n: int, first: int, cpu: Cpu | None = None, body: bool = True) -> float:
    """URLs/s from submit to the last result line written, bodies to the store (without `body`: not
    kept, to tell the store's share); `cpu` gets what the workers, Redis and this collector spent."""
    out = s.work / f"store-{first}.jsonl"
    pids = [w.pid for w in s.workers]
    before = (sum(map(cpu_seconds, pids)), cpu_seconds(s.redis.pid), time.process_time())
    async with Client(s.settings()) as client:
        started = time.perf_counter()
        batch = await client.submit(
            (f"{s.base}/ok/{i}" for i in range(first, first + n)), store_body=body, total=n
        )
        await collect(client, batch, str(out), "jsonl", True, None)
        elapsed = time.perf_counter() - started
    if cpu is not None:
        cpu.worker = sum(map(cpu_seconds, pids)) - before[0]
        cpu.redis = cpu_seconds(s.redis.pid) - before[1]
        cpu.collector = time.process_time() - before[2]
    check(out, n, body)
    out.unlink()
    return n / elapsed


def gather_run(s: Setup, n: int, first: int, cpu: list[float] | None = None) -> float:
    page_file = s.work / f"gather-{first}.txt"
    g = procs.GatherProc(s.base, first, n, s.concurrency, s.loop, write=page_file)
    g.wait_ready()
    g.go()
    figures = g.figures()
    if figures["ok"] != n or page_file.stat().st_size < n * target.BODY_SIZE:
        raise RuntimeError(f"gather baseline lost pages: {figures}")
    page_file.unlink()
    if cpu is not None:
        cpu.append(float(figures["cpu"]))
    return float(figures["rate"])


class PeakMemory:
    """Samples Redis `used_memory` every 0.1 s in a thread; `peak` is the largest seen."""

    def __init__(self, r: redisproc.RedisProcess) -> None:
        self.redis, self.peak, self._stop = r, 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        with self.redis.client() as c:
            while not self._stop.is_set():
                self.peak = max(self.peak, int(c.info("memory")["used_memory"]))
                time.sleep(0.1)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


async def big_run(s: Setup, n: int) -> tuple[float, int, float, float, float]:
    """(URLs/s, peak used_memory, used_memory before, bytes per result the batch's keys keep after
    collection, mean result line)."""
    with s.redis.client() as c:
        c.execute_command("MEMORY", "PURGE")
        before = int(c.info("memory")["used_memory"])
    out = s.work / "big.jsonl"
    with PeakMemory(s.redis) as peak:
        async with Client(s.settings()) as client:
            started = time.perf_counter()
            urls = (f"{s.base}/ok/{i}" for i in range(n))
            batch = await client.submit(urls, store_body=True, total=n)  # then follow, as `--wait` does
            await collect(client, batch, str(out), "jsonl", True, None)
            elapsed = time.perf_counter() - started
    check(out, n)
    with s.redis.client() as c:  # what the batch keeps until its TTL: hash, (empty) stream, bitmap
        kept = sum(int(c.memory_usage(key, samples=0) or 0) for key in batch_keys(batch))
    doc_bytes = out.stat().st_size / n
    return n / elapsed, peak.peak, before, kept / n, doc_bytes


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (the gather side: as many)")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--chunk-size", type=int, default=100)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--big", type=int, help="URLs of the memory run (default 1,000,000)")
    parser.add_argument("--urls", type=int, help="URLs per throughput run")
    parser.add_argument("--rounds", type=int, help="throughput runs per side (best counts)")
    args = parser.parse_args()
    precompile()
    p = PROFILES["quick" if args.quick else "full"]
    p = Profile(args.urls or p.urls, args.rounds or p.rounds, p.big)
    big = args.big or p.big
    work = Path(tempfile.mkdtemp(prefix="fetchfleet-bench-bodies-"))
    red = redisproc.RedisProcess().start()
    port = redisproc.free_port()
    http = target.NginxTarget(port, 1) if shutil.which("nginx") else target.PythonTarget(port, 1)
    workers: list[procs.WorkerProcess] = []
    try:
        s = Setup(
            red,
            f"http://127.0.0.1:{port}",
            work / "bodies",
            work,
            args.concurrency,
            args.chunk_size,
            args.loop,
        )
        workers = s.spawn(args.workers)
        asyncio.run(store_run(s, min(p.urls, 2000), 0))  # warm up both sides' connections and code
        ours, theirs, cpus, gather_cpus, bare = [], [], [], [], []
        first = 10_000_000
        for _ in range(p.rounds):
            theirs.append(gather_run(s, p.urls, first, gather_cpus))
            cpus.append(Cpu())
            ours.append(asyncio.run(store_run(s, p.urls, first + p.urls, cpus[-1])))
            bare.append(Cpu())
            asyncio.run(store_run(s, p.urls, first + 2 * p.urls, bare[-1], body=False))
            first += 3 * p.urls
        print(
            f"store: {[round(r) for r in ours]} URLs/s; gather --write: {[round(r) for r in theirs]}",
            file=sys.stderr,
        )
        rate, peak, before, per_result, doc_bytes = asyncio.run(big_run(s, big))
        warc = sum(f.stat().st_size for f in s.store.glob("*.warc.gz"))
        mb = 1024 * 1024
        k = 1000 * 1000 / p.urls  # CPU seconds of a run -> ms per 1,000 URLs
        least, least_bare = min(cpus, key=lambda c: c.worker), min(bare, key=lambda c: c.worker)
        gather_cpu = min(gather_cpus) * k
        print(
            f"\nfetchfleet bodies benchmark: {os.cpu_count()} CPUs (load {os.getloadavg()[0]:.2f}); "
            f"target {http.kind}; {args.workers} worker(s), concurrency {args.concurrency}; "
            f"{p.urls:,} URLs x best of {p.rounds}; memory run {big:,} URLs"
        )
        rows = [
            ("throughput, --body to a file store (URLs/s)", max(ours), "gather writing every page's text",
             max(theirs), f"{max(ours) / max(theirs):.2f}x", ">= 0.85x"),
            (f"Redis peak used_memory, {big:,} URLs, collector attached (MB)", peak / mb,
             "used_memory before", before / mb, "", "< 100 MB"),
            ("CPU ms per 1,000 URLs: worker(s), --body to the store", least.worker * k,
             "gather, writing every page", gather_cpu, f"{gather_cpu / (least.worker * k):.2f}x", ""),
            ("CPU ms per 1,000 URLs: worker(s), no body kept", least_bare.worker * k,
             "gather", gather_cpu, f"{gather_cpu / (least_bare.worker * k):.2f}x", ""),
            ("CPU ms per 1,000 URLs: Redis + collector, --body", (least.redis + least.collector) * k,
             "-", None, "", ""),
            ("Redis bytes per result after collection", per_result, "result JSON bytes", doc_bytes, "", ""),
            ("memory run throughput (URLs/s), WARC written (MB)", rate, "-", warc / mb, "", ""),
        ]  # fmt: skip
        print(f"{'row':62} {'value':>12} {'baseline':>34} {'':>12} {'ratio':>7}  target")
        for name, value, bname, base, ratio, goal in rows:
            shown = "-" if base is None else f"{base:,.1f}"
            print(f"{name:62} {value:>12,.1f} {bname:>34} {shown:>12} {ratio:>7}  {goal}")
        return 0
    finally:
        for w in workers:
            w.stop()
        http.close()
        red.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
