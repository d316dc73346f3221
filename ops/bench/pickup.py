"""One URL, submit to result, on an idle worker: p50 / p99, and with `--trace` where the time goes.

    python -m ops.bench.pickup                 # 200 samples, 50 ms apart, one worker
    python -m ops.bench.pickup --trace 5       # also 5 samples with Redis's MONITOR timeline

Sets up a private redis-server, a raw asyncio HTTP target and one worker process (as `python -m
ops.bench.bench` does for its latency rows) and times `Client.submit` of one URL to its first result out
of `Client.results(follow=True)`. `--trace` prints, per traced sample, each Redis command from the
submit on with its offset in ms (MONITOR's own clock): which step waits for what.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from redis.asyncio import Redis

from ops.bench import target
from ops.bench.harness import IDLE_GAP_S, percentile, pickup_ms, precompile
from producer.client import Client
from tests.support import procs
from tests.support import redisserver as redisproc
from worker.settings import load_settings

QUEUE = "fetchfleet:pickup"


async def samples(redis_url: str, base: str, n: int) -> list[float]:
    return await pickup_ms(
        load_settings(redis_url=redis_url, queue_name=QUEUE), [f"{base}/p/{i}" for i in range(n)]
    )


async def traced(redis_url: str, base: str, n: int) -> None:
    """`n` samples with MONITOR on: every command's offset from the first of the submit."""
    async with Client(load_settings(redis_url=redis_url, queue_name=QUEUE)) as client:
        mon_conn = Redis.from_url(redis_url)
        async with mon_conn.monitor() as m:
            lines: list[dict] = []

            async def listen() -> None:
                async for cmd in m.listen():
                    lines.append(cmd)

            task = asyncio.create_task(listen())
            await asyncio.sleep(0.2)
            for i in range(n):
                lines.clear()
                t0 = time.time()
                started = time.perf_counter()
                batch_id = await client.submit([f"{base}/t/{i}"])
                gen = client.results(batch_id, follow=True)
                async for _cursor, _doc in gen:
                    break
                took = (time.perf_counter() - started) * 1000
                await gen.aclose()
                await asyncio.sleep(0.3)
                print(f"--- sample {i}: {took:.2f} ms", file=sys.stderr)
                for c in lines:
                    at = (float(c["time"]) - t0) * 1000
                    if at > took + 5:
                        break
                    who = c.get("client_port", "")
                    print(f"  {at:8.2f} ms  {who:>6}  {c['command'][:110]}", file=sys.stderr)
                await asyncio.sleep(IDLE_GAP_S)
            task.cancel()
        await mon_conn.aclose()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--trace", type=int, default=0, help="samples to trace with MONITOR")
    args = parser.parse_args()
    precompile()
    workdir = Path(tempfile.mkdtemp(prefix="fetchfleet-pickup-"))
    red = redisproc.RedisProcess().start()
    http = target.PythonTarget(redisproc.free_port())
    worker = None
    try:
        env = procs.fetchfleet_env(red.url, queue_name=QUEUE, allow_private_networks=True)
        worker = procs.WorkerProcess(env, workdir / "worker.log")
        worker.wait_ready()
        base = f"http://127.0.0.1:{http.port}"
        asyncio.run(samples(red.url, base, 10))  # warm-up: imports, connections
        load = os.getloadavg()[0]
        took = asyncio.run(samples(red.url, base, args.samples))
        end = os.getloadavg()[0]
        print(
            f"pickup, 1 URL submit->result, {len(took)} samples (load {load:.2f} -> {end:.2f}): "
            f"p50 {percentile(took, 50):.2f} ms, p99 {percentile(took, 99):.2f} ms, "
            f"mean {statistics.mean(took):.2f}, min {min(took):.2f}, max {max(took):.2f}"
        )
        if args.trace:
            asyncio.run(traced(red.url, base, args.trace))
    finally:
        if worker is not None:
            worker.stop()
        http.close()
        red.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
