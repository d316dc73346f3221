"""fetchfleet's benchmark: every figure next to a baseline measured in the same run, as a table.

    python -m ops.bench.bench            # about two minutes
    python -m ops.bench.bench --quick    # a few seconds: proves every row can be measured

It starts a private redis-server, a local HTTP target (nginx when on PATH, else raw asyncio servers)
and the workers as real processes, and measures end-to-end throughput against the plain in-process
`asyncio.gather` of gather_baseline.py, enqueue and collection rates, single-URL latency, worker memory
with 1,000 fetches in flight, and Redis bytes per stored result. Throughput rows take the best of
`--rounds` interleaved runs on each side, because other load on the machine only ever slows a run down.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from arq.connections import ArqRedis

from ops.bench import target, web
from ops.bench.harness import (
    BENCH_QUEUE,
    E2E,
    PROFILES,
    Bench,
    Profile,
    Row,
    check_exactly_once,
    fetchfleet_run,
    percentile,
    pickup_ms,
    precompile,
    print_table,
    target_cpu,
)
from ops.bench.rediscost import redis_cost
from producer.client import Client
from producer.output import open_writer
from tests.support import procs
from tests.support import redisserver as redisproc
from worker.contract import batch_keys
from worker.resultstream import page_entries

# ---- the in-process baseline ---------------------------------------------------------------------


@dataclass
class GatherRun:
    rate: float  # URLs/s of all copies together
    cpu: float  # CPU seconds per URL of the gather processes
    target_cpu: float  # CPU seconds per URL of the HTTP target


def children_cpu() -> float:
    """CPU seconds of this process's children reaped so far (user + system)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def gather_whole(b: Bench, nprocs: int, total: int, first: int) -> GatherRun:
    """`nprocs` copies of the gather script, each a whole process timed from outside: from their
    launch (interpreter start-up, imports, connections) to the exit of the last (issue 16)."""
    per = total // nprocs
    tcpu, ccpu = target_cpu(b), children_cpu()
    started = time.perf_counter()
    args = [sys.executable, "-m", "ops.bench.gather_baseline", b.base, "--count", str(per)]
    args += ["--concurrency", str(b.concurrency), "--loop", b.loop]
    copies = [
        subprocess.Popen([*args, "--first", str(first + i * per)], stdout=subprocess.PIPE, cwd=procs.ROOT)
        for i in range(nprocs)
    ]
    outs = [c.communicate(timeout=600)[0] for c in copies]
    elapsed = time.perf_counter() - started
    ccpu, tcpu = children_cpu() - ccpu, target_cpu(b) - tcpu
    for c, out in zip(copies, outs, strict=True):
        f = json.loads(out.decode().strip().splitlines()[-1])
        if c.returncode != 0 or f["ok"] != f["count"]:
            raise RuntimeError(f"gather baseline lost fetches: {f}")
    n = per * nprocs
    return GatherRun(n / elapsed, ccpu / n, tcpu / n)


# ---- fetchfleet ----------------------------------------------------------------------------------


def cli_run(b: Bench, workers: list[procs.WorkerProc], n: int, first: int) -> E2E:
    """`fetchfleet submit FILE --wait -o OUT` as a user runs it, timed from outside: CLI start-up, the
    submit, following the results and writing every one to the file (issue 16)."""
    path, out = b.workdir / f"urls-{first}.txt", b.workdir / f"e2e-{first}.jsonl"
    path.write_text("".join(f"{b.base}/ok/{i}\n" for i in range(first, first + n)))
    s = b.settings()
    env = procs.fetchfleet_env(
        s.redis_url,
        queue_name=s.queue_name,
        chunk_size=s.chunk_size,
        max_queued_chunks=1_000_000,
        result_retention="ttl",  # kept after collection: the collection and bytes rows read them again
    )
    with b.redis.client() as r:
        stats, cpu = r.info("stats"), r.info("cpu")
        cmds0, rcpu0 = int(stats["total_commands_processed"]), cpu["used_cpu_user"] + cpu["used_cpu_sys"]
        wcpu0 = sum(procs.cpu_seconds(w.pid) for w in workers)
        tcpu0, pcpu0 = target_cpu(b), children_cpu()
        started = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "producer", "submit", str(path), "--wait", "-q", "-o", str(out)],
            env=env,
            cwd=procs.ROOT,
            capture_output=True,
            check=False,
        )
        elapsed = time.perf_counter() - started
        pcpu, tcpu = children_cpu() - pcpu0, target_cpu(b) - tcpu0
        wcpu = sum(procs.cpu_seconds(w.pid) for w in workers) - wcpu0
        stats, cpu = r.info("stats"), r.info("cpu")
        cmds1, rcpu1 = int(stats["total_commands_processed"]), cpu["used_cpu_user"] + cpu["used_cpu_sys"]
    if proc.returncode != 0:
        raise RuntimeError(f"fetchfleet submit --wait failed: {proc.stderr.decode()[-2000:]}")
    check_exactly_once(out, n)
    batch_id = proc.stdout.decode().split()[-1]
    return E2E(n / elapsed, batch_id, out, cmds1 - cmds0, wcpu, rcpu1 - rcpu0, pcpu, tcpu)


async def enqueue_rates(b: Bench, n: int) -> tuple[float, float]:
    """(URLs/s that Client.submit queues with no worker reading, URLs/s of arq's enqueue_job per URL)."""
    urls = [f"{b.base}/ok/{i}" for i in range(n)]
    s = b.settings(db=1)
    async with Client(s) as client:
        await client.redis.flushdb()
        started = time.perf_counter()
        await client.submit(urls)
        ours = n / (time.perf_counter() - started)
        await client.redis.flushdb()
        # What arq offers without chunks: one job per URL, three round trips each (a sample is enough).
        sample = urls[: min(n, 3000)]
        # arq's own client over the same connections (the producer itself no longer imports arq).
        arq = ArqRedis(connection_pool=client.redis.connection_pool)
        started = time.perf_counter()
        for url in sample:
            await arq.enqueue_job("fetch_url", url)
        arq_rate = len(sample) / (time.perf_counter() - started)
        await client.redis.flushdb()
    return ours, arq_rate


def cli_enqueue_rate(b: Bench, n: int) -> float:
    """URLs/s of `fetchfleet submit FILE` (no --wait) as a user runs it: start-up, both passes, queueing."""
    path = b.workdir / "enqueue-urls.txt"
    path.write_text("".join(f"{b.base}/ok/{i}\n" for i in range(n)))
    env = procs.fetchfleet_env(
        b.settings(db=1).redis_url, queue_name=BENCH_QUEUE, max_queued_chunks=1_000_000
    )
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "producer", "submit", str(path)],
        env=env,
        cwd=procs.ROOT,
        capture_output=True,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"fetchfleet submit failed: {proc.stderr.decode()[-2000:]}")
    with b.redis.client(db=1) as r:
        r.flushdb()
    return n / elapsed


async def collection_rates(b: Bench, batch_id: str, n: int) -> tuple[float, float]:
    """(results/s `fetchfleet results` writes to a file, results/s of raw XRANGE pages of about 1,000
    results), best of 3."""
    ours, raw = 0.0, 0.0
    stream = batch_keys(batch_id)[1]
    async with Client(b.settings()) as client:
        for _ in range(3):
            started = time.perf_counter()
            writer = open_writer(str(b.workdir / "collect.jsonl"), "jsonl")
            count = 0
            async for _cursor, doc in client.results(batch_id):
                writer.write(doc)
                count += 1
            writer.close()
            ours = max(ours, count / (time.perf_counter() - started))
            if count != n:
                raise RuntimeError(f"collected {count} results of {n}")
            started = time.perf_counter()
            cursor, count, entries = "-", 0, page_entries(0, 0)
            while True:
                page = await client.redis.xrange(stream, min=cursor, count=entries)
                if not page:
                    break
                results = sum(fields[b"r"].count(b"\n") + 1 for _id, fields in page)  # an entry's lines
                count += results
                entries = page_entries(results, len(page))
                cursor = "(" + page[-1][0].decode()
            raw = max(raw, count / (time.perf_counter() - started))
    return ours, raw


async def latency_samples(b: Bench, samples: int) -> tuple[list[float], list[float]]:
    """Milliseconds from submit to result for one URL at a time, and for one in-process GET."""
    ours = await pickup_ms(b.settings(), [f"{b.base}/lat/{i}" for i in range(samples)])
    plain: list[float] = []
    async with aiohttp.ClientSession() as session:
        for i in range(samples):
            started = time.perf_counter()
            async with session.get(f"{b.base}/lat/{i}") as resp:
                await resp.read()
            plain.append((time.perf_counter() - started) * 1000)
    return ours, plain


def wait_inflight(port: int, want: int, timeout: float = 60.0) -> int:
    """Block until the slow target holds `want` open requests; returns how many it holds."""
    deadline = time.monotonic() + timeout
    held = 0
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as resp:
            held = json.loads(resp.read())["open_slow"]
        if held >= want:
            return held
        time.sleep(0.05)
    raise RuntimeError(f"only {held} of {want} requests reached the slow target")


def wait_drained(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as resp:
            if json.loads(resp.read())["open_slow"] == 0:
                return
        time.sleep(0.1)


def rss_at_inflight(b: Bench) -> tuple[float, float]:
    """(worker RSS MB, gather process RSS MB), each while `inflight` fetches wait on the slow target."""
    n = b.profile.inflight
    queue = BENCH_QUEUE + ":rss"
    [worker] = b.spawn_workers(1, queue_name=queue, concurrency=n)
    try:
        urls = [f"http://127.0.0.1:{b.slow.port}/slow/{i}" for i in range(n + n // 2)]

        async def submit() -> None:
            async with Client(b.settings(queue_name=queue, concurrency=n)) as client:
                await client.submit(urls)

        asyncio.run(submit())
        wait_inflight(b.slow.port, n)
        ours = procs.rss_mb(worker.pid)
    finally:
        worker.stop()
    wait_drained(b.slow.port)
    gather = procs.GatherProc(f"http://127.0.0.1:{b.slow.port}/slow", 0, n, n, b.loop)
    try:
        gather.wait_ready()
        gather.go()
        wait_inflight(b.slow.port, n)
        theirs = procs.rss_mb(gather.proc.pid)
    finally:
        gather.proc.kill()
        gather.proc.communicate()
    wait_drained(b.slow.port)
    return ours, theirs


def throughput(
    b: Bench, nworkers: int, workers: list[procs.WorkerProcess], first: int
) -> tuple[GatherRun, E2E]:
    """Best of `rounds` for each side, the sides interleaved so that a noisy neighbour hits both alike."""
    n = b.profile.urls
    asyncio.run(fetchfleet_run(b, workers, min(n, 2000), first))  # warm: connections, code paths
    first += n
    gathers, ours = [], []
    for _ in range(b.profile.rounds):
        # Both sides as whole processes timed from outside: the CLI and the gather script (issue 16).
        gathers.append(gather_whole(b, nworkers, n, first))
        ours.append(cli_run(b, workers, n, first + n))
        first += 2 * n
    print(
        f"{nworkers} worker(s): {[round(e.rate) for e in ours]} URLs/s; "
        f"gather x{nworkers}: {[round(g.rate) for g in gathers]}",
        file=sys.stderr,
    )
    return max(gathers, key=lambda g: g.rate), max(ours, key=lambda e: e.rate)


def robots_comparison(b: Bench, first: int) -> tuple[list[E2E], list[E2E], int, int]:
    """(runs obeying robots.txt, runs ignoring it, robots.txt requests made, origins): one worker each,
    on queues of their own, the runs interleaved so that other load hits both sides alike."""
    n = b.profile.urls
    obey_q, ignore_q = BENCH_QUEUE + ":obey", BENCH_QUEUE + ":ignore"
    obey = b.spawn_workers(1, queue_name=obey_q, robots="obey")
    ignore = b.spawn_workers(1, queue_name=ignore_q, robots="ignore")
    try:
        asyncio.run(fetchfleet_run(b, obey, min(n, 2000), first, queue_name=obey_q))  # warm both
        asyncio.run(fetchfleet_run(b, ignore, min(n, 2000), first + n, queue_name=ignore_q))
        first += 2 * n
        obeyed, ignored = [], []
        for _ in range(b.profile.rounds):
            obeyed.append(asyncio.run(fetchfleet_run(b, obey, n, first, queue_name=obey_q)))
            ignored.append(asyncio.run(fetchfleet_run(b, ignore, n, first + n, queue_name=ignore_q)))
            first += 2 * n
    finally:
        for w in (*obey, *ignore):
            w.stop()
    # Each robots.txt fetch is logged once by the worker that made it ("<origin>/robots.txt: ..."); the
    # Redis cache serves every later worker, so count over every worker of the benchmark.
    lines = [
        line
        for path in b.workdir.glob("worker-*.log")
        for line in path.read_text(errors="replace").splitlines()
        if "/robots.txt: " in line
    ]
    origins = {line.split("/robots.txt: ")[0].rsplit(" ", 1)[-1] for line in lines}
    print(
        f"robots obey: {[round(e.rate) for e in obeyed]} URLs/s; ignore: {[round(e.rate) for e in ignored]}",
        file=sys.stderr,
    )
    return obeyed, ignored, len(lines), len(origins)


def robots_rows(b: Bench) -> None:
    obeyed_runs, ignored_runs, fetched, origins = robots_comparison(b, 200_000_000)
    obeyed = max(obeyed_runs, key=lambda e: e.rate)
    ignored = max(ignored_runs, key=lambda e: e.rate)
    ratio = obeyed.rate / ignored.rate
    # On a loaded machine the rate swings by more than the 2 % looked for; the worker's own CPU per URL
    # (the least of the rounds) is what robots.txt can cost, and holds still far better.
    n = b.profile.urls
    cpu_obey = min(e.worker_cpu for e in obeyed_runs) / n * 1e6
    cpu_ignore = min(e.worker_cpu for e in ignored_runs) / n * 1e6
    b.rows += [
        Row("throughput, robots obeyed, 1 worker (URLs/s)", obeyed.rate, "FETCHFLEET_ROBOTS=ignore",
            ignored.rate, ">= 0.98x", ratio >= 0.98),
        Row("worker CPU us/URL, robots obeyed", cpu_obey, "FETCHFLEET_ROBOTS=ignore", cpu_ignore,
            "<= 1.02x", cpu_obey <= cpu_ignore * 1.02),
        Row("robots.txt requests, whole benchmark", fetched, "origins fetched from", origins,
            "one per origin", fetched == origins),
    ]  # fmt: skip


def run(b: Bench) -> None:
    p = b.profile
    n = p.urls
    print(
        f"target: {b.http.kind} on 127.0.0.1:{b.http.port}; loop: {b.loop}; concurrency {b.concurrency}; "
        f"chunk size {b.chunk_size}; {n:,} URLs per run, best of {p.rounds}",
        file=sys.stderr,
    )
    workers = b.spawn_workers(1)
    g1, one = throughput(b, 1, workers, 0)
    lat, plain = asyncio.run(latency_samples(b, p.latency_samples))
    workers += b.spawn_workers(1)
    g2, two = throughput(b, 2, workers, 100_000_000)
    for w in workers:
        w.stop()

    enq, enq_arq = asyncio.run(enqueue_rates(b, p.enqueue_urls))
    enq_cli = cli_enqueue_rate(b, p.enqueue_urls)
    col, col_raw = asyncio.run(collection_rates(b, one.batch_id, n))
    stored, doc_bytes = asyncio.run(bytes_per_result(b, one.batch_id, one.out, n))
    rss, rss_gather = rss_at_inflight(b)
    cost = redis_cost(b, p.redis_workers, p.redis_urls)

    r1, r2 = one.rate / g1.rate, two.rate / g2.rate
    p50, p99 = percentile(lat, 50), percentile(lat, 99)
    us = 1e6 / n
    b.rows += [
        Row("throughput, 1 worker (URLs/s)", one.rate, "gather, 1 process", g1.rate, ">= 0.85x", r1 >= 0.85),
        Row("throughput, 2 workers (URLs/s)", two.rate, "gather, 2 processes", g2.rate,
            ">= 0.85x", r2 >= 0.85),
        Row("enqueue, Client.submit (URLs/s into Redis)", enq, "arq enqueue_job, 1 job/URL", enq_arq,
            ">= 50,000", enq >= 50_000),
        Row("enqueue, `fetchfleet submit FILE` (URLs/s)", enq_cli, "arq enqueue_job, 1 job/URL", enq_arq,
            ">= 50,000", enq_cli >= 50_000),
        Row("collection (results/s out)", col, "raw XRANGE pages", col_raw, ">= 50,000", col >= 50_000),
        Row("latency p50, 1 URL submit->result (ms)", p50, "one GET, warm session", percentile(plain, 50),
            "<= 5 ms", p50 <= 5),
        Row("latency p99, 1 URL submit->result (ms)", p99, "one GET, warm session", percentile(plain, 99),
            "<= 15 ms", p99 <= 15),
        Row(f"worker RSS, {p.inflight:,} in flight (MB)", rss, f"gather, {p.inflight:,} in flight",
            rss_gather, "<= 200 MB", rss <= 200),
        Row("Redis bytes per stored result", stored, "result JSON bytes", doc_bytes),
        # Where the CPU goes: on 2 cores, whoever needs less CPU per URL fetches more URLs per second.
        Row("CPU us/URL, 1 worker: whole machine", one.machine_cpu(n), "gather + target",
            (g1.cpu + g1.target_cpu) * 1e6),
        Row("  the worker", one.worker_cpu * us, "the gather process", g1.cpu * 1e6),
        Row("  redis-server", one.redis_cpu * us, "-", None),
        Row("  the producer (submit + collect)", one.producer_cpu * us, "-", None),
        Row("  the HTTP target", one.target_cpu * us, "the HTTP target", g1.target_cpu * 1e6),
        Row("CPU us/URL, 2 workers: whole machine", two.machine_cpu(n), "2 gathers + target",
            (g2.cpu + g2.target_cpu) * 1e6),
        Row("Redis commands per URL (Lua's own calls too)", one.redis_commands / n, "-", None),
        Row(f"Redis commands per URL, {cost.workers} workers (commandstats)", cost.commands_per_url, "-",
            None, "<= 2", cost.commands_per_url <= 2),
        Row(f"Redis CPU us per URL, {cost.workers} workers", cost.cpu_us_per_url, "-", None, "<= 8",
            cost.cpu_us_per_url <= 8),
        Row(f"idle Redis commands/s per worker ({cost.workers} idle)", cost.idle_commands_per_worker_s,
            "-", None, "<= 1", cost.idle_commands_per_worker_s <= 1),
    ]  # fmt: skip
    robots_rows(b)


async def bytes_per_result(b: Bench, batch_id: str, out: Path, n: int) -> tuple[float, float]:
    """(Redis memory of the batch's keys per result, mean result document size)."""
    async with Client(b.settings()) as client:
        used = 0
        for key in batch_keys(batch_id):
            used += int(await client.redis.memory_usage(key, samples=0) or 0)
    docs = out.read_bytes().splitlines()
    return used / n, sum(map(len, docs)) / len(docs)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny inputs: checks that every row can be measured"
    )
    parser.add_argument("--rounds", type=int, help="throughput runs per side (best counts)")
    parser.add_argument("--urls", type=int, help="URLs per throughput run")
    parser.add_argument(
        "--profile",
        choices=("floor", "web"),
        default="floor",
        help="floor: plain HTTP, one host, no latency (the CPU floor); web: HTTPS, 1,000 hosts through a "
        "local name server, 50 ms per response (docs/benchmark.md)",
    )
    parser.add_argument(
        "--concurrency", type=int, help="fetches in flight, both sides (floor: 100; web: the profile's)"
    )
    parser.add_argument("--chunk-size", type=int, default=100)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop", help="both sides")
    parser.add_argument("--target", choices=("auto", "nginx", "python"), default="auto")
    parser.add_argument("--target-procs", type=int, default=1)
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    parser.add_argument(
        "--robots-only", action="store_true", help="only the robots.txt rows: obey against ignore"
    )
    args = parser.parse_args()
    precompile()
    profile = PROFILES["quick" if args.quick else "full"]
    overrides = {k: v for k, v in (("rounds", args.rounds), ("urls", args.urls)) if v}
    profile = Profile(**{**profile.__dict__, **overrides})

    workdir = Path(tempfile.mkdtemp(prefix="fetchfleet-bench-"))
    red = redisproc.RedisProcess().start()
    cleanup: list = [red.close]
    try:
        if args.profile == "web":
            return web.main(args, profile, workdir, red, cleanup)
        args.concurrency = args.concurrency or 100
        port = redisproc.free_port()
        use_nginx = args.target == "nginx" or (args.target == "auto" and shutil.which("nginx"))
        http = (
            target.NginxTarget(port, args.target_procs)
            if use_nginx
            else target.PythonTarget(port, args.target_procs)
        )
        cleanup.append(http.close)
        slow = target.PythonTarget(redisproc.free_port(), 1, profile.slow_ms)
        cleanup.append(slow.close)
        b = Bench(profile, args.concurrency, args.chunk_size, args.loop, workdir, red, http, slow)
        load = os.getloadavg()[0]
        if args.robots_only:
            robots_rows(b)
        else:
            run(b)
        print()
        print(
            f"fetchfleet benchmark: {os.cpu_count()} CPUs (load {load:.2f} at start); target {http.kind}; "
            f"{args.loop}; concurrency {args.concurrency}; chunk {args.chunk_size}; "
            f"{profile.urls:,} URLs x best of {profile.rounds}"
        )
        print_table(b)
        if args.json:
            Path(args.json).write_text(
                json.dumps([{**r.__dict__, "ratio": r.ratio} for r in b.rows], indent=2)
            )
        failed = [r.name for r in b.rows if r.ok is False]
        return 1 if failed and not args.quick else 0
    finally:
        for close in reversed(cleanup):
            close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
