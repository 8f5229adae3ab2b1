"""Covalent topology of a molecule: bonds, angles and proper dihedrals, as atom index arrays.

Bonds come from RDKit (a molecule whose atom order matches the trajectory) or from distances
(``d_ij < scale * (r_cov_i + r_cov_j)`` with ASE's covalent radii). Angles and dihedrals follow
from the bond graph. :func:`molecule_topology` caches the result per molecule key, so a dataset
of many frames of one molecule perceives it once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ase.data import covalent_radii


@dataclass(frozen=True)
class Topology:
    """Index arrays (int64): ``bonds`` (n_bonds, 2), ``angles`` (n_angles, 3) with the apex in the
    middle, ``dihedrals`` (n_dihedrals, 4) for every i-j-k-l path over bond j-k; plus
    ``bond_lengths`` (n_bonds,) Å of the structure it was perceived from (the equilibrium-like
    reference of the hybrid integrator's stability check)."""

    bonds: np.ndarray
    angles: np.ndarray
    dihedrals: np.ndarray
    bond_lengths: np.ndarray

    @property
    def n_bonds(self) -> int:
        return len(self.bonds)


def perceive_bonds(numbers: np.ndarray, positions: np.ndarray, scale: float = 1.2) -> np.ndarray:
    """Bonds ``i < j`` with ``d_ij < scale * (r_cov_i + r_cov_j)``: (n_bonds, 2) int64."""
    numbers = np.asarray(numbers, dtype=int)
    pos = np.asarray(positions, dtype=float)
    if pos.shape != (len(numbers), 3) or not np.all(np.isfinite(pos)):
        raise ValueError(
            f"bond perception needs finite positions of shape ({len(numbers)}, 3), got {pos.shape}"
        )
    radii = covalent_radii[numbers]
    d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    limit = scale * (radii[:, None] + radii[None])
    i, j = np.nonzero(np.triu(d < limit, k=1))
    return np.stack([i, j], axis=1).astype(np.int64)


def rdkit_bonds(mol) -> np.ndarray:
    """Bonds of an RDKit molecule (with explicit hydrogens): (n_bonds, 2) int64, ``i < j``."""
    pairs = sorted(tuple(sorted((b.GetBeginAtomIdx(), b.GetEndAtomIdx()))) for b in mol.GetBonds())
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


def angles_and_dihedrals(n_atoms: int, bonds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All angles i-j-k (apex j, i < k) and proper dihedrals i-j-k-l (each central bond j-k
    once, i != k, l != j, i != l) of a bond graph."""
    neighbours: list[list[int]] = [[] for _ in range(n_atoms)]
    for a, b in np.asarray(bonds, dtype=int):
        neighbours[a].append(b)
        neighbours[b].append(a)
    angles = [
        (i, j, k)
        for j in range(n_atoms)
        for a, i in enumerate(sorted(neighbours[j]))
        for k in sorted(neighbours[j])[a + 1 :]
    ]
    dihedrals = [
        (i, j, k, l)
        for j, k in np.asarray(bonds, dtype=int)
        for i in sorted(neighbours[j])
        if i != k
        for l in sorted(neighbours[k])
        if l != j and l != i
    ]
    return (
        np.asarray(angles, dtype=np.int64).reshape(-1, 3),
        np.asarray(dihedrals, dtype=np.int64).reshape(-1, 4),
    )


def build_topology(
    numbers: np.ndarray, positions: np.ndarray, bonds: np.ndarray | None = None, scale: float = 1.2
) -> Topology:
    """Topology from given ``bonds`` (e.g. :func:`rdkit_bonds`) or perceived from ``positions``."""
    numbers = np.asarray(numbers, dtype=int)
    pos = np.asarray(positions, dtype=float)
    b = perceive_bonds(numbers, pos, scale) if bonds is None else np.asarray(bonds, dtype=np.int64)
    angles, dihedrals = angles_and_dihedrals(len(numbers), b)
    lengths = np.linalg.norm(pos[b[:, 0]] - pos[b[:, 1]], axis=-1) if len(b) else np.zeros(0)
    return Topology(bonds=b, angles=angles, dihedrals=dihedrals, bond_lengths=lengths)


_CACHE: dict[object, Topology] = {}


def molecule_topology(
    key: object,
    numbers: np.ndarray,
    positions: np.ndarray,
    smiles: str | None = None,
    scale: float = 1.2,
) -> Topology:
    """Cached topology of molecule ``key``. With ``smiles`` the RDKit bonds are used when the
    SMILES' explicit-H atom order matches ``numbers``; otherwise bonds are perceived from
    ``positions``."""
    cache_key = (key, tuple(int(z) for z in numbers))
    if cache_key not in _CACHE:
        bonds = _smiles_bonds(smiles, numbers) if smiles else None
        _CACHE[cache_key] = build_topology(numbers, positions, bonds, scale)
    return _CACHE[cache_key]


def _smiles_bonds(smiles: str, numbers: np.ndarray) -> np.ndarray | None:
    from rdkit import Chem

    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        return None
    mol = Chem.AddHs(mol)
    order = [a.GetAtomicNum() for a in mol.GetAtoms()]
    if order != [int(z) for z in numbers]:
        return None  # atom order differs from the trajectory: fall back to distances
    return rdkit_bonds(mol)
