"""Each piece of physics exists once. Kinetic energy and temperature live in ``thermo.py``: no
other module converts ``m v^2`` to eV, divides by the Boltzmann constant or asks ASE for a
temperature or kinetic energy. Velocity Verlet and Langevin BAOAB live in ``md/integrators.py``:
no other module defines an integrator step."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "src" / "mlff_distiller"
HOMES = {ROOT / "thermo.py", ROOT / "units.py"}
MODULES = sorted(p for p in ROOT.rglob("*.py") if p not in HOMES)
STEP_NAMES = ("velocity_verlet", "langevin", "baoab", "leapfrog")


def _names(node: ast.AST) -> set[str]:
    return {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)} | {
        n.id for n in ast.walk(node) if isinstance(n, ast.Name)
    }


def _violations(source: str, integrators_home: bool = False) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr == "MASS_VELOCITY2_TO_EV":
            found.append(f"line {node.lineno}: m v^2 -> eV (use thermo.kinetic_energy)")
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            if "BOLTZMANN" in _names(node.right):
                found.append(f"line {node.lineno}: / k_B (use thermo.temperature)")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in ("get_temperature", "get_kinetic_energy"):
                found.append(f"line {node.lineno}: ASE's {node.func.attr} (use thermo)")
        if isinstance(node, ast.FunctionDef) and not integrators_home:
            if any(s in node.name.lower() for s in STEP_NAMES) and "step" in node.name.lower():
                found.append(f"line {node.lineno}: integrator step {node.name}")
    return found


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_kinetic_energy_temperature_and_integrators_are_defined_once(path):
    home = path == ROOT / "md" / "integrators.py"
    wrong = _violations(path.read_text(), integrators_home=home)
    assert not wrong, f"{path.relative_to(ROOT)} re-derives physics: {wrong}"


def test_the_checker_sees_each_kind():
    bad = (
        "def f(m, v, a):\n"
        "    k = 0.5 * m * v * v * units.MASS_VELOCITY2_TO_EV\n"
        "    t = 2 * k / (3 * units.BOLTZMANN)\n"
        "    return a.get_temperature()\n"
        "def velocity_verlet_step(x):\n"
        "    return x\n"
    )
    assert len(_violations(bad)) == 4
