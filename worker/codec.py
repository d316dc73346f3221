"""Job (de)serialization for the queue: msgpack, never pickle, so a Redis writer cannot run code."""

from __future__ import annotations

from typing import Any

import msgpack


def _as_text(value: object) -> str:
    # arq also serializes its own failure records (an exception object for "job expired"); keep them as
    # text instead of failing with a traceback. Loading never turns text back into objects.
    return f"{value.__class__.__name__}: {value}"


def dump_job(data: dict[str, Any]) -> bytes:
    packed: bytes = msgpack.packb(data, use_bin_type=True, default=_as_text)
    return packed


def load_job(raw: bytes) -> dict[str, Any]:
    # strict_map_key stays on and ext types are refused: only plain data comes back.
    data = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    if not isinstance(data, dict):
        raise ValueError("job payload is not a map")
    return data
