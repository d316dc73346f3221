"""The body store: each kept body as a WARC/1.1 `response` record (and its `request`) in files on disk.

A worker appends gzip members, one per record (worker/warcrecords.py builds them with warcio's
writer), to its own file and rotates it by size and age. `put` returns a `BodyRef` (file URI, offset,
length of the response record) only once the bytes it points at are fsynced: a result recorded in
Redis never points at bytes a crash could lose. Imports only warcio, the contract and the standard
library, so the producer reads bodies back with the same module.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from warcio.archiveiterator import ArchiveIterator

from worker.contract import BodyRef
from worker.errors import BodyStoreError, BodyUnavailable
from worker.s3read import read_s3_range
from worker.storeuri import file_uri, store_directory
from worker.warcrecords import Exchange, build_records, warcinfo

__all__ = [  # Exchange and build_records: re-exported for the fetcher and the S3 store
    "BodyStore",
    "Exchange",
    "WarcStore",
    "build_records",
    "read_body",
    "read_record",
    "sha256_digest_header",
]


class BodyStore(Protocol):
    """What a worker needs of a body store: WarcStore (a directory) or s3store.S3WarcStore."""

    async def put(self, exchange: Exchange, body: bytes, sha256_hex: str | None = None) -> BodyRef: ...
    async def close(self) -> None: ...


def _write_and_fsync(fd: int, data: bytes, dir_fd: int | None) -> None:
    """Append a group's records (whole, in their order) and make them and, for a new file, its name
    durable. Runs in a thread: the event loop goes on meanwhile."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.fsync(fd)
    if dir_fd is not None:
        os.fsync(dir_fd)


def _close_when_done(fd: int) -> Callable[[asyncio.Future[None]], None]:
    """A done-callback closing `fd` once the thread writing to it has ended (not before: the number
    could be reused by another file meanwhile)."""

    def close(job: asyncio.Future[None]) -> None:
        if not job.cancelled():
            job.exception()  # retrieved: a late failure is already reported as the timeout
        with contextlib.suppress(OSError):
            os.close(fd)

    return close


@dataclass(eq=False, slots=True)
class _File:
    path: Path
    uri: str
    fd: int
    opened: float
    size: int = 0  # of the file once `pending` is written: the offset of the next record
    synced: int = 0
    retired: bool = False
    pending: list[bytes] = field(default_factory=list)  # records not written yet, in file order
    waiters: list[tuple[int, asyncio.Future[None]]] = field(default_factory=list)


class WarcStore:
    """One worker's WARC files in a directory (a shared volume). Use as `async with WarcStore(...)`.

    A `put` queues its records; a flusher task writes everything queued with one `write` and fsyncs it
    (group commit, as the recorder does), in a thread, while the event loop goes on. A kill leaves
    whole records, but for at most a partial last one, which no result points at.
    """

    def __init__(
        self,
        directory: Path,
        worker_id: str,
        max_bytes: int,
        max_seconds: float,
        max_wait: float,
    ) -> None:
        self.dir = directory
        self.name = re.sub(r"[^A-Za-z0-9._-]", "_", worker_id)
        self.max_bytes = max_bytes
        self.max_seconds = max_seconds
        self.max_wait = max_wait
        self._current: _File | None = None
        self._files: list[_File] = []  # open: the current one and retired ones not yet fsynced
        self._serial = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def __aenter__(self) -> WarcStore:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._task = asyncio.create_task(self._flusher(), name="fetchfleet-warc-flusher")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def put(self, exchange: Exchange, body: bytes, sha256_hex: str | None = None) -> BodyRef:
        """Append the exchange's records; return the response record's place once it is durable.

        Raises BodyStoreError if the bytes are not durable within `max_wait` seconds (a stuck disk):
        the chunk then fails and runs again, and no result points at them.
        """
        if self._closed:
            raise BodyStoreError("body store is closed")
        response, request = build_records(exchange, body, sha256_hex)
        f = self._file()
        offset = f.size
        f.pending += (response, request)
        f.size += len(response) + len(request)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        f.waiters.append((f.size, done))
        self._wake.set()
        await done  # the flusher answers within max_wait, one way or the other
        return BodyRef(uri=f.uri, offset=offset, length=len(response))

    def _file(self) -> _File:
        f = self._current
        now = time.monotonic()
        if f is not None and (f.size >= self.max_bytes or now - f.opened >= self.max_seconds):
            f.retired = True  # the flusher closes it once everything in it is fsynced
            self._wake.set()
            f = None
        if f is None:
            self._serial += 1
            stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S%f")
            path = self.dir / f"fetchfleet-{stamp}-{self._serial:05d}-{self.name}.warc.gz"
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
            except OSError as exc:
                raise BodyStoreError(f"cannot create {path}: {exc.strerror}") from exc
            f = _File(path, file_uri(path), fd, now)
            info = warcinfo(path.name)
            f.pending.append(info)
            f.size = len(info)
            self._current = f
            self._files.append(f)
        return f

    async def _flusher(self) -> None:
        dir_fd = os.open(self.dir, os.O_RDONLY)
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                for f in list(self._files):
                    await self._sync(f, dir_fd)
                if self._closed and not any(f.waiters for f in self._files):
                    return
        finally:
            os.close(dir_fd)

    async def _sync(self, f: _File, dir_fd: int) -> None:
        size, waiters = f.size, f.waiters
        if size > f.synced or (f.retired and not waiters):
            data, f.pending, f.waiters = b"".join(f.pending), [], []
            new_file = f.synced == 0  # then its name must survive a crash too
            # One bound for the whole group rather than a timer per body: a stuck disk fails every
            # waiting put after max_wait (the thread is left to finish on its own).
            job = asyncio.ensure_future(
                asyncio.to_thread(_write_and_fsync, f.fd, data, dir_fd if new_file else None)
            )
            await asyncio.wait({job}, timeout=self.max_wait)
            why = None
            if not job.done():
                why = f"not durable within {self.max_wait:g}s"
            elif (exc := job.exception()) is not None:
                why = exc.strerror if isinstance(exc, OSError) else repr(exc)
            if why is not None:
                # The bytes at this file's later offsets are uncertain now (and after a failed fsync
                # Linux may drop the dirty pages): every put queued on it fails, the next one starts
                # a new file.
                for _, fut in waiters + f.waiters:
                    if not fut.done():
                        fut.set_exception(BodyStoreError(f"{f.path}: {why}"))
                f.waiters, f.pending, f.retired = [], [], True
                self._files.remove(f)
                if self._current is f:
                    self._current = None
                job.add_done_callback(_close_when_done(f.fd))
                return
            f.synced = size
            for end, fut in waiters:
                if end <= size and not fut.done():
                    fut.set_result(None)
            f.waiters = [w for w in waiters if w[0] > size] + f.waiters
        if f.retired and not f.waiters and f.synced >= f.size:
            os.close(f.fd)
            self._files.remove(f)

    async def close(self) -> None:
        """Fsync and close every file; puts still waiting get their answer first."""
        if self._closed:
            return
        self._closed = True
        for f in self._files:
            f.retired = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for f in self._files:
            with contextlib.suppress(OSError):
                os.fsync(f.fd)
                os.close(f.fd)
        self._files.clear()


# ---- reading back (producer side) -----------------------------------------------------------------


# The longest record a reference may name: a body up to bodies.MAX_INFLATED (1 GiB, the largest any
# worker stores; not imported, bodies imports this module), gzipped, and its headers.
MAX_RECORD_BYTES = (1 << 30) + (1 << 20)


def read_record(ref: dict[str, Any]) -> tuple[bytes, str | None]:
    """(payload, WARC-Payload-Digest) of the response record a result's `body_ref` points at."""
    try:
        uri, offset, length = ref["uri"], int(ref["offset"]), int(ref["length"])
        path = None if uri.startswith("s3://") else store_directory(uri)
    except (KeyError, TypeError, ValueError) as exc:
        raise BodyUnavailable(f"not a body reference: {exc}") from None
    if offset < 0 or not 0 < length <= MAX_RECORD_BYTES:
        # A forged or mistyped reference: 10**12 bytes of file:///dev/zero was a MemoryError (a traceback).
        raise BodyUnavailable(f"not a body reference: offset {offset}, length {length} out of range")
    if path is None:
        data = read_s3_range(uri, offset, length)
    else:
        try:
            with path.open("rb") as f:
                f.seek(offset)
                data = f.read(length)
        except OSError as exc:
            raise BodyUnavailable(f"{uri}: {exc.strerror}") from None
    if len(data) != length:
        raise BodyUnavailable(f"{uri}: {length} bytes at {offset} are not all there")
    try:
        for record in ArchiveIterator(io.BytesIO(data)):
            if record.rec_type == "response":
                return record.raw_stream.read(), record.rec_headers.get_header("WARC-Payload-Digest")
    except Exception as exc:  # warcio raises several types for a damaged record
        # Not warcio's text: it quotes the bytes found, and a reference may name any file (a forged one
        # naming file:///proc/self/environ put this process's environment, passwords too, in a result).
        raise BodyUnavailable(f"{uri} at {offset}: not a WARC record ({type(exc).__name__})") from None
    raise BodyUnavailable(f"{uri} at {offset}: no response record")


def read_body(ref: dict[str, Any], sha256_hex: str | None) -> bytes:
    """The body a `body_ref` points at, checked against the result's `sha256` when there is one."""
    payload, _digest = read_record(ref)
    if sha256_hex is not None and hashlib.sha256(payload).hexdigest() != sha256_hex:
        raise BodyUnavailable(f"{ref.get('uri')} at {ref.get('offset')}: body does not match its sha256")
    return payload


def sha256_digest_header(sha256_hex: str) -> str:
    """The WARC-Payload-Digest value this store writes for a body with this SHA-256 (hex)."""
    return f"sha256:{sha256_hex}"
