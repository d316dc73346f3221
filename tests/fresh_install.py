"""The README's commands on a fresh copy in a new virtualenv: `python -m tests.fresh_install [--tests]`
(from the repository root).

Copies the working tree (without virtualenvs, caches or build output) to a temporary directory, runs
the README's first code block there as written (`pip install .`, then `fetchfleet run urls.txt -o
results.jsonl` against a local HTTP server), checks every result, and with `--tests` also runs the
README's test command. It prints how long each step took. Not part of the default test suite: it
installs every dependency from the package index into a new virtualenv.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support.http_target import HttpTarget

ROOT = Path(__file__).resolve().parent.parent

IGNORED = shutil.ignore_patterns(
    ".git", ".venv", "venv", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache", "build", "dist"
)
URL_COUNT = 500


def readme_blocks(language: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def commands(block: str) -> list[str]:
    """The block's command lines, trailing `# comments` removed."""
    lines = [re.sub(r"\s+#.*$", "", line).strip() for line in block.splitlines()]
    return [line for line in lines if line]


def step(name: str, command: str, cwd: Path, env: dict[str, str]) -> float:
    started = time.monotonic()
    print(f"$ {command}", flush=True)
    proc = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, check=False)
    took = time.monotonic() - started
    print(f"  {name}: exit {proc.returncode} in {took:.1f}s", flush=True)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed")
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", action="store_true", help="also run the README's test command")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()

    install, run = commands(readme_blocks("sh")[0])
    test_command = commands(readme_blocks("sh")[1])[0]
    assert install.startswith("pip install"), install
    assert run.startswith("fetchfleet run"), run

    tmp = Path(tempfile.mkdtemp(prefix="fetchfleet-fresh-"))
    clone = tmp / "fetchfleet"
    shutil.copytree(ROOT, clone, ignore=IGNORED)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("FETCHFLEET_", "VIRTUAL_ENV"))}
    target = HttpTarget().start()
    try:
        started = time.monotonic()
        subprocess.run([sys.executable, "-m", "venv", str(tmp / "venv")], check=True)
        venv_bin = tmp / "venv" / "bin"
        env = {**base_env, "VIRTUAL_ENV": str(tmp / "venv"), "PATH": f"{venv_bin}:{base_env['PATH']}"}
        print(f"  virtualenv: {time.monotonic() - started:.1f}s", flush=True)
        step("install", install, clone, env)

        urls = [
            target.url(f"/ok/{100 + i}") if i % 10 else target.url("/status/404") for i in range(URL_COUNT)
        ]
        (clone / "urls.txt").write_text("\n".join(urls) + "\n")
        step("run", run, clone, {**env, "FETCHFLEET_ALLOW_PRIVATE_NETWORKS": "true"})
        results = [json.loads(line) for line in (clone / "results.jsonl").read_text().splitlines()]
        assert sorted(r["index"] for r in results) == list(range(URL_COUNT)), "missing or doubled results"
        for r in results:
            i = r["index"]
            assert r["url"] == urls[i], r
            assert (r["status"], r["size"]) == ((404, 6) if i % 10 == 0 else (200, 100 + i)), r
        print(f"  results: {len(results)} lines, each right", flush=True)

        if args.tests:
            step("tests", test_command, clone, base_env)
        print(f"total {time.monotonic() - started:.1f}s", flush=True)
    finally:
        target.stop()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
