"""Body store URIs (FETCHFLEET_BODY_STORE): `file:///path` and `s3://bucket/prefix`, parsed without
loading warcio or obstore, so that the settings can check them."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote, unquote, urlsplit


def parse_s3(uri: str) -> tuple[str, str]:
    """(bucket, key prefix without slashes at either end) of `s3://bucket/prefix`."""
    parts = urlsplit(uri)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"not an s3://bucket/prefix URI: {uri!r}")
    return parts.netloc, parts.path.strip("/")


def store_directory(store: str) -> Path:
    """The directory of a `file:///path` store URI."""
    parts = urlsplit(store)
    if parts.scheme != "file" or parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
        raise ValueError(f"not a file:///absolute/path URI: {store!r}")
    return Path(unquote(parts.path))


def file_uri(path: Path) -> str:
    return "file://" + quote(str(path))
