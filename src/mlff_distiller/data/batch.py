"""A batch of structures as flat atoms plus a ``system_idx`` per atom.

Every model, integrator and trainer in mlff_distiller speaks this one type:

- ``atomic_numbers``: (n_atoms,) int64
- ``positions``: (n_atoms, 3) float, Å
- ``system_idx``: (n_atoms,) int64, which structure each atom belongs to (sorted, 0..n_systems-1)
- ``cell``: (n_systems, 3, 3) float, Å (rows are lattice vectors; zeros when not periodic)
- ``pbc``: (n_systems, 3) bool
- ``labels``: optional dict of tensors keyed by :mod:`mlff_distiller.keys`, e.g.
  ``energy`` (n_systems,), ``forces`` (n_atoms, 3)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from ase import Atoms

from mlff_distiller import keys


@dataclass
class AtomsBatch:
    atomic_numbers: torch.Tensor
    positions: torch.Tensor
    system_idx: torch.Tensor
    cell: torch.Tensor
    pbc: torch.Tensor
    labels: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def n_atoms(self) -> int:
        return int(self.atomic_numbers.shape[0])

    @property
    def n_systems(self) -> int:
        return int(self.cell.shape[0])

    @property
    def atoms_per_system(self) -> torch.Tensor:
        """(n_systems,) int64 atom counts."""
        return torch.bincount(self.system_idx, minlength=self.n_systems)

    @property
    def device(self) -> torch.device:
        return self.positions.device

    @property
    def dtype(self) -> torch.dtype:
        return self.positions.dtype

    def to(self, device=None, dtype: torch.dtype | None = None) -> AtomsBatch:
        """Move to ``device``; cast floating tensors (positions, cell, labels) to ``dtype``."""

        def move(t: torch.Tensor) -> torch.Tensor:
            if dtype is not None and t.is_floating_point():
                return t.to(device=device, dtype=dtype)
            return t.to(device=device)

        return AtomsBatch(
            atomic_numbers=move(self.atomic_numbers),
            positions=move(self.positions),
            system_idx=move(self.system_idx),
            cell=move(self.cell),
            pbc=move(self.pbc),
            labels={k: move(v) for k, v in self.labels.items()},
        )

    @classmethod
    def from_arrays(
        cls,
        atomic_numbers: Sequence[np.ndarray],
        positions: Sequence[np.ndarray],
        cells: Sequence[np.ndarray] | None = None,
        pbcs: Sequence[np.ndarray] | None = None,
        labels: dict[str, Sequence[np.ndarray]] | None = None,
        dtype: torch.dtype = torch.float32,
        device=None,
    ) -> AtomsBatch:
        """Build a batch from per-structure arrays (``positions[i]``: (n_i, 3)).

        Per-atom labels (``forces``, ``velocities``, ``hessian_rows``) are concatenated;
        per-structure labels (``energy``, ``stress``, ``hessian_index``) are stacked;
        ``hessian_index`` stays int64, other labels take ``dtype``.
        """
        n = len(atomic_numbers)
        counts = [len(z) for z in atomic_numbers]
        z = torch.as_tensor(np.concatenate(atomic_numbers).astype(np.int64), device=device)
        pos = torch.as_tensor(np.concatenate(positions), dtype=dtype, device=device)
        sys_idx = torch.repeat_interleave(
            torch.arange(n, device=device), torch.as_tensor(counts, device=device)
        )
        cell = (
            torch.as_tensor(np.stack(cells), dtype=dtype, device=device)
            if cells is not None
            else torch.zeros(n, 3, 3, dtype=dtype, device=device)
        )
        pbc = (
            torch.as_tensor(np.stack(pbcs), dtype=torch.bool, device=device)
            if pbcs is not None
            else torch.zeros(n, 3, dtype=torch.bool, device=device)
        )
        out: dict[str, torch.Tensor] = {}
        for key, values in (labels or {}).items():
            arrays = [np.asarray(v) for v in values]
            per_atom = arrays[0].ndim >= 1 and key in PER_ATOM_KEYS
            joined = np.concatenate(arrays) if per_atom else np.stack(arrays)
            kind = torch.int64 if key in INTEGER_KEYS else dtype
            out[key] = torch.as_tensor(joined, dtype=kind, device=device)
        return cls(z, pos, sys_idx, cell, pbc, out)

    @classmethod
    def from_atoms(
        cls, structures: Sequence[Atoms], dtype: torch.dtype = torch.float32, device=None
    ) -> AtomsBatch:
        """Build a batch from ASE ``Atoms``; calculator energies/forces become labels."""
        labels: dict[str, list[np.ndarray]] = {}
        for key in (keys.ENERGY, keys.FORCES):
            values = [_stored_result(a, key) for a in structures]
            if all(v is not None for v in values):
                labels[key] = values
        return cls.from_arrays(
            [a.numbers for a in structures],
            [a.positions for a in structures],
            [np.asarray(a.cell[:]) for a in structures],
            [np.asarray(a.pbc) for a in structures],
            labels,
            dtype=dtype,
            device=device,
        )


INTEGER_KEYS = frozenset({keys.HESSIAN_INDEX})
PER_ATOM_KEYS = frozenset(
    {keys.FORCES, keys.VELOCITIES, keys.POSITIONS, keys.MASSES, keys.HESSIAN_ROWS}
)


def _stored_result(atoms: Atoms, key: str):
    calc = atoms.calc
    if calc is None or key not in getattr(calc, "results", {}):
        return None
    return np.asarray(calc.results[key])
