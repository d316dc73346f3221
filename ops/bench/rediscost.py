"""What Redis pays per URL with many workers, and per idle worker: INFO commandstats and CPU deltas.

The figures that say how many workers one Redis serves (docs/benchmark.md has the arithmetic).
`python -m ops.bench.rediscost [--workers 12] [--urls 20000]` measures only these rows (the floor
profile's set-up: private redis-server, local HTTP target, workers as processes) and prints where
Redis's time goes: calls and microseconds per URL of each command (INFO commandstats `usec`; a
script's EVALSHA counts the commands it runs too, which are also listed under their own names).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from redis.asyncio import Redis

from ops.bench import target
from ops.bench.harness import Bench, Profile, fetchfleet_run, precompile
from producer.client import Client
from tests.support import redisserver as redisproc

IDLE_SECONDS = 5.0


@dataclass(frozen=True)
class RedisCost:
    workers: int
    urls: int
    commands_per_url: float
    cpu_us_per_url: float
    idle_commands_per_worker_s: float
    top: list[tuple[str, float]]  # (command, calls per URL), most first
    usec: list[tuple[str, float]] = field(default_factory=list)  # (command, Redis us per URL), most first
    reads_per_url: float = 0.0  # client reads Redis served (INFO stats): its round trips per URL
    rate: float = 0.0  # URLs/s of the measured run, submit to the last result collected


async def commandstats(r: Redis) -> dict[str, int]:
    """Calls per command so far (commands that scripts run are counted under their own names)."""
    info = await r.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()}


async def commandusec(r: Redis) -> dict[str, int]:
    """Microseconds Redis spent in each command so far (INFO commandstats `usec`)."""
    info = await r.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["usec"]) for k, v in info.items()}


async def reads(r: Redis) -> int:
    """Reads from clients Redis has processed (each a system call and a pass of its event loop)."""
    return int((await r.info("stats"))["total_reads_processed"])


async def redis_cpu(r: Redis) -> float:
    cpu = await r.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0) > 0}


async def idle_rate(r: Redis, workers: int, seconds: float = IDLE_SECONDS) -> float:
    """Redis commands per second per worker while `workers` workers wait for work (INFO calls excluded)."""
    await asyncio.sleep(1.0)  # start-up traffic over
    before = await commandstats(r)
    started = time.perf_counter()
    await asyncio.sleep(seconds)
    after = await commandstats(r)
    elapsed = time.perf_counter() - started
    calls = delta(after, before)
    calls.pop("info", None)  # this measurement's own
    return sum(calls.values()) / elapsed / workers


async def busy_cost(
    r: Redis, run: object, n: int
) -> tuple[float, float, list[tuple[str, float]], list[tuple[str, float]], float]:
    """(commands per URL, Redis CPU us per URL, top commands, top commands by us, reads per URL) over
    `run`, a coroutine fetching n URLs."""
    before, cpu0, usec0, reads0 = (
        await commandstats(r),
        await redis_cpu(r),
        await commandusec(r),
        await reads(r),
    )
    await run  # type: ignore[misc]
    after, cpu1, usec1, reads1 = (
        await commandstats(r),
        await redis_cpu(r),
        await commandusec(r),
        await reads(r),
    )
    calls = delta(after, before)
    calls.pop("info", None)
    spent = delta(usec1, usec0)
    spent.pop("info", None)
    top = sorted(((k, v / n) for k, v in calls.items()), key=lambda kv: -kv[1])
    by_us = sorted(((k, v / n) for k, v in spent.items()), key=lambda kv: -kv[1])
    return sum(calls.values()) / n, (cpu1 - cpu0) / n * 1e6, top, by_us, (reads1 - reads0 - 4) / n


def report(cost: RedisCost) -> None:
    top = ", ".join(f"{k} {v:.2f}" for k, v in cost.top[:8])
    print(
        f"Redis with {cost.workers} workers, {cost.urls:,} URLs: {cost.commands_per_url:.2f} commands/URL "
        f"({top}); {cost.cpu_us_per_url:.1f} us CPU/URL at {cost.rate:,.0f} URLs/s; "
        f"idle {cost.idle_commands_per_worker_s:.1f} "
        "commands/s per worker",
        file=sys.stderr,
    )
    if cost.usec:
        spent = ", ".join(f"{k} {v:.2f}" for k, v in cost.usec[:10])
        print(f"  Redis us per URL by command (commandstats usec): {spent}", file=sys.stderr)
        print(f"  client reads (round trips) per URL: {cost.reads_per_url:.3f}", file=sys.stderr)


def redis_cost(b: Bench, nworkers: int, n: int) -> RedisCost:
    """Redis's commands and CPU per URL with `nworkers` workers on it, and what each costs idle."""
    workers = b.spawn_workers(nworkers)
    try:

        async def measure() -> RedisCost:
            async with Client(b.settings()) as client:
                idle = await idle_rate(client.redis, nworkers)
                run = fetchfleet_run(b, workers, n, 200_000_000)
                started = time.perf_counter()
                per_url, cpu, top, usec, reads = await busy_cost(client.redis, run, n)
                rate = n / (time.perf_counter() - started)
            return RedisCost(nworkers, n, per_url, cpu, idle, top, usec, reads, rate)

        cost = asyncio.run(measure())
    finally:
        for w in workers:
            w.proc.terminate()
        for w in workers:
            w.stop()
    report(cost)
    return cost


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=12)
    parser.add_argument("--urls", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--chunk-size", type=int, default=100)
    args = parser.parse_args()
    precompile()
    profile = Profile(
        urls=args.urls, rounds=1, latency_samples=0, inflight=0, slow_ms=1000, enqueue_urls=0,
        redis_workers=args.workers, redis_urls=args.urls,
    )  # fmt: skip
    workdir = Path(tempfile.mkdtemp(prefix="fetchfleet-rediscost-"))
    red = redisproc.RedisProcess().start()
    cleanup = [red.close]
    try:
        port = redisproc.free_port()
        http = target.NginxTarget(port) if shutil.which("nginx") else target.PythonTarget(port)
        cleanup.append(http.close)
        b = Bench(profile, args.concurrency, args.chunk_size, "uvloop", workdir, red, http, http)  # type: ignore[arg-type]
        load = os.getloadavg()[0]
        redis_cost(b, args.workers, args.urls)
        print(f"(load {load:.2f} at start, {os.getloadavg()[0]:.2f} at the end; {os.cpu_count()} CPUs)")
    finally:
        for close in reversed(cleanup):
            close()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
