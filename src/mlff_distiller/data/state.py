"""The one batched state of the package: many structures as flat atoms plus ``system_idx``
(like :class:`~mlff_distiller.data.batch.AtomsBatch`, with velocities and masses). The MD engine
advances it; the k-step jump networks read it (``KStepInput`` is this state plus the jump's
``k`` and ``dt``), so it lives here, left of both in the layout.

Units are internal: Å, Å/fs, amu, eV, eV/Å, fs (conversions from :mod:`mlff_distiller.units`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from ase import Atoms

from mlff_distiller import keys, thermo, units
from mlff_distiller.data.batch import AtomsBatch


@dataclass(frozen=True)
class MDState:
    """Positions (n, 3) Å, velocities (n, 3) Å/fs, masses (n,) amu, atomic_numbers (n,),
    system_idx (n,), cell (s, 3, 3), pbc (s, 3); after a force call also forces (n, 3) eV/Å and
    energy (s,) eV. ``structure_ids`` (s,): which structures of the run these are (None: all,
    in order; set by :meth:`select`). Integrators return new states; they never modify one in
    place. Kinetic energy and temperature are :mod:`mlff_distiller.thermo`'s (3N - 3 degrees of
    freedom per structure)."""

    positions: torch.Tensor
    velocities: torch.Tensor
    masses: torch.Tensor
    atomic_numbers: torch.Tensor
    system_idx: torch.Tensor
    cell: torch.Tensor
    pbc: torch.Tensor
    forces: torch.Tensor | None = None
    energy: torch.Tensor | None = None
    structure_ids: torch.Tensor | None = None

    @property
    def n_systems(self) -> int:
        return int(self.cell.shape[0])

    @property
    def ids(self) -> torch.Tensor:
        """(s,) int64: :attr:`structure_ids`, or 0..s-1."""
        if self.structure_ids is not None:
            return self.structure_ids
        return torch.arange(self.n_systems, device=self.positions.device)

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
        labels = {} if self.structure_ids is None else {keys.STRUCTURE_ID: self.structure_ids}
        return AtomsBatch(
            self.atomic_numbers, self.positions, self.system_idx, self.cell, self.pbc, labels
        )

    def kinetic_energy(self) -> torch.Tensor:
        """(n_systems,) eV, centre-of-mass motion included (:func:`thermo.kinetic_energy`)."""
        return thermo.kinetic_energy(self.velocities, self.masses, self.system_idx, self.n_systems)

    def temperature(self) -> torch.Tensor:
        """(n_systems,) K with 3N - 3 degrees of freedom (:func:`thermo.temperature`)."""
        return thermo.temperature(self.velocities, self.masses, self.system_idx, self.n_systems)

    def atom_mask(self, systems: torch.Tensor) -> torch.Tensor:
        """(n_atoms,) bool: the atoms of the structures ``systems`` (indices into this state)."""
        return torch.isin(self.system_idx, systems)

    def select(self, systems: torch.Tensor) -> MDState:
        """The sub-state of the structures ``systems`` (sorted indices into this state)."""
        systems = torch.as_tensor(systems, dtype=torch.long, device=self.positions.device)
        mask = self.atom_mask(systems)
        renumber = torch.full((self.n_systems,), -1, dtype=torch.long, device=mask.device)
        renumber[systems] = torch.arange(len(systems), device=mask.device)
        return MDState(
            positions=self.positions[mask],
            velocities=self.velocities[mask],
            masses=self.masses[mask],
            atomic_numbers=self.atomic_numbers[mask],
            system_idx=renumber[self.system_idx[mask]],
            cell=self.cell[systems],
            pbc=self.pbc[systems],
            forces=None if self.forces is None else self.forces[mask],
            energy=None if self.energy is None else self.energy[systems],
            structure_ids=self.ids[systems],
        )

    def merged(self, systems: torch.Tensor, part: MDState) -> MDState:
        """This state with the structures ``systems`` replaced by ``part`` (from :meth:`select`;
        positions, velocities, forces and energy)."""
        systems = torch.as_tensor(systems, dtype=torch.long, device=self.positions.device)
        mask = self.atom_mask(systems)

        def put(full, sub, where):
            if full is None or sub is None:
                return None
            out = full.clone()
            out[where] = sub
            return out

        return self.replace(
            positions=put(self.positions, part.positions, mask),
            velocities=put(self.velocities, part.velocities, mask),
            forces=put(self.forces, part.forces, mask),
            energy=put(self.energy, part.energy, systems),
        )

    def replace(self, **changes) -> MDState:
        return replace(self, **changes)

    def to(self, device=None, dtype: torch.dtype | None = None) -> MDState:
        """This state (same class) on ``device``; floating tensors cast to ``dtype``."""

        def move(t):
            if not isinstance(t, torch.Tensor):
                return t
            if dtype is not None and t.is_floating_point():
                return t.to(device=device, dtype=dtype)
            return t.to(device=device)

        return replace(
            self, **{name: move(getattr(self, name)) for name in self.__dataclass_fields__}
        )
