"""No import cycles inside lmforge: the folder layout shows which way imports flow (DESIGN.md §2),
and a cycle makes two modules one that can only be read, tested or moved together.

Every import counts: module-level, function-level (lazy) and `if TYPE_CHECKING:` ones. A lazy
import only defers the cycle to run time, and a type-only one still ties the two modules' meaning
together. Importing a submodule is not counted as importing its parent package's __init__.
"""

from __future__ import annotations

import ast
from pathlib import Path

import lmforge

# Cycles that predate this test, in code other work is changing; each is to be broken, then removed here.
KNOWN_CYCLES = [
    {"lmforge.peft", "lmforge.peft.files"},
    {"lmforge.eval.tasks.definition", "lmforge.eval.tasks.sources"},
]


def module_imports(root: Path = Path(lmforge.__file__).parent.parent, top: str = "lmforge") -> dict[str, set[str]]:
    """Each module of package `top` (under `root`) and the modules of it that it imports anywhere in its source."""
    files = {}
    for path in sorted((root / top).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def owner(name: str) -> str:
        """The module that defines `name`: itself, or the nearest enclosing module or package."""
        while name not in files:
            name = name.rpartition(".")[0]
        return name

    graph = {}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                imported |= {owner(alias.name) for alias in node.names if alias.name.split(".")[0] == top}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                if base.split(".")[0] == top:
                    # `from package import submodule` imports the submodule; any other name, its module
                    imported |= {owner(f"{base}.{alias.name}") if f"{base}.{alias.name}" in files else owner(base)
                                 for alias in node.names}
        graph[module] = imported - {module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    lowest: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(module: str) -> None:
        index[module] = lowest[module] = len(index)
        stack.append(module)
        for imported in sorted(graph[module]):
            if imported not in index:
                visit(imported)
                lowest[module] = min(lowest[module], lowest[imported])
            elif imported in stack:
                lowest[module] = min(lowest[module], index[imported])
        if lowest[module] == index[module]:
            component = set()
            while not component or module not in component:
                component.add(stack.pop())
            if len(component) > 1:
                found.append(component)

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def test_no_import_cycles_inside_lmforge():
    graph = module_imports()
    new = [sorted(component) for component in cycles(graph) if component not in KNOWN_CYCLES]
    assert not new, f"import cycles (move what both sides need into a module of its own): {new}"


def test_known_cycles_are_still_there():
    """Once a known cycle is broken, its entry goes, so that it cannot come back unnoticed."""
    found = cycles(module_imports())
    assert [cycle for cycle in KNOWN_CYCLES if cycle not in found] == []


def test_lazy_and_type_only_imports_make_cycles_too(tmp_path):
    package = tmp_path / "toy"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from toy.b import g\n")
    (package / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import c\n")
    (package / "c.py").write_text("import toy.a\n")
    (package / "d.py").write_text("from toy import a\n")
    assert cycles(module_imports(tmp_path, "toy")) == [{"toy.a", "toy.b", "toy.c"}]
