"""ASE calculator for a student model (PaiNN or any model with ``energy_and_forces``).

>>> calc = StudentCalculator("runs/student/", device="cpu", forces="analytical")
>>> atoms.calc = calc; atoms.get_forces()

The neighbour list is rebuilt at every call (correct for any displacement; it costs well under
a millisecond for molecules).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from mlff_distiller import keys
from mlff_distiller.data.batch import AtomsBatch
from mlff_distiller.models.fast_path import private_copy, resolve_compile
from mlff_distiller.models.io import load_model


class UnsupportedElementError(ValueError):
    """The structure contains an element the model was not trained on."""


def model_elements(model: torch.nn.Module) -> set[int] | None:
    """The atomic numbers ``model`` was trained on, or None when it accepts every element."""
    elements = getattr(model, "elements", None)
    restricted = getattr(model, "elements_restricted", elements is not None)
    return set(elements) if (elements is not None and restricted) else None


def check_elements(elements: set[int] | None, numbers, what: str = "this structure") -> None:
    """Raise :class:`UnsupportedElementError` naming the atomic ``numbers`` outside ``elements``
    (from :func:`model_elements`; None accepts all). Every engine checks its input with it."""
    if elements is None:
        return
    unknown = sorted(set(np.asarray(numbers).reshape(-1).tolist()) - elements)
    if unknown:
        from ase.data import chemical_symbols

        names = ", ".join(chemical_symbols[z] for z in unknown)
        raise UnsupportedElementError(
            f"the model was trained on elements {sorted(elements)} only; {what} contains "
            f"{names}. Use a model trained on these elements."
        )


class StudentCalculator(Calculator):
    """Energy, free energy and forces (eV, eV/Å) of a student model.

    ``model_or_path``: an ``nn.Module`` with ``energy_and_forces(batch, method)`` (the
    calculator works on its own copy; the caller's module is never cast or changed) or a path
    saved by :func:`mlff_distiller.models.io.save_model`. ``forces``: ``"analytical"`` (hand
    derived, fastest) or ``"autograd"``. ``dtype``: the model copy and inputs are cast to it.
    ``compile``: None (default) compiles the analytical forces with ``torch.compile`` where a
    C++ compiler exists and ``MLFFD_COMPILE`` is not 0 (the measured fastest path; the first use
    of a model size on a machine compiles, later runs load it from the on-disk cache, see
    :mod:`mlff_distiller.models.fast_path`); False runs eager; True insists on compiling.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(
        self,
        model_or_path: torch.nn.Module | str | Path,
        device: str | torch.device = "cpu",
        forces: str = "analytical",
        dtype: torch.dtype = torch.float32,
        compile: bool | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if forces not in ("analytical", "autograd"):
            raise ValueError(f"forces must be 'analytical' or 'autograd', got {forces!r}")
        self.device = torch.device(device)
        self.dtype = dtype
        if isinstance(model_or_path, (str, Path)):
            model = load_model(model_or_path).to(device=self.device, dtype=dtype)
        else:
            model = private_copy(model_or_path, self.device, dtype)
        self.model = model
        self.force_method = forces
        self.compiled = resolve_compile(compile, forces, self.device)
        if hasattr(model, "compile_forces"):
            model.compile_forces(self.compiled)
        elif self.compiled and compile:
            raise ValueError(f"{type(model).__name__} has no compiled forces (compile_forces)")
        else:
            self.compiled = False
        self.elements = model_elements(model)

    def check_state(self, atoms: Atoms, tol: float = 1e-15) -> list[str]:
        """What changed since the last call, among what the model reads (positions, numbers,
        cell, pbc): exact comparisons, cheaper than ASE's generic ones (a third of a small
        molecule's compiled call)."""
        old = self.atoms
        if old is None:
            return list(all_changes)
        changes = []
        if len(old) != len(atoms) or not np.array_equal(old.numbers, atoms.numbers):
            return ["positions", "numbers", "cell", "pbc"]
        if not np.array_equal(old.positions, atoms.positions):
            changes.append("positions")
        if not np.array_equal(old.cell.array, atoms.cell.array):
            changes.append("cell")
        if not np.array_equal(old.pbc, atoms.pbc):
            changes.append("pbc")
        return changes

    def calculate(self, atoms: Atoms | None = None, properties=None, system_changes=all_changes):
        properties = properties or ["energy"]
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        # the stress (ASE Voigt order xx, yy, zz, yz, xz, xy; eV/Å^3) only when asked for
        want_stress = keys.STRESS in properties
        if want_stress and not (atoms.pbc.all() and atoms.cell.volume > 1e-12):
            from ase.calculators.calculator import PropertyNotImplementedError

            raise PropertyNotImplementedError(
                "stress needs a structure periodic in all three directions with a non-zero "
                f"cell volume; this one has pbc={atoms.pbc.tolist()} and volume "
                f"{atoms.cell.volume:.3g} Å^3"
            )
        check_elements(self.elements, atoms.numbers)
        batch = AtomsBatch.from_arrays(
            [atoms.numbers],
            [atoms.positions],
            [np.asarray(atoms.cell[:])],
            [np.asarray(atoms.pbc)],
            dtype=self.dtype,
            device=self.device,
        )
        if want_stress:
            out = self.model.energy_and_forces(batch, self.force_method, stress=True)
        else:
            out = self.model.energy_and_forces(batch, self.force_method)
        energy = float(out[keys.ENERGY].detach().double().cpu()[0])
        self.results = {
            keys.ENERGY: energy,
            keys.FREE_ENERGY: energy,
            keys.FORCES: out[keys.FORCES].detach().double().cpu().numpy(),
        }
        if keys.FORCE_UNCERTAINTY in out:  # a committee: (n_atoms,) and a float, eV/Å
            self.results[keys.FORCE_UNCERTAINTY] = (
                out[keys.FORCE_UNCERTAINTY].detach().double().cpu().numpy()
            )
            self.results[keys.STRUCTURE_UNCERTAINTY] = float(out[keys.STRUCTURE_UNCERTAINTY][0])
        if want_stress:
            from ase.stress import full_3x3_to_voigt_6_stress

            stress = out[keys.STRESS].detach().double().cpu().numpy()[0]
            self.results[keys.STRESS] = full_3x3_to_voigt_6_stress(stress)
