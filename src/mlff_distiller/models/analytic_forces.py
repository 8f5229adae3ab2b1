"""Forces of :class:`~mlff_distiller.models.painn.PaiNN` by a hand-derived backward pass.

No autograd: the forward pass keeps what the backward needs (:class:`Intermediates`), then the
gradient of the total energy is chained by hand from the readout back through the interaction
blocks in reverse, into per-edge gradients w.r.t. distance and direction, and scattered onto
atoms with ``index_add_``. It runs under ``torch.inference_mode()``, or with autograd recording
for training (``create_graph=True``).

Notation (per interaction block ``t``; ``i`` receiver, ``j`` sender of edge ``e``):

message:  ``phi = W2 silu(W1 s + b1) + b2`` (n, 3F);  ``x_e = phi[j] * W_t(d_e)`` (e, 3F) split
          into ``x_s, x_vv, x_vs``;  ``s_i += sum_e x_s``;
          ``v_i += sum_e x_vv * v[j] + x_vs * u_e``.
update:   ``[U v, V v] = v @ W_uv^T``;  ``n = sqrt(sum_k (V v)_k^2 + eps)``;
          ``a = M2 silu(M1 [s, n] + c1) + c2`` split into ``a_vv, a_sv, a_ss``;
          ``s += a_ss + a_sv * <U v, V v>``;  ``v += a_vv * U v``.
filters:  ``W(d) = B(d) @ Wf^T`` with ``B = [f_c rbf(d), f_c]`` (bias folded in).

Gradients are named ``g_<thing> = dE/d<thing>``. Forces are ``-dE/dpos``. The stress (periodic
structures, ``stress=True``) comes from the same per-edge gradients ``g_vec = dE/dr_ij``: a strain
``eps`` maps every ``r_ij -> r_ij (1 + eps)``, so ``dE/d eps_ab = sum_edges r_ij,a g_vec_ij,b``
per structure (that of the receiver atom), symmetrised and divided by the cell volume.

Cost notes (measured in ``benchmarks/forces.py``): the readout ignores ``v``, so the last block's
vector update is skipped in the forward and its zero gradient is never formed; the first block's
inputs do not depend on positions, so only its edge gradients are computed; the filter gradient
is contracted per block straight to ``dE/dB`` (e, n_rbf + 1). Small molecules are bound by the
number of ops (~300 per call), larger ones by the (e, 3, F) products, which the backward needs
about twice as many of as the forward. ``compiled=True`` fuses them (one graph, no breaks).
"""

from __future__ import annotations

import functools

import torch

from mlff_distiller import keys
from mlff_distiller.data.batch import AtomsBatch
from mlff_distiller.models import fast_path
from mlff_distiller.models.layers import silu_backward
from mlff_distiller.models.painn import Intermediates, PaiNN, cell_volume, check_stress_batch


def analytic_energy_and_forces(
    model: PaiNN,
    batch: AtomsBatch,
    edges: tuple[torch.Tensor, torch.Tensor] | None = None,
    compiled: bool = False,
    create_graph: bool = False,
    stress: bool = False,
) -> dict[str, torch.Tensor]:
    """``{ENERGY: (n_systems,) eV, FORCES: (n_atoms, 3) eV/Å}`` with the analytical backward.

    ``compiled=True`` runs the same code through ``torch.compile`` (dynamic shapes, one graph;
    the first call compiles for about a minute on a CPU, later sizes reuse it).
    ``create_graph=True`` runs it with autograd recording, so that energy and forces are
    differentiable w.r.t. the parameters (force training: one ordinary backward through the
    hand-derived graph instead of autograd's double backward; the same gradients).
    ``stress=True`` adds ``STRESS`` (n_systems, 3, 3) eV/Å^3 (ASE's convention, symmetrised);
    every structure must be 3D-periodic (``ValueError`` otherwise, see
    :func:`~mlff_distiller.models.painn.check_stress_batch`). It is a static flag: the compiled
    graph for ``stress=False`` stays the forces-only one.
    """
    if stress:  # outside any compiled graph: the check reads values
        check_stress_batch(batch)
    if create_graph:
        if edges is None:
            edges = model.neighbors(batch)
        run = _compiled_energy_and_forces(training=True) if compiled else _energy_and_forces
        with torch.enable_grad():
            energy, forces, virial = run(model, batch, edges, stress)
        return _outputs(energy, forces, virial)
    if not compiled:
        with torch.inference_mode():
            energy, forces, virial = _energy_and_forces(model, batch, edges, stress)
        return _outputs(energy, forces, virial)
    if edges is None:  # the neighbour search stays outside the compiled graph
        edges = model.neighbors(batch)
    with torch.no_grad():  # compiled graphs cannot take inference-mode tensors
        key = (batch.dtype, batch.device.type, batch.n_systems > 1, stress)
        if key not in model.__dict__.setdefault("_compiled_keys", set()):
            return _first_compiled_call(model, batch, edges, stress, key)
        energy, forces, virial = _compiled_energy_and_forces()(model, batch, edges, stress)
    return _outputs(energy, forces, virial)


def _first_compiled_call(model: PaiNN, batch: AtomsBatch, edges, stress: bool, key: tuple):
    """The first compiled call of a model for a dtype/device/batching: announces a compile the
    machine has not cached yet, and falls back to eager (with a notice) if compiling fails."""
    marker = fast_path.announce_first_compile(model, batch.dtype, batch.device, key)
    try:
        energy, forces, virial = _compiled_energy_and_forces()(model, batch, edges, stress)
    except Exception as err:  # no working compiler, an unsupported op: run eager instead
        first_line = (str(err).strip().splitlines() or [""])[0][:200]
        fast_path.notice(
            f"compiling the forces failed ({type(err).__name__}: {first_line}); "
            "running the eager analytical forces"
        )
        model.compile_forces(False)
        with torch.inference_mode():
            energy, forces, virial = _energy_and_forces(model, batch, edges, stress)
        return _outputs(energy, forces, virial)
    fast_path.mark_compiled(marker)
    model._compiled_keys.add(key)
    return _outputs(energy, forces, virial)


def _outputs(
    energy: torch.Tensor, forces: torch.Tensor, stress: torch.Tensor | None
) -> dict[str, torch.Tensor]:
    out = {keys.ENERGY: energy, keys.FORCES: forces}
    if stress is not None:
        out[keys.STRESS] = stress
    return out


def _energy_and_forces(
    model: PaiNN,
    batch: AtomsBatch,
    edges: tuple[torch.Tensor, torch.Tensor] | None,
    stress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(energy (n_systems,), forces (n_atoms, 3), stress (n_systems, 3, 3) or None)."""
    keep = Intermediates()
    energy = model(batch, edges=edges, intermediates=keep)[keys.ENERGY]
    return energy, *_backward(model, batch, keep, stress)


@functools.cache
def _compiled_energy_and_forces(training: bool = False):
    """``_energy_and_forces`` through ``torch.compile`` (dynamic shapes). For inference the
    graph is launched from a generated C++ wrapper instead of Python (``cpp_wrapper``): the
    same kernels, but about 1 ms less per call, which is a third of a small molecule's call
    (measured in ``benchmarks/peers.py``); training keeps the default Python wrapper."""
    fast_path.configure_compile_cache()  # before the first compile: a persistent disk cache
    options = None if training else {"cpp_wrapper": True}
    return torch.compile(_energy_and_forces, dynamic=True, options=options)


def _backward(
    model: PaiNN, batch: AtomsBatch, keep: Intermediates, stress: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Forces (n_atoms, 3) = -dE/dpos from the saved forward intermediates, and with
    ``stress=True`` the stress (n_systems, 3, 3) = sym(dE/d strain) / V in eV/Å^3 (else None).
    """
    cfg = model.config
    n_blocks = cfg.n_interactions
    unit, dist = keep.unit, keep.dist
    n_atoms = batch.n_atoms

    # readout: E = sum_atoms scale * (w2 . silu(W1 s + b1)) + ...  ->  g_s (n, F)
    w_out = model.readout_out.weight[0] * model.scale  # (F_readout,)
    g_pre = silu_backward(keep.readout_pre, w_out)
    g_s = g_pre @ model.readout_in.weight  # (n, F)
    g_v = None  # (n, 3, F); zero after the last block (the readout ignores v)

    # per-edge accumulators over all blocks: dE/dB of the filter basis (e, n_rbf + 1), dE/du (e, 3)
    g_basis = g_unit = None
    for t in reversed(range(n_blocks)):
        g_s, g_v = _update_backward(model.updates[t], keep.update[t], g_s, g_v)
        g_s, g_v, g_basis, g_unit = _message_backward(
            model, t, keep, g_s, g_v, g_basis, g_unit, need_input_grad=t > 0
        )

    # B(d) = [f_c rbf(d), f_c]: dE/dd from dE/dB
    g_dist = (g_basis * keep.basis_deriv).sum(1)  # (e,)
    # dE/dr_ij = g_d u + (g_u - (g_u . u) u) / d
    g_unit = g_unit / dist[:, None]
    radial = g_dist - (g_unit * unit).sum(1)
    g_vec = torch.addcmul(g_unit, unit, radial[:, None])  # (e, 3)
    # r_ij = pos[j] - pos[i] + shift  ->  F = -dE/dpos: +g at i, -g at j
    forces = g_vec.new_zeros(n_atoms, 3).index_add_(0, keep.edge_index[0], g_vec)
    forces = forces.index_add_(0, keep.edge_index[1], g_vec, alpha=-1.0)
    if not stress:
        return forces, None
    # strain r_ij -> r_ij (1 + eps): dE/d eps_ab = sum_e r_a g_b, per structure of the receiver
    virial_edge = (keep.vec[:, :, None] * g_vec[:, None, :]).reshape(-1, 9)  # (e, 9)
    edge_system = batch.system_idx.index_select(0, keep.edge_index[0])
    virial = g_vec.new_zeros(batch.n_systems, 9).index_add_(0, edge_system, virial_edge)
    virial = virial.view(-1, 3, 3)
    volume = cell_volume(batch.cell.to(g_vec.dtype))  # (n_systems,)
    return forces, 0.5 * (virial + virial.transpose(1, 2)) / volume[:, None, None]


def _update_backward(
    block, saved: dict, g_s: torch.Tensor, g_v: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients at the update block's inputs (s, v) from those at its outputs (residual).

    ``g_v=None`` means a zero gradient at the vector output (the last block).
    """
    u_v, v_v, norm, dot = saved["u_v"], saved["v_v"], saved["norm"], saved["dot"]
    a_vv, a_sv = saved["a_vv"], saved["a_sv"]  # (n, 1, F), (n, F)
    hidden = norm.shape[1]

    # s' = s + a_ss + a_sv * dot ; v' = v + a_vv * U v   ->   g_a = [g_avv, g_s * dot, g_s]
    # a = M2 silu(h) + c2, h = M1 [s, norm] + c1
    w_mlp_out = block.mlp_out.weight  # (3F, F)
    if g_v is None:
        g_act = torch.cat([g_s * dot, g_s], dim=1) @ w_mlp_out[hidden:]
    else:
        g_act = torch.cat([(g_v * u_v).sum(1), g_s * dot, g_s], dim=1) @ w_mlp_out
    g_in = silu_backward(saved["pre"], g_act) @ block.mlp_in.weight  # (n, 2F)
    g_in_s, g_norm = g_in.split(hidden, dim=1)
    # norm = sqrt(|V v|^2 + eps): d norm / d(V v) = V v / norm; dot = <U v, V v>
    gs_asv = (g_s * a_sv)[:, None, :]  # (n, 1, F)
    g_u = gs_asv * v_v
    if g_v is not None:
        g_u.addcmul_(g_v, a_vv)
    g_vv = torch.addcmul(gs_asv * u_v, v_v, (g_norm / norm)[:, None, :])
    g_uv = torch.cat([g_u, g_vv], dim=2)  # (n, 3, 2F)
    if g_v is None:
        g_v = g_uv @ block.uv.weight  # (n, 3, F)
    else:
        g_v = g_v + g_uv @ block.uv.weight
    return g_s + g_in_s, g_v


def _message_backward(
    model: PaiNN,
    t: int,
    keep: Intermediates,
    g_s: torch.Tensor,
    g_v: torch.Tensor,
    g_basis: torch.Tensor | None,
    g_unit: torch.Tensor | None,
    need_input_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients at the message block's inputs; accumulates dE/dB (g_basis) and dE/du.

    ``g_basis``: (e, n_rbf + 1) and ``g_unit``: (e, 3), None before the first (= last) block.
    ``need_input_grad=False`` for the first block, whose inputs (embedding, v = 0) do not depend
    on positions: only the edge gradients are computed there.
    """
    cfg = model.config
    hidden = cfg.hidden
    saved = keep.message[t]
    i, j = keep.edge_index[0], keep.edge_index[1]
    phi_j, w, v_j = saved["phi_j"], saved["w"], saved["v_j"]
    x_vv, x_vs = saved["x_vv"], saved["x_vs"]  # (e, 1, F) each

    g_v_i = g_v.index_select(0, i)  # (e, 3, F)
    g_x_s = g_s.index_select(0, i)  # d/d x_s
    g_x_vs = (g_v_i * keep.unit3).sum(1)  # d/d x_vs
    if v_j is not None:
        g_x_vv = (g_v_i * v_j).sum(1)  # d/d x_vv
    else:
        g_x_vv = torch.zeros_like(g_x_s)
    g_x = torch.cat([g_x_s, g_x_vv, g_x_vs], dim=1)  # (e, 3F)
    g_unit_t = (g_v_i * x_vs).sum(2)  # (e, 3)
    g_unit = g_unit_t if g_unit is None else g_unit.add_(g_unit_t)

    # x = phi[j] * W, W = B Wf_t^T: dE/dB += (g_x * phi[j]) @ Wf_t, (e, n_rbf + 1) at once
    lo = 0 if cfg.shared_filters else 3 * hidden * t
    wf = model.filter_weight[lo : lo + 3 * hidden]  # (3F, n_rbf + 1)
    g_w = g_x * phi_j  # (e, 3F)
    g_basis = g_w @ wf if g_basis is None else torch.addmm(g_basis, g_w, wf)

    if not need_input_grad:
        return g_s, g_v, g_basis, g_unit
    if v_j is not None:
        g_v = g_v.index_add(0, j, g_v_i * x_vv)
    g_phi = g_x.new_zeros(g_s.shape[0], 3 * hidden).index_add_(0, j, g_x * w)
    block = model.messages[t]
    g_h = silu_backward(saved["pre"], g_phi @ block.phi_out.weight)
    return torch.addmm(g_s, g_h, block.phi_in.weight), g_v, g_basis, g_unit
