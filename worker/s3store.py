"""The body store on S3 (or any S3-compatible server): WARC segments uploaded as whole objects.

An object cannot be appended to, so a worker gathers its records in memory and uploads them as one
WARC file (a `warcinfo` record first, like every file the directory store writes) every
FETCHFLEET_S3_FLUSH_SECONDS, or sooner once the segment reaches its size cap. A `put` returns its
reference only after the upload of its segment succeeded: a recorded result never points at an object
that does not exist. Client: obstore (one wheel, async, ranged reads, retries; no botocore, no aiohttp
in the producer).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from worker.contract import BodyRef
from worker.errors import BodyStoreError
from worker.s3read import make_store, read_s3_range  # noqa: F401  (read_s3_range: re-exported)
from worker.storeuri import parse_s3
from worker.warcrecords import Exchange, build_records, warcinfo

MAX_SEGMENT_BYTES = 64 * 1024 * 1024  # held in memory until uploaded


@dataclass(eq=False, slots=True)
class _Segment:
    key: str
    started: float
    parts: list[bytes] = field(default_factory=list)
    size: int = 0
    waiters: list[asyncio.Future[None]] = field(default_factory=list)


class S3WarcStore:
    """One worker's WARC segments under `s3://bucket/prefix/`. Use as `async with S3WarcStore(...)`."""

    def __init__(
        self,
        uri: str,
        worker_id: str,
        max_bytes: int,
        flush_seconds: float,
        max_wait: float,
        endpoint: str | None,
    ) -> None:
        self.bucket, self.prefix = parse_s3(uri)
        self.name = re.sub(r"[^A-Za-z0-9._-]", "_", worker_id)
        self.max_bytes = min(max_bytes, MAX_SEGMENT_BYTES)
        self.flush_seconds = flush_seconds
        self.max_wait = max_wait
        self.store = make_store(self.bucket, endpoint, max_wait)
        self._current: _Segment | None = None
        self._sealed: list[_Segment] = []
        self._serial = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def __aenter__(self) -> S3WarcStore:
        self._task = asyncio.create_task(self._uploader(), name="fetchfleet-s3-uploader")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def put(self, exchange: Exchange, body: bytes, sha256_hex: str | None = None) -> BodyRef:
        """Add the exchange's records to the current segment; return their place once it is uploaded."""
        if self._closed:
            raise BodyStoreError("body store is closed")
        response, request = build_records(exchange, body, sha256_hex)
        seg = self._segment()
        offset = seg.size
        seg.parts.append(response + request)
        seg.size += len(response) + len(request)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        seg.waiters.append(done)
        if seg.size >= self.max_bytes:
            self._seal()
        self._wake.set()
        await done  # the uploader answers within flush_seconds + max_wait, one way or the other
        return BodyRef(uri=f"s3://{self.bucket}/{seg.key}", offset=offset, length=len(response))

    def _segment(self) -> _Segment:
        if self._current is None:
            self._serial += 1
            stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S%f")
            name = f"fetchfleet-{stamp}-{self._serial:05d}-{self.name}.warc.gz"
            key = f"{self.prefix}/{name}" if self.prefix else name
            seg = _Segment(key, time.monotonic())
            info = warcinfo(name)
            seg.parts.append(info)
            seg.size = len(info)
            self._current = seg
        return self._current

    def _seal(self) -> None:
        if self._current is not None and self._current.waiters:
            self._sealed.append(self._current)
        self._current = None

    async def _uploader(self) -> None:
        while True:
            seg = self._current
            wait = None if seg is None else max(seg.started + self.flush_seconds - time.monotonic(), 0)
            if not self._sealed and not self._closed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
                self._wake.clear()
            seg = self._current
            if seg is not None and (self._closed or time.monotonic() - seg.started >= self.flush_seconds):
                self._seal()
            while self._sealed:
                await self._upload(self._sealed.pop(0))
            if self._closed and self._current is None:
                return

    async def _upload(self, seg: _Segment) -> None:
        import obstore

        try:
            upload = obstore.put_async(self.store, seg.key, b"".join(seg.parts))
            await asyncio.wait_for(upload, self.max_wait)
        except Exception as exc:  # obstore raises its own tree; every kind fails the waiting chunks
            why = f"not uploaded within {self.max_wait:g}s" if isinstance(exc, TimeoutError) else str(exc)
            error = BodyStoreError(f"s3://{self.bucket}/{seg.key}: {why}")
            for fut in seg.waiters:
                if not fut.done():
                    fut.set_exception(error)
            return
        for fut in seg.waiters:
            if not fut.done():
                fut.set_result(None)

    async def close(self) -> None:
        """Upload what is gathered (puts still waiting get their answer), then stop."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
