"""Helpers shared by the teacher tests: tiny molecules and a finite-difference check."""

from __future__ import annotations

import numpy as np
from ase import Atoms

from mlff_distiller.data.structures import from_smiles


def molecule(smiles: str, name: str | None = None, jitter: float = 0.02, seed: int = 0) -> Atoms:
    """A relaxed conformer of ``smiles``, slightly displaced so forces are not ~0."""
    atoms = from_smiles(smiles, n_conformers=1, seed=seed, name=name)[0]
    rng = np.random.default_rng(seed)
    atoms.positions += rng.normal(0.0, jitter, atoms.positions.shape)
    return atoms


def fd_forces(calc, atoms: Atoms, h: float = 1e-3, components=None) -> np.ndarray:
    """Central-difference -dE/dx for the given (atom, axis) components (default: all)."""
    comps = components or [(i, k) for i in range(len(atoms)) for k in range(3)]
    out = np.full((len(atoms), 3), np.nan)
    for i, k in comps:
        e = []
        for sign in (1, -1):
            a = atoms.copy()
            a.positions[i, k] += sign * h
            a.calc = calc
            e.append(a.get_potential_energy())
        out[i, k] = -(e[0] - e[1]) / (2 * h)
    return out


def assert_fd_forces(calc, atoms: Atoms, h: float, atol: float, rtol: float = 0.0, components=None):
    a = atoms.copy()
    a.calc = calc
    forces = a.get_forces()
    fd = fd_forces(calc, atoms, h, components)
    mask = ~np.isnan(fd)
    err = np.abs(forces[mask] - fd[mask])
    assert np.all(err <= atol + rtol * np.abs(fd[mask])), (
        f"max |F - F_fd| = {err.max():.2e} eV/Å (atol {atol}, rtol {rtol})"
    )
    return err.max()
