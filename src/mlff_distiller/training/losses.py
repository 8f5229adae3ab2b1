"""Distillation loss: weighted MSE of the energy per atom and of the force components."""

from __future__ import annotations

import torch


def energy_per_atom_mse(
    energy_pred: torch.Tensor, energy_ref: torch.Tensor, n_atoms: torch.Tensor
) -> torch.Tensor:
    """Mean over structures of ((E_pred - E_ref) / n_atoms)^2.

    energy_pred, energy_ref: (n_systems,) eV; n_atoms: (n_systems,) atom counts. Returns eV^2.
    """
    diff = (energy_pred - energy_ref) / n_atoms.to(energy_pred.dtype)
    return (diff * diff).mean()


def forces_mse(forces_pred: torch.Tensor, forces_ref: torch.Tensor) -> torch.Tensor:
    """Mean over atoms and Cartesian components of (F_pred - F_ref)^2.

    forces_pred, forces_ref: (n_atoms, 3) eV/Å. Returns (eV/Å)^2.
    """
    diff = forces_pred - forces_ref
    return (diff * diff).mean()


def distillation_loss(
    energy_pred: torch.Tensor,
    energy_ref: torch.Tensor,
    forces_pred: torch.Tensor,
    forces_ref: torch.Tensor,
    n_atoms: torch.Tensor,
    energy_weight: float,
    forces_weight: float,
) -> dict[str, torch.Tensor]:
    """``loss = energy_weight * energy_per_atom_mse + forces_weight * forces_mse``.

    Returns ``{"loss", "energy_mse", "forces_mse"}`` (scalars; the parts are unweighted).
    """
    e = energy_per_atom_mse(energy_pred, energy_ref, n_atoms)
    f = forces_mse(forces_pred, forces_ref)
    return {"loss": energy_weight * e + forces_weight * f, "energy_mse": e, "forces_mse": f}
