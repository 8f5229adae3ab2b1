"""Rows of a model's Hessian ``d2E / dx_i dx`` by autograd (Hessian-informed distillation).

A row ``i`` of the (3N, 3N) Hessian of a structure is the derivative of its energy gradient
component ``g_i = dE/dx_i`` with respect to every coordinate: one more backward pass through the
graph of the forces per row. Structures of a batch are independent, so one backward gives row
``k`` of every structure at once: differentiate ``sum_s g_{i_k(s)}`` (each structure's own row
index ``i_k(s)``), and the result restricted to the atoms of structure ``s`` is its row.

Layout (as in the HDF5 labels, :mod:`mlff_distiller.keys`): ``index`` (n_systems, r) int64, flat
coordinates ``3 * atom + axis`` local to each structure, -1 = no row; rows (n_atoms, r, 3) eV/Å^2,
``rows[a, k] = d2E / dx_{i_k} dx_a`` for the atoms ``a`` of each structure (zeros where -1).
"""

from __future__ import annotations

import torch
from torch import nn

from mlff_distiller import keys
from mlff_distiller.data.batch import AtomsBatch


def system_offsets(batch: AtomsBatch) -> torch.Tensor:
    """(n_systems,) index of the first atom of every structure of ``batch``."""
    counts = batch.atoms_per_system
    return torch.cumsum(counts, 0) - counts


def rows_of_gradient(
    gradient: torch.Tensor,
    positions: torch.Tensor,
    index: torch.Tensor,
    batch: AtomsBatch,
    create_graph: bool = False,
) -> torch.Tensor:
    """Hessian rows (n_atoms, r, 3) from ``gradient = dE/dpositions`` (n_atoms, 3), which must
    have been built with ``create_graph=True`` from the leaf ``positions``.

    ``create_graph=True`` keeps the rows differentiable w.r.t. the parameters (training)."""
    n_atoms = gradient.shape[0]
    index = index.to(device=gradient.device, dtype=torch.long)
    if index.ndim != 2 or index.shape[0] != batch.n_systems:
        raise ValueError(
            f"hessian index must be (n_systems={batch.n_systems}, r), got {tuple(index.shape)}"
        )
    if bool(((index >= 3 * batch.atoms_per_system[:, None]) | (index < -1)).any()):
        raise ValueError("hessian index out of range: -1 or 0 <= i < 3 * n_atoms of its structure")
    start = system_offsets(batch)
    flat = gradient.reshape(-1)
    rows = []
    for k in range(index.shape[1]):
        idx = index[:, k]
        valid = idx >= 0
        if not bool(valid.any()):
            rows.append(gradient.new_zeros(n_atoms, 3))
            continue
        picked = flat.index_select(0, 3 * start[valid] + idx[valid]).sum()
        (row,) = torch.autograd.grad(
            picked, positions, create_graph=create_graph, retain_graph=True, allow_unused=True
        )
        rows.append(torch.zeros_like(gradient) if row is None else row)
    if not rows:
        return gradient.new_zeros(n_atoms, 0, 3)
    return torch.stack(rows, dim=1)


def energy_forces_hessian_rows(
    model: nn.Module,
    batch: AtomsBatch,
    index: torch.Tensor,
    create_graph: bool = False,
    edges: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Energy (n_systems,) eV, forces (n_atoms, 3) eV/Å and Hessian rows (n_atoms, r, 3) eV/Å^2
    of ``model`` (any module whose ``forward(batch)`` returns ``{ENERGY: (n_systems,)}``, e.g.
    :class:`~mlff_distiller.models.painn.PaiNN`) for the rows ``index`` (n_systems, r).

    One forward, one backward for the forces and one more backward per row. ``create_graph``
    makes all three differentiable w.r.t. the parameters (a loss on forces and rows)."""
    positions = batch.positions.detach().requires_grad_(True)
    with torch.enable_grad():
        graph_batch = AtomsBatch(
            batch.atomic_numbers, positions, batch.system_idx, batch.cell, batch.pbc, batch.labels
        )
        out = model(graph_batch) if edges is None else model(graph_batch, edges=edges)
        energy = out[keys.ENERGY]
        (gradient,) = torch.autograd.grad(energy.sum(), positions, create_graph=True)
        rows = rows_of_gradient(gradient, positions, index, batch, create_graph=create_graph)
    if not create_graph:
        energy, gradient, rows = energy.detach(), gradient.detach(), rows.detach()
    return {keys.ENERGY: energy, keys.FORCES: -gradient, keys.HESSIAN_ROWS: rows}


def full_hessian(model: nn.Module, batch: AtomsBatch) -> torch.Tensor:
    """The whole (3N, 3N) Hessian of a one-structure batch (tests, small molecules)."""
    if batch.n_systems != 1:
        raise ValueError("full_hessian takes a batch of one structure")
    n3 = 3 * batch.n_atoms
    index = torch.arange(n3, device=batch.device)[None, :]
    rows = energy_forces_hessian_rows(model, batch, index)[keys.HESSIAN_ROWS]  # (n, 3N, 3)
    return rows.permute(1, 0, 2).reshape(n3, n3)
