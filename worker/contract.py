"""The job contract: what a fetch request, a chunk job and a result are, and every Redis key name.

Imports only pydantic and the standard library (and idna, for international host names only), so a
producer can use it without the fetcher.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from enum import Enum
from typing import Annotated, Any, Literal

import idna  # UTS 46 and IDNA 2008 checks of internationalised host names (host_problem)
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MAX_URL_BYTES = 8192
KEY_PREFIX = "ff"
CHUNK_TASK = "fetch_chunk"
METHODS = ("GET", "HEAD", "POST")


class ErrorKind(str, Enum):
    """Stable words for why a URL has no usable response; documented in docs/results.md."""

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
    ROBOTS = "robots"


class BatchState(str, Enum):
    QUEUED = "queued"
    SUBMITTING = "submitting"
    DONE = "done"
    CANCELLED = "cancelled"


# The same set as `ch.isspace() or ord(ch) < 32 or ord(ch) == 127` (re's \s is str.isspace), ten times
# faster than testing character by character: it runs for every URL in the producer and the worker.
_BAD_CHAR = re.compile(r"[\s\x00-\x1f\x7f]")


# A lone surrogate: a str from Python code may hold one (a UTF-8 file or a JSON line cannot), and no
# chunk job can carry it (msgpack encodes text as UTF-8).
_SURROGATE = re.compile("[\ud800-\udfff]")
NOT_UNICODE = "not valid Unicode (it holds a lone surrogate)"


def not_unicode(text: str) -> bool:
    """Whether `text` holds a lone surrogate; ASCII (nearly every URL) is answered in one C-level pass."""
    return not text.isascii() and _SURROGATE.search(text) is not None


# Batch ids become parts of Redis key names: letters, digits, "_" and "-" only, so that no id can name
# another batch's key (a ":" would let `nightly:done` be the done bitmap of `nightly`).
BATCH_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


INCARNATION_FIELD = "incarnation"  # of the batch hash; see ChunkJob.incarnation


def batch_id_problem(batch_id: str) -> str | None:
    """Why `batch_id` is not a valid batch id, or None."""
    if not isinstance(batch_id, str) or BATCH_ID_RE.fullmatch(batch_id) is None:
        return "a batch id is 1 to 64 characters of A-Z, a-z, 0-9, '_' and '-'"
    return None


_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
# The common URL in one match: http(s), a dotted-quad IPv4 address or a host name whose last label starts
# with a letter and that holds no "xn--", a port without leading zeros, printable ASCII after. Whatever it
# matches passes the full checks of `url_problem` too (tests/test_input_fields.py compares the two);
# everything else, userinfo, [IPv6], IDNA and odd IPv4 notations included, takes those checks.
_PLAIN_URL = re.compile(
    r"[hH][tT][tT][pP][sS]?://"
    r"(?![^/?#:]*[xX][nN]--)(?=[^/?#:]{1,254}(?:[/?#:]|\Z))"
    rf"(?:(?:{_OCTET}\.){{3}}{_OCTET}|(?:[A-Za-z0-9_-]{{1,63}}\.)*[A-Za-z][A-Za-z0-9_-]{{0,62}}\.?)"
    r"(?::([1-9][0-9]{0,4}))?"
    r"(?:[/?#][!-~]*)?"
)


def url_problem(url: str) -> str | None:
    """Why `url` cannot be fetched, or None. Pure string checks: cheap enough for 10 million lines."""
    # Once per URL in the producer's check and again in the worker: most URLs take one regex match.
    plain = _PLAIN_URL.fullmatch(url) if len(url) <= MAX_URL_BYTES else None
    if plain is not None and (plain.group(1) is None or int(plain.group(1)) <= 65535):
        return None
    return _url_problem(url)


def _url_problem(url: str) -> str | None:
    """`url_problem` for every URL, step by step: the reason where there is one."""
    if len(url) > MAX_URL_BYTES or len(url.encode("utf-8", "surrogatepass")) > MAX_URL_BYTES:
        return f"URL longer than {MAX_URL_BYTES} bytes"
    if _BAD_CHAR.search(url):
        return "URL contains whitespace or a control character"
    if not_unicode(url):
        return f"URL is {NOT_UNICODE}"
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        return "not an http or https URL"
    authority = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    hostport = authority.rpartition("@")[2]
    if hostport.startswith("["):
        close = hostport.find("]")
        host, port = (hostport[1:close], hostport[close + 1 :]) if close > 0 else ("", "")
        if host and not _is_ipv6(host):
            return "URL host in [] is not an IPv6 address"
        if port and not port.startswith(":"):
            return "URL has characters after its [IPv6] host"
        port = port[1:]
    else:
        host, sep, port = hostport.partition(":")
    if not host:
        return "URL has no host"
    if port and not (len(port) <= 5 and port.isdigit() and port.isascii() and 1 <= int(port) <= 65535):
        return "URL port is not a number from 1 to 65535"
    if not hostport.startswith("["):
        return host_problem(host)
    return None


# A host name as DNS and the URL standard take it: dot-separated labels of letters, digits, "-" and
# "_" (used in real names although not LDH), 1 to 63 each, 253 in all; a final dot allowed. IP
# literals in any notation (127.1, 0x7f000001) fit it too, and the SSRF guard reads them later.
_NUMERIC_LABEL = re.compile(r"[0-9]+|0[xX][0-9A-Fa-f]*")
_ASCII_HOST = re.compile(r"(?:[A-Za-z0-9_-]{1,63}\.)*[A-Za-z0-9_-]{1,63}\.?")


def host_problem(host: str) -> str | None:
    """Why `host` (no brackets, no port) is not a host name, or None. Non-ASCII names go through IDNA."""
    if host.isascii():
        if len(host) > 254 or _ASCII_HOST.fullmatch(host) is None:
            return "URL host is not a valid host name"
        if _NUMERIC_LABEL.fullmatch(host.rstrip(".").rpartition(".")[2]):
            # The URL standard's rule: a host whose last label is a number is an IPv4 address, in
            # any notation inet_aton reads (127.1, 0x7f000001, 0177.0.0.1), or it is no host at all.
            try:
                socket.inet_aton(host.rstrip("."))
            except OSError:
                return "URL host is not a valid IPv4 address"
            return None
        if "xn--" not in host.lower():
            return None
    try:
        # UTS 46 mapping, as browsers and yarl apply it, then IDNA 2008's rules for each label.
        encoded = idna.encode(host.rstrip("."), uts46=True)
    except (idna.IDNAError, UnicodeError, ValueError) as exc:
        return f"URL host is not a valid IDNA host name ({exc})"
    if len(encoded) > 253:
        return "URL host is longer than 253 bytes"
    return None


def _is_ipv6(text: str) -> bool:
    if "%" in text:  # no zone ids ("%25eth0"): a fetch target has no business with them
        return False
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


# RFC 9110 section 5.1: a field name is a token; section 5.5: a field value holds no CR, LF, NUL or
# other control character but HTAB (obs-text, bytes from 0x80, is tolerated as the RFC allows).
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE_CHAR = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
MAX_HEADERS = 100
MAX_HEADER_BYTES = 8192


def headers_problem(headers: dict[str, str]) -> str | None:
    """Why these request headers cannot be sent as they are, or None."""
    if len(headers) > MAX_HEADERS:
        return f"more than {MAX_HEADERS} headers"
    for name, value in headers.items():
        if not name:
            return "empty header name"
        if not_unicode(name) or not_unicode(value):
            return f"header {name!r}: {NOT_UNICODE}"
        if len(name) > 256 or _TOKEN.fullmatch(name) is None:
            return f"header name {name[:64]!r} is not an RFC 9110 token"
        if _BAD_VALUE_CHAR.search(value):
            return f"header {name!r}: value holds a control character (CR, LF, NUL ...)"
        if len(value.encode("utf-8", "surrogatepass")) > MAX_HEADER_BYTES:
            return f"header {name!r}: value longer than {MAX_HEADER_BYTES} bytes"
    return None


def body_too_long(body: str, limit: int) -> bool:
    """Whether a request body is more than `limit` bytes in UTF-8."""
    # Characters first: at most 4 bytes each, so most bodies are judged without encoding them.
    return len(body) > limit or (4 * len(body) > limit and len(body.encode("utf-8", "surrogatepass")) > limit)


# scheme://user:password@ anywhere in a text; greedy up to the last "@" of the authority, so that a
# password holding "@" is masked whole.
_USERINFO_IN_TEXT = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s/?#:@]*:)[^\s/?#]*@")


def mask_passwords_in(text: str) -> str:
    """`text` (an error message, say) with the password of every URL in it replaced by `***`."""
    return _USERINFO_IN_TEXT.sub(r"\1***@", text) if "@" in text else text


def mask_password(url: str) -> str:
    """`url` with the password of a `user:password@` part replaced by `***`, for results and messages."""
    if "@" not in url:  # the common case, checked in ~50 ns on the hot path
        return url
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    end = len(rest)
    for stop in "/?#":
        found = rest.find(stop)
        if found != -1:
            end = min(end, found)
    userinfo, at, hostpart = rest[:end].rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:***@{hostpart}{rest[end:]}"


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

    @field_validator("headers")
    @classmethod
    def _valid_headers(cls, value: dict[str, str]) -> dict[str, str]:
        problem = headers_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("body")
    @classmethod
    def _valid_body(cls, value: str | None) -> str | None:
        if value is not None and not_unicode(value):
            raise ValueError(f"body is {NOT_UNICODE}")
        return value


MAX_REASON_CHARS = 500  # a rejected entry's reason, as a job carries it


class RejectedRequest(BaseModel):
    """An entry of a chunk job that is not a valid request: a job not written by our producer, or an input
    line that changed between the producer's check and its submission (producer/inputs.py `entries`).

    Kept in the chunk so that its index gets an `invalid_url` result while the rest of the chunk runs.
    """

    model_config = ConfigDict(frozen=True)

    url: str
    reason: str
    method: str = "GET"
    headers: None = None
    body: None = None

    @classmethod
    def of(cls, entry: Any, reason: str) -> RejectedRequest:
        url = entry.get("url") if isinstance(entry, dict) else entry
        shown = url if isinstance(url, str) else repr(url)
        return cls(url=mask_password(shown[:MAX_URL_BYTES]), reason=reason)


def _first_problem(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    msg = str(err["msg"]).removeprefix("Value error, ")
    return f"{where}: {msg}" if where else msg


# Redis bitmaps end at bit 2**32 - 1: an index past it could never be recorded.
MAX_INDEX = 2**32 - 1


class BatchOptions(BaseModel):
    """Per-batch choices a submission makes; travels inside every chunk job."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    store_body: bool = False
    # Asks the workers not to obey robots.txt; honoured only where FETCHFLEET_ROBOTS_ALLOW_BATCH_IGNORE is on.
    ignore_robots: bool = False
    # A batch's own fetch limits. Each can only tighten the worker's: the worker applies the stricter
    # of the two (worker/batchpolicy.py), so a batch never loosens a worker's guard or caps.
    max_body_bytes: int | None = Field(default=None, ge=0)
    connect_timeout: float | None = Field(default=None, gt=0)
    read_timeout: float | None = Field(default=None, gt=0)
    total_timeout: float | None = Field(default=None, gt=0)
    # Targets must also lie in one of these CIDR ranges, on top of the worker's SSRF guard.
    only_networks: tuple[str, ...] | None = None

    @field_validator("only_networks")
    @classmethod
    def _cidrs(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        out = []
        for item in value:
            try:
                out.append(str(ipaddress.ip_network(item.strip(), strict=False)))
            except ValueError:
                raise ValueError(f"{item!r} is not a CIDR network") from None
        if not out:
            raise ValueError("give at least one CIDR network")
        return tuple(out)


class ChunkJob(BaseModel):
    """The payload of one queue job: consecutive URLs of one batch, or a retry of a few indexes."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    batch_id: str
    # The batch hash's `incarnation` when the job was made: the recorder writes nothing unless the hash
    # still holds it, so a batch whose keys vanished (Redis restarted empty) is never half recreated.
    incarnation: str = ""
    # Never negative: record.lua reads indexes as digits, so -5 would land on index 5 of the batch.
    first_index: int = Field(default=0, ge=0, le=MAX_INDEX)
    # Plain GET URLs travel as bare strings to keep jobs small and parsing cheap.
    requests: list[str | FetchRequest | RejectedRequest]
    # Explicit indexes for retry jobs; None means first_index, first_index + 1, ...
    indexes: list[Annotated[int, Field(ge=0, le=MAX_INDEX)]] | None = None
    attempts: list[Annotated[int, Field(ge=0)]] | None = None
    options: BatchOptions = Field(default_factory=BatchOptions)

    @field_validator("batch_id")
    @classmethod
    def _valid_batch_id(cls, value: str) -> str:
        problem = batch_id_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("requests", mode="before")
    @classmethod
    def _each_request(cls, value: Any) -> Any:
        """Check every entry on its own: a bad one becomes a RejectedRequest, not a dropped chunk."""
        if not isinstance(value, list | tuple):
            return value
        out: list[Any] = []
        for entry in value:
            if isinstance(entry, str) and not_unicode(entry):  # a bare URL of Client.submit
                shown = entry.encode("utf-8", "replace").decode("utf-8")  # "?" for each surrogate
                out.append(RejectedRequest.of(shown, f"URL is {NOT_UNICODE}"))
                continue
            if isinstance(entry, str | FetchRequest | RejectedRequest):
                out.append(entry)
                continue
            if isinstance(entry, dict) and isinstance(entry.get("reason"), str):
                # A RejectedRequest as a job carries it (the producer's, for a line that changed after it
                # was checked): its own reason, not "reason: extra inputs are not permitted".
                out.append(RejectedRequest.of(entry, entry["reason"][:MAX_REASON_CHARS]))
                continue
            try:
                out.append(FetchRequest.model_validate(entry))
            except ValidationError as exc:
                out.append(RejectedRequest.of(entry, _first_problem(exc)))
        return out

    def entries(self) -> list[tuple[int, FetchRequest | RejectedRequest | str, int]]:
        """(index, request, attempts made so far) for every URL in the chunk."""
        idx = self.indexes or range(self.first_index, self.first_index + len(self.requests))
        tries = self.attempts or [0] * len(self.requests)
        return list(zip(idx, self.requests, tries, strict=True))


class ErrorInfo(BaseModel):
    kind: ErrorKind
    message: str


class BodyRef(BaseModel):
    """Where a body kept in FETCHFLEET_BODY_STORE is: its WARC response record, a gzip member of
    `length` bytes at `offset` of the file `uri`."""

    uri: str
    offset: int
    length: int


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
    body_ref: BodyRef | None = None
    # Milliseconds this attempt waited for robots.txt or its host's politeness budget, not for a slot.
    politeness_wait_ms: float = 0.0


# Batch keys put their type before the id (`ff:meta:ID`, `ff:done:ID`, `ff:results:ID`): whatever an id
# holds, the key of one type can never be the key of another type of any batch, because no id is a prefix
# of a type word. (With the id first, batch `nightly:done` *was* the done bitmap of batch `nightly`.)


def batch_key(batch_id: str) -> str:
    """Hash: submitted, done, failed, created, cancelled, incarnation, input digest, chunk progress."""
    return f"{KEY_PREFIX}:meta:{batch_id}"


def results_key(batch_id: str) -> str:
    """Stream of result JSON documents, field `r` (one a line, many an entry: worker/resultstream.py)."""
    return f"{KEY_PREFIX}:results:{batch_id}"


def done_key(batch_id: str) -> str:
    """Bitmap, bit i set once index i has its result: the exactly-once gate."""
    return f"{KEY_PREFIX}:done:{batch_id}"


def retried_key(batch_id: str, attempt: int) -> str:
    """Bitmap, bit i set once attempt `attempt` of index i is queued: each retry queued once."""
    return f"{KEY_PREFIX}:retried:{attempt}:{batch_id}"  # type first, like every batch key


def batch_keys(batch_id: str) -> tuple[str, str, str]:
    return batch_key(batch_id), results_key(batch_id), done_key(batch_id)


BATCHES_KEY = f"{KEY_PREFIX}:batches"  # zset of batch ids by creation time, for stats
WORKERS_KEY = f"{KEY_PREFIX}:workers"  # zset of worker ids by last heartbeat (ms)


def worker_key(worker_id: str) -> str:
    return f"{KEY_PREFIX}:worker:{worker_id}"


def host_keys(host: str) -> tuple[str, str]:
    """Per-host politeness, shared by all workers: in-flight permits (zset), next free time (string)."""
    return f"{KEY_PREFIX}:host:{host}:inflight", f"{KEY_PREFIX}:host:{host}:rate"


THROTTLED_KEY = f"{KEY_PREFIX}:throttled"  # zset of throttled hosts by when their throttle lapses (ms)
ROBOTS_UNREACHABLE_KEY = f"{KEY_PREFIX}:robots-unreachable"  # zset of origins by end of disallow (ms)


def throttle_key(host: str) -> str:
    """Hash of a host's adaptive budget, shared by all workers: rate, since, paused, last_cut."""
    return f"{KEY_PREFIX}:host:{host}:throttle"


def robots_keys(origin: str) -> tuple[str, str]:
    """An origin's cached robots.txt verdict (JSON string, expires), and the lock of the one fetching it."""
    return f"{KEY_PREFIX}:robots:{origin}", f"{KEY_PREFIX}:robots:{origin}:lock"


def chunk_job_id(batch_id: str, chunk_no: int) -> str:
    return f"{batch_id}:c{chunk_no}"


def retry_job_id(batch_id: str, index: int, attempt: int) -> str:
    return f"{batch_id}:r{index}:{attempt}"


# Idle workers block on this list (BLPOP) instead of polling the queue; whoever queues chunks (submit,
# retries) pushes one token per chunk, up to WAKE_TOKENS_MAX, so that many waiting workers wake at once.
WAKE_TOKENS_MAX = 64


def wake_key(queue_name: str) -> str:
    return f"{queue_name}:wake"
