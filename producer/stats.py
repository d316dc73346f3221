"""`fetchfleet stats`: queue depth, live workers (from their heartbeats) and batches in progress."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from producer.client import BatchStatus, Client, status_from_meta
from producer.output import printable
from worker.contract import BATCHES_KEY, WORKERS_KEY, BatchState, batch_key, worker_key

RECENT_BATCHES = 200  # newest batches looked at; older ones in progress are still in `status BATCH`


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    id: str
    host: str
    pid: int
    in_flight: int
    concurrency: int
    fetches: int
    fetches_per_s: float
    started_ms: int
    seen_ms: int

    @classmethod
    def from_hash(cls, raw: dict[bytes, bytes]) -> WorkerInfo:
        """From a heartbeat hash; whatever else a Redis writer left there reads as 0 or text, no crash."""
        d = {k.decode(errors="replace"): v.decode(errors="replace") for k, v in raw.items()}
        return cls(
            id=d.get("id", "?"),
            host=d.get("host", "?"),
            pid=_number(d, "pid", int),
            in_flight=_number(d, "in_flight", int),
            concurrency=_number(d, "concurrency", int),
            fetches=_number(d, "fetches", int),
            fetches_per_s=_number(d, "fetches_per_s", float),
            started_ms=_number(d, "started_ms", int),
            seen_ms=_number(d, "seen_ms", int),
        )

    def as_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__slots__}


def _number(d: dict[str, str], key: str, kind: type[int] | type[float]) -> Any:
    try:
        value = kind(d.get(key, 0))
    except (ValueError, OverflowError):
        return kind(0)
    return value if value == value and abs(value) != float("inf") else kind(0)  # no NaN or infinity


@dataclass(frozen=True, slots=True)
class ClusterStats:
    queue_depth: int
    workers: list[WorkerInfo]
    batches: list[BatchStatus]

    def as_dict(self) -> dict[str, Any]:
        return {
            "queue_depth": self.queue_depth,
            "workers": [w.as_dict() for w in self.workers],
            "batches": [b.as_dict() for b in self.batches],
        }


async def _live_hashes(
    redis: Redis, index_key: str, members: list[bytes], key_of: Callable[[str], str]
) -> dict[str, dict[bytes, bytes]]:
    """The hashes of an index zset's members, in order; members whose hash expired leave the index."""
    ids = [m.decode(errors="replace") for m in members]
    if not ids:
        return {}
    async with redis.pipeline(transaction=False) as pipe:
        for member in ids:
            pipe.hgetall(key_of(member))
        docs = await pipe.execute()
    gone = [member for member, doc in zip(ids, docs, strict=True) if not doc]
    if gone:
        await redis.zrem(index_key, *gone)
    return {member: doc for member, doc in zip(ids, docs, strict=True) if doc}


async def live_workers(client: Client) -> list[WorkerInfo]:
    """Workers whose heartbeat has not expired; ids left behind by dead workers are dropped."""
    ids = await client.redis.zrange(WORKERS_KEY, 0, -1)
    found = await _live_hashes(client.redis, WORKERS_KEY, ids, worker_key)
    workers = [WorkerInfo.from_hash(doc) for doc in found.values()]
    return sorted(workers, key=lambda w: (w.host, w.id))


async def batches_in_progress(client: Client) -> list[BatchStatus]:
    ids = await client.redis.zrevrange(BATCHES_KEY, 0, RECENT_BATCHES - 1)
    found = await _live_hashes(client.redis, BATCHES_KEY, ids, batch_key)
    statuses = [status_from_meta(bid, meta) for bid, meta in found.items()]
    running = (BatchState.QUEUED, BatchState.SUBMITTING)
    return sorted((s for s in statuses if s.state in running), key=lambda s: s.created_ms)


async def cluster_stats(client: Client) -> ClusterStats:
    depth = int(await client.redis.zcard(client.settings.queue_name))
    return ClusterStats(depth, await live_workers(client), await batches_in_progress(client))


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


def show(stats: ClusterStats) -> None:
    if sys.stdout.isatty():
        render_rich(stats)
    else:
        print(render_plain(stats))
