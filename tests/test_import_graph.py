"""The project's imports point one way: no cycles among its modules, and no room of `models/` importing a
higher one (ARCHITECTURE.md draws the floors). Every import counts, also one inside a function; an import
under `if TYPE_CHECKING:` is for annotations only and never runs, so it does not."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "app", "workers")

# Floors, lowest first. A module may import its own room and any lower floor, never a higher one, nor
# another room on its own floor.
FLOORS = (
    ("models", "models.errors"),  # `models` alone: its __init__ imports nothing
    ("models.device",),
    ("models.data",),
    ("models.lora",),
    ("models.pairs",),
    ("models.training",),
    ("models.gt",),
    ("models.recipes", "models.serving"),
    ("models.upgrade",),
    ("app",),
    ("workers",),
)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported(path: Path, known: set[str]) -> set[str]:
    """The project modules `path` imports (for `from a.b import c`: a.b.c if that is a module, else a.b)."""
    tree = ast.parse(path.read_text(), str(path))
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _type_checking_only(node)
            for child in node.body for n in ast.walk(child)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module
                      for alias in node.names}
    return {name for name in found if name in known}


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    known = set(files)
    return {name: imported(path, known) - {name} for name, path in files.items()}


def floor(module: str) -> tuple[int, str]:
    """The floor and room of a module: the longest room name it is, or lies under."""
    rooms = [(len(room), level, room) for level, names in enumerate(FLOORS) for room in names
             if module == room or module.startswith(room + ".")]
    if not rooms:
        raise AssertionError(f"{module} is on no floor: add its room to FLOORS (and ARCHITECTURE.md)")
    _, level, room = max(rooms)
    return level, room


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path that returns to its start, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_room_imports_a_higher_or_sibling_room():
    wrong = []
    for module, targets in graph().items():
        level, room = floor(module)
        for target in targets:
            t_level, t_room = floor(target)
            if t_room != room and (t_level > level or t_level == level):
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against the floors:\n" + "\n".join(sorted(wrong))


def test_the_checker_sees_a_cycle_and_a_function_level_import(tmp_path: Path):
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    code = tmp_path / "m.py"
    code.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import models.upgrade\n"
                    "def f():\n    from models.pairs import store\n")
    assert imported(code, {"models.pairs", "models.pairs.store", "models.upgrade"}) == {"models.pairs.store"}


@pytest.mark.parametrize("module", ["models.pairs.store", "models.serving.batch", "app.api.routes.chat"])
def test_every_module_has_a_floor(module: str):
    assert floor(module)[0] >= 0
