"""What every benchmark script shares: the run's set-up (Bench), its rows and table, and one fetchfleet run
timed from the first submit to the last result written, each index checked exactly once."""

from __future__ import annotations

import asyncio
import compileall
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from redis.asyncio import Redis

from ops.bench import target
from producer.client import Client
from producer.output import open_writer
from tests.support import procs
from tests.support import redisserver as redisproc
from worker.settings import Settings, load_settings

BENCH_QUEUE = "fetchfleet:bench"


IDLE_GAP_S = 0.05  # between latency samples


def precompile() -> None:
    """Bytecode for fetchfleet's own modules, as an installed package has it (pip compiles at install).
    Where PYTHONDONTWRITEBYTECODE is set (this project's CI machines, some sandboxes) every worker and
    CLI process would otherwise compile them again at start-up, 30-75 ms each, while the gather script
    compiles one file: a cost of the machine, not of fetchfleet."""
    for package in ("worker", "producer", "fetchfleet", "ops"):
        compileall.compile_dir(procs.ROOT / package, quiet=1)


@dataclass(frozen=True)
class Profile:
    urls: int  # per throughput run
    rounds: int
    latency_samples: int
    inflight: int  # fetches in flight for the memory row (the issue asks for 1,000)
    slow_ms: int
    enqueue_urls: int
    redis_workers: int = 12  # the Redis cost rows: this many workers on one Redis
    redis_urls: int = 20_000


PROFILES = {
    "full": Profile(
        urls=30_000, rounds=3, latency_samples=300, inflight=1000, slow_ms=6000, enqueue_urls=200_000
    ),
    "quick": Profile(
        urls=1_000,
        rounds=1,
        latency_samples=20,
        inflight=1000,
        slow_ms=3000,
        enqueue_urls=5_000,
        redis_workers=12,
        redis_urls=2_000,
    ),
}


@dataclass
class Row:
    name: str
    value: float
    baseline_name: str
    baseline: float | None
    target: str = "-"
    ok: bool | None = None
    unit: str = ""

    @property
    def ratio(self) -> float | None:
        return self.value / self.baseline if self.baseline else None


@dataclass
class Bench:
    profile: Profile
    concurrency: int
    chunk_size: int
    loop: str
    workdir: Path
    redis: redisproc.RedisProcess
    http: target.PythonTarget | target.NginxTarget
    slow: target.PythonTarget
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http.port}"

    def settings(self, db: int = 0, **extra: object) -> Settings:
        values: dict[str, object] = {
            "redis_url": f"redis://127.0.0.1:{self.redis.port}/{db}",
            "queue_name": BENCH_QUEUE,
            "allow_private_networks": True,
            "concurrency": self.concurrency,
            "chunk_size": self.chunk_size,
            "max_queued_chunks": 1_000_000,
        }
        values.update(extra)
        return load_settings(**values)

    def spawn_workers(self, n: int, **extra: object) -> list[procs.WorkerProcess]:
        s = self.settings(**extra)
        env = procs.fetchfleet_env(
            s.redis_url,
            queue_name=s.queue_name,
            allow_private_networks=True,
            concurrency=s.concurrency,
            chunk_size=s.chunk_size,
            robots=s.robots,
        )
        workers = []
        for _ in range(n):
            log = self.workdir / f"worker-{len(list(self.workdir.glob('worker-*.log')))}.log"
            workers.append(procs.WorkerProcess(env, log, procs.worker_command(self.loop)))
        try:
            for w in workers:
                w.wait_ready()
        except BaseException:
            for w in workers:  # one failed to start: none of them outlives the benchmark
                w.proc.kill()
                w.proc.wait()
            raise
        return workers


def target_cpu(b: Bench) -> float:
    return sum(procs.cpu_seconds(pid) for pid in b.http.pids)


@dataclass
class E2E:
    rate: float
    batch_id: str
    out: Path
    redis_commands: int
    worker_cpu: float
    redis_cpu: float
    producer_cpu: float
    target_cpu: float

    def machine_cpu(self, n: int) -> float:
        """CPU microseconds per URL of every process taking part: workers, Redis, producer, target."""
        return (self.worker_cpu + self.redis_cpu + self.producer_cpu + self.target_cpu) / n * 1e6


async def redis_info(r: Redis) -> tuple[int, float]:
    stats, cpu = await r.info("stats"), await r.info("cpu")
    return int(stats["total_commands_processed"]), float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def check_exactly_once(out: Path, n: int) -> None:
    """Speed must never cost a result: every index exactly once, every fetch a 200 with its 1 KiB."""
    seen = bytearray(n)
    lines = 0
    for line in out.read_bytes().splitlines():
        doc = orjson.loads(line)
        lines += 1
        if seen[doc["index"]]:
            raise RuntimeError(f"duplicate result for index {doc['index']}")
        seen[doc["index"]] = 1
        if doc["status"] != 200 or doc["size"] != target.BODY_SIZE:
            raise RuntimeError(f"bad result: {doc}")
    if lines != n or not all(seen):
        raise RuntimeError(f"{n - sum(seen)} results missing of {n}")


async def fetchfleet_run(
    b: Bench,
    workers: list[procs.WorkerProcess],
    n: int,
    first: int,
    urls: list[str] | None = None,
    **extra: object,
) -> E2E:
    """Submit n URLs, collect every result to a file; the time from the first submit to the last line."""
    if urls is None:
        urls = [f"{b.base}/ok/{i}" for i in range(first, first + n)]
    out = b.workdir / f"e2e-{first}.jsonl"
    async with Client(b.settings(**extra)) as client:
        cmds0, rcpu0 = await redis_info(client.redis)
        wcpu0 = sum(procs.cpu_seconds(w.pid) for w in workers)
        tcpu0 = target_cpu(b)
        pcpu0 = time.process_time()
        started = time.perf_counter()
        batch_id = await client.submit(urls)
        writer = open_writer(str(out), "jsonl")
        async for _cursor, doc in client.results(batch_id, follow=True):
            writer.write(doc)
        writer.close()
        elapsed = time.perf_counter() - started
        pcpu = time.process_time() - pcpu0
        wcpu = sum(procs.cpu_seconds(w.pid) for w in workers) - wcpu0
        tcpu = target_cpu(b) - tcpu0
        cmds1, rcpu1 = await redis_info(client.redis)
    check_exactly_once(out, n)
    return E2E(n / elapsed, batch_id, out, cmds1 - cmds0, wcpu, rcpu1 - rcpu0, pcpu, tcpu)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.2f}"


def print_table(b: Bench) -> None:
    headers = ("measure", "fetchfleet", "baseline (same run)", "value", "ratio", "target", "ok")
    rows = [
        (
            r.name,
            fmt(r.value),
            r.baseline_name,
            fmt(r.baseline),
            "-" if r.ratio is None else f"{r.ratio:.2f}x",
            r.target,
            "-" if r.ok is None else ("yes" if r.ok else "NO"),
        )
        for r in b.rows
    ]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    print(line)
    print("-" * len(line))
    for row in rows:
        print(
            "  ".join(
                c.ljust(w) if i in (0, 2, 5, 6) else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )


async def pickup_ms(settings: Settings, urls: list[str]) -> list[float]:
    """Milliseconds from `Client.submit` of one URL to its result, one URL at a time.

    IDLE_GAP_S between them, as a user sends one URL now and then: the worker has finished its last
    chunk and waits idle on the wake list. Back to back, the next submit would land while arq still
    finishes the last chunk, and wait for its next poll (FETCHFLEET_POLL_DELAY) instead.
    """
    took: list[float] = []
    async with Client(settings) as client:
        for url in urls:
            started = time.perf_counter()
            batch_id = await client.submit([url])
            gen = client.results(batch_id, follow=True)
            async for _cursor, _doc in gen:
                break
            took.append((time.perf_counter() - started) * 1000)
            await gen.aclose()
            await asyncio.sleep(IDLE_GAP_S)
    return took
