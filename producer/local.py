"""A whole cluster on one machine (embedded server, N worker processes): `fetchfleet run`'s
(producer/runcmd.py) and `fetchfleet.fetch`'s. Imports nothing of the command line (input checks,
output files, progress), so that `import fetchfleet` does not load it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import site
import sys
import tempfile
import threading
from collections.abc import Awaitable, Iterator
from pathlib import Path
from types import FrameType
from typing import TypeVar

from pydantic import SecretStr

from producer.children import Child, stop_all
from producer.embedded import EmbeddedServer
from producer.localruns import DIR_PREFIX, write_connection
from worker.background import stop_tasks
from worker.errors import LocalRunError
from worker.settings import Settings, env_name

T = TypeVar("T")

REDIS_URL_ENV = env_name("redis_url")
# Variables the local workers must not inherit: they describe the external Redis, or would make N
# workers fight over one port.
NOT_FOR_LOCAL_WORKERS = ("redis_password", "redis_ca_file", "metrics_port")
WORKER_GRACE = 3.0  # seconds a worker gets to hand back its chunks before SIGKILL (Ctrl-C budget: 5 s)
WORKER_DRAIN = 0.3  # then the second SIGTERM: stop fetching now
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
                # It keeps nothing (save "", appendonly no) and every worker has stopped: a SIGTERM
                # would wait for the server's next cron tick (100 ms at its default hz 10) for nothing.
                self.server.child.kill()
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
def terminations_interrupt() -> Iterator[None]:
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
        await stop_tasks((main, watcher))  # `work` follows results from Redis: a cancel can be lost there
