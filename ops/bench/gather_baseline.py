"""The baseline: the best plain in-process `asyncio.gather` script a Python user would write.

One aiohttp ClientSession, a semaphore of the same concurrency as a worker, fetch and read every body;
uvloop when installed (as the worker uses it), no cookie jar, a connector sized to the concurrency.

    python ops/bench/gather_baseline.py http://127.0.0.1:8080 --count 20000 --concurrency 100

With `--wait-go` it warms its connections, prints `ready`, waits for a line on stdin and then runs, so
that the benchmark can start several copies at the same moment; it prints one JSON line of figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import aiohttp


async def fetch_all(
    base: str, first: int, count: int, concurrency: int, wait_go: bool, write: str | None = None
) -> dict[str, float]:
    sem = asyncio.Semaphore(concurrency)
    # --write: keep every page's text, as a script that uses the content would (ops/bench/bodies.py)
    out = open(write, "w", encoding="utf-8") if write else None  # noqa: SIM115
    connector = aiohttp.TCPConnector(limit=concurrency)
    ok = errors = 0

    async with aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar()) as session:

        async def fetch(url: str) -> None:
            nonlocal ok, errors
            async with sem:
                try:
                    async with session.get(url) as resp:
                        if out is not None:
                            out.write(await resp.text())
                            out.write("\n")
                        else:
                            await resp.read()
                        ok += resp.status == 200
                except aiohttp.ClientError:
                    errors += 1

        if wait_go:
            # Open the connections first, as a running worker already has them.
            await asyncio.gather(*(fetch(f"{base}/warm/{i}") for i in range(concurrency)))
            ok = errors = 0
            print("ready", flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        start, cpu = time.time(), time.process_time()
        await asyncio.gather(*(fetch(f"{base}/ok/{i}") for i in range(first, first + count)))
        if out is not None:
            out.close()  # flushed to the OS before the clock stops, like a worker's fsynced WARC
        end, cpu = time.time(), time.process_time() - cpu
    return {"start": start, "end": end, "cpu": cpu, "count": count, "ok": ok, "errors": errors}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("base", help="target base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--first", type=int, default=0, help="index of the first URL (distinct per copy)")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--wait-go", action="store_true")
    parser.add_argument("--write", metavar="PATH", help="write every page's text to this file")
    args = parser.parse_args()
    run = asyncio.run
    if args.loop == "uvloop":
        try:
            import uvloop

            run = uvloop.run
        except ImportError:
            pass
    figures = run(fetch_all(args.base, args.first, args.count, args.concurrency, args.wait_go, args.write))
    figures["rate"] = figures["count"] / (figures["end"] - figures["start"])
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
