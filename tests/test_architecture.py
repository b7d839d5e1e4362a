"""The package's layering: no import cycle, not even one hidden in a function body."""

import ast
import importlib
from pathlib import Path

import pytest

import sparsity_lab

ROOT = Path(sparsity_lab.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in ROOT.rglob("*.py")}


def _imports(name: str) -> set[str]:
    """The package's modules that ``name`` imports, at module level or in a function.

    Imports under ``if TYPE_CHECKING:`` never run and are left out.  ``from . import x``
    counts as importing the module ``x``; the implicit import of a parent package does not,
    since every submodule has it.
    """
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")
                    parts = parts[: len(parts) - child.level + 1]
                    base = ".".join(parts + ([child.module] if child.module else []))
                for alias in child.names:
                    sub = f"{base}.{alias.name}"
                    found.add(sub if sub in MODULES else base)
            visit(child)

    visit(ast.parse(path.read_text()))
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: _imports(name) for name in MODULES}


def _cycle() -> list[str] | None:
    """One import cycle of the package, or None (depth-first search with colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(GRAPH[m]):
            if state.get(n) == 1:
                return stack[stack.index(n) :] + [n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(GRAPH):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_the_import_graph_has_no_cycle_even_counting_imports_inside_functions():
    assert len(GRAPH) > 40  # the parser found the package
    assert "sparsity_lab.pruning" in GRAPH["sparsity_lab.recipes"]
    cycle = _cycle()
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_check_finds_a_cycle_when_there_is_one():
    GRAPH["sparsity_lab.targets"].add("sparsity_lab.pruning")
    try:
        cycle = _cycle()
    finally:
        GRAPH["sparsity_lab.targets"].discard("sparsity_lab.pruning")
    assert cycle is not None and cycle[0] == cycle[-1]


LEAVES = ["targets", "calibration", "registry", "seeding", "modes", "paths"]


@pytest.mark.parametrize("leaf", LEAVES)
def test_leaf_modules_import_nothing_of_the_package(leaf):
    assert GRAPH[f"sparsity_lab.{leaf}"] == set()


def test_every_module_imports_on_its_own():
    for name in MODULES:
        importlib.import_module(name)


def test_only_the_selection_module_turns_a_budget_plan_into_masks():
    """One path from scores to masks: budgets.allocate is called by selection alone (the
    criteria that choose masks within each layer their own way take its per-layer counts
    through selection.plan)."""
    callers = {
        name
        for name, path in MODULES.items()
        if "budgets.allocate(" in path.read_text() or "allocate(budget" in path.read_text()
    }
    assert callers == {"sparsity_lab.selection"}


def test_importing_the_package_needs_only_torch():
    """The docstring promises that heavier dependencies load on first use."""
    import subprocess
    import sys

    code = (
        "import sys, sparsity_lab; "
        "print(sorted(m for m in ('pandas', 'sparsity_lab.train', 'sklearn', 'matplotlib') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def _owner(cls: type, attribute: str) -> type:
    return next(k for k in cls.__mro__ if attribute in vars(k))


def test_no_criterion_replaces_the_shared_prune_and_only_mask_choosing_rules_replace_choose():
    """Criteria plug into Criterion.prune through its hooks (target, prepare, scores,
    choose, update_weights, steps), so its checks and attaching are never skipped.  The
    ones whose rule is the choice of the masks itself replace ``choose``: the layer-wise
    reconstruction methods, the two searches, FORCE's rounds and soft movement's
    threshold.  The list can only shrink."""
    from sparsity_lab.criteria.base import Criterion

    chooses = set()
    for name in sparsity_lab.registry.available("criterion"):
        obj = sparsity_lab.registry.get(name, "criterion")
        cls = obj if isinstance(obj, type) else type(obj)
        assert _owner(cls, "prune") is Criterion, f"{name} replaces Criterion.prune"
        if _owner(cls, "choose") is not Criterion:
            chooses.add(name)
    known = {"amc", "evolutionary", "force", "lobs", "obc", "soft_movement", "sparsegpt", "wanda"}
    assert chooses <= known, f"{sorted(chooses - known)} replace Criterion.choose"
