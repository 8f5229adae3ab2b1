"""MD that knows when it is wrong: the teacher's forces wherever the committee is unsure.

:class:`TeacherFallback` is a force provider with the student's interface
(``energy_and_forces(batch, method) -> {ENERGY (n_systems,), FORCES (n_atoms, 3), ...}``), so the
batched integrators run it unchanged. Each call evaluates the committee; every structure whose
``STRUCTURE_UNCERTAINTY`` (the largest per-atom force uncertainty, eV/Å) exceeds
``max_uncertainty`` gets the teacher's energy and forces for that call instead (one teacher call
per such structure), and the frame can be appended, with the teacher's labels, to an HDF5 file
for the next retraining. The rest of the batch keeps the committee-mean forces.

A fallback step mixes two potential-energy surfaces, so the total energy of that structure jumps
by the teacher-student energy difference; fallbacks are counted per structure (``counts``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator

from mlff_distiller import keys
from mlff_distiller.data.batch import AtomsBatch


class TeacherFallback:
    """``model`` (a committee: its outputs carry ``STRUCTURE_UNCERTAINTY``) with ``teacher`` (an
    ASE calculator in eV, eV/Å) taking over the structures above ``max_uncertainty`` (eV/Å).

    ``record``: an HDF5 path; every fallback frame is appended there (positions, teacher energy
    and forces, the structure's ``names`` entry as molecule) and committed, so a killed run keeps
    them. ``names``: one name per structure of the batches this provider will see.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        teacher: Calculator,
        max_uncertainty: float,
        record: str | Path | None = None,
        names: list[str] | None = None,
    ):
        if not max_uncertainty >= 0:
            raise ValueError(f"max_uncertainty must be >= 0 eV/Å, got {max_uncertainty}")
        self.model = model
        self.teacher = teacher
        self.max_uncertainty = float(max_uncertainty)
        self.names = names
        self.counts: np.ndarray | None = None  # (n_systems,) fallbacks per structure
        self.calls = 0  # force calls seen (each covers every structure of the batch)
        self._writer = None
        if record is not None:
            from mlff_distiller.data.hdf5 import DatasetWriter

            self._writer = DatasetWriter(
                record, mode="a", flush_every=1, attrs={"teacher": "fallback frames"}
            )

    @property
    def n_fallbacks(self) -> int:
        return 0 if self.counts is None else int(self.counts.sum())

    def energy_and_forces(self, batch: AtomsBatch, method: str = "analytical", **kwargs):
        out = self.model.energy_and_forces(batch, method, **kwargs)
        if keys.STRUCTURE_UNCERTAINTY not in out:
            raise ValueError(
                f"{type(self.model).__name__} gives no uncertainty: the teacher fallback needs "
                "a committee model (mlffd train --committee 4)"
            )
        if self.counts is None:
            self.counts = np.zeros(batch.n_systems, dtype=np.int64)
        self.calls += 1
        uncertain = (out[keys.STRUCTURE_UNCERTAINTY] > self.max_uncertainty).nonzero()
        uncertain = uncertain.flatten().tolist()
        if not uncertain:
            return out
        energy, forces = out[keys.ENERGY].clone(), out[keys.FORCES].clone()
        for s in uncertain:
            mask = batch.system_idx == s
            atoms = _atoms_of(batch, s, mask)
            atoms.calc = self.teacher
            e_teacher = float(atoms.get_potential_energy())
            f_teacher = np.asarray(atoms.get_forces())
            energy[s] = e_teacher
            forces[mask] = torch.as_tensor(f_teacher, dtype=forces.dtype, device=forces.device)
            self.counts[s] += 1
            if self._writer is not None:
                self._writer.append_frame(
                    atoms.numbers,
                    atoms.positions,
                    cell=np.asarray(atoms.cell[:]),
                    pbc=atoms.pbc,
                    energy=e_teacher,
                    forces=f_teacher,
                    molecule=self.names[s] if self.names else None,
                )
        return {**out, keys.ENERGY: energy, keys.FORCES: forces}

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _atoms_of(batch: AtomsBatch, s: int, mask: torch.Tensor) -> Atoms:
    """Structure ``s`` of ``batch`` as ASE ``Atoms`` (float64 positions, Å)."""
    return Atoms(
        numbers=batch.atomic_numbers[mask].cpu().numpy(),
        positions=batch.positions[mask].detach().double().cpu().numpy(),
        cell=batch.cell[s].detach().double().cpu().numpy(),
        pbc=batch.pbc[s].cpu().numpy(),
    )
