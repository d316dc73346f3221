"""Turning a fetch outcome into the result document the contract promises."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson

from worker.bodies import pack
from worker.contract import ErrorInfo, ErrorKind, FetchResult, mask_password, mask_passwords_in
from worker.errors import RetryableStatus
from worker.fetcher import FetchOutcome


def final_outcome(outcome: FetchOutcome, retry_statuses: frozenset[int] | set[int]) -> FetchOutcome:
    """A retryable status still returned on the last attempt is reported as `http_status`."""
    if outcome.error is None and outcome.status in retry_statuses:
        err = RetryableStatus(f"HTTP {outcome.status} on the last attempt")
        return replace(outcome, error=err)
    return outcome


def stored_body(outcome: FetchOutcome) -> bytes | None:
    """The kept body, compressed for Redis; the producer turns it into `body` and `body_encoding`."""
    if outcome.body is None or outcome.error is not None:
        return None
    return pack(outcome.body, outcome.body_truncated)


def build_result(index: int, outcome: FetchOutcome, attempts: int, worker: str) -> FetchResult:
    error = None
    if outcome.error is not None:
        error = ErrorInfo(
            kind=ErrorKind(outcome.error.kind), message=mask_passwords_in(str(outcome.error))[:500]
        )
    return FetchResult(
        index=index,
        url=mask_password(outcome.url),
        final_url=None if outcome.final_url is None else mask_password(outcome.final_url),
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
    )


def result_doc(index: int, outcome: FetchOutcome, attempts: int, worker: str) -> dict[str, Any]:
    """The same document as `build_result(...)` dumped without body fields, built as a plain dict.

    The hot path: a pydantic model built and dumped per URL cost ~3 us of a worker's ~90 us per URL
    (ops/bench). The fields and their order are FetchResult's; tests/test_results.py checks that the
    bytes `encode_doc` makes validate as a FetchResult and equal what pydantic would write.
    """
    error = outcome.error
    status = outcome.status
    return {
        "index": index,
        # A user:password@ URL is fetched with its password; the result shows it masked.
        "url": mask_password(outcome.url),
        "final_url": None if outcome.final_url is None else mask_password(outcome.final_url),
        "status": status,
        "ok": error is None and status is not None and status < 400,
        "error": None
        if error is None
        else {"kind": ErrorKind(error.kind).value, "message": mask_passwords_in(str(error))[:500]},
        "size": outcome.size,
        "sha256": outcome.sha256,
        "content_type": outcome.content_type,
        "elapsed_ms": outcome.elapsed_ms,
        "attempts": attempts,
        "redirects": outcome.redirects,
        "worker": worker,
    }


def encode_doc(doc: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(doc)
    except TypeError:  # a lone surrogate: header bytes that are not UTF-8 (aiohttp's surrogateescape)
        return orjson.dumps(_valid_text(doc))


def valid_text(text: str) -> str:
    """`text` as valid Unicode: the bytes a server sent decoded with U+FFFD for what is not UTF-8."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a surrogate that surrogateescape did not make
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def _valid_text(value: Any) -> Any:
    if isinstance(value, str):
        return valid_text(value)
    if isinstance(value, dict):
        return {k: _valid_text(v) for k, v in value.items()}
    return value


def error_result(
    index: int, url: str, kind: ErrorKind, message: str, attempts: int, worker: str
) -> FetchResult:
    return FetchResult(
        index=index,
        url=mask_password(url),
        error=ErrorInfo(kind=kind, message=mask_passwords_in(message)[:500]),
        attempts=attempts,
        worker=worker,
    )


def encode(result: FetchResult) -> bytes:
    # Unset optional body fields are left out, so a default result stays small in Redis.
    exclude = {"body", "body_encoding"} if result.body is None else set()
    if result.body_ref is None:
        exclude.add("body_ref")
    return result.model_dump_json(exclude_none=False, exclude=exclude or None).encode()
