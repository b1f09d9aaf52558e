"""craft/ has no import cycle, the loop modules never import the compositions built on them,
and every module is one readable job: at most 300 lines, no function over 60, a docstring,
no ``_private`` name imported from another module (each rule with its explicit, shrinking
list of today's exceptions).

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


# -- size: a module a reader takes in top to bottom ------------------------------------------

MAX_MODULE_LINES = 300
MAX_FUNCTION_LINES = 60

LONG_MODULES = {
    # A shrinking list: remove an entry once its module is split; never add one.
}
"""Modules over ``MAX_MODULE_LINES`` lines today, each with why it is still allowed."""

LONG_FUNCTIONS: dict[str, str] = {
    # A shrinking list, as LONG_MODULES; "module:function" (qualified name for methods).
}
"""Functions over ``MAX_FUNCTION_LINES`` lines today (``def`` line to last line), each with why."""

UNDOCUMENTED = {"craft.__main__": "the three-line `python -m craft` entry point (cli's, issue 17)"}
"""Modules without a docstring stating their one job."""

PRIVATE_IMPORTS: dict[tuple[str, str], str] = {
    # A shrinking list, as LONG_MODULES; (importer, "module._name").
}
"""``_private`` names imported across modules today, each with why; what another module needs should be public."""


def functions(tree: ast.AST, prefix: str = ""):
    """``(qualified name, lines)`` of every function and method under ``tree``, nested ones too."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield prefix + node.name, node.end_lineno - node.lineno + 1
            yield from functions(node, f"{prefix}{node.name}.")
        elif isinstance(node, ast.ClassDef):
            yield from functions(node, f"{prefix}{node.name}.")
        else:
            yield from functions(node, prefix)


def test_functions_finds_methods_and_nested_functions():
    tree = ast.parse("class A:\n    def f(self):\n        def g():\n            pass\n        return g\n")
    assert dict(functions(tree)) == {"A.f": 4, "A.f.g": 2}


def test_no_module_over_300_lines_but_the_listed_ones():
    sizes = {m: len(p.read_text(encoding="utf-8").splitlines()) for m, p in modules().items()}
    long = {m for m, n in sizes.items() if n > MAX_MODULE_LINES}
    assert long <= LONG_MODULES.keys(), {m: sizes[m] for m in sorted(long - LONG_MODULES.keys())}
    assert not LONG_MODULES.keys() - long, f"now short enough: remove {sorted(LONG_MODULES.keys() - long)} from LONG_MODULES"


def test_no_function_over_60_lines_but_the_listed_ones():
    long = {}
    for m, p in modules().items():
        for name, lines in functions(ast.parse(p.read_text(encoding="utf-8"))):
            if lines > MAX_FUNCTION_LINES:
                long[f"{m}:{name}"] = lines
    assert long.keys() <= LONG_FUNCTIONS.keys(), {k: v for k, v in long.items() if k not in LONG_FUNCTIONS}
    assert not LONG_FUNCTIONS.keys() - long.keys(), f"now short enough: remove {sorted(LONG_FUNCTIONS.keys() - long.keys())}"


def test_every_module_says_its_job_in_a_docstring():
    missing = {m for m, p in modules().items() if not ast.get_docstring(ast.parse(p.read_text(encoding="utf-8")))}
    assert missing == UNDOCUMENTED.keys(), sorted(missing ^ UNDOCUMENTED.keys())


def private_imports() -> set[tuple[str, str]]:
    """``(importer, module.name)`` for every ``from craft.x import _name`` between two modules."""
    out = set()
    for m, p in modules().items():
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "craft":
                out |= {(m, f"{node.module}.{a.name}") for a in node.names if a.name.startswith("_") and node.module != m}
    return out


def test_no_private_name_is_imported_across_modules_but_the_listed_ones():
    found = private_imports()
    assert found <= PRIVATE_IMPORTS.keys(), sorted(found - PRIVATE_IMPORTS.keys())
    assert not PRIVATE_IMPORTS.keys() - found, f"now public: remove {sorted(PRIVATE_IMPORTS.keys() - found)}"
