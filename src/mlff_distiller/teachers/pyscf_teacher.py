"""PySCF Hartree-Fock or Kohn-Sham DFT as a teacher: slow, for reference checks only."""

from __future__ import annotations

from typing import Any

import numpy as np
from ase import Atoms

from mlff_distiller import units
from mlff_distiller.teachers.base import TeacherCalculator, TeacherError, TeacherInfo, element_range


class PySCFTeacher(TeacherCalculator):
    """Energy (eV) and analytic gradient (-> forces, eV/Å) of one SCF per call."""

    def __init__(
        self,
        info: TeacherInfo,
        method: str,
        basis: str,
        xc: str | None,
        charge: int,
        spin: int,
        max_cycle: int,
    ) -> None:
        super().__init__(info)
        self.method, self.basis, self.xc = method, basis, xc
        self.charge, self.spin, self.max_cycle = charge, spin, max_cycle

    def compute(self, atoms: Atoms) -> tuple[float, np.ndarray]:
        from pyscf import dft, gto, scf

        mol = gto.M(
            atom=[(s, tuple(p)) for s, p in zip(atoms.get_chemical_symbols(), atoms.positions)],
            unit="Angstrom",
            basis=self.basis,
            charge=self.charge,
            spin=self.spin,
            verbose=0,
        )
        if self.method == "hf":
            mf = scf.RHF(mol) if self.spin == 0 else scf.UHF(mol)
        else:
            mf = dft.RKS(mol) if self.spin == 0 else dft.UKS(mol)
            mf.xc = self.xc
        mf.max_cycle = self.max_cycle
        energy_ha = mf.kernel()
        if not mf.converged:
            raise TeacherError(f"PySCF SCF did not converge in {self.max_cycle} cycles")
        grad_ha_per_bohr = mf.nuc_grad_method().kernel()
        return energy_ha * units.HARTREE, -np.asarray(grad_ha_per_bohr) * units.HARTREE_PER_BOHR


def make_pyscf(
    method: str = "hf",
    basis: str = "sto-3g",
    xc: str = "pbe",
    charge: int = 0,
    spin: int = 0,
    max_cycle: int = 100,
) -> PySCFTeacher:
    """``pyscf``: ``method`` ``hf`` or ``dft`` (functional ``xc``), ``basis``, ``spin`` = 2S."""
    method = method.lower()
    if method not in ("hf", "dft"):
        raise ValueError(f"unknown PySCF method '{method}': use 'hf' or 'dft'")
    settings: dict[str, Any] = {"method": method, "basis": basis, "charge": charge, "spin": spin}
    if method == "dft":
        settings["xc"] = xc
    info = TeacherInfo(name="pyscf", elements=element_range(1, 36), settings=settings, kind="qm")
    return PySCFTeacher(
        info, method, basis, xc if method == "dft" else None, charge, spin, max_cycle
    )
