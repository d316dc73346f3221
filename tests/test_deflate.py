"""worker.deflate: streams sized to their data read back with every standard reader."""

from __future__ import annotations

import gzip
import os
import zlib

import pytest

from worker.bodies import pack, unpack
from worker.deflate import deflate
from worker.warcrecords import gzip_member

SIZES = [0, 1, 200, 1023, 1024, 1025, 1300, 4096, 20_000, 32_767, 32_768, 40_000, 1_000_000]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", ["text", "random"])
def test_every_size_reads_back(size: int, kind: str) -> None:
    data = os.urandom(size) if kind == "random" else (b"fetchfleet fetches pages, " * (size // 26 + 1))[:size]
    assert zlib.decompress(deflate(data, 6)) == data  # zlib framing, the default reader
    member = deflate(data, 1, gzip=True)
    assert gzip.decompress(member) == data and zlib.decompress(member, 31) == data
    assert gzip.decompress(gzip_member(data) + gzip_member(b"next")) == data + b"next"  # members chain
    assert unpack(pack(data, truncated=True)) == (data, True)


def test_a_large_input_deflates_as_zlib_defaults_do() -> None:
    """From 32 KiB on nothing is sized down: the same bytes as zlib's own defaults."""
    data = b"<p>a page of text</p>\n" * 5000
    assert deflate(data, 6) == zlib.compress(data, 6)


def test_small_inputs_keep_their_ratio() -> None:
    """A page of text sized down deflates within a few per cent of the full window's size."""
    words = [f"word{i % 97}".encode() for i in range(400)]
    page = b" ".join(words)
    assert len(deflate(page, 1, gzip=True)) <= 1.05 * len(zlib.compress(page, 1, 31))
