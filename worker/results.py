"""Turning a fetch outcome into the result document the contract promises."""

from __future__ import annotations

import base64

from worker.contract import ErrorInfo, ErrorKind, FetchResult
from worker.fetcher import FetchOutcome


def body_fields(body: bytes | None, content_type: str | None) -> tuple[str | None, str | None]:
    """A kept body as text where it decodes, base64 otherwise."""
    if body is None:
        return None, None
    charset = "utf-8"
    if content_type and "charset=" in content_type:
        charset = content_type.split("charset=", 1)[1].split(";", 1)[0].strip().strip('"') or "utf-8"
    try:
        return body.decode(charset), "text"
    except (UnicodeDecodeError, LookupError):
        return base64.b64encode(body).decode("ascii"), "base64"


def build_result(index: int, outcome: FetchOutcome, attempts: int, worker: str) -> FetchResult:
    error = None
    if outcome.error is not None:
        error = ErrorInfo(kind=ErrorKind(outcome.error.kind), message=str(outcome.error)[:500])
    body, encoding = body_fields(outcome.body, outcome.content_type)
    return FetchResult(
        index=index,
        url=outcome.url,
        final_url=outcome.final_url,
        status=outcome.status,
        ok=error is None and outcome.status is not None and outcome.status < 400,
        error=error,
        size=outcome.size,
        sha256=outcome.sha256,
        content_type=outcome.content_type,
        elapsed_ms=outcome.elapsed_ms,
        attempts=attempts,
        redirects=outcome.redirects,
        worker=worker,
        body=body,
        body_encoding=encoding,
    )


def error_result(
    index: int, url: str, kind: ErrorKind, message: str, attempts: int, worker: str
) -> FetchResult:
    return FetchResult(
        index=index,
        url=url,
        error=ErrorInfo(kind=kind, message=message[:500]),
        attempts=attempts,
        worker=worker,
    )


def encode(result: FetchResult) -> bytes:
    # Unset optional body fields are left out, so a default result stays small in Redis.
    return result.model_dump_json(
        exclude_none=False, exclude={"body", "body_encoding"} if result.body is None else None
    ).encode()
