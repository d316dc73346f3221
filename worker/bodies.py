"""Kept response bodies: compressed for Redis by the worker, turned into result fields by the producer.

Standard library only, so the producer can import it without the fetcher.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from typing import Any

import orjson

from worker.charsets import codec_for
from worker.errors import BodyUnavailable

# Past this, the producer refuses to inflate a stored body: a hostile Redis writer cannot make a
# producer allocate more than the largest cap a worker would ever store.
MAX_INFLATED = 1 << 30


def pack(body: bytes, truncated: bool = False) -> bytes:
    """One flag byte (1: cut at the stored-body cap), then the body zlib-compressed."""
    # Level 6 is zlib's default trade; bodies are mostly text and shrink 4 to 10 times.
    return (b"\x01" if truncated else b"\x00") + zlib.compress(body, 6)


def unpack(stored: bytes) -> tuple[bytes, bool]:
    """(body, truncated) from what `pack` made."""
    if stored[:1] not in (b"\x00", b"\x01"):
        raise ValueError("unknown stored body format")
    d = zlib.decompressobj()
    body = d.decompress(stored[1:], MAX_INFLATED)
    if d.unconsumed_tail:
        raise ValueError("stored body larger than any cap")
    return body, stored[:1] == b"\x01"


def declared_charset(content_type: object) -> str | None:
    """The `charset` parameter of a Content-Type value as sent, or None. Any shape of value is fine."""
    if not isinstance(content_type, str):
        return None
    for param in content_type.split(";")[1:]:
        name, sep, value = param.partition("=")
        if sep and name.strip().lower() == "charset":
            return value
    return None


def body_fields(body: bytes, content_type: object) -> tuple[str, str]:
    """(body, encoding): text where it decodes in its declared charset (UTF-8 if none), else base64.

    Only the charsets of the WHATWG Encoding Standard are decoded (worker.charsets): a server chooses
    the label, and Python's codec registry also holds quadratic (punycode), failing (undefined) and
    non-text codecs. Anything else, and any error at all, gives base64: collection never stops here.
    """
    label = declared_charset(content_type)
    codec = "utf-8" if label is None or not label.strip(" \t\"'") else codec_for(label)
    if codec is not None:
        try:
            return body.decode(codec), "text"
        except Exception:  # whatever a decoder raises, the body is kept as base64
            pass
    return base64.b64encode(body).decode("ascii"), "base64"


def inline_ref(document: bytes, drop_ref: bool = False) -> bytes:
    """The result document with the body its `body_ref` points at (FETCHFLEET_BODY_STORE) added as
    `body` and `body_encoding`; unchanged if it has none. An unreadable body becomes `body_error`.
    `drop_ref`: leave the reference out, for a store that will not outlive the output (`run`'s own)."""
    if b'"body_ref":{' not in document:  # most documents: no parse
        return document
    from worker.warcstore import read_body  # loads warcio, only for batches that use a store

    doc = orjson.loads(document)
    ref = doc.pop("body_ref") if drop_ref else doc["body_ref"]
    try:
        body = read_body(ref, doc.get("sha256"))
    except BodyUnavailable as exc:
        doc["body"], doc["body_encoding"], doc["body_error"] = None, None, str(exc)
        return orjson.dumps(doc)
    doc["body"], doc["body_encoding"] = body_fields(body, doc.get("content_type"))
    doc["body_truncated"] = False
    return orjson.dumps(doc)


def result_body(doc: dict[str, Any]) -> bytes:
    """The body bytes of one result document (or of a bare `body_ref` object): read from the store and
    checked against the result's `sha256`, or decoded from an inline `body` (a text body as UTF-8).
    Raises BodyUnavailable, with a one-line reason, when there is none or it cannot be read."""
    ref = doc.get("body_ref") if "body_ref" in doc else (doc if "uri" in doc else None)
    if isinstance(ref, dict):
        from worker.warcstore import read_body  # loads warcio, only for batches that use a store

        sha256 = doc.get("sha256") if ref is not doc else None
        return read_body(ref, sha256 if isinstance(sha256, str) else None)
    body, encoding = doc.get("body"), doc.get("body_encoding")
    if isinstance(body, str) and encoding == "base64":
        try:
            return base64.b64decode(body, validate=True)
        except binascii.Error as exc:
            raise BodyUnavailable(f"inline body is not valid base64: {exc}") from None
    if isinstance(body, str):
        return body.encode("utf-8")
    error = doc.get("error")
    if doc.get("body_error"):
        raise BodyUnavailable(str(doc["body_error"]))
    if isinstance(error, dict):
        raise BodyUnavailable(f"no body: the fetch failed ({error.get('kind')}: {error.get('message')})")
    raise BodyUnavailable("the result has no body (fetch with --body)")


def merge_body(document: bytes, stored: bytes | None) -> bytes:
    """The result document with its stored body added as `body` and `body_encoding`."""
    if not stored:
        return document
    try:
        doc = orjson.loads(document)
    except orjson.JSONDecodeError:
        doc = None
    if not isinstance(doc, dict):  # not a result document (planted in Redis): passed on as it is
        return document
    try:
        body, truncated = unpack(stored)
    except (zlib.error, ValueError) as exc:
        doc["body"], doc["body_encoding"] = None, None
        doc["body_error"] = f"stored body unreadable: {exc}"
        return orjson.dumps(doc)
    doc["body"], doc["body_encoding"] = body_fields(body, doc.get("content_type"))
    doc["body_truncated"] = truncated
    return orjson.dumps(doc)
