"""The producer never needs the worker's fetching code (it enqueues by name)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from worker import codec


@pytest.mark.slow
def test_import_producer_does_not_load_aiohttp() -> None:
    code = "import sys, producer, producer.cli; print('aiohttp' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_no_pickle_in_job_codec() -> None:
    assert "pickle" not in codec.dump_job.__module__
    assert codec.load_job(codec.dump_job({"a": [1, "x"]})) == {"a": [1, "x"]}


@pytest.mark.slow
def test_import_fetchfleet_does_not_load_aiohttp() -> None:
    code = "import sys, fetchfleet; print('aiohttp' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
