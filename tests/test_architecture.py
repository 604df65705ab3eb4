"""The package's layers (docs/architecture.md): no import cycle, no import from a lower layer to a
higher one, no oversized module, no citation of a document a clone does not have.

Imports are read from the source (AST), inside functions too, so a deferred import cannot hide
an upward dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dflora_core"

# bottom to top; a module may import its own layer (without cycles) and the layers below
LAYERS: list[tuple[str, ...]] = [
    ("errors", "metrics", "seeds", "fileio", "statefile", "environment"),
    ("data",),
    ("models",),
    ("lowrank",),
    ("optim",),
    ("config", "config_checks", "identity"),
    ("methods",),
    ("experiment",),
    ("search",),
    ("baselines",),
    ("results",),
    ("runner",),
    # the top floor (docs/architecture.md): reading records, using a finished run, grids, what notebooks run
    ("reports",),
    ("tuned",),
    ("grids",),
    ("lab",),
    ("bench",),
    ("cli", "notebook_runner", "notebook_params", "__main__", "__init__"),
]
MAX_LINES = 500
# the top floor's packages and the packages of that floor each may import (the layer order alone would
# let tuned/ import reports/ and lab/ import tuned/: nothing needs it, so nothing may)
TOP_FLOOR = {
    "reports": set(),
    "tuned": set(),
    "grids": {"reports"},
    "lab": {"reports", "grids"},
}
# reports/ reads records and never runs a model: below the top floor it sees only these
REPORTS_MAY_IMPORT = {"errors", "metrics", "seeds", "fileio", "statefile", "environment", "config", "identity", "methods", "results"}


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 2:
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules ``name`` imports (relative and absolute, at any depth of the file)."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for alias in node.names:
                full = f"{mod}.{alias.name}"
                target = full if full in known else mod
                if target in known:
                    out.add(target)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known:
                    out.add(alias.name)
    out.discard(name)
    return out


def layer_of(name: str) -> int:
    parts = name.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    for i, layer in enumerate(LAYERS):
        if top in layer:
            return i
    raise AssertionError(f"{name} is in no layer: add it to LAYERS and docs/architecture.md")


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {m: imports_of(m, p, known) for m, p in mods.items()}


def test_every_module_has_a_layer():
    for name in modules():
        layer_of(name)


def test_no_import_runs_from_a_lower_layer_to_a_higher_one():
    upward = [
        f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)})"
        for m, targets in graph().items()
        for t in sorted(targets)
        if layer_of(t) > layer_of(m)
    ]
    assert not upward, "\n".join(upward)


def top_package(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_the_top_floor_imports_only_what_its_order_allows():
    wrong = [
        f"{m} imports {t}: {top_package(m)}/ may import only {sorted(TOP_FLOOR[top_package(m)]) or 'nothing'} of the top floor"
        for m, targets in graph().items()
        if top_package(m) in TOP_FLOOR
        for t in sorted(targets)
        if top_package(t) in TOP_FLOOR
        and top_package(t) != top_package(m)
        and top_package(t) not in TOP_FLOOR[top_package(m)]
    ]
    assert not wrong, "\n".join(wrong)


def test_reports_never_reach_a_model():
    wrong = [
        f"{m} imports {t}"
        for m, targets in graph().items()
        if top_package(m) == "reports"
        for t in sorted(targets)
        if top_package(t) != "reports" and top_package(t) not in REPORTS_MAY_IMPORT
    ]
    assert not wrong, "reports/ reads records only:\n" + "\n".join(wrong)


def test_the_top_floor_checks_see_a_planted_import(tmp_path, monkeypatch):
    """The two checks above fail on an import against the order (so they cannot pass vacuously)."""
    planted = {"dflora_core.reports.tables": {"dflora_core.grids.grid", "dflora_core.runner"}}
    monkeypatch.setattr(__import__(__name__), "graph", lambda: planted)
    with pytest.raises(AssertionError, match="reports/ may import only nothing"):
        test_the_top_floor_imports_only_what_its_order_allows()
    with pytest.raises(AssertionError, match="dflora_core.runner"):
        test_reports_never_reach_a_model()


def test_no_import_cycle():
    edges = graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_checker_sees_deferred_and_relative_imports(tmp_path):
    """The walker itself: an import inside a function and a parent-relative import are edges."""
    src = tmp_path / "mod.py"
    src.write_text("def f():\n    from ..runner import run\n    from . import loop\n")
    found = imports_of("dflora_core.search.method", src, {"dflora_core.runner", "dflora_core.search.loop"})
    assert found == {"dflora_core.runner", "dflora_core.search.loop"}


@pytest.mark.parametrize("name", sorted(modules()))
def test_module_is_not_oversized(name):
    n = len(modules()[name].read_text().splitlines())
    assert n <= MAX_LINES, f"{name} has {n} lines (> {MAX_LINES}): split it by concern"


def test_method_runners_sit_above_the_methods_table():
    """The table names its runners as strings (the explicit loader); they must live in search/baselines."""
    from dflora_core.methods import METHODS

    for spec in METHODS.values():
        module = spec.runner.split(":")[0]
        assert layer_of(f"dflora_core.{module}") > layer_of("dflora_core.methods"), spec.name


def test_nothing_cites_a_document_a_clone_does_not_have():
    root = PACKAGE.parent
    files = [*PACKAGE.rglob("*.py"), *root.glob("*.md"), *(root / "docs").glob("*.md"),
             *(root / "notebooks").glob("*.py"), *(root / "benchmarks").glob("*.md")]  # fmt: skip
    citing = [str(p.relative_to(root)) for p in files if "DESIGN.md" in p.read_text()]
    assert not citing, f"cite docs/ instead of DESIGN.md in: {citing}"
