"""The layering the README's "Architecture" section promises, read off the source's import statements
(every ``import``, at module level or inside a function)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "compass_lightning"
#: Layers that must not know Lightning: the analyses, the engine and the task adapters.
LIGHTNING_FREE = ("attacks", "attribution", "neurons", "pruning", "mutation", "metrics", "engine", "tasks")
LONGEST = 400


def _name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str) -> set[str]:
    """The names a module imports: ``compass_lightning.x.y`` resolved to the module it names (a
    submodule for ``from package import submodule``), and top-level names of other packages."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in MODULES else node.module)
    return found


def _internal(name: str) -> set[str]:
    # the root package only re-exports: an edge into it says nothing about layering
    return {m for m in _imports(name) if m in MODULES and m != "compass_lightning"}


def test_no_module_is_longer_than_the_guide_allows():
    long = {name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > LONGEST}
    assert not long, f"modules over {LONGEST} lines: {long}"


@pytest.mark.parametrize("layer", LIGHTNING_FREE)
def test_the_analyses_the_engine_and_the_tasks_do_not_import_lightning(layer):
    offenders = {name: sorted(m for m in _imports(name) if m.split(".")[0] in ("lightning", "pytorch_lightning"))
                 for name in MODULES if name.split(".")[1:2] == [layer]}
    assert offenders and not {k: v for k, v in offenders.items() if v}


def test_no_callback_module_imports_another_except_base_and_the_private_helpers():
    callbacks = [n for n in MODULES if n.startswith("compass_lightning.callbacks.")]
    allowed = {"compass_lightning.callbacks.base"} | {n for n in callbacks if n.rsplit(".", 1)[1].startswith("_")}
    monitors = [n for n in callbacks if n not in allowed]
    assert len(monitors) == 7  # mutation, robustness, interpretability, neurons, validation, pruning, compass
    for name in monitors:
        others = {m for m in _internal(name) if m.startswith("compass_lightning.callbacks") and m not in allowed}
        assert not others, f"{name} imports {others}"


def test_nothing_below_the_callbacks_imports_them():
    below = [n for n in MODULES if n.split(".")[1:2] and n.split(".")[1] in (*LIGHTNING_FREE, "reporting")]
    offenders = {n: sorted(m for m in _internal(n) if m.startswith("compass_lightning.callbacks")) for n in below}
    assert not {k: v for k, v in offenders.items() if v}


def test_there_is_no_import_cycle_inside_the_package():
    graph = {name: _internal(name) - {name} for name in MODULES}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for child in sorted(graph[name]):
            if state.get(child) == 1:
                cycle = path[path.index(child):] + [child] if child in path else [name, child]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if child not in state:
                visit(child, [*path, child])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
