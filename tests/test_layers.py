"""craft/ has no import cycle, and the loop modules never import the compositions built on them.

Imports are read with ``ast`` from every module, at module level and inside
functions alike (a lazy import is still a dependency), ``from craft import x``
counting as an import of ``craft.x``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOOP = {"craft.parts", "craft.runfolder", "craft.rundir", "craft.loop", "craft.hooks", "craft.checkpoint", "craft.logging", "craft.distributed"}
COMPOSED = {"craft.run", "craft.sweep", "craft.trained", "craft.cli"}


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted((ROOT / "craft").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "craft":
            out |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module for a in node.names}
    return {m for m in out if m in known}


def graph() -> dict[str, set[str]]:
    known = modules()
    # a package's __init__ importing its own submodules is how a package is built, not a cycle through it
    return {m: {i for i in imports(p, known) if i != m and not (p.name == "__init__.py" and i.startswith(m + "."))}
            for m, p in known.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``edges`` (as the list of modules around it), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(edges.get(m, ())):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(edges):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_craft_has_no_import_cycle():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_loop_modules_do_not_import_what_is_built_on_them():
    edges = graph()
    wrong = sorted(f"{m} imports {i}" for m in LOOP for i in edges[m] if i in COMPOSED)
    assert not wrong, wrong
    assert "craft.run" not in edges["craft.sweep"] and "craft.sweep" not in edges["craft.trained"]
