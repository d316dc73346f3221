"""What `submit --wait` and `run` share: checking the input, batch options, collecting results, the report.

Both `producer.cli` and `producer.local` import this module, so neither imports the other.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
from pydantic import ValidationError

from producer.client import Client
from producer.heartbeats import live_workers
from producer.inputs import Entry, entries, scan, spool_stdin
from producer.messages import say
from producer.output import OrderedWriter, Output, ResultWriter, open_output, printable
from producer.progress import Progress
from producer.summary import Summary
from worker.awaited import awaited
from worker.background import stop_tasks
from worker.contract import BatchOptions, batch_key
from worker.errors import BatchError, OutputFailed, UsageError
from worker.pressure import RedisPressure
from worker.redisconn import redact
from worker.rediserrors import REDIS_DOWN, REDIS_ERRORS
from worker.settings import worker_only_variables

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_FETCH_FAILED = 3  # only with --fail-on: some URLs' results are failures
FORGET_EVERY = 1000  # results written between deletions of collected ones from Redis
UNREADABLE: tuple[type[BaseException], ...] = (*REDIS_DOWN, BatchError)  # a status read for a notice


def _err(message: str) -> None:
    say(message)


# ---- submit -------------------------------------------------------------------------------------


def prepare_input(source: str) -> tuple[Path, str, bool]:
    """(file to read, label for messages, is temporary)."""
    if source == "-":
        return spool_stdin(), "<stdin>", True
    path = Path(source)
    if path.is_dir():
        raise UsageError(f"{source}: is a directory; give a file with one URL (or JSON object) per line")
    if not path.exists():
        raise UsageError(f"{source}: no such file")
    if not path.is_file():
        # A pipe (`submit <(cmd)`, /dev/stdin) reads once, and the input is read twice: it was refused
        # as "no such file". Copied first, as standard input is.
        return spool_stdin(path), source, True
    return path, source, False


BAD_LINES_SHOWN = 20  # 5,000 bad lines must not scroll the one that explains them off the screen


def check_input(path: Path, label: str, max_body_bytes: int) -> tuple[int, str]:
    """Count and digest the input; on any bad line, name the first ones on stderr and stop with exit 2.

    `max_body_bytes`: the settings' max_request_body_bytes (the caller's, so they are not read twice)."""
    shown = 0

    def report(line: str) -> None:
        nonlocal shown
        shown += 1
        if shown <= BAD_LINES_SHOWN:
            say(line, prefix="")

    report_ = scan(path, label, report, max_body_bytes)
    if report_.bad_lines:
        if report_.bad_lines > BAD_LINES_SHOWN:
            say(f"... and {report_.bad_lines - BAD_LINES_SHOWN} more bad lines not shown", prefix="")
        noun = "line" if report_.bad_lines == 1 else "lines"
        raise UsageError(f"{label}: {report_.bad_lines} bad {noun}; nothing was submitted")
    if report_.count == 0:
        raise UsageError(f"{label}: no URLs to submit")
    return report_.count, report_.digest


def checked_requests(path: Path, label: str, digest: str) -> Iterator[Entry]:
    """The requests of an input that `check_input` passed, read again as they are queued."""

    def changed() -> None:
        say(
            f"{label}: the file changed after it was checked: the batch holds it as read the second time "
            "(each result names its URL; a line that no longer reads has an invalid_url result)"
        )

    return entries(path, digest, changed)


FLUSH_EVERY = 0.1  # seconds: a killed collector loses at most this much of what it had received
NO_WORKER_AFTER = 5.0  # seconds without a live worker before `--wait` says so
ROOM_CHECK_EVERY = 2.0  # seconds between a follower's reads of Redis's memory (one INFO memory)
SUBMISSION_STILL_CHECKS = 3  # such reads that find a partly queued batch with nothing left to fetch


async def _flush_often(writer: ResultWriter, progress: Progress | None, summary: Summary) -> None:
    # Writes and flushes both run on this event loop, so a flush never meets a half-written line.
    # The progress display follows the counts here too, not per result: ten updates a second are what a
    # terminal shows, and 30,000 per second would cost the collector more than writing the results.
    while True:
        await asyncio.sleep(FLUSH_EVERY)
        writer.flush()
        if progress is not None:
            if (progress.done, progress.failed) != (summary.done, summary.failed):
                progress.update(summary.done, summary.failed)
            else:
                progress.tick()


async def _watch_workers(client: Client, batch_id: str) -> None:
    """Say once when no worker has a live heartbeat, and once more when one appears; never stop waiting."""
    warned = False
    await asyncio.sleep(NO_WORKER_AFTER)
    while True:
        try:
            workers = await live_workers(client)
            # A full Redis refuses heartbeats: the workers are there, waiting for room (_watch_room).
            idle = not workers and not warned and not await client._all_recorded(batch_id)
            if idle and not await _redis_full(client):
                warned = True
                say(
                    f"no live worker on {redact(client.settings.redis_url)} (no heartbeat for "
                    f"{NO_WORKER_AFTER:g}s): batch {batch_id} stays queued until one starts "
                    "(`fetchfleet worker` with the same FETCHFLEET_REDIS_URL); still waiting"
                )
            elif workers and warned:
                warned = False
                say(f"{len(workers)} live worker(s) now; batch {batch_id} is being fetched")
        except REDIS_ERRORS:  # a watcher only: the results loop reports Redis problems by kind
            pass
        await asyncio.sleep(2.0)


async def _watch_submission(client: Client, batch_id: str) -> None:
    """Say once when the batch is only partly queued and every queued URL has its result: a follower of a
    batch whose submit was cut short (killed, Redis gone meanwhile) waited for ever without a word."""
    still = 0
    while True:
        await asyncio.sleep(ROOM_CHECK_EVERY)
        try:
            complete, enqueued, done = await awaited(
                client.redis.hmget(batch_key(batch_id), ["complete", "enqueued", "done"])
            )
        except REDIS_ERRORS:  # a watcher only: the results loop reports Redis problems by kind
            continue
        if complete != b"0":  # queued whole (or gone: the results loop says so)
            return
        still = still + 1 if int(done or 0) >= int(enqueued or 0) else 0
        if still == SUBMISSION_STILL_CHECKS:
            say(
                f"batch {batch_id} is only partly queued ({int(enqueued or 0)} URLs), and they all have "
                "their results: if the submit that queues it has stopped, run it again with "
                f"--batch-id {batch_id} to queue the rest; still waiting"
            )
            return


async def _redis_full(client: Client) -> bool:
    """Whether Redis is full as the workers judge it (less than 5% of maxmemory free): one INFO memory."""
    pressure = RedisPressure(client.redis)
    try:
        await pressure.read_memory()
    except REDIS_ERRORS:  # INFO denied (some managed services): judged not full
        return False
    return not pressure.has_room()


async def _watch_room(client: Client, batch_id: str) -> None:
    """Say once when Redis is full, and once when it has room again: the workers then keep what they
    fetched and wait, and so does this follower, with nothing else on the screen to tell why."""
    pressure = RedisPressure(client.redis)
    full = False
    while True:
        await asyncio.sleep(ROOM_CHECK_EVERY)
        try:
            await pressure.read_memory()
        except REDIS_ERRORS:  # a watcher only: the results loop reports Redis problems by kind
            continue
        if not full and not pressure.has_room():
            full = True
            say(
                f"{pressure.describe()}: it takes no more results, so the workers keep theirs and fetch "
                f"nothing new until there is room (raise maxmemory, or delete finished batches); batch "
                f"{batch_id} goes on then, nothing is lost. Still waiting"
            )
        elif full and pressure.has_room():
            full = False
            say(f"Redis has room again; batch {batch_id} goes on")


async def collect(
    client: Client,
    batch_id: str,
    output: Output | str,
    fmt: str,
    follow: bool,
    progress: Progress | None,
    *,
    ordered: bool = False,
    watch_workers: bool = False,
    summary: Summary | None = None,
    body: bool = False,
    drop_refs: bool = False,
) -> Summary:
    """Write a batch's results; returns their summary (progress counts come from what was written).

    `body`: the batch keeps bodies (CSV gets their columns; a store's bodies are read back inline).
    `drop_refs`: the inlined results leave out their `body_ref` (a store that does not outlive this).
    """
    if isinstance(output, str):
        output = open_output(output, fmt)
    summary = summary or Summary()
    writer = _result_writer(output, fmt, body=body, ordered=ordered)
    background = [asyncio.ensure_future(_flush_often(writer, progress, summary))]
    if watch_workers:
        background.append(asyncio.ensure_future(_watch_workers(client, batch_id)))
    if follow:
        background.append(asyncio.ensure_future(_watch_room(client, batch_id)))
        background.append(asyncio.ensure_future(_watch_submission(client, batch_id)))
    # A follower owns the batch's stream: what it has written out (and flushed) leaves Redis. In input
    # order, results wait in the writer's buffer, not the file: those leave Redis only once all are out.
    forget = follow and client.forgets_collected
    forget_every = FORGET_EVERY if forget and not ordered else 0
    cursor, written, completed = "0-0", 0, False
    # Per result, only what it needs: its index only for a resumed file or input order.
    resumed = output.resumed
    in_order = writer if isinstance(writer, OrderedWriter) else None
    write, add, loads = writer.write, summary.add, orjson.loads
    gone_before = await _say_what_was_collected(client, batch_id, output)
    read = 0  # results the stream gave this follower, those a resumed file holds already included
    try:
        try:
            async for cursor, document in client.results(
                batch_id, follow=follow, inline_bodies=body, drop_refs=drop_refs
            ):
                read += 1
                doc = loads(document)
                if resumed and output.has(int(doc["index"])):
                    continue  # already in the file from the run that was cut short
                if in_order is not None:
                    in_order.write(document, int(doc["index"]))
                else:
                    write(document)
                add(doc)
                written += 1
                if forget_every and written % forget_every == 0:
                    writer.flush()
                    await client.forget_results(batch_id, cursor)
            completed = True
        finally:
            await _finish_writing(background, writer, progress, summary)
    except OutputFailed as exc:  # a full disk: what was not written stays in Redis; say how to get it
        again = f"fetchfleet results {batch_id} --follow" + (
            f" -o {shlex.quote(output.path)} --resume" if output.file is not None else ""
        )
        raise OutputFailed(exc.reason, f"the results not written are still in Redis: {again}") from None
    if forget and completed:  # only after a complete, flushed write: a failed one leaves all in Redis
        await client.forget_results(batch_id, cursor)
    if follow and completed:
        await _say_what_others_collected(client, batch_id, read, gone_before)
    return summary


def _result_writer(output: Output, fmt: str, *, body: bool, ordered: bool) -> ResultWriter:
    """The output's writer; in input order, it skips the indexes a cut-short run already wrote."""
    writer: ResultWriter = output.writer(fmt, body=body)
    if ordered:
        writer = OrderedWriter(writer)
        for index in output.indexes():
            writer.skip(index)
    return writer


async def _finish_writing(
    background: list[asyncio.Task[None]], writer: ResultWriter, progress: Progress | None, summary: Summary
) -> None:
    """Stop the helpers, close the writer (its last flush) and show the final counts."""
    await stop_tasks(background)  # the watchers may be inside a Redis call
    writer.close()
    if progress is not None:
        progress.update(summary.done, summary.failed)
        progress.close()


async def _say_what_was_collected(client: Client, batch_id: str, output: Output) -> int:
    """Results an earlier follower wrote out are gone from Redis: say so rather than end short silently.
    Returns how many."""
    try:
        gone = (await client.status(batch_id)).collected
    except UNREADABLE:
        return 0  # the read below reports these
    if gone and not output.resumed:
        say(
            f"{gone} results of batch {printable(batch_id)} were already written out by an earlier "
            "`--wait` or `--follow` and removed from Redis (FETCHFLEET_RESULT_RETENTION=collected); "
            "this writes only the ones still held"
        )
    return gone


async def _say_what_others_collected(client: Client, batch_id: str, read: int, gone_before: int) -> None:
    """Results another follower wrote out and removed while this one ran never reached this one (two
    followers of one batch under FETCHFLEET_RESULT_RETENTION=collected): say how many, not end short
    silently."""
    try:
        missed = (await client.status(batch_id)).done - read - gone_before
    except UNREADABLE:
        return
    if missed > 0:
        say(
            f"{missed} results of batch {printable(batch_id)} were written out and removed from Redis by "
            "another `--wait` or `--follow` while this one ran (FETCHFLEET_RESULT_RETENTION=collected): "
            "they are in that one's output, not in this one. For followers that each write every result, "
            "set FETCHFLEET_RESULT_RETENTION=ttl"
        )


def report(summary: Summary, started: float, label: str, quiet: bool) -> None:
    """The end-of-run summary on stderr: counts by outcome, an example URL each, hints for known causes."""
    if quiet:
        return
    say(
        f"{label}{summary.done} result{'' if summary.done == 1 else 's'} in "
        f"{time.monotonic() - started:.1f}s: "
        f"{summary.done - summary.failed} ok, {summary.failed} failed"
    )
    # Where the workers are other processes, a worker-only setting set here did nothing: say so beside the
    # hint that names it (`run` hands this environment to its own workers, so there it did count).
    set_here = worker_only_variables() if label else []
    for line in summary.lines(set_here):
        say(line, prefix="")


def outcome_code(summary: Summary, fail_on: str) -> int:
    return EXIT_FETCH_FAILED if summary.should_fail(fail_on) else EXIT_OK


def batch_options(args: argparse.Namespace) -> BatchOptions:
    """The batch limits given on the command line (UsageError for a bad network list)."""
    nets = getattr(args, "only_networks", None)
    try:
        return BatchOptions(
            max_body_bytes=getattr(args, "max_body_bytes", None),
            connect_timeout=getattr(args, "connect_timeout", None),
            read_timeout=getattr(args, "read_timeout", None),
            total_timeout=getattr(args, "total_timeout", None),
            only_networks=tuple(n for n in nets.split(",") if n.strip()) if nets is not None else None,
        )
    except ValidationError as exc:
        raise UsageError(f"--only-networks: {exc.errors()[0]['msg'].removeprefix('Value error, ')}") from None
