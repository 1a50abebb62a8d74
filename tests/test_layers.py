"""The DICOM package's layering, as its __init__ states it: each module imports (anywhere in it, at its top or
inside a function) only the package's modules below it, and from outside the package only leaf modules, which
import nothing of the project but each other. So no import cycle, and no call up into a higher module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import sendit_watcher
import sendit_watcher.dicom

PACKAGE = Path(sendit_watcher.__file__).parent
ORDER = ["tags", "values", "elements", "dicomjson", "stream", "lean", "headers"]  # bottom up
LEAVES = {"errors": set(), "names": set(), "outcomes": set(), "walk": {"names", "outcomes"}}


def imported(path: Path) -> set[str]:
    """The project modules a file imports, anywhere in it, as names below sendit_watcher ('dicom.values')."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    project = {name.removeprefix("sendit_watcher.") for name in found if name.startswith("sendit_watcher.")}
    modules = {p.relative_to(PACKAGE).with_suffix("").as_posix().replace("/", ".") for p in PACKAGE.rglob("*.py")}
    return project & modules  # 'dicom.values.split_values' is no module; 'dicom' (the package) is left out too


@pytest.mark.parametrize("name", ORDER)
def test_a_dicom_module_imports_only_the_modules_below_it_and_leaves(name: str) -> None:
    allowed = {f"dicom.{below}" for below in ORDER[:ORDER.index(name)]} | set(LEAVES)
    assert imported(PACKAGE / "dicom" / f"{name}.py") <= allowed


def test_the_package_lists_every_module_in_its_order() -> None:
    assert sorted(p.stem for p in (PACKAGE / "dicom").glob("*.py") if p.stem != "__init__") == sorted(ORDER)
    doc = sendit_watcher.dicom.__doc__ or ""
    positions = [doc.index(f"``{name}``") for name in ORDER]
    assert positions == sorted(positions)


@pytest.mark.parametrize("name", sorted(LEAVES))
def test_a_leaf_imports_only_leaves(name: str) -> None:
    assert imported(PACKAGE / f"{name}.py") == LEAVES[name]
