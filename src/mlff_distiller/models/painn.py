"""PaiNN student (Schütt, Unke, Gastegger 2021) predicting energy per structure.

Shapes: ``n`` atoms, ``e`` edges, ``F = hidden``, ``T = n_interactions``. Scalars ``s`` are
(n, F); vectors ``v`` are (n, 3, F). Edge convention from :mod:`mlff_distiller.data.neighbors`:
receiver ``i = edge_index[0]``, sender ``j = edge_index[1]``, ``r_ij = pos[j] - pos[i] + shift``.

Forces come two ways, each in one place:

- :func:`forces_autograd` (``-dE/dpos`` by autograd; differentiable for force training),
- :func:`mlff_distiller.models.analytic_forces.analytic_forces` (hand-derived backward, no
  autograd, run under ``torch.inference_mode``).

``PaiNN.energy_and_forces(batch, method=...)`` is the single entry point that picks one. With
``stress=True`` it also returns the stress of periodic structures (both methods; see
:func:`forces_autograd` and :mod:`mlff_distiller.models.analytic_forces`).

Stress convention (ASE's): ``stress = (1/V) dE/d(strain)`` (n_systems, 3, 3) eV/Å^3, symmetric,
where the strain ``eps`` maps every position, periodic shift and cell row ``r -> r (1 + eps)``.
A box that wants to expand (positive pressure ``-trace(stress)/3``) has negative stress.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Literal

import torch
from torch import nn

from mlff_distiller import keys
from mlff_distiller.data.batch import AtomsBatch
from mlff_distiller.data.neighbors import edge_vectors, neighbor_list
from mlff_distiller.models.layers import CosineCutoff, RadialBasis, silu

ForceMethod = Literal["analytical", "autograd"]


@dataclass
class PaiNNConfig:
    """Architecture of a :class:`PaiNN` (all fields are saved in ``config.json``)."""

    hidden: int = 128
    n_interactions: int = 3
    n_rbf: int = 20
    cutoff: float = 5.0
    max_z: int = 118
    shared_filters: bool = False
    rbf: str = "sinc"  # "sinc" | "gaussian"
    readout_hidden: int | None = None  # default hidden // 2
    norm_eps: float = 1e-8  # ||V v|| = sqrt(sum_k (V v)_k^2 + eps), smooth at v = 0
    neighbor_method: str = "auto"  # see mlff_distiller.data.neighbors.neighbor_list
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.hidden < 1 or self.n_interactions < 1 or self.n_rbf < 1:
            raise ValueError(f"hidden, n_interactions and n_rbf must be >= 1: {self}")
        if not self.cutoff > 0:
            raise ValueError(f"cutoff must be positive, got {self.cutoff}")
        if self.rbf not in ("sinc", "gaussian"):
            raise ValueError(f"rbf must be 'sinc' or 'gaussian', got {self.rbf!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PaiNNConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown PaiNNConfig fields {sorted(unknown)}")
        return cls(**data)


class MessageBlock(nn.Module):
    """``phi(s_j) * W(r_ij)`` split into (scalar, vector-gate, direction) messages."""

    def __init__(self, hidden: int):
        super().__init__()
        self.phi_in = nn.Linear(hidden, hidden)
        self.phi_out = nn.Linear(hidden, 3 * hidden)


class UpdateBlock(nn.Module):
    """Mixes vector channels (U, V fused as one (2F, F) map) and gates with an MLP."""

    def __init__(self, hidden: int):
        super().__init__()
        self.uv = nn.Linear(hidden, 2 * hidden, bias=False)
        self.mlp_in = nn.Linear(2 * hidden, hidden)
        self.mlp_out = nn.Linear(hidden, 3 * hidden)


@dataclass
class Intermediates:
    """What the analytical backward needs from a forward pass (all per-batch tensors)."""

    edge_index: torch.Tensor | None = None  # (2, e)
    vec: torch.Tensor | None = None  # (e, 3) r_ij, Å (for the stress)
    unit: torch.Tensor | None = None  # (e, 3) r_ij / d_ij
    dist: torch.Tensor | None = None  # (e,)
    basis_deriv: torch.Tensor | None = None  # (e, n_rbf + 1) d/dd of [f_c * rbf, f_c]
    filters: torch.Tensor | None = None  # (e, T' * 3F), T' = 1 if shared else T
    message: list = field(default_factory=list)  # per block: dict of tensors
    update: list = field(default_factory=list)
    unit3: torch.Tensor | None = None  # (e, 3, 1) unit vectors shaped to broadcast over F
    readout_pre: torch.Tensor | None = None  # (n, F_readout) pre-activation of the readout


class PaiNN(nn.Module):
    """Polarizable atom interaction neural network: energy per structure.

    ``forward(batch)`` returns ``{keys.ENERGY: (n_systems,)}``. Per-atom energy is
    ``readout(s) * scale + shift + reference_energy[Z]``.
    """

    architecture = "painn"

    def __init__(self, config: PaiNNConfig | None = None):
        super().__init__()
        self.config = config = config or PaiNNConfig()
        hidden = config.hidden
        self.embedding = nn.Embedding(config.max_z + 1, hidden)
        self.radial_basis = RadialBasis(config.n_rbf, config.cutoff, config.rbf)
        self.cutoff_fn = CosineCutoff(config.cutoff)
        n_filters = 1 if config.shared_filters else config.n_interactions
        # Fused filter network for all blocks: columns [rbf (n_rbf), bias (1)] (see forward).
        bound = 1.0 / math.sqrt(config.n_rbf)
        self.filter_weight = nn.Parameter(
            torch.empty(n_filters * 3 * hidden, config.n_rbf + 1).uniform_(-bound, bound)
        )
        self.messages = nn.ModuleList(MessageBlock(hidden) for _ in range(config.n_interactions))
        self.updates = nn.ModuleList(UpdateBlock(hidden) for _ in range(config.n_interactions))
        readout_hidden = config.readout_hidden or max(hidden // 2, 1)
        self.readout_in = nn.Linear(hidden, readout_hidden)
        self.readout_out = nn.Linear(readout_hidden, 1)
        self.register_buffer("reference_energies", torch.zeros(config.max_z + 1))
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("shift", torch.zeros(()))
        # Elements seen in training (all allowed until set_reference_energies says otherwise).
        known = torch.ones(config.max_z + 1, dtype=torch.bool)
        known[0] = False
        self.register_buffer("known_elements", known)

    compiled_forces = False
    """Run the analytical path through ``torch.compile`` (see :meth:`compile_forces`)."""

    def compile_forces(self, enabled: bool = True) -> PaiNN:
        """Opt in to ``torch.compile`` for ``energy_and_forces(method="analytical")``.

        Same results (float rounding aside); compiles on the first call (about a minute on a
        CPU, dynamic shapes so other sizes reuse it). Not saved with the model. Returns self.
        """
        self.compiled_forces = bool(enabled)
        return self

    # ------------------------------------------------------------------ set-up helpers
    def set_reference_energies(
        self, energies: torch.Tensor, elements: list[int] | None = None
    ) -> None:
        """Per-element energies (max_z + 1,) eV; ``elements`` restricts the known elements."""
        energies = torch.as_tensor(energies, dtype=self.reference_energies.dtype)
        if energies.shape != self.reference_energies.shape:
            raise ValueError(
                f"reference energies must have shape {tuple(self.reference_energies.shape)}, "
                f"got {tuple(energies.shape)}"
            )
        self.reference_energies.copy_(energies)
        if elements is not None:
            mask = torch.zeros_like(self.known_elements)
            mask[torch.as_tensor(list(elements), dtype=torch.long)] = True
            self.known_elements.copy_(mask)

    def set_scale_shift(self, scale: float, shift: float) -> None:
        """Per-atom energy ``readout * scale + shift`` (eV)."""
        self.scale.fill_(float(scale))
        self.shift.fill_(float(shift))

    @property
    def elements(self) -> list[int]:
        """Atomic numbers the model was trained on (1..max_z if never restricted)."""
        return torch.nonzero(self.known_elements).flatten().tolist()

    @property
    def elements_restricted(self) -> bool:
        """True once :meth:`set_reference_energies` named the trained elements."""
        return not bool(self.known_elements[1:].all())

    # ------------------------------------------------------------------ forward
    def neighbors(self, batch: AtomsBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(edge_index (2, e), shifts (e, 3)) within the model's cutoff."""
        return neighbor_list(batch, self.config.cutoff, self.config.neighbor_method)

    def forward(
        self,
        batch: AtomsBatch,
        edges: tuple[torch.Tensor, torch.Tensor] | None = None,
        intermediates: Intermediates | None = None,
    ) -> dict[str, torch.Tensor]:
        """Energy per structure ``{keys.ENERGY: (n_systems,)}``.

        ``edges``: precomputed ``neighbor_list`` output (else built here). ``intermediates``:
        an empty :class:`Intermediates` to fill for the analytical backward.
        """
        energy = self._energy(batch, edges, intermediates)
        return {keys.ENERGY: energy}

    def _energy(
        self,
        batch: AtomsBatch,
        edges: tuple[torch.Tensor, torch.Tensor] | None,
        keep: Intermediates | None,
    ) -> torch.Tensor:
        cfg = self.config
        hidden = cfg.hidden
        z = batch.atomic_numbers
        if edges is None:
            edges = self.neighbors(batch)
        edge_index, shifts = edges
        i, j = edge_index[0], edge_index[1]
        n_atoms = z.shape[0]
        pos = batch.positions

        vec = edge_vectors(pos, edge_index, shifts.to(pos.dtype))  # (e, 3)
        dist = torch.linalg.vector_norm(vec, dim=-1)  # (e,)
        unit = vec / dist[:, None]
        unit3 = unit[:, :, None]
        rbf, rbf_deriv = self.radial_basis.value_and_derivative(dist, derivative=keep is not None)
        fcut = self.cutoff_fn(dist)
        # basis = [f_c * rbf, f_c] so that basis @ W^T = (rbf @ W_rbf^T + b) * f_c in one matmul
        basis_raw = torch.cat([rbf, torch.ones_like(dist)[:, None]], dim=1)  # (e, n_rbf + 1)
        basis = basis_raw * fcut[:, None]
        filters = basis @ self.filter_weight.t()  # (e, T' * 3F)
        if keep is not None:
            dfcut = self.cutoff_fn.derivative(dist)[:, None]
            deriv = torch.cat([rbf_deriv, torch.zeros_like(dist)[:, None]], dim=1)
            keep.basis_deriv = torch.addcmul(deriv * fcut[:, None], basis_raw, dfcut)
            keep.edge_index, keep.unit, keep.dist, keep.filters = edge_index, unit, dist, filters
            keep.unit3, keep.vec = unit3, vec

        s = self.embedding(z)  # (n, F)
        v = None  # (n, 3, F); zero before the first message, kept as None to skip work
        last = cfg.n_interactions - 1
        # split/unbind rather than slicing: their backward concatenates instead of scattering
        # into zero-filled copies (the autograd training step is ~1/3 fills otherwise)
        filter_blocks = (
            [filters] * cfg.n_interactions
            if cfg.shared_filters
            else filters.split(3 * hidden, dim=1)
        )
        for t in range(cfg.n_interactions):
            block = self.messages[t]
            w = filter_blocks[t]
            pre = block.phi_in(s)
            act = silu(pre)
            phi_j = block.phi_out(act).index_select(0, j)  # (e, 3F)
            x = (phi_j * w).view(-1, 3, hidden)  # (e, 3, F) = [x_s, x_vv, x_vs]
            x_s, x_vv, x_vs = x.split(1, dim=1)  # (e, 1, F) each
            x_s = x_s.squeeze(1)  # (e, F)
            dv_edge = x_vs * unit3  # (e, 3, F)
            v_j = None
            if v is not None:
                v_j = v.index_select(0, j)
                dv_edge.addcmul_(x_vv, v_j)
            # residual + sum over neighbours in one op each (out of place: autograd-safe)
            # (under autocast the linear layers give bf16/fp16: accumulate in the state's dtype)
            s = s.index_add(0, i, x_s.to(s.dtype))
            if v is None:
                v = dv_edge.new_zeros(n_atoms, 3, hidden, dtype=s.dtype).index_add_(
                    0, i, dv_edge.to(s.dtype)
                )
            else:
                v = v.index_add(0, i, dv_edge.to(v.dtype))
            if keep is not None:
                keep.message.append(
                    {"pre": pre, "phi_j": phi_j, "w": w, "x_vv": x_vv, "x_vs": x_vs, "v_j": v_j}
                )

            upd = self.updates[t]
            uv = upd.uv(v)  # (n, 3, 2F)
            u_v, v_v = uv.split(hidden, dim=2)
            norm = torch.sqrt((v_v * v_v).sum(1) + cfg.norm_eps)  # (n, F)
            pre = upd.mlp_in(torch.cat([s, norm], dim=1))
            a = upd.mlp_out(silu(pre))  # (n, 3F) = [a_vv, a_sv, a_ss]
            a_vv, a_sv, a_ss = a.view(-1, 3, hidden).split(1, dim=1)  # (n, 1, F) each
            a_sv, a_ss = a_sv.squeeze(1), a_ss.squeeze(1)  # (n, F)
            dot = (u_v * v_v).sum(1)  # (n, F)
            if keep is not None:
                keep.update.append(
                    {"u_v": u_v, "v_v": v_v, "norm": norm, "pre": pre, "a_vv": a_vv,
                     "a_sv": a_sv, "dot": dot}
                )  # fmt: skip
            s = torch.addcmul(s + a_ss, a_sv, dot)
            if t < last:  # the readout uses s only: the last vector update is never needed
                v = torch.addcmul(v, a_vv, u_v)

        pre = self.readout_in(s)
        if keep is not None:
            keep.readout_pre = pre
        atom_energy = self.readout_out(silu(pre)).squeeze(-1) * self.scale + self.shift
        atom_energy = atom_energy + self.reference_energies.to(pos.dtype).index_select(0, z)
        n_systems = batch.n_systems
        if n_systems == 1:  # torch 2.13's inductor fails on a multithreaded scatter into 1 slot
            return atom_energy.to(pos.dtype).sum(0, keepdim=True)
        return torch.zeros(n_systems, dtype=pos.dtype, device=pos.device).index_add(
            0, batch.system_idx, atom_energy.to(pos.dtype)
        )

    # ------------------------------------------------------------------ forces
    def energy_and_forces(
        self,
        batch: AtomsBatch,
        method: ForceMethod = "analytical",
        create_graph: bool = False,
        edges: tuple[torch.Tensor, torch.Tensor] | None = None,
        stress: bool = False,
    ) -> dict[str, torch.Tensor]:
        """``{ENERGY: (n_systems,) eV, FORCES: (n_atoms, 3) eV/Å}``.

        ``method="analytical"``: hand-derived backward under ``torch.inference_mode`` (for MD and
        evaluation), or, with ``create_graph=True``, recorded by autograd so that a force loss
        can be differentiated w.r.t. the parameters. ``method="autograd"``: ``-dE/dpos`` by
        autograd; ``create_graph=True`` keeps the graph (double backward) for force losses.

        ``stress=True`` adds ``STRESS``: (n_systems, 3, 3) eV/Å^3, ``(1/V) dE/d(strain)``
        (ASE's convention, symmetrised). Every structure of the batch must be periodic in all
        three directions with a non-singular cell, else ``ValueError`` (no silent zeros).
        """
        if method == "analytical":
            from mlff_distiller.models.analytic_forces import analytic_energy_and_forces

            return analytic_energy_and_forces(
                self,
                batch,
                edges,
                compiled=self.compiled_forces,
                create_graph=create_graph,
                stress=stress,
            )
        if method == "autograd":
            return forces_autograd(
                self, batch, create_graph=create_graph, edges=edges, stress=stress
            )
        raise ValueError(f"force method must be 'analytical' or 'autograd', got {method!r}")


def cell_volume(cell: torch.Tensor) -> torch.Tensor:
    """(n_systems,) volumes |a . (b x c)| in Å^3 of cells (n_systems, 3, 3) (rows a, b, c)."""
    cross = torch.linalg.cross(cell[:, 1], cell[:, 2], dim=-1)
    return (cell[:, 0] * cross).sum(-1).abs()


def check_stress_batch(batch: AtomsBatch) -> None:
    """Raise ``ValueError`` unless every structure is 3D-periodic with a non-singular cell.

    The stress ``(1/V) dE/d(strain)`` needs a volume: molecules (no cell), slabs and wires have
    none, so asking for their stress is an error rather than a silent zero.
    """
    not_periodic = (~batch.pbc.bool().all(dim=1)).nonzero().flatten().tolist()
    if not_periodic:
        raise ValueError(
            f"stress needs structures periodic in all three directions; structure(s) "
            f"{not_periodic} of the batch have pbc {batch.pbc[not_periodic].tolist()}"
        )
    flat = (cell_volume(batch.cell.double()) <= 1e-12).nonzero().flatten().tolist()
    if flat:
        raise ValueError(
            f"stress needs a cell with a non-zero volume; structure(s) {flat} of the batch "
            "have a singular (or zero) cell"
        )


def forces_autograd(
    model: nn.Module,
    batch: AtomsBatch,
    create_graph: bool = False,
    edges: tuple[torch.Tensor, torch.Tensor] | None = None,
    stress: bool = False,
) -> dict[str, torch.Tensor]:
    """Energy (n_systems,) eV and forces ``-dE/dpos`` (n_atoms, 3) eV/Å by autograd.

    ``create_graph=True`` (training) makes the forces differentiable w.r.t. the parameters.
    ``stress=True`` adds ``STRESS`` (n_systems, 3, 3) eV/Å^3 by the strain trick: a zero
    displacement gradient ``eps`` (n_systems, 3, 3) maps positions, edge shifts and cells
    ``r -> r + r @ eps`` of their structure; ``stress = sym(dE/d eps) / V`` from the same graph
    as the forces (see :func:`check_stress_batch` for which batches are accepted).
    """
    if stress:
        check_stress_batch(batch)
        if edges is None:
            edges = model.neighbors(batch)
    positions = batch.positions.detach().requires_grad_(True)
    cell = batch.cell
    inputs = [positions]
    if stress:
        strain = torch.zeros(
            batch.n_systems, 3, 3, dtype=positions.dtype, device=positions.device
        ).requires_grad_(True)
        inputs.append(strain)
    with torch.enable_grad():
        graph_positions = positions
        if stress:
            edge_index, shifts = edges
            atom_strain = strain.index_select(0, batch.system_idx)  # (n, 3, 3)
            graph_positions = positions + torch.einsum("na,nab->nb", positions, atom_strain)
            shifts = shifts.to(positions.dtype)
            edge_strain = atom_strain.index_select(0, edge_index[0])  # (e, 3, 3)
            edges = (edge_index, shifts + torch.einsum("ea,eab->eb", shifts, edge_strain))
            cell = cell + torch.bmm(cell.to(strain.dtype), strain)
        graph_batch = AtomsBatch(
            batch.atomic_numbers, graph_positions, batch.system_idx, cell, batch.pbc, batch.labels
        )
        energy = model(graph_batch, edges=edges)[keys.ENERGY]
        grads = torch.autograd.grad(
            energy.sum(), inputs, create_graph=create_graph, retain_graph=create_graph
        )
    if not create_graph:
        energy = energy.detach()
    out = {keys.ENERGY: energy, keys.FORCES: -grads[0]}
    if stress:
        virial = grads[1]
        volume = cell_volume(batch.cell.to(virial.dtype))
        out[keys.STRESS] = 0.5 * (virial + virial.transpose(1, 2)) / volume[:, None, None]
    return out
