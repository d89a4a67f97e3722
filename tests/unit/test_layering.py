"""No import cycle between the packages and modules of app/ (docs/architecture.md).

Every import counts: at module level, inside functions, and under `if TYPE_CHECKING:`, since a guarded
import is still a dependency the reader has to hold in mind. The package root (app/__init__.py, the
application factory) sits above everything and is not a layer of its own.
"""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[2] / "app"


def layers(root: Path) -> set[str]:
    """Return the top-level packages and modules under `root` (the units whose imports are checked)."""
    return {p.stem for p in root.glob("*.py") if p.stem != "__init__"} | {
        p.name for p in root.iterdir() if p.is_dir() and (p / "__init__.py").exists()}


def imported_modules(py: Path, module: str, is_package: bool) -> list[str]:
    """Return the dotted names every import in the file refers to, relative ones made absolute."""
    names: list[str] = []
    for node in ast.walk(ast.parse(py.read_text(encoding="utf-8"), str(py))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".") if is_package else module.split(".")[:-1]
                parts = parts[:len(parts) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            # `from app import translate` names a unit by its alias; `from app.x import y` by its module.
            names.extend([base, *(f"{base}.{alias.name}" for alias in node.names)])
    return names


def import_graph(root: Path) -> dict[str, set[str]]:
    """Return, for each unit under `root`, the other units its files import."""
    units = layers(root)
    graph: dict[str, set[str]] = {unit: set() for unit in units}
    package = root.name
    for py in root.rglob("*.py"):
        rel = py.relative_to(root).with_suffix("").parts
        if rel[0] not in units:
            continue  # the package root: the factory that wires every layer together
        is_package = rel[-1] == "__init__"
        module = ".".join((package, *(rel[:-1] if is_package else rel)))
        for name in imported_modules(py, module, is_package):
            parts = name.split(".")
            if len(parts) > 1 and parts[0] == package and parts[1] in units and parts[1] != rel[0]:
                graph[rel[0]].add(parts[1])
    return graph


def cycle_in(graph: dict[str, set[str]]) -> list[str] | None:
    """Return one import cycle (first unit repeated at the end), or None when the graph has none."""
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as err:
        return list(err.args[1])
    return None


def test_app_packages_import_each_other_without_a_cycle() -> None:
    graph = import_graph(APP)
    assert len(graph) > 10  # the walk found the packages
    cycle = cycle_in(graph)
    assert cycle is None, (f"import cycle between app/ packages: {' -> '.join(reversed(cycle))}; "
                           "a lower layer must not import a higher one (docs/architecture.md)")


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "app"
    for name, text in {"__init__.py": "", **files}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


_LOWER = {"lower/__init__.py": "", "lower/kinds.py": "X = 1\n"}


@pytest.mark.parametrize("upward", [
    "from app.upper import Y\n",
    "import app.upper.stage\n",
    "from app import upper\n",
    "def late():\n    from app.upper.stage import Y\n    return Y\n",
    "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from app.upper import Y\n",
])
def test_an_upward_import_of_any_kind_is_a_cycle(tmp_path: Path, upward: str) -> None:
    root = _tree(tmp_path, {**_LOWER, "lower/use.py": upward, "upper/__init__.py": "Y = 2\n",
                            "upper/stage.py": "from app.lower.kinds import X\nY = X\n"})
    assert cycle_in(import_graph(root)) is not None


def test_relative_imports_count_and_imports_within_a_package_do_not(tmp_path: Path) -> None:
    root = _tree(tmp_path, {**_LOWER, "lower/use.py": "from .kinds import X\nfrom app.lower import kinds\n",
                            "upper/__init__.py": "from ..lower import kinds\n", "top.py": "from .upper import *\n"})
    assert import_graph(root) == {"lower": set(), "upper": {"lower"}, "top": {"upper"}}
    assert cycle_in(import_graph(root)) is None
