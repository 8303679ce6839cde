"""The package contract of docs/ARCHITECTURE.md, read from the code's imports (ast), every import
counted, the ones inside functions too: packages import downward only (no cycle), the LLM layer
imports nothing of the domain, a stage module never imports another stage module, and modules and
functions stay small."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "pipeline"

#: What each unit may import (besides itself). A unit is a subpackage or a top-level module of
#: `pipeline`. Keep in step with the table in docs/ARCHITECTURE.md.
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "fileio": set(),
    "columns": set(),
    "progress": set(),
    "validate": set(),
    "__init__": set(),
    "__main__": {"cli"},
    "extras": {"errors"},
    "init": {"errors", "config"},
    "version": {"__init__"},
    "store": {"__init__", "errors", "fileio"},
    "llm": {"errors", "fileio", "progress", "validate"},
    "retrieval": {"errors", "extras", "validate"},
    "sources": {"errors", "progress", "store", "validate"},
    "release": {"__init__", "errors", "fileio", "columns", "progress", "extras", "validate"},
    "train": {"errors", "fileio", "columns", "release", "progress", "extras", "validate"},
    "generation": {"errors", "columns", "llm", "retrieval", "sources", "release", "validate"},
    "config": {"errors", "sources", "generation", "llm", "release", "train", "retrieval", "validate"},
    "runner": {"errors", "fileio", "columns", "progress", "store", "config", "llm", "generation"},
    "stages": {"errors", "fileio", "columns", "progress", "store", "runner", "generation", "sources", "release",
               "train", "llm", "__init__", "extras", "report"},
    "report": {"errors", "generation", "llm", "progress", "store", "train", "columns"},
    # the audit page reuses the report's word differences and styles; report reads audit.json as a file
    "audit": {"errors", "fileio", "progress", "store", "columns", "generation", "llm", "validate", "report"},
    "declaration": {"runner", "stages"},
    "status": {"errors", "progress", "store", "runner", "declaration", "llm"},
    "cli": {"errors", "progress", "config", "runner", "declaration", "status", "release", "train", "llm", "extras", "report",
            "init", "version", "audit"},
}
LLM_FORBIDDEN = {"stages", "generation", "sources", "retrieval", "release", "train", "runner", "declaration", "cli",
                 "status", "config"}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG.parent).with_suffix("")
        name = ".".join(rel.parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _imports(name: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "pipeline"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "pipeline":
                continue
            # `from pipeline import fileio` imports the module pipeline.fileio; the package itself
            # counts only where a name is taken from it (its __init__ must have run that far; a
            # parent package whose submodule is imported is already being imported, never a circle).
            submodules = {f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in MODULES}
            found |= submodules
            if len(submodules) < len(node.names):
                found.add(mod)
    return found


MODULES = _modules()
GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _unit_edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for src, targets in GRAPH.items():
        for t in targets:
            if t == "pipeline":
                continue
            a, b = _unit(src), _unit(t)
            if a != b:
                edges.setdefault(a, set()).add(b)
    return edges


def test_every_unit_is_declared():
    units = {_unit(m) for m in MODULES}
    assert units <= set(ALLOWED), f"add these to ALLOWED and docs/ARCHITECTURE.md: {sorted(units - set(ALLOWED))}"


def test_packages_import_only_what_the_contract_allows():
    bad = [f"{a} -> {b}" for a, bs in _unit_edges().items() for b in sorted(bs) if b not in ALLOWED.get(a, set())]
    assert not bad, "imports outside docs/ARCHITECTURE.md's table: " + ", ".join(sorted(bad))


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import circle in `edges` (a path whose last node is its first), or None."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        path.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                return path[path.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        path.pop()
        state[n] = 2
        return None

    for n in sorted(edges):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_no_import_cycle_between_packages():
    found = _cycle(_unit_edges())
    assert found is None, "import cycle: " + " -> ".join(found)


def test_no_import_cycle_between_modules():
    """Inside a package too: one module importing another that imports it back, at any depth and
    from inside a function too (a lazy import only hides the circle until that function runs)."""
    edges = {src: {t for t in targets if t in MODULES and t != src} for src, targets in GRAPH.items()}
    found = _cycle(edges)
    assert found is None, "import cycle: " + " -> ".join(found)


def test_llm_layer_knows_nothing_of_the_domain():
    bad = sorted(
        f"{src} imports {t}"
        for src, targets in GRAPH.items() if _unit(src) == "llm"
        for t in targets if _unit(t) in LLM_FORBIDDEN
    )
    assert not bad, bad


def test_no_stage_module_imports_another_stage_module():
    bad = sorted(
        f"{src} imports {t}"
        for src, targets in GRAPH.items() if src.startswith("pipeline.stages.")
        for t in targets if t.startswith("pipeline.stages.") and t != src
    )
    assert not bad, bad


def test_the_checks_above_can_fail(tmp_path):
    """The import reader sees absolute, relative and function-level imports (a test that cannot
    fail is a defect)."""
    p = tmp_path / "m.py"
    p.write_text("from pipeline.stages import generate\ndef f():\n    from ..runner import shape, run_stage\n"
                 "    import pipeline.cli\n")
    found = _imports("pipeline.stages.m", p)
    assert found >= {"pipeline.stages.generate", "pipeline.runner", "pipeline.runner.shape", "pipeline.cli"}
    assert "pipeline.stages" not in found  # only a submodule was taken from it
    # A circle at any depth is found, and a graph without one passes.
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80
#: Modules or functions over the limits, each with the reason it must be (docs/ARCHITECTURE.md); none
#: at present.
EXEMPT: dict[str, str] = {}


def test_modules_and_functions_are_small():
    bad = []
    for name, path in MODULES.items():
        text = path.read_text(encoding="utf-8")
        n = text.count("\n")
        if n > MAX_MODULE_LINES and name not in EXEMPT:
            bad.append(f"{name}: {n} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                key = f"{name}.{node.name}"
                if length > MAX_FUNCTION_LINES and key not in EXEMPT:
                    bad.append(f"{key}: {length} lines")
    assert not bad, bad
