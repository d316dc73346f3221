"""The job contract: what a fetch request, a chunk job and a result are, and every Redis key name.

Imports only pydantic and the standard library, so a producer can use it without the fetcher.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_URL_BYTES = 8192
KEY_PREFIX = "ff"
CHUNK_TASK = "fetch_chunk"
METHODS = ("GET", "HEAD", "POST")


class ErrorKind(str, Enum):
    """Stable words for why a URL has no usable response; documented in the README."""

    INVALID_URL = "invalid_url"
    BLOCKED = "blocked"
    DNS = "dns"
    CONNECT = "connect"
    TLS = "tls"
    TIMEOUT = "timeout"
    TOO_MANY_REDIRECTS = "too_many_redirects"
    TOO_LARGE = "too_large"
    PROTOCOL = "protocol"
    HTTP_STATUS = "http_status"
    CANCELLED = "cancelled"
    INTERNAL = "internal"


class BatchState(str, Enum):
    QUEUED = "queued"
    SUBMITTING = "submitting"
    DONE = "done"
    CANCELLED = "cancelled"


# The same set as `ch.isspace() or ord(ch) < 32 or ord(ch) == 127` (re's \s is str.isspace), ten times
# faster than testing character by character: it runs for every URL in the producer and the worker.
_BAD_CHAR = re.compile(r"[\s\x00-\x1f\x7f]")


# Batch ids become parts of Redis key names: letters, digits, "_" and "-" only, so that no id can name
# another batch's key (a ":" would let `nightly:done` be the done bitmap of `nightly`).
BATCH_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


INCARNATION_FIELD = "incarnation"  # of the batch hash; see ChunkJob.incarnation


def batch_id_problem(batch_id: str) -> str | None:
    """Why `batch_id` is not a valid batch id, or None."""
    if not isinstance(batch_id, str) or BATCH_ID_RE.fullmatch(batch_id) is None:
        return "a batch id is 1 to 64 characters of A-Z, a-z, 0-9, '_' and '-'"
    return None


def url_problem(url: str) -> str | None:
    """Why `url` cannot be fetched, or None. Pure string checks: cheap enough for 10 million lines."""
    if len(url) > MAX_URL_BYTES or len(url.encode("utf-8", "surrogatepass")) > MAX_URL_BYTES:
        return f"URL longer than {MAX_URL_BYTES} bytes"
    if _BAD_CHAR.search(url):
        return "URL contains whitespace or a control character"
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        return "not an http or https URL"
    authority = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    host = authority.rpartition("@")[2]
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else ""
    else:
        host = host.partition(":")[0]
    if not host:
        return "URL has no host"
    return None


class FetchRequest(BaseModel):
    """One URL to fetch, as a JSON-lines input line or a chunk entry carries it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str
    method: Literal["GET", "HEAD", "POST"] = "GET"
    headers: dict[str, str] = Field(default_factory=dict)
    body: str | None = None

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("url")
    @classmethod
    def _valid_url(cls, value: str) -> str:
        problem = url_problem(value)
        if problem:
            raise ValueError(problem)
        return value


class BatchOptions(BaseModel):
    """Per-batch choices a submission makes; travels inside every chunk job."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    store_body: bool = False


class ChunkJob(BaseModel):
    """The payload of one queue job: consecutive URLs of one batch, or a retry of a few indexes."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    batch_id: str
    # The batch hash's `incarnation` when the job was made: the recorder writes nothing unless the hash
    # still holds it, so a batch whose keys vanished (Redis restarted empty) is never half recreated.
    incarnation: str = ""
    first_index: int = 0
    # Plain GET URLs travel as bare strings to keep jobs small and parsing cheap.
    requests: list[str | FetchRequest]
    # Explicit indexes for retry jobs; None means first_index, first_index + 1, ...
    indexes: list[int] | None = None
    attempts: list[int] | None = None
    options: BatchOptions = Field(default_factory=BatchOptions)

    @field_validator("batch_id")
    @classmethod
    def _valid_batch_id(cls, value: str) -> str:
        problem = batch_id_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    def entries(self) -> list[tuple[int, FetchRequest | str, int]]:
        """(index, request, attempts made so far) for every URL in the chunk."""
        idx = self.indexes or range(self.first_index, self.first_index + len(self.requests))
        tries = self.attempts or [0] * len(self.requests)
        return list(zip(idx, self.requests, tries, strict=True))


class ErrorInfo(BaseModel):
    kind: ErrorKind
    message: str


class FetchResult(BaseModel):
    """One line of the results: exactly one per submitted URL."""

    index: int
    url: str
    final_url: str | None = None
    status: int | None = None
    ok: bool = False
    error: ErrorInfo | None = None
    size: int = 0
    sha256: str | None = None
    content_type: str | None = None
    elapsed_ms: float = 0.0
    attempts: int = 1
    redirects: int = 0
    worker: str = ""
    body: str | None = None
    body_encoding: Literal["text", "base64"] | None = None


# Batch keys put their type before the id (`ff:meta:ID`, `ff:done:ID`, `ff:results:ID`): whatever an id
# holds, the key of one type can never be the key of another type of any batch, because no id is a prefix
# of a type word. (With the id first, batch `nightly:done` *was* the done bitmap of batch `nightly`.)


def batch_key(batch_id: str) -> str:
    """Hash: submitted, done, failed, created, cancelled, incarnation, input digest, chunk progress."""
    return f"{KEY_PREFIX}:meta:{batch_id}"


def results_key(batch_id: str) -> str:
    """Stream of result JSON documents, field `r`; read with XREAD from a cursor."""
    return f"{KEY_PREFIX}:results:{batch_id}"


def done_key(batch_id: str) -> str:
    """Bitmap, bit i set once index i has its result: the exactly-once gate."""
    return f"{KEY_PREFIX}:done:{batch_id}"


def batch_keys(batch_id: str) -> tuple[str, str, str]:
    return batch_key(batch_id), results_key(batch_id), done_key(batch_id)


BATCHES_KEY = f"{KEY_PREFIX}:batches"  # zset of batch ids by creation time, for stats
WORKERS_KEY = f"{KEY_PREFIX}:workers"  # zset of worker ids by last heartbeat (ms)


def worker_key(worker_id: str) -> str:
    return f"{KEY_PREFIX}:worker:{worker_id}"


def host_keys(host: str) -> tuple[str, str]:
    """Per-host politeness, shared by all workers: in-flight permits (zset), next free time (string)."""
    return f"{KEY_PREFIX}:host:{host}:inflight", f"{KEY_PREFIX}:host:{host}:rate"


def chunk_job_id(batch_id: str, chunk_no: int) -> str:
    return f"{batch_id}:c{chunk_no}"


def retry_job_id(batch_id: str, index: int, attempt: int) -> str:
    return f"{batch_id}:r{index}:{attempt}"
