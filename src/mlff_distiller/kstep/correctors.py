"""Physics correctors of the hybrid integrator: something that gives energy and forces for one
molecule's positions and counts how often it was asked.

- :class:`OpenMMCorrector`: a native OpenMM Context of an OpenMM teacher (``openmm-gaff2``,
  ``openmm-amber14``): one ``setPositions`` + ``getState`` per call, no ASE overhead.
- :class:`CalculatorCorrector`: any ASE calculator, e.g. the ``xtb`` teacher (tblite) or the
  distilled PaiNN student's ``StudentCalculator``.

:func:`make_corrector` builds one by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from ase import Atoms

from mlff_distiller import keys


@runtime_checkable
class Corrector(Protocol):
    """``forces(positions (n_atoms, 3) Å) -> (energy eV, forces (n_atoms, 3) eV/Å)``; every call
    adds one to ``n_calls``."""

    n_calls: int
    name: str

    def forces(self, positions: np.ndarray) -> tuple[float, np.ndarray]: ...


class CalculatorCorrector:
    """A corrector around an ASE calculator for one molecule (``atoms`` fixes numbers, cell)."""

    def __init__(self, atoms: Atoms, calculator: Any, name: str | None = None):
        self.atoms = atoms.copy()
        self.atoms.calc = calculator
        self.n_calls = 0
        self.name = name or type(calculator).__name__

    def forces(self, positions: np.ndarray) -> tuple[float, np.ndarray]:
        self.n_calls += 1
        self.atoms.positions = np.asarray(positions, dtype=np.float64)
        energy = float(self.atoms.get_potential_energy())
        return energy, np.array(self.atoms.get_forces(), dtype=np.float64)


class OpenMMCorrector:
    """Native OpenMM path of an OpenMM teacher (no constraints, as in the hybrid's VV step)."""

    def __init__(self, teacher: Any, atoms: Atoms, name: str | None = None):
        import openmm

        self.teacher = teacher
        self.context, _ = teacher.create_context(atoms, openmm.VerletIntegrator(0.001))
        self.n_calls = 0
        self.name = name or getattr(teacher, "name", "openmm")

    def forces(self, positions: np.ndarray) -> tuple[float, np.ndarray]:
        from mlff_distiller.teachers.openmm_base import positions_to_openmm, state_energy_forces

        self.n_calls += 1
        self.context.setPositions(positions_to_openmm(positions))
        state = self.context.getState(getEnergy=True, getForces=True)
        energy, forces = state_energy_forces(state)
        return float(energy), np.asarray(forces, dtype=np.float64)


OPENMM_TEACHERS = ("openmm-gaff2", "openmm-amber14")


def make_corrector(name: str, atoms: Atoms, **options: Any) -> Corrector:
    """Corrector ``name`` for the molecule ``atoms``.

    - ``openmm-gaff2`` / ``openmm-amber14`` (options: ``smiles``, ``platform``, ...): native OpenMM
    - ``xtb`` (options: ``method``, ``charge``, ...): GFN2-xTB via tblite
    - ``student`` (option ``model``: path of a saved PaiNN student): the distilled student
    - any other teacher name of :func:`mlff_distiller.teachers.get_teacher`: its ASE calculator
    """
    from mlff_distiller.teachers import get_teacher

    if name == "student":
        model = options.pop("model", None)
        if model is None:
            raise ValueError("the 'student' corrector needs model=PATH of a saved PaiNN student")
        return CalculatorCorrector(atoms, _student_calculator(Path(model), **options), "student")
    if name in OPENMM_TEACHERS:
        if name == "openmm-gaff2" and "smiles" not in options and atoms.info.get(keys.SMILES):
            options["smiles"] = atoms.info[keys.SMILES]
        return OpenMMCorrector(get_teacher(name, **options), atoms, name)
    return CalculatorCorrector(atoms, get_teacher(name, **options), name)


def _student_calculator(model_path: Path, **options: Any):
    from mlff_distiller.md.calculator import StudentCalculator

    if not model_path.exists():
        raise FileNotFoundError(f"student model {model_path} does not exist")
    return StudentCalculator(model_path, **options)
