"""The README's front door holds what it promises: its commands, its example, its reference tables."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from producer.cli import EXIT_FAILED, EXIT_FETCH_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from tests.fresh_install import commands, readme_blocks
from tests.support.http_target import HttpTarget
from tests.support.procs import ROOT, fetchfleet_env
from tests.support.redisserver import free_port
from tests.test_cli_help import subcommands
from worker.settings import Settings, read_by

README = (ROOT / "README.md").read_text()
CLI_DOC = (ROOT / "docs" / "cli.md").read_text()
SETTINGS_DOC = (ROOT / "docs" / "settings.md").read_text()
FIRST_SCREEN = "\n".join(README.splitlines()[:30])
EXAMPLE = ROOT / "examples" / "api_example.py"


def test_first_screen_shows_install_run_and_the_test_command() -> None:
    install_and_run = commands(readme_blocks("sh")[0])
    assert install_and_run == ["pip install .", "fetchfleet run urls.txt -o results.jsonl"]
    test_command = commands(readme_blocks("sh")[1])
    assert len(test_command) == 1
    assert test_command[0] in FIRST_SCREEN
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_command[0] in ci.splitlines(), ".ci/run must run the README's test command"


def test_front_page_order_and_length() -> None:
    """What it is, the two commands, a result line, bodies, the API, the cluster, where next: in that order,
    short enough to read in three minutes (reference material lives in docs/)."""
    order = ["```sh\npip install .", "```json\n{", "## Pages", "## Python API", "## A cluster"]
    order.append("## Where next")
    positions = [README.index(heading) for heading in order]
    assert positions == sorted(positions)
    assert len(README.split()) < 1200, len(README.split())


def test_every_docs_page_the_readme_links_exists() -> None:
    for link in re.findall(r"\]\(((?:docs|examples|ops)/[^)#]+)", README):
        assert (ROOT / link).is_file(), link


def test_cli_table_names_every_subcommand() -> None:
    for name in subcommands():
        assert f"| `fetchfleet {name}" in CLI_DOC, f"`fetchfleet {name}` has no row in docs/cli.md's table"


def test_exit_codes_table_matches_the_code() -> None:
    table = CLI_DOC[CLI_DOC.index("## Exit codes") :].split("\n\n")[1]
    codes = [int(m) for m in re.findall(r"^\| (\d+) \|", table, flags=re.M)]
    assert codes == [EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_FETCH_FAILED, EXIT_INTERRUPTED]


def test_cluster_quick_start_matches_the_compose_file() -> None:
    (block,) = [b for b in readme_blocks("sh") if "docker compose" in b]
    lines = commands(block)
    assert any(c.startswith("docker compose up") and "--scale worker=" in c for c in lines), lines
    (submit,) = [c for c in lines if c.startswith("docker compose run --rm -T producer submit ")]
    compose = (ROOT / "docker-compose.yml").read_text()
    services = compose[compose.index("services:") :]
    for service in ("worker", "producer"):
        assert re.search(rf"^  {service}:", services, flags=re.M), (
            f"no `{service}` service in docker-compose.yml"
        )
    # URLs on stdin, results on stdout redirected on the host: no container path, so no bind mount whose
    # owner the image's uid would have to match (tests/test_compose_real.py runs it as a non-root user).
    assert re.search(r" submit - .*--wait < \S+ > \S+$", submit), submit
    assert "/data" not in submit and "-o" not in submit.split(), submit
    producer = yaml.safe_load(compose)["services"]["producer"]
    # Named volumes only (the body store): a host path would need its owner to match the image's uid.
    mounts = [str(v).split(":", 1)[0] for v in producer.get("volumes", [])]
    host_paths = [m for m in mounts if m.startswith((".", "/", "~"))]
    assert not host_paths, f"the producer needs no bind mount: {host_paths}"


def test_readme_api_example_is_the_runnable_file() -> None:
    """The README's block is the whole program, imports and `asyncio.run` included, as the file runs it."""
    (block,) = readme_blocks("python")
    assert block.startswith("import ") and "asyncio.run(" in block
    source = EXAMPLE.read_text()
    assert source.endswith(block) and source[: -len(block)].strip().endswith('"""'), (
        "README and examples/api_example.py drifted"
    )


@pytest.mark.slow
def test_api_example_runs(redis_url: str, http_target: HttpTarget, spawn_worker) -> None:
    spawn_worker(redis_url)
    dead = f"http://127.0.0.1:{free_port()}/x"
    urls = [http_target.url("/ok/7"), http_target.url("/status/404"), dead]
    env = fetchfleet_env(redis_url, allow_private_networks=True)
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE), *urls],
        env=env,
        cwd=ROOT,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    lines = proc.stdout.decode().splitlines()
    # afetch, in input order: the body's length, or the error kind
    assert lines[:3] == [f"0 200 {urls[0]} 7", f"1 404 {urls[1]} 6", f"2 None {dead} connect"]
    # the Client's stream, in completion order, each with its cursor
    streamed = sorted(line.split(" ")[:2] for line in lines[3:6])
    assert streamed == [["0", "True"], ["1", "False"], ["2", "False"]], lines[3:6]
    assert all(re.fullmatch(r"\d+-\d+", line.split(" ")[2]) for line in lines[3:6])
    assert re.fullmatch(r"batch \w+: 3/3 done, \d+ failed", lines[6]), lines[6]
    assert re.fullmatch(r"batch \w+: cancelled", lines[7]), lines[7]


@pytest.mark.slow
@pytest.mark.timeout(300)  # builds a virtualenv: measured 57 s
def test_readme_commands_work_on_a_fresh_copy_in_a_new_virtualenv(tmp_path: Path) -> None:
    """`pip install .` then `fetchfleet run urls.txt -o results.jsonl`, as written (about 25 s here)."""
    proc = subprocess.run(
        [sys.executable, "-m", "tests.fresh_install"],
        cwd=ROOT,
        capture_output=True,
        timeout=600,
        check=False,
    )
    out = proc.stdout.decode()
    assert proc.returncode == 0, out[-3000:] + proc.stderr.decode()[-3000:]
    assert "each right" in out


def test_settings_table_lists_every_setting_and_nothing_else() -> None:
    rows = set(re.findall(r"^\| `(FETCHFLEET_[A-Z0-9_]+)` \|", SETTINGS_DOC, re.M))
    fields = {f"FETCHFLEET_{name.upper()}" for name in Settings.model_fields}
    assert rows == fields, (sorted(fields - rows), sorted(rows - fields))


def test_settings_table_says_which_process_reads_each_setting() -> None:
    """The `read by` column against worker/settings.py's one classification (read_by)."""
    header = re.search(r"^\| variable \| read by \| default \| meaning \|$", SETTINGS_DOC, re.M)
    assert header, "the settings table lost its `read by` column"
    rows = dict(re.findall(r"^\| `FETCHFLEET_([A-Z0-9_]+)` \| (\w+) \|", SETTINGS_DOC, re.M))
    assert rows == {name.upper(): read_by(name) for name in Settings.model_fields}
