"""Reading from S3 (or an S3-compatible server): the client and ranged reads of stored bodies.

obstore is imported inside the functions: a reader of a file:// store never loads it.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from worker.errors import BodyUnavailable
from worker.settings import get_settings
from worker.storeuri import parse_s3


def make_store(bucket: str, endpoint: str | None, timeout: float = 30.0) -> Any:
    """An obstore S3Store; credentials and region come from the usual AWS_* variables."""
    from obstore.store import S3Store

    options: dict[str, Any] = {"timeout": f"{timeout:g}s"}
    config: dict[str, Any] = {}
    if endpoint:
        config["endpoint"] = endpoint
        options["allow_http"] = endpoint.startswith("http://")
    return S3Store(bucket, config=config or None, client_options=options)  # type: ignore[arg-type]


@lru_cache(maxsize=16)
def _reader(bucket: str, endpoint: str | None) -> Any:
    return make_store(bucket, endpoint)


def read_s3_range(uri: str, offset: int, length: int) -> bytes:
    """`length` bytes at `offset` of the object `uri` (FETCHFLEET_S3_ENDPOINT_URL and AWS_* apply)."""
    import obstore

    bucket, key = parse_s3(uri)
    try:
        data = obstore.get_range(
            _reader(bucket, get_settings().s3_endpoint_url), key, start=offset, length=length
        )
    except Exception as exc:  # obstore's own errors: not found, denied, unreachable
        raise BodyUnavailable(f"{uri}: {one_line(exc)}") from None
    return bytes(data)


def one_line(exc: BaseException, limit: int = 200) -> str:
    """An obstore error as one short line: its text runs over many lines (the server's XML reply, a
    "Debug source" dump), and the command line promises one line on stderr."""
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    if len(text) > limit:
        text = text[:limit].rstrip() + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
