"""Live workers, from their heartbeat hashes: what `stats` lists and what `submit --wait` watches for."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from producer.client import Client
from worker.contract import WORKERS_KEY, worker_key


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


async def live_hashes(
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
    found = await live_hashes(client.redis, WORKERS_KEY, ids, worker_key)
    workers = [WorkerInfo.from_hash(doc) for doc in found.values()]
    return sorted(workers, key=lambda w: (w.host, w.id))
