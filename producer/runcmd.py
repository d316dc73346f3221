"""`fetchfleet run`: a whole cluster on one machine (producer/local.py) around one batch."""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

from producer.client import Client
from producer.local import LocalCluster, default_workers, guarded, terminations_interrupt
from producer.messages import say
from producer.output import Output, open_output
from producer.progress import Progress
from producer.submitting import (
    EXIT_FAILED,
    batch_options,
    check_input,
    checked_requests,
    collect,
    outcome_code,
    prepare_input,
    report,
)
from producer.summary import Summary
from worker.errors import LocalRunError, OutputFailed, ServerUnavailable, UsageError
from worker.loop import install_event_loop
from worker.settings import Settings


async def submit_and_collect(
    settings: Settings,
    path: Path,
    label: str,
    total: int,
    digest: str,
    args: argparse.Namespace,
    output: Output,
    own_store: bool = False,
) -> Summary:
    """The same Client calls as `submit --wait`; returns the summary of the results written.

    `own_store`: the bodies are in this run's temporary directory, which goes when the run ends (done
    or interrupted): each result then has its body inline and no `body_ref` that would point at
    nothing."""
    async with Client(settings) as client:
        await client.ping()
        options = batch_options(args)
        batch_id = await client.submit(
            checked_requests(path, label, digest),
            total=total,
            digest=digest,
            options=options,
            store_body=args.body,
        )
        progress = Progress(total, f"batch {batch_id}", enabled=not args.quiet)
        return await collect(
            client, batch_id, output, args.format, True, progress,
            ordered=args.ordered, body=args.body, drop_refs=own_store,
        )  # fmt: skip


def _say(message: str) -> None:
    say(message)


def check_workers(wanted: int, cores: int) -> str | None:
    """A warning when far more worker processes than cores are asked for."""
    if wanted <= 2 * cores:
        return None
    return (
        f"{wanted} worker processes on {cores} core(s): each already runs FETCHFLEET_CONCURRENCY fetches "
        f"at once, so more processes than cores only add memory and switching; try --workers {cores} "
        "and raise FETCHFLEET_CONCURRENCY instead"
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    """`fetchfleet run`: check the input, start the cluster, fetch everything, tear it all down."""
    if args.output != "-" and not Path(args.output).resolve().parent.is_dir():
        raise UsageError(f"{args.output}: no such directory")  # before minutes of fetching, not after
    batch_options(args)  # a bad --only-networks: exit 2 before anything starts
    workers = args.workers or default_workers()
    warning = check_workers(workers, default_workers())
    if warning:
        _say(warning)
    path, label, temporary = prepare_input(args.file)
    started = time.monotonic()
    output: Output | None = None
    try:
        # bad input: exit 2 before anything starts
        total, digest = check_input(path, label, settings.max_request_body_bytes)
        # Opened (so checked: a directory, no permission) before any server or worker starts.
        output = open_output(args.output, args.format)
        with terminations_interrupt(), LocalCluster(settings, workers, bodies=args.body) as cluster:
            if not args.quiet:
                _say(f"{total} URLs, {cluster.describe()}")
            install_event_loop()
            work = submit_and_collect(
                cluster.settings, path, label, total, digest, args, output, own_store=cluster.body_dir
            )
            output = None  # the collector owns it now
            try:
                summary = asyncio.run(guarded(work, cluster))
            except OutputFailed as exc:
                if cluster.external:
                    raise
                raise OutputFailed(
                    exc.reason, "run's private server stops with the rest: make room, run again"
                ) from None
        report(summary, started, "", args.quiet)
        return outcome_code(summary, args.fail_on)
    except (LocalRunError, ServerUnavailable) as exc:
        _say(str(exc))
        return EXIT_FAILED
    finally:
        if output is not None:
            output.abandon()
        if temporary:
            path.unlink(missing_ok=True)
