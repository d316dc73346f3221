"""WARC/1.1 records of one HTTP exchange, written by warcio's WARCWriter, each record its own gzip member.

warcio builds and serializes every record (WARC and HTTP headers, block digest, Content-Length). Writing
the records by hand would save a worker about 25 us per URL with bodies kept (measured: an eighth of its
CPU), and was tried and not kept: the WARC format is warcio's to get right. What this module chooses:
- SHA-256 digests in base16 (`sha256:<hex>`, an RFC 4648 encoding the standard allows, which
  `warcio check` verifies): the payload digest is then exactly the result's `sha256`, and the
  fetcher's hash of the body is passed in rather than computed again;
- gzip level 1 per record rather than warcio's 9, by zlib-ng rather than the standard library's zlib:
  a worker is CPU-bound. Most of a small record's deflate time is setting the compressor up, which
  zlib-ng does in a fraction of zlib's (see gzip_member).
"""

from __future__ import annotations

import hashlib
import io
import random
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from warcio.statusandheaders import StatusAndHeaders
from warcio.utils import Digester
from warcio.warcwriter import WARCWriter
from zlib_ng import zlib_ng

# Headers describing the bytes on the wire: the record holds the body as decoded (gzip, br inflated,
# chunks joined), so these would make a replay tool decode it a second time.
WIRE_HEADERS = frozenset({"content-encoding", "transfer-encoding", "content-length"})
GZIP_LEVEL = 1
SOFTWARE = "fetchfleet/0.1"
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


@dataclass(frozen=True, slots=True)
class Exchange:
    """What a WARC needs of one HTTP exchange besides the body."""

    url: str
    method: str
    request_headers: tuple[tuple[str, str], ...]
    status: int
    reason: str
    version: str  # "1.1"
    response_headers: tuple[tuple[str, str], ...]


class _HexSha256(Digester):  # type: ignore[misc]  # warcio ships no types: Digester is Any
    """SHA-256 in base16, the encoding of the result's `sha256` (warcio's own Digester gives base32)."""

    def __init__(self) -> None:
        super().__init__("sha256")

    def __str__(self) -> str:
        hexdigest: str = self.digester.hexdigest()
        return "sha256:" + hexdigest


class _Writer(WARCWriter):  # type: ignore[misc]  # warcio ships no types: WARCWriter is Any
    """warcio's writer with base16 SHA-256 digests, uncompressed: `_gzip` compresses each record."""

    def __init__(self) -> None:
        super().__init__(None, gzip=False, warc_version="1.1")

    def _create_digester(self) -> Digester:
        return _HexSha256()

    def serialize(self, record: Any) -> bytes:
        """One record as gzip member."""
        self.out = io.BytesIO()
        self.write_record(record)
        return gzip_member(self.out.getvalue())


def gzip_member(data: bytes) -> bytes:
    """`data` as one gzip member (wbits 31: gzip framing, a 32 KiB window), any gzip reader reads it.

    zlib-ng rather than zlib: measured inside a worker under ops/bench/bodies.py (thread CPU time of
    building a 1 KiB page's two records, the variants taking turns in one process), 83 us against
    117 us with the standard library's zlib.compress, whose set-up of a fresh compressor per call
    (about 256 KiB allocated and a hash table cleared) dominates a record this small. zlib-ng's level 1
    makes text about a fifth larger than zlib's level 1; a worker is CPU-bound and disk is not.
    """
    return zlib_ng.compress(data, GZIP_LEVEL, 31)


# A writer keeps its output stream in an attribute: one per thread (building it looks the host name up).
_local = threading.local()


def _writer() -> _Writer:
    w: _Writer | None = getattr(_local, "writer", None)
    if w is None:
        w = _local.writer = _Writer()
    return w


def _wire(value: str) -> str:
    """A header value as warcio can write it: aiohttp decodes header bytes that are not UTF-8 with
    surrogateescape, which no encoder accepts; as Latin-1 they reach warcio's RFC 8187 %-encoding."""
    if value.isascii():  # nearly every header: nothing to do
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape").decode("latin-1")
    return value


def _reason(reason: str) -> str:
    """A reason phrase as warcio can write it: warcio encodes the status line as ASCII and %-encodes only
    headers, so a server's non-ASCII (or undecodable, or control) reason bytes failed the whole record.
    Printable ASCII is kept; every other byte, and "%", is %-encoded, as warcio does for header values."""
    if reason.isascii() and reason.isprintable():  # nearly every reason: "OK", "Not Found"
        return reason
    try:
        raw = reason.encode("utf-8", "surrogateescape")  # aiohttp's decoding of bytes that are not UTF-8
    except UnicodeEncodeError:  # a surrogate that surrogateescape did not make
        raw = reason.encode("utf-8", "surrogatepass")
    return "".join(chr(b) if 0x20 <= b < 0x7F and b != 0x25 else f"%{b:02X}" for b in raw)


def _headers(pairs: tuple[tuple[str, str], ...] | list[tuple[str, str]]) -> list[tuple[str, str]]:
    if "".join(map("".join, pairs)).isascii():  # nearly always: one C-level pass over every name and value
        return list(pairs)
    return [(_wire(k), _wire(v)) for k, v in pairs]


# The bits uuid.UUID(int=n, version=4) sets and clears (RFC 4122 variant, version 4), applied directly:
# building a UUID object per record cost a worker more than the rest of the record id.
_UUID4_CLEAR = ~((0xC000 << 48) | (0xF000 << 64))
_UUID4_SET = (0x8000 << 48) | (4 << 76)


def _record_id() -> str:
    """A fresh WARC-Record-ID. Random bits from the process's generator, not os.urandom: an id needs
    uniqueness, not secrecy, and a system call per record showed in the profile. (`random` reseeds in
    a forked child, and each worker is a process of its own.)"""
    h = f"{random.getrandbits(128) & _UUID4_CLEAR | _UUID4_SET:032x}"
    return f"<urn:uuid:{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}>"


_stamp: tuple[int, str] = (0, "")


def _warc_date() -> str:
    """Now as a WARC-Date with microseconds; the part down to the second is formatted once a second."""
    global _stamp
    now = time.time()
    second = int(now)
    if _stamp[0] != second:
        _stamp = (second, datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S"))
    return f"{_stamp[1]}.{int((now - second) * 1_000_000):06d}Z"


def _warc_headers(rec_type: str, record_id: str, url: str, when: str, payload_sha256: str) -> Any:
    return StatusAndHeaders(
        "",
        [
            ("WARC-Type", rec_type),
            ("WARC-Record-ID", record_id),
            ("WARC-Date", when),
            ("WARC-Target-URI", url),
            ("WARC-Payload-Digest", f"sha256:{payload_sha256}"),  # given: warcio does not hash again
        ],
        protocol="WARC/1.1",
    )


def build_records(exchange: Exchange, body: bytes, sha256_hex: str | None = None) -> tuple[bytes, bytes]:
    """(gzipped response record, gzipped request record) for one exchange; `sha256_hex`: the body's,
    when the caller has it already (the fetcher hashes every body it reads)."""
    writer = _writer()
    when = _warc_date()
    response_id = _record_id()
    if sha256_hex is None:
        sha256_hex = hashlib.sha256(body).hexdigest()
    headers = [(k, v) for k, v in exchange.response_headers if k.lower() not in WIRE_HEADERS]
    headers.append(("Content-Length", str(len(body))))
    version = f"HTTP/{exchange.version}"
    response = writer.create_warc_record(
        exchange.url,
        "response",
        payload=io.BytesIO(body),
        length=len(body),
        warc_headers=_warc_headers("response", response_id, exchange.url, when, sha256_hex),
        http_headers=StatusAndHeaders(
            f"{exchange.status} {_reason(exchange.reason)}".rstrip(), _headers(headers), protocol=version
        ),
    )
    target = urlsplit(exchange.url)
    path = (target.path or "/") + (f"?{target.query}" if target.query else "")
    request_headers = _warc_headers("request", _record_id(), exchange.url, when, EMPTY_SHA256)
    request_headers.add_header("WARC-Concurrent-To", response_id)
    request = writer.create_warc_record(
        exchange.url,
        "request",
        payload=io.BytesIO(b""),
        length=0,
        warc_headers=request_headers,
        http_headers=StatusAndHeaders(  # is_http_request: the method goes first, the version last
            f"{exchange.method} {path} {version}", _headers(exchange.request_headers), is_http_request=True
        ),
    )
    return writer.serialize(response), writer.serialize(request)


def warcinfo(filename: str) -> bytes:
    """The gzipped `warcinfo` record that begins every file."""
    writer = _writer()
    info = writer.create_warcinfo_record(filename, {"software": SOFTWARE, "format": "WARC File Format 1.1"})
    return writer.serialize(info)
