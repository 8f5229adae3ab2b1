"""Forces of :class:`~mlff_distiller.models.painn.PaiNN` by a hand-derived backward pass.

No autograd: the forward pass keeps what the backward needs (:class:`Intermediates`), then the
gradient of the total energy is chained by hand from the readout back through the interaction
blocks in reverse, into per-edge gradients w.r.t. distance and direction, and scattered onto
atoms with ``index_add_``. Everything runs under ``torch.inference_mode()``.

Notation (per interaction block ``t``; ``i`` receiver, ``j`` sender of edge ``e``):

message:  ``phi = W2 silu(W1 s + b1) + b2`` (n, 3F);  ``x_e = phi[j] * W_t(d_e)`` (e, 3F) split
          into ``x_s, x_vv, x_vs``;  ``s_i += sum_e x_s``;
          ``v_i += sum_e x_vv * v[j] + x_vs * u_e``.
update:   ``[U v, V v] = v @ W_uv^T``;  ``n = sqrt(sum_k (V v)_k^2 + eps)``;
          ``a = M2 silu(M1 [s, n] + c1) + c2`` split into ``a_vv, a_sv, a_ss``;
          ``s += a_ss + a_sv * <U v, V v>``;  ``v += a_vv * U v``.
filters:  ``W(d) = B(d) @ Wf^T`` with ``B = [f_c rbf(d), f_c]`` (bias folded in).

Gradients are named ``g_<thing> = dE/d<thing>``. Forces are ``-dE/dpos``.
"""

from __future__ import annotations

import torch

from mlff_distiller import keys
from mlff_distiller.data.batch import AtomsBatch
from mlff_distiller.models.layers import silu_backward
from mlff_distiller.models.painn import Intermediates, PaiNN


def analytic_energy_and_forces(
    model: PaiNN,
    batch: AtomsBatch,
    edges: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """``{ENERGY: (n_systems,), FORCES: (n_atoms, 3)}`` with the analytical backward."""
    with torch.inference_mode():
        keep = Intermediates()
        energy = model(batch, edges=edges, intermediates=keep)[keys.ENERGY]
        forces = _backward(model, batch, keep)
    return {keys.ENERGY: energy, keys.FORCES: forces}


def _backward(model: PaiNN, batch: AtomsBatch, keep: Intermediates) -> torch.Tensor:
    """Forces (n_atoms, 3) = -dE/dpos from the saved forward intermediates."""
    cfg = model.config
    hidden = cfg.hidden
    n_blocks = cfg.n_interactions
    i, j = keep.edge_index[0], keep.edge_index[1]
    unit, dist = keep.unit, keep.dist
    n_atoms = batch.n_atoms
    dtype, device = batch.positions.dtype, batch.positions.device

    # readout: E = sum_atoms scale * (w2 . silu(W1 s + b1)) + ...  ->  g_s (n, F)
    w_out = model.readout_out.weight[0] * model.scale  # (F_readout,)
    g_pre = silu_backward(keep.readout_sig, keep.readout_act, w_out)
    g_s = g_pre @ model.readout_in.weight  # (n, F)
    g_v = torch.zeros(n_atoms, 3, hidden, dtype=dtype, device=device)

    # per-edge accumulators over all blocks: dE/dW of the filters (e, T' * 3F), dE/du (e, 3)
    n_edges = dist.shape[0]
    g_filters = torch.zeros(n_edges, keep.filters.shape[1], dtype=dtype, device=device)
    g_unit = torch.zeros_like(unit)

    for t in reversed(range(n_blocks)):
        g_s, g_v = _update_backward(model.updates[t], keep.update[t], g_s, g_v, hidden)
        g_s, g_v = _message_backward(
            model, t, keep, g_s, g_v, g_filters, g_unit, need_input_grad=t > 0
        )

    # W = B(d) @ Wf^T: one matmul for all blocks gives dE/dB (e, n_rbf + 1), then dE/dd
    g_basis = g_filters @ model.filter_weight
    g_dist = (g_basis * keep.basis_deriv).sum(1)  # (e,)
    # dE/dr_ij = g_d u + (g_u - (g_u . u) u) / d
    radial = g_dist - (g_unit * unit).sum(1) / dist
    g_vec = unit * radial[:, None] + g_unit / dist[:, None]  # (e, 3)
    # r_ij = pos[j] - pos[i] + shift  ->  F = -dE/dpos: +g at i, -g at j
    forces = torch.zeros(n_atoms, 3, dtype=dtype, device=device)
    forces.index_add_(0, i, g_vec)
    forces.index_add_(0, j, g_vec, alpha=-1.0)
    return forces


def _update_backward(
    block, saved: dict, g_s: torch.Tensor, g_v: torch.Tensor, hidden: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients at the update block's inputs (s, v) from those at its outputs (residual)."""
    uv, norm, a, dot = saved["uv"], saved["norm"], saved["a"], saved["dot"]
    u_v, v_v = uv[..., :hidden], uv[..., hidden:]
    a_vv, a_sv = a[:, :hidden], a[:, hidden : 2 * hidden]
    n_atoms = g_s.shape[0]

    # s' = s + a_ss + a_sv * dot ; v' = v + a_vv * U v
    g_a = torch.empty(n_atoms, 3 * hidden, dtype=g_s.dtype, device=g_s.device)
    torch.sum(g_v * u_v, dim=1, out=g_a[:, :hidden])  # d/d a_vv
    torch.mul(g_s, dot, out=g_a[:, hidden : 2 * hidden])  # d/d a_sv
    g_a[:, 2 * hidden :] = g_s  # d/d a_ss
    # a = M2 silu(h) + c2, h = M1 [s, norm] + c1
    g_h = silu_backward(saved["sig"], saved["act"], g_a @ block.mlp_out.weight)
    g_in = g_h @ block.mlp_in.weight  # (n, 2F)
    g_norm_over = g_in[:, hidden:] / norm  # d/d(V v) of norm is (V v) / norm
    gs_asv = (g_s * a_sv)[:, None, :]  # (n, 1, F), gradient of dot = <U v, V v>
    g_uv = torch.empty_like(uv)
    torch.addcmul(gs_asv * v_v, g_v, a_vv[:, None, :], out=g_uv[..., :hidden])
    torch.addcmul(gs_asv * u_v, v_v, g_norm_over[:, None, :], out=g_uv[..., hidden:])
    g_v = g_v + g_uv @ block.uv.weight  # (n, 3, F)
    g_s = g_s + g_in[:, :hidden]
    return g_s, g_v


def _message_backward(
    model: PaiNN,
    t: int,
    keep: Intermediates,
    g_s: torch.Tensor,
    g_v: torch.Tensor,
    g_filters: torch.Tensor,
    g_unit: torch.Tensor,
    need_input_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients at the message block's inputs; accumulates dE/dW (g_filters) and dE/du.

    ``need_input_grad=False`` for the first block, whose inputs (embedding, v = 0) do not depend
    on positions: only the edge gradients are computed there.
    """
    cfg = model.config
    hidden = cfg.hidden
    saved = keep.message[t]
    i, j = keep.edge_index[0], keep.edge_index[1]
    unit = keep.unit
    x, phi_j, v_j = saved["x"], saved["phi_j"], saved["v_j"]
    x_vv, x_vs = x[:, hidden : 2 * hidden], x[:, 2 * hidden :]
    if cfg.shared_filters:
        f_lo, f_hi = 0, 3 * hidden
    else:
        f_lo, f_hi = 3 * hidden * t, 3 * hidden * (t + 1)
    w = keep.filters[:, f_lo:f_hi]  # (e, 3F)
    n_edges = x.shape[0]

    g_v_i = g_v.index_select(0, i)  # (e, 3, F)
    g_x = torch.empty(n_edges, 3 * hidden, dtype=x.dtype, device=x.device)
    torch.index_select(g_s, 0, i, out=g_x[:, :hidden])  # d/d x_s
    if v_j is not None:
        torch.sum(g_v_i * v_j, dim=1, out=g_x[:, hidden : 2 * hidden])  # d/d x_vv
    else:
        g_x[:, hidden : 2 * hidden] = 0.0
    torch.sum(g_v_i * unit[:, :, None], dim=1, out=g_x[:, 2 * hidden :])  # d/d x_vs
    g_unit += (g_v_i * x_vs[:, None, :]).sum(2)

    # x = phi[j] * W: filter gradient, written into this block's columns (shared: summed)
    if cfg.shared_filters:
        g_filters.addcmul_(g_x, phi_j)
    else:
        torch.mul(g_x, phi_j, out=g_filters[:, f_lo:f_hi])

    if not need_input_grad:
        return g_s, g_v
    if v_j is not None:
        g_v = g_v.index_add(0, j, g_v_i * x_vv[:, None, :])
    g_phi = torch.zeros(g_s.shape[0], 3 * hidden, dtype=x.dtype, device=x.device)
    g_phi.index_add_(0, j, g_x * w)
    block = model.messages[t]
    g_h = silu_backward(saved["sig"], saved["act"], g_phi @ block.phi_out.weight)
    g_s = g_s + g_h @ block.phi_in.weight
    return g_s, g_v
