"""worker.warcrecords: the two records of an exchange, as warcio writes them, read back by warcio."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import uuid

import pytest
from warcio.archiveiterator import ArchiveIterator

from worker import warcrecords
from worker.warcrecords import EMPTY_SHA256, WIRE_HEADERS, Exchange, build_records


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


@pytest.mark.parametrize("case", range(len(CASES)))
def test_every_exchange_reads_back_through_warcio(case: int) -> None:
    """Odd headers (undecodable bytes, UTF-8, parameters), wire headers, empty and binary bodies, a POST:
    warcio reads each pair back with both digests checked, the payload is the body, the payload digest
    the result's sha256, and the headers about the bytes on the wire are gone."""
    ex, body = CASES[case]
    response, request = build_records(ex, body, hashlib.sha256(body).hexdigest())
    records, payloads = [], []
    for record in ArchiveIterator(io.BytesIO(response + request), check_digests="raise"):
        records.append(record)
        payloads.append(record.content_stream().read())  # read before the iterator moves on
    assert [r.rec_type for r in records] == ["response", "request"]
    got = records[0]
    assert got.rec_headers.get_header("WARC-Target-URI") == ex.url
    assert got.rec_headers.get_header("WARC-Payload-Digest") == f"sha256:{hashlib.sha256(body).hexdigest()}"
    assert payloads == [body, b""]
    names = {k.lower() for k, _ in got.http_headers.headers}
    assert not names & (WIRE_HEADERS - {"content-length"})
    assert got.http_headers.get_header("Content-Length") == str(len(body))
    assert records[1].http_headers.protocol == ex.method
    assert records[1].rec_headers.get_header("WARC-Payload-Digest") == f"sha256:{EMPTY_SHA256}"


@pytest.mark.parametrize(
    ("reason", "shown"),
    [
        ("\udcff\udcfeOK", "%FF%FEOK"),  # bytes that are not UTF-8, as aiohttp decodes them
        ("Tr\u00e8s bien", "Tr%C3%A8s bien"),
        ("O\x01K\x1b[31m", "O%01K%1B[31m"),
        ("50% off", "50% off"),  # printable ASCII is kept as sent
        ("Not Found", "Not Found"),
    ],
)
def test_any_reason_phrase_a_server_sends_is_written(reason: str, shown: str) -> None:
    """warcio writes the status line as ASCII: a server's non-ASCII reason failed the record, and with it
    the URL's result (`internal`, with a traceback in the worker's log) when a body store was set."""
    ex = dataclasses.replace(CASES[0][0], reason=reason)
    response, request = build_records(ex, b"body")
    record = next(iter(ArchiveIterator(io.BytesIO(response + request), check_digests="raise")))
    assert record.http_headers.statusline == f"200 {shown}"
    assert record.content_stream().read() == b"body"


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
