"""Per-element reference energies and the energy scale/shift, fitted from a dataset.

The trainer calls these once before training:

>>> ref = fit_reference_energies(numbers_per_structure, energies)          # (max_z + 1,)
>>> scale, shift = fit_scale_shift(numbers_per_structure, energies, ref, forces)
>>> model.set_reference_energies(ref, elements=present_elements(numbers_per_structure))
>>> model.set_scale_shift(scale, shift)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


class ReferenceFitError(ValueError):
    """The dataset cannot determine reference energies or scale/shift."""


def composition_matrix(numbers: Sequence[np.ndarray], max_z: int = 118) -> np.ndarray:
    """(n_structures, max_z + 1) counts of each element per structure."""
    counts = np.zeros((len(numbers), max_z + 1))
    for row, z in enumerate(numbers):
        z = np.asarray(z, dtype=np.int64)
        if z.size and (z.min() < 1 or z.max() > max_z):
            raise ReferenceFitError(f"structure {row}: atomic numbers must be in 1..{max_z}")
        np.add.at(counts[row], z, 1.0)
    return counts


def present_elements(numbers: Sequence[np.ndarray]) -> list[int]:
    """Sorted atomic numbers occurring in the dataset."""
    return sorted({int(z) for zs in numbers for z in np.asarray(zs).ravel()})


def fit_reference_energies(
    numbers: Sequence[np.ndarray],
    energies: Sequence[float] | np.ndarray,
    max_z: int = 118,
    ridge: float = 1e-8,
) -> torch.Tensor:
    """Least-squares per-element energies (max_z + 1,) float64 with ``E ~ sum_Z n_Z e_Z``.

    ``numbers``: atomic numbers per structure; ``energies``: (n_structures,) eV. Elements that
    never occur get 0. A tiny ridge term makes the fit defined when compositions are collinear
    (e.g. a dataset of one molecule's conformers); the residual is then absorbed by the shift.
    """
    energies = np.asarray(energies, dtype=np.float64).reshape(-1)
    if len(numbers) != energies.shape[0]:
        raise ReferenceFitError(
            f"got {len(numbers)} structures but {energies.shape[0]} energies; "
            "give one energy per structure"
        )
    if energies.shape[0] == 0:
        raise ReferenceFitError("no structures to fit reference energies on")
    if not np.all(np.isfinite(energies)):
        raise ReferenceFitError("energies contain NaN or inf; clean the dataset first")
    counts = composition_matrix(numbers, max_z)
    present = np.flatnonzero(counts.sum(0) > 0)
    a = counts[:, present]
    # ridge-regularised normal equations, scaled to the data
    lhs = a.T @ a + ridge * np.eye(len(present)) * max(np.trace(a.T @ a) / len(present), 1.0)
    sol = np.linalg.solve(lhs, a.T @ energies)
    out = np.zeros(max_z + 1)
    out[present] = sol
    return torch.as_tensor(out)


def fit_scale_shift(
    numbers: Sequence[np.ndarray],
    energies: Sequence[float] | np.ndarray,
    reference_energies: torch.Tensor | np.ndarray,
    forces: Sequence[np.ndarray] | None = None,
) -> tuple[float, float]:
    """``(scale, shift)`` for per-atom energies ``readout * scale + shift``.

    ``shift`` is the mean residual energy per atom (after reference energies); ``scale`` is the
    RMS of the force components when ``forces`` (per structure (n_i, 3), eV/Å) are given, else
    the standard deviation of the per-atom residual energy (1.0 if that is zero).
    """
    energies = np.asarray(energies, dtype=np.float64).reshape(-1)
    ref = np.asarray(reference_energies, dtype=np.float64)
    n_atoms = np.array([len(z) for z in numbers], dtype=np.float64)
    if np.any(n_atoms == 0):
        raise ReferenceFitError("a structure has no atoms")
    residual = np.array(
        [e - ref[np.asarray(z, dtype=np.int64)].sum() for z, e in zip(numbers, energies)]
    )
    per_atom = residual / n_atoms
    shift = float(per_atom.mean())
    if forces is not None and len(forces) > 0:
        flat = np.concatenate([np.asarray(f, dtype=np.float64).reshape(-1) for f in forces])
        scale = float(np.sqrt(np.mean(flat**2)))
    else:
        scale = float(per_atom.std())
    if not np.isfinite(scale) or scale <= 1e-12:
        scale = 1.0
    return scale, shift
