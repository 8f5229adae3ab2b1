"""GFN2-xTB (or GFN1-xTB) through tblite: the quantum-chemical teacher of the design documents."""

from __future__ import annotations

from typing import Any

import numpy as np
from ase import Atoms

from mlff_distiller import units
from mlff_distiller.teachers.base import (
    TeacherCalculator,
    TeacherInfo,
    element_range,
)

XTB_METHODS = {
    "gfn2": "GFN2-xTB",
    "gfn2-xtb": "GFN2-xTB",
    "gfn1": "GFN1-xTB",
    "gfn1-xtb": "GFN1-xTB",
}
XTB_ELEMENTS = element_range(1, 86)  # GFN1/GFN2 parametrize H-Rn


class XTBTeacher(TeacherCalculator):
    """GFN-xTB through tblite's own API (``tblite.interface.Calculator``), not its ASE wrapper.

    Equal results (to 1e-6 eV), 1.1x faster per call for 12-21 atoms and equal at 52
    (``benchmarks/teachers.py --only-xtb``): only the energy and the gradient are read back
    (the ASE wrapper also copies charges, dipole, per-atom energies and bond orders), and there
    is no second ASE state check. Like the wrapper, the SCF starts from the previous structure's
    converged result (MD steps, labelling a trajectory); when such a restart fails to converge,
    the call is repeated once from tblite's default guess before it is an error. A new element
    list or periodicity builds a new tblite calculator. Separate instances may run at once in
    threads (``concurrent_calls``: tblite releases the GIL and an instance shares no state).
    """

    concurrent_calls = True

    def __init__(self, info: TeacherInfo, settings: dict[str, Any]) -> None:
        super().__init__(info)
        self.settings = settings
        self._api = None
        self._numbers: np.ndarray | None = None
        self._pbc: np.ndarray | None = None
        self._last = None  # the previous tblite Result: the SCF restart guess

    def __getstate__(self) -> dict:  # tblite objects do not pickle; rebuilt on first use
        return {**self.__dict__, "_api": None, "_numbers": None, "_pbc": None, "_last": None}

    def _calculator(self, atoms: Atoms):
        from tblite.ase import TBLite
        from tblite.interface import Calculator

        s, defaults = self.settings, TBLite.default_parameters
        api = Calculator(
            s["method"],
            atoms.numbers,
            atoms.positions / units.BOHR,
            float(s["charge"]),
            int(s["multiplicity"]) - 1,
            np.asarray(atoms.cell[:]) / units.BOHR,
            np.asarray(atoms.pbc),
        )
        api.set("accuracy", s["accuracy"])
        api.set("temperature", s["electronic_temperature"] * units.BOLTZMANN / units.HARTREE)
        api.set("max-iter", s["max_iterations"])
        api.set("mixer-damping", defaults["mixer_damping"])
        api.set("verbosity", 0)
        return api

    def compute(self, atoms: Atoms) -> tuple[float, np.ndarray]:
        same = (
            self._api is not None
            and np.array_equal(atoms.numbers, self._numbers)
            and np.array_equal(atoms.pbc, self._pbc)
        )
        if not same:
            self._api, self._last = self._calculator(atoms), None
            self._numbers, self._pbc = atoms.numbers.copy(), atoms.pbc.copy()
        else:
            self._api.update(
                positions=atoms.positions / units.BOHR,
                lattice=np.asarray(atoms.cell[:]) / units.BOHR,
            )
        try:
            result = self._api.singlepoint(self._last)
        except RuntimeError:
            if self._last is None:
                raise
            self._last = None  # the restart guess may be what failed: once more from scratch
            result = self._api.singlepoint()
        self._last = result
        energy = float(result.get("energy")) * units.HARTREE
        forces = -np.asarray(result.get("gradient")) * units.HARTREE_PER_BOHR
        return energy, forces


def make_xtb(
    method: str = "GFN2-xTB",
    charge: int = 0,
    multiplicity: int = 1,
    accuracy: float = 1.0,
    max_iterations: int = 250,
    electronic_temperature: float = 300.0,
) -> XTBTeacher:
    """Build the ``xtb`` teacher.

    ``method``: ``GFN2-xTB`` (default) or ``GFN1-xTB``; ``charge`` in e; ``multiplicity`` 2S+1;
    ``max_iterations`` SCF cycles before a :class:`TeacherError` (SCF did not converge).
    """
    key = method.strip().lower()
    if key not in XTB_METHODS:
        raise ValueError(f"unknown xTB method '{method}': use GFN2-xTB or GFN1-xTB")
    method = XTB_METHODS[key]
    if multiplicity < 1:
        raise ValueError(f"multiplicity must be >= 1 (2S+1), got {multiplicity}")
    settings: dict[str, Any] = {
        "method": method,
        "charge": int(charge),
        "multiplicity": int(multiplicity),
        "accuracy": float(accuracy),
        "max_iterations": int(max_iterations),
        "electronic_temperature": float(electronic_temperature),
        "engine": "tblite",
    }
    info = TeacherInfo(name="xtb", elements=XTB_ELEMENTS, settings=settings, kind="qm")
    return XTBTeacher(info, settings)
