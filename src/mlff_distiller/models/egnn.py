"""E(n)-equivariant graph network (Satorras et al. 2021 style) that predicts k-step MD jumps.

Per layer, for every pair ``i <- j`` within the cutoff (same system only):

- message ``m_ij = phi_e(h_i, h_j, rbf(r_ij), r_ij^2, u_ij . V_i, u_ij . V_j) * env(r_ij)``
  with ``u_ij = (x_i - x_j) / (r_ij + 1)`` (the normalised relative vector of EGNN),
- equivariant vector update along relative vectors, velocity-style:
  ``V_i <- phi_v(h_i) * V_i + mean_j u_ij phi_x(m_ij)``,
- node update with layer norm: ``h_i <- LN(h_i + phi_h(h_i, mean_j m_ij, |V_i|^2))``.

``V`` (n_atoms, n_vectors, 3) are vector channels started from the velocities (``v * tau``) and
optionally the accelerations (``F/m * tau^2 / 2``), mixed linearly (no bias) so they stay
equivariant. Heads: ``delta_x = prior + sum_c w_c(h) V_c`` and ``delta_v`` likewise divided by
``tau``; both norm-clamped by ``max * tanh(|d| / max)``. An optional force head predicts the
forces at ``x_{t+k}`` the same way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from mlff_distiller import keys
from mlff_distiller.models.io import register_architecture
from mlff_distiller.models.kstep_common import (
    DELTA_POSITIONS,
    DELTA_VELOCITIES,
    KStepInput,
    clamp_norm,
    cosine_envelope,
    gaussian_rbf,
    input_vectors,
    mlp,
    radius_graph,
    scalar_inputs,
    time_span,
)

DEFAULT_ELEMENTS = (1, 6, 7, 8, 9, 15, 16, 17, 35, 53)


@dataclass
class EGNNConfig:
    """Hyper-parameters of :class:`EGNNJump`; lengths in Å, velocities in Å/fs, time in fs."""

    hidden: int = 64
    n_layers: int = 4
    n_vectors: int = 8
    n_rbf: int = 16
    cutoff: float = 7.0  # 0.7 nm as in the design documents
    max_delta_x: float = 2.5  # 0.25 nm (MM, large k); use 0.1 (0.01 nm) for QM
    max_delta_v: float = 0.2  # Å/fs
    tau_scale: float = 10.0  # fs, normalises k * dt as a network input
    use_forces: bool = True  # feed F(x_t) (free in the hybrid loop: the corrector has them)
    ballistic_prior: bool = True  # delta_x starts from v tau (+ a tau^2 / 2)
    force_head: bool = False
    force_scale: float = 1.0  # eV/Å
    elements: tuple[int, ...] = field(default_factory=lambda: DEFAULT_ELEMENTS)

    def __post_init__(self) -> None:
        self.elements = tuple(int(z) for z in self.elements)
        for name in ("hidden", "n_layers", "n_vectors", "n_rbf"):
            if getattr(self, name) < 1:
                raise ValueError(f"EGNN config: {name} must be >= 1, got {getattr(self, name)}")
        for name in ("cutoff", "max_delta_x", "max_delta_v", "tau_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"EGNN config: {name} must be > 0, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["elements"] = list(self.elements)
        return out

    @classmethod
    def from_dict(cls, values: dict) -> EGNNConfig:
        values = dict(values)
        if "elements" in values:
            values["elements"] = tuple(values["elements"])
        return cls(**values)


class EGNNLayer(nn.Module):
    """One equivariant message-passing layer on scalars ``h`` (n, H) and vectors ``V`` (n, C, 3)."""

    def __init__(self, hidden: int, n_vectors: int, n_rbf: int):
        super().__init__()
        edge_in = 2 * hidden + n_rbf + 1 + 3 * n_vectors
        self.phi_e = nn.Sequential(mlp(edge_in, hidden, hidden), nn.SiLU())
        self.phi_x = mlp(hidden, hidden, n_vectors)
        self.phi_v = mlp(hidden, hidden, n_vectors)
        self.phi_h = mlp(2 * hidden + n_vectors, hidden, hidden)
        self.mix = nn.Linear(n_vectors, n_vectors, bias=False)
        self.norm = nn.LayerNorm(hidden)
        nn.init.zeros_(self.phi_x[-1].weight)
        nn.init.zeros_(self.phi_x[-1].bias)

    def edge_messages(
        self,
        h: torch.Tensor,
        vec: torch.Tensor,
        senders: torch.Tensor,
        receivers: torch.Tensor,
        unit: torch.Tensor,
        edge_scalars: torch.Tensor,
    ) -> torch.Tensor:
        """``phi_e(h_i, h_j, edge_scalars, u . V_i, u . V_j, V_i . V_j)`` (E, H) before the
        envelope. The first linear map is applied to the node features before they are gathered
        onto the edges (``W [h_i, h_j, s] = (W_i h)_i + (W_j h)_j + W_s s``): the same numbers
        with a per-atom instead of a per-edge product for the 2H node columns."""
        first, act, second = self.phi_e[0][0], self.phi_e[0][1], self.phi_e[0][2]
        n_h = h.shape[-1]
        w = first.weight
        u = unit[:, None, :]
        vec_i, vec_j = vec[receivers], vec[senders]
        edge_rest = torch.cat(
            [edge_scalars, (vec_i * u).sum(-1), (vec_j * u).sum(-1), (vec_i * vec_j).sum(-1)], -1
        )
        node_i = nn.functional.linear(h, w[:, :n_h])
        node_j = nn.functional.linear(h, w[:, n_h : 2 * n_h])
        pre = node_i[receivers] + node_j[senders] + nn.functional.linear(
            edge_rest, w[:, 2 * n_h :], first.bias
        )
        return self.phi_e[1](second(act(pre)))

    def forward(
        self,
        h: torch.Tensor,
        vec: torch.Tensor,
        senders: torch.Tensor,
        receivers: torch.Tensor,
        unit: torch.Tensor,
        edge_scalars: torch.Tensor,
        envelope: torch.Tensor,
        inv_degree: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """h: (n, H); vec: (n, C, 3); unit: (E, 3); edge_scalars: (E, n_rbf + 1);
        envelope: (E,); inv_degree: (n, 1). Returns updated ``(h, vec)``."""
        m = self.edge_messages(h, vec, senders, receivers, unit, edge_scalars) * envelope[:, None]
        u = unit[:, None, :]
        coef = self.phi_x(m)  # (E, C)
        vec_msg = torch.zeros_like(vec).index_add_(
            0, receivers, (u * coef[:, :, None]).to(vec.dtype)
        )
        gate = 1.0 + self.phi_v(h)  # (n, C)
        vec = gate[:, :, None] * vec + vec_msg * inv_degree[:, :, None]
        vec = self.mix(vec.transpose(1, 2)).transpose(1, 2)

        agg = torch.zeros_like(h).index_add_(0, receivers, m.to(h.dtype)) * inv_degree
        sq = (vec * vec).sum(-1)
        h = self.norm(h + self.phi_h(torch.cat([h, agg, sq], -1)))
        return h, vec


class EGNNJump(nn.Module):
    """EGNN k-step jump network: ``forward(KStepInput) -> {delta_positions, delta_velocities[,
    forces]}`` with (n_atoms, 3) tensors in Å, Å/fs (and eV/Å)."""

    architecture = "egnn"

    def __init__(self, config: EGNNConfig | None = None):
        super().__init__()
        self.config = config or EGNNConfig()
        c = self.config
        n_in_vec = 2 if c.use_forces else 1
        self.register_buffer("element_index", _element_lookup(c.elements), persistent=False)
        self.embed = nn.Linear(len(c.elements) + 4, c.hidden)
        self.vec_in = nn.Linear(n_in_vec, c.n_vectors, bias=False)
        self.layers = nn.ModuleList(
            [EGNNLayer(c.hidden, c.n_vectors, c.n_rbf) for _ in range(c.n_layers)]
        )
        self.head_x = mlp(c.hidden, c.hidden, c.n_vectors)
        self.head_v = mlp(c.hidden, c.hidden, c.n_vectors)
        self.head_f = mlp(c.hidden, c.hidden, c.n_vectors) if c.force_head else None
        for head in (self.head_x, self.head_v):
            nn.init.zeros_(head[-1].weight)
            nn.init.zeros_(head[-1].bias)

    # -- pieces shared with the Transformer-EGNN -------------------------------------------
    def initial_scalars(self, inp: KStepInput) -> torch.Tensor:
        """(n_atoms, hidden) from one-hot elements and invariant inputs."""
        idx = self.element_index[inp.atomic_numbers]
        # checked eagerly (the hybrid's first jump is eager), not inside a compiled graph
        if not torch.compiler.is_compiling() and bool((idx < 0).any()):
            bad = sorted(set(inp.atomic_numbers[idx < 0].tolist()))
            raise ValueError(
                f"element(s) {bad} are not in this k-step model's elements "
                f"{list(self.config.elements)}; retrain with them in EGNNConfig.elements"
            )
        onehot = nn.functional.one_hot(idx, len(self.config.elements)).to(inp.positions.dtype)
        return self.embed(torch.cat([onehot, scalar_inputs(inp, self.config.tau_scale)], -1))

    def graph(self, inp: KStepInput) -> dict[str, torch.Tensor]:
        c = self.config
        senders, receivers = radius_graph(inp.positions, inp.system_idx, c.cutoff)
        rel = inp.positions[receivers] - inp.positions[senders]
        r = rel.norm(dim=-1)
        unit = rel / (r + 1.0)[:, None]
        edge_scalars = torch.cat(
            [gaussian_rbf(r, c.cutoff, c.n_rbf), (r / c.cutoff)[:, None] ** 2], -1
        )
        degree = torch.zeros(inp.positions.shape[0], dtype=r.dtype, device=r.device)
        degree = degree.index_add_(0, receivers, torch.ones_like(r))
        return {
            "senders": senders,
            "receivers": receivers,
            "unit": unit,
            "edge_scalars": edge_scalars,
            "envelope": cosine_envelope(r, c.cutoff),
            "inv_degree": (1.0 / degree.clamp_min(1.0))[:, None],
        }

    def block(self, index: int, h: torch.Tensor, vec: torch.Tensor, graph: dict, inp: KStepInput):
        """Layer ``index``; the Transformer-EGNN adds attention after it."""
        return self.layers[index](h, vec, **graph)

    def heads(self, h: torch.Tensor, vec: torch.Tensor, v_in: torch.Tensor, inp: KStepInput):
        c = self.config
        tau = time_span(inp)
        dx = (self.head_x(h)[:, :, None] * vec).sum(1)
        dv = (self.head_v(h)[:, :, None] * vec).sum(1) / tau
        if c.ballistic_prior:
            dx = dx + v_in.sum(1)  # v tau (+ a tau^2 / 2)
            if c.use_forces:
                dv = dv + 2.0 * v_in[:, 1] / tau  # a tau
        out = {
            DELTA_POSITIONS: clamp_norm(dx, c.max_delta_x),
            DELTA_VELOCITIES: clamp_norm(dv, c.max_delta_v),
        }
        if self.head_f is not None:
            out[keys.FORCES] = (self.head_f(h)[:, :, None] * vec).sum(1) * c.force_scale
        return out

    def forward(self, inp: KStepInput) -> dict[str, torch.Tensor]:
        v_in = input_vectors(inp, self.config.use_forces)  # (n, C_in, 3) Å
        h = self.initial_scalars(inp)
        vec = self.vec_in(v_in.transpose(1, 2)).transpose(1, 2)
        graph = self.graph(inp)
        for i in range(self.config.n_layers):
            h, vec = self.block(i, h, vec, graph, inp)
        return self.heads(h, vec, v_in, inp)


def _element_lookup(elements: tuple[int, ...]) -> torch.Tensor:
    table = torch.full((119,), -1, dtype=torch.long)
    for i, z in enumerate(elements):
        table[z] = i
    return table


register_architecture(EGNNJump.architecture, EGNNConfig, EGNNJump)
