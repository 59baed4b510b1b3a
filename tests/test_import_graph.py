"""The import graph of `llm/`: no cycles, imports point down the layers (STYLE.md).

Read from the source with `ast` (nothing is imported), so a cycle that only bites at run
time, through an import inside a function, is caught too. `from pkg import name` counts as
importing the submodule `pkg.name` when one exists, else `pkg` itself; importing a
submodule from outside its package also enters the package's `__init__` (that is when a
half-initialised package bites), and a package's `__init__` importing its children is an
edge like any other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1] / "llm"

# (importer prefix, imported prefix): the importer must never import it, at any level
FORBIDDEN = [
    ("llm.model", "llm.train"),
    ("llm.model", "llm.inference"),
    ("llm.model", "llm.interop"),
    ("llm.model", "llm.checkpoint"),
    ("llm.sharding", "llm.train"),
    ("llm.sharding", "llm.checkpoint"),
    ("llm.train", "llm.interop"),
    ("llm.checkpoint", "llm.train"),
    ("llm.data", "llm.train"),
    ("llm.ops", "llm.model"),
    ("llm.interp", "llm.train"),  # the instruments read a model; training reads them, not back
    ("llm.model", "llm.interp"),
]

# Modules allowed to import `llm.*` inside functions, and why. Everything else imports at the
# top, so the graph above is what a reader sees in the first lines of each file.
LAZY_OK = {
    "llm.cli": "command modules are found at run time (pkgutil), so `llm --help` stays fast",
    "llm.commands": "each command imports jax and its package only when it runs",
    "llm.checkpoint.load": "Hugging Face directories and chat templates need safetensors/jinja2",
    "llm.tokenizers": "sentencepiece and `tokenizers` are optional dependencies",
    "llm.ops.attention": "the Pallas kernels import Triton/Mosaic lowering only when chosen",
}


def _modules() -> dict[str, Path]:
    mods = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return mods


MODULES = _modules()


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = module.split(".")
        if node.level:
            keep = len(base) - node.level + (MODULES[module].name == "__init__.py")
            base = base[:keep]
            prefix = ".".join([*base, *([node.module] if node.module else [])])
        else:
            prefix = node.module or ""
        subs = [f"{prefix}.{a.name}" for a in node.names if f"{prefix}.{a.name}" in MODULES]
        names = subs + ([prefix] if len(subs) < len(node.names) else [])
    out = []
    for name in names:
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name.startswith("llm") and name != module:
            out += [name, *_packages_entered(module, name)]
    return out


def _packages_entered(module: str, target: str) -> list[str]:
    """Importing a.b.c from outside package a.b first runs a.b's __init__ (and a's)."""
    parts = target.split(".")
    ancestors = [".".join(parts[:i]) for i in range(2, len(parts))]  # not the root `llm`
    return [a for a in ancestors if not (module == a or module.startswith(a + "."))]


def _edges() -> list[tuple[str, str, bool]]:
    """(importer, imported, inside a function) for every import of an `llm` module."""
    edges = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        lazy = {
            id(n)
            for f in ast.walk(tree)
            if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
            for n in ast.walk(f)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                edges += [(module, t, id(node) in lazy) for t in _targets(module, node)]
    return edges


EDGES = _edges()


def find_cycle(edges: list[tuple[str, str, bool]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search, colours)."""
    graph: dict[str, set[str]] = {}
    for a, b, _ in edges:
        graph.setdefault(a, set()).add(b)
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_graph_is_read():
    assert len(MODULES) > 80 and len(EDGES) > 200  # the package, not an empty glob
    assert ("llm.train.loop", "llm.train.step", False) in EDGES


def test_no_import_cycles():
    cycle = find_cycle(EDGES)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_finder_finds_a_cycle_through_a_package_init():
    """llm.peft.lora importing llm.train.trainable enters llm/train/__init__, which imports
    the loop; a loop importing llm.peft would then read a half-initialised package."""
    lora = ("llm.peft.lora", "llm.train.trainable")
    planted = [*EDGES, (*lora, False), ("llm.peft.lora", "llm.train", False),
               ("llm.train.loop", "llm.peft", True)]  # fmt: skip
    assert _packages_entered(*lora) == ["llm.train"]
    cycle = find_cycle(planted)
    assert cycle is not None and {"llm.train", "llm.peft.lora", "llm.train.loop"} <= set(cycle)


@pytest.mark.parametrize(("low", "high"), FORBIDDEN)
def test_imports_point_down_the_layers(low, high):
    bad = [(a, b) for a, b, _ in EDGES if a.startswith(low) and b.startswith(high)]
    assert not bad, f"{low} must not import {high}: {bad}"


def test_imports_inside_functions_only_where_documented():
    lazy = sorted({(a, b) for a, b, inside in EDGES if inside})
    bad = [(a, b) for a, b in lazy if not any(a.startswith(p) for p in LAZY_OK)]
    assert not bad, f"import at the top of the module instead (or document why): {bad}"
