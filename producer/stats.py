"""`fetchfleet stats`: queue depth, live workers (from their heartbeats) and batches in progress."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

from producer.client import BatchStatus, Client, status_from_meta
from producer.heartbeats import WorkerInfo, live_hashes, live_workers
from producer.output import printable
from worker.contract import (
    BATCHES_KEY,
    ROBOTS_UNREACHABLE_KEY,
    THROTTLED_KEY,
    BatchState,
    batch_key,
    throttle_key,
)

RECENT_BATCHES = 200  # newest batches looked at; older ones in progress are still in `status BATCH`
POLITENESS_ROWS = 20  # throttled hosts and unreachable robots.txt shown: the ones that last longest


@dataclass(frozen=True, slots=True)
class ThrottledHost:
    """A host under adaptive backoff: its fleet-wide rate now, and until when it is paused."""

    host: str
    rate: float  # requests per second allowed now (it grows back while the host answers well)
    ceiling: float  # where the throttle is lifted
    paused_until_ms: int
    lapses_ms: int
    robots: str  # "unreachable" when one of the host's robots.txt answered 5xx, else "-"

    def as_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__slots__}


@dataclass(frozen=True, slots=True)
class ClusterStats:
    queue_depth: int
    workers: list[WorkerInfo]
    batches: list[BatchStatus]
    throttled: list[ThrottledHost] = field(default_factory=list)
    robots_unreachable: list[tuple[str, int]] = field(default_factory=list)  # (origin, disallowed until ms)

    def as_dict(self) -> dict[str, Any]:
        return {
            "queue_depth": self.queue_depth,
            "workers": [w.as_dict() for w in self.workers],
            "batches": [b.as_dict() for b in self.batches],
            "throttled_hosts": [t.as_dict() for t in self.throttled],
            "robots_unreachable": [{"origin": o, "until_ms": u} for o, u in self.robots_unreachable],
        }


async def batches_in_progress(client: Client) -> list[BatchStatus]:
    ids = await client.redis.zrevrange(BATCHES_KEY, 0, RECENT_BATCHES - 1)
    found = await live_hashes(client.redis, BATCHES_KEY, ids, batch_key)
    statuses = [status_from_meta(bid, meta) for bid, meta in found.items()]
    running = (BatchState.QUEUED, BatchState.SUBMITTING)
    return sorted((s for s in statuses if s.state in running), key=lambda s: s.created_ms)


async def politeness(client: Client) -> tuple[list[ThrottledHost], list[tuple[str, int]]]:
    """The hosts under adaptive backoff and the origins whose robots.txt is unreachable, a bounded few."""
    r = client.redis
    now_ms = int(time.time() * 1000)
    hosts = await r.zrevrangebyscore(THROTTLED_KEY, "+inf", now_ms, start=0, num=POLITENESS_ROWS)
    rows = await r.zrevrangebyscore(
        ROBOTS_UNREACHABLE_KEY, "+inf", now_ms, start=0, num=POLITENESS_ROWS, withscores=True
    )
    unreachable = [(o.decode(), int(score)) for o, score in rows]
    bad_hosts = {o.partition("://")[2].rpartition(":")[0].strip("[]") for o, _ in unreachable}
    found = await live_hashes(r, THROTTLED_KEY, hosts, throttle_key)
    throttled = []
    for host, doc in found.items():
        d = {k.decode(errors="replace"): v.decode(errors="replace") for k, v in doc.items()}
        try:
            since, step = int(float(d.get("since", now_ms))), float(d.get("step", 0))
            ceiling, paused = float(d.get("ceil", 0)), int(float(d.get("paused", 0)))
            rate = min(ceiling, float(d.get("rate", 0)) + step * max(0, now_ms - since) / 1000)
        except ValueError:  # not written by a worker: not shown rather than a crash
            continue
        throttled.append(
            ThrottledHost(
                host=host,
                rate=round(rate, 2),
                ceiling=ceiling,
                paused_until_ms=paused,
                lapses_ms=since + int(max(0.0, ceiling - rate) / step * 1000) if step else since,
                robots="unreachable" if host in bad_hosts else "-",
            )
        )
    return throttled, unreachable


async def cluster_stats(client: Client) -> ClusterStats:
    depth = int(await client.redis.zcard(client.settings.queue_name))
    throttled, unreachable = await politeness(client)
    return ClusterStats(
        depth, await live_workers(client), await batches_in_progress(client), throttled, unreachable
    )


def politeness_lines(stats: ClusterStats, now_ms: int) -> list[str]:
    """Throttled hosts and unreachable robots.txt; nothing at all while there are none."""
    lines = [f"throttled hosts: {len(stats.throttled)}"] if stats.throttled else []
    for t in stats.throttled:
        paused = max(t.paused_until_ms - now_ms, 0) / 1000
        lines.append(
            f"  {printable(t.host)}  rate={t.rate:g}/s of {t.ceiling:g}/s paused={paused:.1f}s "
            f"robots={t.robots}"
        )
    if stats.robots_unreachable:
        lines.append(f"robots.txt unreachable: {len(stats.robots_unreachable)}")
        for origin, until in stats.robots_unreachable:
            lines.append(f"  {printable(origin)}  disallowed for {max(until - now_ms, 0) / 1000:.0f}s more")
    return lines


def _age(ms: int, now_ms: int) -> str:
    seconds = max(now_ms - ms, 0) // 1000
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def render_plain(stats: ClusterStats) -> str:
    now_ms = int(time.time() * 1000)
    lines = [f"queue depth: {stats.queue_depth} chunks", f"live workers: {len(stats.workers)}"]
    for w in stats.workers:
        lines.append(
            f"  {printable(w.id)}  host={printable(w.host)} pid={w.pid} "
            f"in_flight={w.in_flight}/{w.concurrency} "
            f"fetches/s={w.fetches_per_s:g} up={_age(w.started_ms, now_ms)}"
        )
    lines.append(f"batches in progress: {len(stats.batches)}")
    for b in stats.batches:
        pct = 100.0 * b.done / b.submitted if b.submitted else 0.0
        lines.append(
            f"  {printable(b.batch_id)}  {b.state.value} {b.done}/{b.submitted} ({pct:.0f}%) "
            f"failed={b.failed} age={_age(b.created_ms, now_ms)}"
        )
    lines += politeness_lines(stats, now_ms)
    return "\n".join(lines)


def render_rich(stats: ClusterStats) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text  # a Text cell is shown as it is: no [markup] read from stored strings

    now_ms = int(time.time() * 1000)
    console = Console()
    console.print(f"queue depth: [bold]{stats.queue_depth}[/] chunks")
    workers = Table(title=f"live workers ({len(stats.workers)})")
    for col in ("id", "host", "pid", "in flight", "fetches/s", "up"):
        workers.add_column(col, justify="left" if col in ("id", "host") else "right")
    for w in stats.workers:
        workers.add_row(
            Text(printable(w.id)), Text(printable(w.host)), str(w.pid), f"{w.in_flight}/{w.concurrency}",
            f"{w.fetches_per_s:g}",
            _age(w.started_ms, now_ms),
        )  # fmt: skip
    console.print(workers)
    batches = Table(title=f"batches in progress ({len(stats.batches)})")
    for col in ("batch", "state", "done", "submitted", "failed", "progress", "age"):
        batches.add_column(col, justify="left" if col in ("batch", "state") else "right")
    for b in stats.batches:
        pct = 100.0 * b.done / b.submitted if b.submitted else 0.0
        batches.add_row(
            Text(printable(b.batch_id)), b.state.value, str(b.done), str(b.submitted), str(b.failed),
            f"{pct:.0f}%",
            _age(b.created_ms, now_ms),
        )  # fmt: skip
    console.print(batches)
    for line in politeness_lines(stats, now_ms):
        console.print(line, markup=False, highlight=False)


def show(stats: ClusterStats) -> None:
    if sys.stdout.isatty():
        render_rich(stats)
    else:
        print(render_plain(stats))
