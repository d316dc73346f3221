"""`fetchfleet run`: a whole cluster on one machine (embedded server, N worker processes) around one batch."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import site
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Iterator
from pathlib import Path
from types import FrameType
from typing import TypeVar

from pydantic import SecretStr

from producer.children import Child, stop_all
from producer.client import Client
from producer.embedded import EmbeddedServer
from producer.inputs import entries
from producer.localruns import DIR_PREFIX, write_connection
from producer.messages import say
from producer.output import Output, open_output
from producer.progress import Progress
from producer.submitting import (
    EXIT_FAILED,
    batch_options,
    check_input,
    collect,
    outcome_code,
    prepare_input,
    report,
)
from producer.summary import Summary
from worker.errors import LocalRunError, ServerUnavailable, UsageError
from worker.loop import install_event_loop
from worker.settings import Settings, env_name

T = TypeVar("T")

REDIS_URL_ENV = env_name("redis_url")
# Variables the local workers must not inherit: they describe the external Redis, or would make N
# workers fight over one port.
NOT_FOR_LOCAL_WORKERS = ("redis_password", "redis_ca_file", "metrics_port")
WORKER_GRACE = 3.0  # seconds a worker gets to hand back its chunks before SIGKILL (Ctrl-C budget: 5 s)
WORKER_DRAIN = 0.3  # then the second SIGTERM: stop fetching now
SERVER_GRACE = 1.0
WATCH_INTERVAL = 0.25


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def sweep_stale_dirs() -> None:
    """Remove the directories of runs that were killed (SIGKILL runs no cleanup): logs, a dead password."""
    for stale in Path(tempfile.gettempdir()).glob(f"{DIR_PREFIX}*-*"):
        pid = stale.name[len(DIR_PREFIX) :].split("-", 1)[0]
        if not pid.isdigit() or stale.stat().st_uid != os.getuid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(stale, ignore_errors=True)
        except PermissionError:
            pass


class LocalCluster:
    """The embedded server (unless FETCHFLEET_REDIS_URL is set) and `workers` worker processes.

    Use as a context manager: leaving the block, by return, error or Ctrl-C, stops every child.
    """

    def __init__(
        self, settings: Settings, workers: int, environ: dict[str, str] | None = None, bodies: bool = False
    ) -> None:
        self.environ = dict(os.environ if environ is None else environ)
        # Bodies to a directory of this run (read back into the output before it is removed), not
        # through the server's memory, unless FETCHFLEET_BODY_STORE says where.
        self.body_dir = (
            bodies and env_name("body_store") not in self.environ and REDIS_URL_ENV not in self.environ
        )
        self.external = REDIS_URL_ENV in self.environ
        self.workers_wanted = workers
        self.base_settings = settings
        self.settings = settings
        sweep_stale_dirs()
        self.dir = Path(tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{os.getpid()}-"))
        self.server: EmbeddedServer | None = None
        self.workers: list[Child] = []

    def __enter__(self) -> LocalCluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        if not self.external:
            self.server = EmbeddedServer(self.dir).start()
            # for `fetchfleet stats` (status, results, cancel) in another terminal: producer/localruns.py
            write_connection(self.dir, self.server.url, self.server.password)
            self.settings = self.base_settings.model_copy(
                update={
                    "redis_url": self.server.url,
                    "redis_password": SecretStr(self.server.password),
                    "redis_ca_file": None,
                }
            )
        env = self.worker_env()
        given_id = env.get(env_name("worker_id"))
        for n in range(self.workers_wanted):
            if given_id:
                env[env_name("worker_id")] = f"{given_id}-{n}"
            self.workers.append(
                Child(
                    f"worker {n}",
                    [sys.executable, "-m", "worker"],
                    env=dict(env),
                    log_path=self.dir / f"worker-{n}.log",
                    # not the user's directory: a `worker/` folder there would shadow ours
                    cwd=self.dir,
                    # If we die unannounced: beside an external Redis a worker drains and hands its
                    # chunks back (SIGTERM); beside the embedded server, which dies too, nothing is
                    # worth waiting for.
                    death_signal=signal.SIGTERM if self.external else signal.SIGKILL,
                )
            )

    def worker_env(self) -> dict[str, str]:
        env = dict(self.environ)
        if self.server is not None:
            for name in NOT_FOR_LOCAL_WORKERS:
                env.pop(env_name(name), None)
            env[REDIS_URL_ENV] = self.server.url
            env[env_name("redis_password")] = self.server.password
            if self.body_dir:
                env[env_name("body_store")] = (self.dir / "bodies").as_uri()
        else:
            env.pop(env_name("metrics_port"), None)
            ca_file = env.get(env_name("redis_ca_file"))
            if ca_file:  # the workers run in another directory
                env[env_name("redis_ca_file")] = str(Path(ca_file).resolve())
        env["PYTHONUNBUFFERED"] = "1"
        code_root = str(Path(__file__).resolve().parent.parent)
        installed = {str(Path(d).resolve()) for d in [*site.getsitepackages(), site.getusersitepackages()]}
        if code_root not in installed:  # a source checkout: `-m worker` must find the same code as ours
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [code_root, env.get("PYTHONPATH")]))
        return env

    def describe(self) -> str:
        where = self.server.version() + " (embedded)" if self.server else "the Redis in " + REDIS_URL_ENV
        return f"{self.workers_wanted} local worker(s) on {where}"

    def check(self) -> None:
        """Raise LocalRunError naming the first child that died, with the end of its log."""
        if self.server is not None and not self.server.alive():
            raise LocalRunError(f"the embedded server stopped:\n{self.server.log_tail()}")
        for child in self.workers:
            if not child.alive():
                raise LocalRunError(
                    f"{child.name} exited with code {child.proc.returncode}:\n{child.log_tail()}"
                )

    async def watch(self) -> None:
        while True:
            self.check()
            await asyncio.sleep(WATCH_INTERVAL)

    def close(self) -> None:
        """Workers first (they flush results to the server), then the server, then the directory."""
        with _no_interrupts():
            stop_all(self.workers, WORKER_GRACE, again_after=WORKER_DRAIN)
            if self.server is not None and self.server.child is not None:
                stop_all([self.server.child], SERVER_GRACE)
            shutil.rmtree(self.dir, ignore_errors=True)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def _no_interrupts() -> Iterator[None]:
    """A second Ctrl-C during teardown must not leave it half done; the teardown is bounded anyway."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _terminations_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP (a closed terminal) take the same clean path as Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


async def guarded(work: Awaitable[T], cluster: LocalCluster) -> T:
    """Run `work` until it finishes or a child dies, whichever comes first."""
    main = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(cluster.watch())
    try:
        await asyncio.wait({main, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if watcher.done():
            watcher.result()
        return await main
    finally:
        for task in (main, watcher):
            task.cancel()
        await asyncio.gather(main, watcher, return_exceptions=True)


async def submit_and_collect(
    settings: Settings,
    path: Path,
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
            entries(path), total=total, digest=digest, options=options, store_body=args.body
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
        total, digest = check_input(path, label)  # bad input: exit 2 before anything starts
        # Opened (so checked: a directory, no permission) before any server or worker starts.
        output = open_output(args.output, args.format)
        with _terminations_interrupt(), LocalCluster(settings, workers, bodies=args.body) as cluster:
            if not args.quiet:
                _say(f"{total} URLs, {cluster.describe()}")
            install_event_loop()
            work = submit_and_collect(
                cluster.settings, path, total, digest, args, output, own_store=cluster.body_dir
            )
            output = None  # the collector owns it now
            summary = asyncio.run(guarded(work, cluster))
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
