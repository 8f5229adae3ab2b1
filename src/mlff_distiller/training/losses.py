"""Distillation loss: the weighted energy-per-atom MSE plus a force term.

Force terms (``force_loss``):

- ``"mse"``: mean over atoms and components of (F_pred - F_ref)^2, (eV/Å)^2.
- ``"l2mae"``: mean over atoms of the Euclidean norm |F_pred - F_ref|, eV/Å. Its gradient does
  not shrink with the residual, so small errors keep their weight against a few large ones;
  it aims the fit at the force MAE that benchmarks report.
- ``"huber"``: mean over components of the Huber function with ``huber_delta`` (eV/Å),
  quadratic below delta and linear above, in (eV/Å)^2 (MSE/2 for small errors).
"""

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


FORCE_LOSSES = ("mse", "l2mae", "huber")


def forces_l2mae(forces_pred: torch.Tensor, forces_ref: torch.Tensor) -> torch.Tensor:
    """Mean over atoms of |F_pred - F_ref| (Euclidean norm of each atom's error vector).

    forces_pred, forces_ref: (n_atoms, 3) eV/Å. Returns eV/Å. The norm is smoothed by 1e-12
    (eV/Å)^2 under the square root so that its gradient stays finite at a zero residual.
    """
    diff = forces_pred - forces_ref
    return torch.sqrt((diff * diff).sum(dim=1) + 1e-12).mean()


def forces_term(
    forces_pred: torch.Tensor, forces_ref: torch.Tensor, kind: str, huber_delta: float
) -> torch.Tensor:
    """The force term of the loss named by ``kind`` (one of :data:`FORCE_LOSSES`)."""
    if kind == "mse":
        return forces_mse(forces_pred, forces_ref)
    if kind == "l2mae":
        return forces_l2mae(forces_pred, forces_ref)
    if kind == "huber":
        return torch.nn.functional.huber_loss(forces_pred, forces_ref, delta=huber_delta)
    raise ValueError(f"force loss must be one of {FORCE_LOSSES}, got {kind!r}")


def distillation_loss(
    energy_pred: torch.Tensor,
    energy_ref: torch.Tensor,
    forces_pred: torch.Tensor,
    forces_ref: torch.Tensor,
    n_atoms: torch.Tensor,
    energy_weight: float,
    forces_weight: float,
    force_loss: str = "mse",
    huber_delta: float = 0.01,
) -> dict[str, torch.Tensor]:
    """``loss = energy_weight * energy_per_atom_mse + forces_weight * force_term``.

    Returns ``{"loss", "energy_mse", "forces_mse"}`` (scalars; the parts are unweighted; the
    force MSE is reported whatever ``force_loss`` trains on).
    """
    e = energy_per_atom_mse(energy_pred, energy_ref, n_atoms)
    f_mse = forces_mse(forces_pred, forces_ref)
    f = (
        f_mse
        if force_loss == "mse"
        else forces_term(forces_pred, forces_ref, force_loss, huber_delta)
    )
    return {"loss": energy_weight * e + forces_weight * f, "energy_mse": e, "forces_mse": f_mse}


def hessian_rows_mse(
    rows_pred: torch.Tensor,
    rows_ref: torch.Tensor,
    index: torch.Tensor,
    system_idx: torch.Tensor,
) -> torch.Tensor:
    """Mean over the given Hessian rows and their 3N entries of (H_pred - H_ref)^2, (eV/Å^2)^2.

    rows_pred, rows_ref: (n_atoms, r, 3) eV/Å^2 (layout of :mod:`mlff_distiller.models.hessian`);
    index: (n_systems, r) int64, -1 where a structure has no row k (left out of the mean);
    system_idx: (n_atoms,). Zero (still attached to the graph) when no row is given.
    """
    mask = (index >= 0).index_select(0, system_idx).to(rows_pred.dtype)  # (n_atoms, r)
    diff = (rows_pred - rows_ref.to(rows_pred.dtype)) * mask[:, :, None]
    count = mask.sum() * 3.0
    return (diff * diff).sum() / count.clamp(min=1.0)
