"""The project's import graph: no cycle, the producer never reaches the fetcher, no unexplained lazy import.

Imports are read with `ast` (module level and inside functions alike), so a cycle hidden behind a
function-local import fails here as much as one at the top of a module.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix
from arq.jobs import serialize_job

from worker.codec import dump_job, load_job
from worker.enqueue import IN_PROGRESS_KEY_PREFIX, JOB_KEY_PREFIX, RETRY_KEY_PREFIX, job_record

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("worker", "producer", "fetchfleet", "ops", "ops/bench", "tests/support")

# Function-level imports of project modules, each with why it is lazy. Anything else moves to the top.
LAZY_ALLOWED = {
    ("worker", "worker.main"): "`arq worker.WorkerSettings` builds it on first access; importing the "
    "contract or settings through `worker` must not load arq or aiohttp",
    ("worker.bodies", "worker.warcstore"): "loads warcio, only for batches that keep bodies",
    ("fetchfleet.result", "worker.warcstore"): "loads warcio, only where a store is used",
    ("producer.cli", "producer.runcmd"): "`run` only: its local cluster (child processes, an embedded "
    "server, ctypes) stays out of the start-up of `submit` and every other command (issue 16)",
    ("producer.cli", "producer.stats"): "`stats` only: its tables and dataclasses stay out of the "
    "start-up of `submit` and every other command (issue 16)",
}
# Function-level imports of other packages, each with why it is lazy: each keeps a large package out
# of processes that do not use it. Anything else moves to the top.
THIRD_PARTY_LAZY_ALLOWED = {
    ("worker.s3read", "obstore"): "S3 client (~80 ms to import), only for s3:// body stores",
    ("worker.s3store", "obstore"): "same: only a worker writing to an s3:// store loads it",
    ("producer.stats", "rich"): "tables (~70 ms) only for `stats` on a terminal, not for --json",
    ("producer.progress", "rich"): "the live progress bar only on a terminal, not for -q or a pipe",
    ("ops.bench.gather_baseline", "uvloop"): "optional (worker/loop.py): asked for by --loop uvloop only",
    ("ops.bench.target", "uvloop"): "optional (worker/loop.py): the target runs on asyncio's loop without it",
}
# What the producer side must never reach, directly or through others: the fetcher, the worker runner,
# and every module that imports aiohttp or arq (found in the source below, not listed by hand).
WORKER_ONLY = {"worker.fetcher", "worker.engine"}
HEAVY = ("aiohttp", "arq")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).glob("*.py"))}


def resolve(target: str, known: dict[str, Path]) -> str | None:
    """The project module an import names (`from worker import x` may name the module worker.x)."""
    while target:
        if target in known:
            return target
        target = target.rpartition(".")[0]
    return None


def imports(name: str, path: Path, known: dict[str, Path]) -> list[tuple[str, bool]]:
    """(imported project module, at function level?) for every import in the module."""
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, nested: bool, type_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = nested or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                visit(child, inner, True)
                continue
            targets: list[str] = []
            if isinstance(child, ast.Import):
                targets = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                targets = [f"{child.module}.{a.name}" for a in child.names]
            for t in targets:
                mod = resolve(t, known)
                if mod is not None and mod != name and not type_only:
                    found.append((mod, inner))
            visit(child, inner, type_only)

    visit(tree, False, False)
    return found


def heavy_imports(path: Path) -> bool:
    """Does the module import aiohttp or arq at module level?"""
    for node in ast.parse(path.read_text()).body:
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        if any(n.split(".")[0] in HEAVY for n in names):
            return True
    return False


def graph() -> tuple[dict[str, set[str]], list[tuple[str, str]]]:
    known = modules()
    edges: dict[str, set[str]] = {m: set() for m in known}
    lazy: list[tuple[str, str]] = []
    for name, path in known.items():
        for mod, nested in imports(name, path, known):
            edges[name].add(mod)
            if nested:
                lazy.append((name, mod))
    return edges, lazy


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in edges[v]:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            strong(v)
    return out


def reach(edges: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for w in edges[todo.pop()]:
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


def test_the_graph_is_read(tmp_path: Path) -> None:
    """The checks below would pass on an empty graph: make sure imports are found at both levels."""
    edges, _ = graph()
    assert "worker.enqueue" in edges["producer.client"]
    assert "worker.engine" in edges["worker.main"]
    planted = tmp_path / "planted.py"
    planted.write_text("import worker.codec\n\ndef f():\n    from worker.contract import ChunkJob\n")
    found = imports("planted", planted, modules())
    assert sorted(found) == [("worker.codec", False), ("worker.contract", True)]


def test_no_import_cycle_between_project_modules() -> None:
    edges, _ = graph()
    assert cycles(edges) == []


def test_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_producer_and_api_never_reach_the_fetcher() -> None:
    """Module-level imports only: the allowed lazy ones are there precisely to keep the worker away."""
    known = modules()
    heavy = {m for m, p in known.items() if heavy_imports(p)}
    assert "worker.fetcher" in heavy  # the scan below must see aiohttp where it is
    top = {m: {mod for mod, nested in imports(m, p, known) if not nested} for m, p in known.items()}
    for start in [m for m in known if m.split(".")[0] in ("producer", "fetchfleet")]:
        assert not reach(top, start) & (WORKER_ONLY | heavy), start
        assert not heavy_imports(known[start]), start


def test_function_level_imports_of_project_modules_are_listed_with_a_reason() -> None:
    _, lazy = graph()
    assert sorted(set(lazy) - set(LAZY_ALLOWED)) == []
    assert sorted(set(LAZY_ALLOWED) - set(lazy)) == []  # a stale entry would allow a future one unseen


def third_party_lazy(path: Path) -> set[str]:
    """Top-level packages outside the project imported inside a function of the module."""
    found: set[str] = set()
    for func in ast.walk(ast.parse(path.read_text())):
        if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(func):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            found |= {n.split(".")[0] for n in names if n.split(".")[0] not in PACKAGES}
    return found


def test_function_level_imports_of_other_packages_are_listed_with_a_reason() -> None:
    lazy = {(name, pkg) for name, path in modules().items() for pkg in third_party_lazy(path)}
    assert sorted(lazy - set(THIRD_PARTY_LAZY_ALLOWED)) == []
    assert sorted(set(THIRD_PARTY_LAZY_ALLOWED) - lazy) == []


def test_key_prefixes_repeated_in_enqueue_match_arq() -> None:
    """worker/enqueue.py writes jobs as arq stores them without importing arq: the names must agree."""
    assert (
        job_key_prefix,
        in_progress_key_prefix,
        retry_key_prefix,
    ) == (JOB_KEY_PREFIX, IN_PROGRESS_KEY_PREFIX, RETRY_KEY_PREFIX)
    ours = load_job(job_record("fetch_chunk", ({"batch_id": "b"},), 123))
    theirs = load_job(serialize_job("fetch_chunk", ({"batch_id": "b"},), {}, None, 123, serializer=dump_job))
    assert ours == theirs


def loaded_by(imports: str, modules: tuple[str, ...]) -> list[str]:
    """Which of `modules` a fresh interpreter has loaded after `import <imports>`."""
    code = f"import sys, {imports}\nprint(sorted(m for m in {modules!r} if m in sys.modules))"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FETCHFLEET_")}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    loaded: list[str] = ast.literal_eval(out.stdout.strip())
    return loaded


@pytest.mark.slow
def test_import_producer_loads_neither_aiohttp_nor_arqs_worker() -> None:
    heavy = ("aiohttp", "arq", "arq.worker", "worker.fetcher", "warcio")
    loaded = loaded_by("producer, producer.cli, fetchfleet", heavy)
    print("loaded by `import producer, producer.cli, fetchfleet`:", loaded)
    assert loaded == []


@pytest.mark.slow
def test_the_cli_starts_without_the_modules_of_run_and_stats() -> None:
    """Every command starts with `import producer.cli`: `submit` must not pay for `run`'s local cluster
    or `stats`' tables (issue 16: the producer's start-up is part of its CPU per URL)."""
    others = ("producer.runcmd", "producer.local", "producer.children", "producer.embedded", "producer.stats")
    assert loaded_by("producer.cli", (*others, "rich", "ctypes")) == []
