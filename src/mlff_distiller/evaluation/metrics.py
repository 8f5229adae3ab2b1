"""Error metrics of predicted energies and forces against reference labels.

Inputs are flat numpy arrays in internal units (eV, eV/Å); results are in meV/atom and meV/Å,
the units papers quote. Shapes: per structure ``(n_structures,)``, per atom ``(n_atoms, 3)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ase.data import chemical_symbols

from mlff_distiller import units


def energy_mae_per_atom(
    energy_pred: np.ndarray, energy_ref: np.ndarray, n_atoms: np.ndarray
) -> float:
    """Mean over structures of |E_pred - E_ref| / n_atoms, in meV/atom."""
    return float(np.mean(np.abs(energy_pred - energy_ref) / n_atoms) * units.MEV_PER_EV)


def energy_mae(energy_pred: np.ndarray, energy_ref: np.ndarray) -> float:
    """Mean absolute error of the total energy per structure, in meV."""
    return float(np.mean(np.abs(energy_pred - energy_ref)) * units.MEV_PER_EV)


def force_mae(forces_pred: np.ndarray, forces_ref: np.ndarray) -> float:
    """Mean over atoms and components of |F_pred - F_ref|, in meV/Å."""
    return float(np.mean(np.abs(forces_pred - forces_ref)) * units.MEV_PER_EV)


def force_rmse(forces_pred: np.ndarray, forces_ref: np.ndarray) -> float:
    """Root mean square over atoms and components of F_pred - F_ref, in meV/Å."""
    return float(np.sqrt(np.mean((forces_pred - forces_ref) ** 2)) * units.MEV_PER_EV)


def force_cosine_similarity(
    forces_pred: np.ndarray, forces_ref: np.ndarray, eps: float = 1e-12
) -> float:
    """Mean over atoms of the cosine of the angle between predicted and reference force."""
    dot = np.sum(forces_pred * forces_ref, axis=-1)
    norms = np.linalg.norm(forces_pred, axis=-1) * np.linalg.norm(forces_ref, axis=-1)
    return float(np.mean(dot / np.maximum(norms, eps)))


def error_summary(
    energy_pred: np.ndarray,
    energy_ref: np.ndarray,
    forces_pred: np.ndarray,
    forces_ref: np.ndarray,
    n_atoms: np.ndarray,
) -> dict[str, float]:
    """All headline numbers of one prediction set, plus the spread of the reference forces
    (``force_std_mev_per_a``: a model predicting zero force has an RMSE about this large)."""
    return {
        "n_structures": int(len(energy_ref)),
        "n_atoms": int(len(forces_ref)),
        "energy_mae_mev_per_atom": energy_mae_per_atom(energy_pred, energy_ref, n_atoms),
        "energy_mae_mev": energy_mae(energy_pred, energy_ref),
        "force_mae_mev_per_a": force_mae(forces_pred, forces_ref),
        "force_rmse_mev_per_a": force_rmse(forces_pred, forces_ref),
        "force_cosine": force_cosine_similarity(forces_pred, forces_ref),
        "force_std_mev_per_a": float(np.std(forces_ref) * units.MEV_PER_EV),
    }


def per_element_force_errors(
    forces_pred: np.ndarray, forces_ref: np.ndarray, atomic_numbers: np.ndarray
) -> dict[str, dict[str, float]]:
    """Force MAE, RMSE and cosine similarity for the atoms of each element, keyed by symbol."""
    out = {}
    for z in np.unique(atomic_numbers):
        mask = atomic_numbers == z
        out[chemical_symbols[int(z)]] = {
            "n_atoms": int(mask.sum()),
            "force_mae_mev_per_a": force_mae(forces_pred[mask], forces_ref[mask]),
            "force_rmse_mev_per_a": force_rmse(forces_pred[mask], forces_ref[mask]),
            "force_cosine": force_cosine_similarity(forces_pred[mask], forces_ref[mask]),
        }
    return out


def per_group_errors(
    energy_pred: np.ndarray,
    energy_ref: np.ndarray,
    forces_pred: np.ndarray,
    forces_ref: np.ndarray,
    n_atoms: np.ndarray,
    groups: Sequence,
) -> dict[str, dict[str, float]]:
    """:func:`error_summary` for each group of structures (e.g. per molecule id).

    groups: (n_structures,) a label per structure; atoms follow their structure.
    """
    groups = np.asarray(groups)
    atom_group = np.repeat(groups, n_atoms)
    out = {}
    for g in np.unique(groups):
        s = groups == g
        a = atom_group == g
        out[str(g)] = error_summary(
            energy_pred[s], energy_ref[s], forces_pred[a], forces_ref[a], n_atoms[s]
        )
    return out
