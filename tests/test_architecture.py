"""The layout rules of the package, checked on its source."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "zarr_instances"
MODULES = sorted(PKG.glob("*.py"))


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                names.add(node.module)
            else:
                names.update(alias.name for alias in node.names)
    return names


@pytest.mark.parametrize("reader", ["_reader.py", "_chunk_io.py"])
def test_io_does_not_decide_which_rows(reader):
    path = PKG / reader
    if not path.exists():
        pytest.skip(f"{reader} is not a module")
    assert not _imported(path) & {"_plan", "_selection", "_sampling", "_resume"}


def test_fork_handling_lives_in_runtime_only():
    users = [p.name for p in MODULES if "register_at_fork" in p.read_text()]
    assert users == ["_runtime.py"]


@pytest.mark.parametrize("module", ["loader.py", "quality.py", "lightning.py", "cli.py"])
def test_no_private_attribute_of_the_dataset_outside_its_module(module):
    private = []
    for node in ast.walk(_tree(PKG / module)):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            base = node.value
            if isinstance(base, ast.Name) and base.id in {"ds", "dataset", "probe", "data"}:
                private.append(f"{base.id}.{node.attr}")
    assert private == []


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_modules_stay_small(path):
    assert len(path.read_text().splitlines()) <= 460
