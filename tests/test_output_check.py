"""`submit --wait -o PATH` that cannot write PATH stops before anything is queued (issue 14, item 5)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from producer.cli import EXIT_USAGE
from producer.output import open_output
from tests.support.procs import ROOT, fetchfleet_env
from worker.contract import KEY_PREFIX

OTHER_UID = 4242  # the folder's owner: a user's ./data, as the image's uid 10001 meets it in a bind mount
# Root writes anywhere, through these two capabilities: without them uid 0 is just another uid.
NO_OVERRIDE = ["--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search"]


@pytest.fixture
def foreign_folder() -> Iterator[tuple[Path, list[str]]]:
    """A folder the submitting process may not write, and the command prefix that makes it so."""
    folder = Path(tempfile.mkdtemp(prefix="fetchfleet-foreign-"))
    try:
        if os.geteuid() == 0:
            setpriv = shutil.which("setpriv")
            if setpriv is None:
                pytest.skip("running as root without setpriv (util-linux): cannot give up root's overrides")
            os.chown(folder, OTHER_UID, OTHER_UID)
            folder.chmod(0o755)
            yield folder, [setpriv, *NO_OVERRIDE, "--"]
        else:
            folder.chmod(0o555)
            yield folder, []
    finally:
        folder.chmod(0o755)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_an_unwritable_output_fails_before_the_batch_is_queued(
    redis_url: str, foreign_folder: tuple[Path, list[str]]
) -> None:
    folder, prefix = foreign_folder
    output = folder / "results.jsonl"
    proc = subprocess.run(
        [*prefix, sys.executable, "-m", "producer", "submit", "-", "--wait", "-o", str(output)],
        input=b"https://example.com/a\nhttps://example.com/b\n",
        env=fetchfleet_env(redis_url),
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        check=False,
    )
    with redis.Redis.from_url(redis_url) as r:
        assert r.keys(f"{KEY_PREFIX}:*") == [], "the batch was queued although its results had nowhere to go"
        assert r.dbsize() == 0
    stderr = proc.stderr.decode()
    assert proc.returncode == EXIT_USAGE, stderr
    assert stderr.strip().splitlines() == [f"fetchfleet: {output}: cannot write: Permission denied"]
    assert not output.exists()


def test_the_check_leaves_an_existing_output_as_it_was(tmp_path: Path) -> None:
    """Opening the output before queueing neither empties an old file nor leaves a new one behind."""
    existing = tmp_path / "results.jsonl"
    existing.write_bytes(b"earlier results\n")
    open_output(str(existing)).abandon()
    assert existing.read_bytes() == b"earlier results\n"
    fresh = tmp_path / "new.jsonl"
    open_output(str(fresh)).abandon()
    assert not fresh.exists()
