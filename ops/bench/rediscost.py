"""What Redis pays per URL with many workers, and per idle worker: INFO commandstats and CPU deltas.

The figures that say how many workers one Redis serves (docs/benchmark.md has the arithmetic).
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass

from redis.asyncio import Redis

IDLE_SECONDS = 5.0


@dataclass(frozen=True)
class RedisCost:
    workers: int
    urls: int
    commands_per_url: float
    cpu_us_per_url: float
    idle_commands_per_worker_s: float
    top: list[tuple[str, float]]  # (command, calls per URL), most first


async def commandstats(r: Redis) -> dict[str, int]:
    """Calls per command so far (commands that scripts run are counted under their own names)."""
    info = await r.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()}


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


async def busy_cost(r: Redis, run: object, n: int) -> tuple[float, float, list[tuple[str, float]]]:
    """(commands per URL, Redis CPU us per URL, top commands) over `run`, a coroutine fetching n URLs."""
    before, cpu0 = await commandstats(r), await redis_cpu(r)
    await run  # type: ignore[misc]
    after, cpu1 = await commandstats(r), await redis_cpu(r)
    calls = delta(after, before)
    calls.pop("info", None)
    top = sorted(((k, v / n) for k, v in calls.items()), key=lambda kv: -kv[1])
    return sum(calls.values()) / n, (cpu1 - cpu0) / n * 1e6, top


def report(cost: RedisCost) -> None:
    top = ", ".join(f"{k} {v:.2f}" for k, v in cost.top[:8])
    print(
        f"Redis with {cost.workers} workers, {cost.urls:,} URLs: {cost.commands_per_url:.2f} commands/URL "
        f"({top}); {cost.cpu_us_per_url:.1f} us CPU/URL; idle {cost.idle_commands_per_worker_s:.1f} "
        "commands/s per worker",
        file=sys.stderr,
    )
