"""worker.warcrecords writes exactly the bytes warcio's WARCWriter writes for the same two records.

build_records assembles the WARC fields itself (warcio's generic record machinery was a third of a
worker's CPU per URL with bodies kept); warcio's writer, set up as the store used it before (SHA-256
digests in base16, the fetcher's payload digest handed in), stays the reference here.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from warcio.archiveiterator import ArchiveIterator
from warcio.statusandheaders import StatusAndHeaders
from warcio.utils import Digester
from warcio.warcwriter import WARCWriter

from worker import warcrecords
from worker.warcrecords import EMPTY_SHA256, WIRE_HEADERS, Exchange, build_records


class _HexSha256(Digester):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__("sha256")

    def __str__(self) -> str:
        return "sha256:" + str(self.digester.hexdigest())


class _Reference(WARCWriter):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__(None, gzip=False, warc_version="1.1")

    def _create_digester(self) -> Digester:
        return _HexSha256()

    def raw(self, record: Any) -> bytes:
        self.out = io.BytesIO()
        self.write_record(record)
        return bytes(self.out.getvalue())


def _warc_headers(rec_type: str, rid: str, url: str, when: str, payload_hex: str) -> Any:
    return StatusAndHeaders(
        "",
        [
            ("WARC-Type", rec_type),
            ("WARC-Record-ID", rid),
            ("WARC-Date", when),
            ("WARC-Target-URI", url),
            ("WARC-Payload-Digest", f"sha256:{payload_hex}"),
        ],
        protocol="WARC/1.1",
    )


def reference(ex: Exchange, body: bytes, ids: tuple[str, str], when: str) -> tuple[bytes, bytes]:
    """The two records as warcio's writer serializes them (uncompressed)."""
    w = _Reference()
    headers = [(k, v) for k, v in ex.response_headers if k.lower() not in WIRE_HEADERS]
    headers.append(("Content-Length", str(len(body))))
    version = f"HTTP/{ex.version}"
    response = w.create_warc_record(
        ex.url,
        "response",
        payload=io.BytesIO(body),
        length=len(body),
        warc_headers=_warc_headers("response", ids[0], ex.url, when, hashlib.sha256(body).hexdigest()),
        http_headers=StatusAndHeaders(
            f"{ex.status} {ex.reason}".rstrip(), warcrecords._headers(headers), protocol=version
        ),
    )
    path = ex.url.split("://", 1)[1].split("/", 1)[1] if ex.url.count("/") > 2 else ""
    req_headers = _warc_headers("request", ids[1], ex.url, when, EMPTY_SHA256)
    req_headers.add_header("WARC-Concurrent-To", ids[0])
    request = w.create_warc_record(
        ex.url,
        "request",
        payload=io.BytesIO(b""),
        length=0,
        warc_headers=req_headers,
        http_headers=StatusAndHeaders(
            f"{ex.method} /{path} {version}", warcrecords._headers(ex.request_headers), is_http_request=True
        ),
    )
    return w.raw(response), w.raw(request)


def _exchange(url: str, response_headers: tuple[tuple[str, str], ...], method: str = "GET") -> Exchange:
    return Exchange(
        url=url,
        method=method,
        request_headers=(("Host", "a.test"), ("Accept", "*/*"), ("User-Agent", "fetchfleet")),
        status=200,
        reason="OK",
        version="1.1",
        response_headers=response_headers,
    )


GZIPPED = (("Content-Type", "text/plain"), ("Content-Encoding", "gzip"))
WIRE = (("Content-Length", "3"), ("Transfer-Encoding", "chunked"))
ODD = (("X-Latin", "caf\udce9"), ("X-Utf8", "café"), ("X-Semi", "a; b=é"))
CASES = [
    (_exchange("http://a.test/page/1?x=1", GZIPPED), b"x" * 1024),
    (_exchange("http://a.test/", (("Content-Type", "text/html; charset=utf-8"),)), "<p>café</p>".encode()),
    (_exchange("http://a.test/empty", ()), b""),
    (_exchange("http://a.test/bin", WIRE), bytes(range(256)) * 40),
    (_exchange("http://a.test/odd", ODD), b"body"),
    (_exchange("http://a.test/post", (("Content-Type", "text/plain"),), method="POST"), b"ok"),
]


@pytest.fixture
def fixed_ids(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[tuple[str, str], str]]:
    ids = (
        "<urn:uuid:00000000-0000-4000-8000-000000000001>",
        "<urn:uuid:00000000-0000-4000-8000-000000000002>",
    )
    sequence = iter(ids)
    when = "2026-12-01T01:02:03.000004Z"
    monkeypatch.setattr(warcrecords, "_record_id", lambda: next(sequence))
    monkeypatch.setattr(warcrecords, "_warc_date", lambda: when)
    yield ids, when


@pytest.mark.parametrize("case", range(len(CASES)))
def test_records_are_warcios_bytes(case: int, fixed_ids: tuple[tuple[str, str], str]) -> None:
    ex, body = CASES[case]
    ids, when = fixed_ids
    response, request = build_records(ex, body, hashlib.sha256(body).hexdigest())
    want_response, want_request = reference(ex, body, ids, when)
    assert gzip.decompress(response) == want_response
    assert gzip.decompress(request) == want_request


def test_warcio_reads_the_records_back_with_their_digests_checked() -> None:
    ex, body = CASES[1]
    response, request = build_records(ex, body)
    seen = []
    for record in ArchiveIterator(io.BytesIO(response + request), check_digests="raise"):
        seen.append((record.rec_type, record.rec_headers, record.content_stream().read()))
    assert [(t, payload) for t, _, payload in seen] == [("response", body), ("request", b"")]
    digest = f"sha256:{hashlib.sha256(body).hexdigest()}"
    assert seen[0][1].get_header("WARC-Payload-Digest") == digest
    assert seen[1][1].get_header("WARC-Concurrent-To") == seen[0][1].get_header("WARC-Record-ID")


def test_record_ids_are_distinct_version_4_uuids() -> None:
    ids = {warcrecords._record_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    for rid in list(ids)[:100]:
        assert rid.startswith("<urn:uuid:") and rid.endswith(">")
        parsed = uuid.UUID(rid[len("<urn:uuid:") : -1])
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and str(parsed) == rid[10:-1]
