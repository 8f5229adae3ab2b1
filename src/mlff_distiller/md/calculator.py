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
from mlff_distiller.models.io import load_model


class UnsupportedElementError(ValueError):
    """The structure contains an element the model was not trained on."""


class StudentCalculator(Calculator):
    """Energy, free energy and forces (eV, eV/Å) of a student model.

    ``model_or_path``: an ``nn.Module`` with ``energy_and_forces(batch, method)`` or a path
    saved by :func:`mlff_distiller.models.io.save_model`. ``forces``: ``"analytical"`` (hand
    derived, fastest) or ``"autograd"``. ``dtype``: the model and inputs are cast to it.
    """

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(
        self,
        model_or_path: torch.nn.Module | str | Path,
        device: str | torch.device = "cpu",
        forces: str = "analytical",
        dtype: torch.dtype = torch.float32,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if forces not in ("analytical", "autograd"):
            raise ValueError(f"forces must be 'analytical' or 'autograd', got {forces!r}")
        if isinstance(model_or_path, (str, Path)):
            model = load_model(model_or_path)
        else:
            model = model_or_path
        self.device = torch.device(device)
        self.dtype = dtype
        self.model = model.to(device=self.device, dtype=dtype).eval()
        self.force_method = forces
        elements = getattr(model, "elements", None)
        restricted = getattr(model, "elements_restricted", elements is not None)
        self.elements = set(elements) if (elements is not None and restricted) else None

    def _check_elements(self, numbers: np.ndarray) -> None:
        if self.elements is None:
            return
        unknown = sorted(set(numbers.tolist()) - self.elements)
        if unknown:
            from ase.data import chemical_symbols

            names = ", ".join(chemical_symbols[z] for z in unknown)
            raise UnsupportedElementError(
                f"the model was trained on elements {sorted(self.elements)} only; this structure "
                f"contains {names}. Use a model trained on these elements."
            )

    def calculate(self, atoms: Atoms | None = None, properties=None, system_changes=all_changes):
        super().calculate(atoms, properties or ["energy"], system_changes)
        atoms = self.atoms
        self._check_elements(atoms.numbers)
        batch = AtomsBatch.from_arrays(
            [atoms.numbers],
            [atoms.positions],
            [np.asarray(atoms.cell[:])],
            [np.asarray(atoms.pbc)],
            dtype=self.dtype,
            device=self.device,
        )
        out = self.model.energy_and_forces(batch, self.force_method)
        energy = float(out[keys.ENERGY].detach().double().cpu()[0])
        self.results = {
            keys.ENERGY: energy,
            keys.FREE_ENERGY: energy,
            keys.FORCES: out[keys.FORCES].detach().double().cpu().numpy(),
        }
