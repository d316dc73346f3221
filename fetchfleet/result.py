"""What the API yields: one typed, immutable `Result` per URL, its body as bytes, text or JSON."""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from typing import Any

import orjson

from worker.bodies import body_fields, unpack
from worker.contract import BodyRef, ErrorKind
from worker.errors import BodyUnavailable


@dataclass(frozen=True, slots=True)
class ResultError:
    """Why a URL has no usable response; `kind` is one of the error kinds in docs/results.md."""

    kind: ErrorKind
    message: str


@dataclass(frozen=True, slots=True)
class Result:
    """One URL's outcome. `content` is the body when the batch kept bodies (`body=True`), else None.

    `cursor` is the result's position in its batch's stream: pass it back as `cursor=` to resume.
    """

    index: int
    url: str
    final_url: str | None
    status: int | None
    ok: bool
    error: ResultError | None
    size: int
    sha256: str | None
    content_type: str | None
    elapsed_ms: float
    attempts: int
    redirects: int
    worker: str
    content: bytes | None = None
    body_truncated: bool = False
    body_error: str | None = None
    body_ref: BodyRef | None = None  # where the body store holds it (FETCHFLEET_BODY_STORE), if there
    cursor: str = ""

    @classmethod
    def from_document(
        cls,
        document: bytes | dict[str, Any],
        cursor: str = "",
        content: bytes | None = None,
        body_truncated: bool = False,
        body_error: str | None = None,
    ) -> Result:
        doc = orjson.loads(document) if isinstance(document, bytes) else document
        err = doc.get("error")
        ref = BodyRef.model_validate(doc["body_ref"]) if doc.get("body_ref") else None
        if ref is not None and content is None and body_error is None:
            from worker.warcstore import read_body  # loads warcio, only where a store is used

            try:
                content = read_body(ref.model_dump(), doc.get("sha256"))
            except BodyUnavailable as exc:
                body_error = str(exc)
        return cls(
            index=doc["index"],
            url=doc["url"],
            final_url=doc.get("final_url"),
            status=doc.get("status"),
            ok=bool(doc.get("ok")),
            error=ResultError(ErrorKind(err["kind"]), err["message"]) if err else None,
            size=doc.get("size", 0),
            sha256=doc.get("sha256"),
            content_type=doc.get("content_type"),
            elapsed_ms=doc.get("elapsed_ms", 0.0),
            attempts=doc.get("attempts", 1),
            redirects=doc.get("redirects", 0),
            worker=doc.get("worker", ""),
            content=content,
            body_truncated=body_truncated,
            body_error=body_error,
            body_ref=ref,
            cursor=cursor,
        )

    @classmethod
    def from_entry(cls, cursor: str, document: bytes, stored: bytes | None) -> Result:
        """From a stream entry: the result JSON and the body as the worker packed it for Redis."""
        if not stored:
            return cls.from_document(document, cursor)
        try:
            content, truncated = unpack(stored)
        except (zlib.error, ValueError) as exc:
            return cls.from_document(document, cursor, body_error=f"stored body unreadable: {exc}")
        return cls.from_document(document, cursor, content, truncated)

    def _body(self) -> bytes:
        if self.content is None:
            why = self.body_error or "no body kept for this result (fetch with body=True; errors have none)"
            raise BodyUnavailable(f"{self.url}: {why}")
        return self.content

    def text(self) -> str:
        """The body as text in its declared charset (UTF-8 if none); undecodable bytes become U+FFFD."""
        content = self._body()
        text, encoding = body_fields(content, self.content_type)
        if encoding == "text":
            return text
        return content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body parsed as JSON (raises ValueError if it is not JSON)."""
        return json.loads(self.text())
