"""Batched MD state: many structures as flat atoms plus ``system_idx`` (like AtomsBatch).

Units are internal: Å, Å/fs, amu, eV, eV/Å, fs (conversions from :mod:`mlff_distiller.units`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from ase import Atoms

from mlff_distiller import units
from mlff_distiller.data.batch import AtomsBatch


@dataclass(frozen=True)
class MDState:
    """Positions (n, 3) Å, velocities (n, 3) Å/fs, masses (n,) amu, atomic_numbers (n,),
    system_idx (n,), cell (s, 3, 3), pbc (s, 3); after a force call also forces (n, 3) eV/Å and
    energy (s,) eV. Integrators return new states; they never modify one in place."""

    positions: torch.Tensor
    velocities: torch.Tensor
    masses: torch.Tensor
    atomic_numbers: torch.Tensor
    system_idx: torch.Tensor
    cell: torch.Tensor
    pbc: torch.Tensor
    forces: torch.Tensor | None = None
    energy: torch.Tensor | None = None

    @property
    def n_systems(self) -> int:
        return int(self.cell.shape[0])

    @classmethod
    def from_atoms(
        cls, structures: Sequence[Atoms], dtype: torch.dtype = torch.float64, device=None
    ) -> MDState:
        """State from ASE ``Atoms`` (their masses and velocities, converted to Å/fs)."""
        batch = AtomsBatch.from_arrays(
            [a.numbers for a in structures],
            [a.positions for a in structures],
            [np.asarray(a.cell[:]) for a in structures],
            [np.asarray(a.pbc) for a in structures],
            dtype=dtype,
            device=device,
        )
        velocities = np.concatenate(
            [units.velocities_ase_to_internal(a.get_velocities()) for a in structures]
        )
        masses = np.concatenate([a.get_masses() for a in structures])
        return cls(
            positions=batch.positions,
            velocities=torch.as_tensor(velocities, dtype=dtype, device=device),
            masses=torch.as_tensor(masses, dtype=dtype, device=device),
            atomic_numbers=batch.atomic_numbers,
            system_idx=batch.system_idx,
            cell=batch.cell,
            pbc=batch.pbc,
        )

    def to_batch(self) -> AtomsBatch:
        return AtomsBatch(self.atomic_numbers, self.positions, self.system_idx, self.cell, self.pbc)

    def kinetic_energy(self) -> torch.Tensor:
        """(n_systems,) eV."""
        per_atom = 0.5 * self.masses * self.velocities.square().sum(1) * units.MASS_VELOCITY2_TO_EV
        return torch.zeros(self.n_systems, dtype=per_atom.dtype, device=per_atom.device).index_add(
            0, self.system_idx, per_atom
        )

    def temperature(self) -> torch.Tensor:
        """(n_systems,) K from the kinetic energy with 3 n_i degrees of freedom."""
        dof = 3 * torch.bincount(self.system_idx, minlength=self.n_systems).to(
            self.velocities.dtype
        )
        return 2.0 * self.kinetic_energy() / (dof * units.BOLTZMANN)

    def replace(self, **changes) -> MDState:
        return replace(self, **changes)
