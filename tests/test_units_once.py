"""Unit conversions exist once, in ``mlff_distiller/units.py``: no other module imports ASE's
unit module or defines a module-level constant from ours (a derived factor belongs there too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "src" / "mlff_distiller"
MODULES = sorted(p for p in ROOT.rglob("*.py") if p != ROOT / "units.py")


def _violations(source: str) -> list[str]:
    tree = ast.parse(source)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "ase" and any(
            a.name == "units" for a in node.names
        ):
            found.append(f"line {node.lineno}: from ase import units")
        if isinstance(node, ast.ImportFrom) and node.module == "ase.units":
            found.append(f"line {node.lineno}: from ase.units import ...")
        if isinstance(node, ast.Import) and any(a.name == "ase.units" for a in node.names):
            found.append(f"line {node.lineno}: import ase.units")
    for node in tree.body:  # module level: a constant computed from our unit constants
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            for sub in ast.walk(node.value):
                if (isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name)
                        and sub.value.id == "units"):
                    found.append(f"line {node.lineno}: a conversion constant from units.{sub.attr}")
    return found


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_unit_constant_outside_units_py(path):
    wrong = _violations(path.read_text())
    assert not wrong, f"{path.relative_to(ROOT)}: define it in units.py instead: {wrong}"


def test_the_checker_sees_both_kinds():
    bad = "from ase import units as u\nFACTOR = units.NM / units.PS\n"
    assert len(_violations(bad)) == 3  # the import, and two uses in one constant
