"""Shared pieces of the k-step jump networks (EGNN, Transformer-EGNN).

A jump network maps an MD state ``(x_t, v_t)`` (optionally with the forces at ``x_t``) to the
change of positions and velocities over ``k`` MD steps of length ``dt``:
``delta_x = x_{t+k} - x_t`` (Å) and ``delta_v = v_{t+k} - v_t`` (Å/fs).

Everything here is E(3)-equivariant by construction: scalars are built only from distances,
dot products and norms, vectors only as scalar-weighted sums of relative position vectors and
of input vectors (velocities, accelerations). The output bounds are applied to vector norms
(``max * tanh(|d| / max)`` along ``d``) because clamping each Cartesian component would break
rotation equivariance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from mlff_distiller import keys, units
from mlff_distiller.data.state import MDState

DELTA_POSITIONS = "delta_positions"
DELTA_VELOCITIES = "delta_velocities"


@dataclass(frozen=True)
class KStepInput(MDState):
    """One batch of MD states for a jump network: the engine's
    :class:`~mlff_distiller.data.state.MDState` (positions (n_atoms, 3) Å, velocities (n_atoms, 3)
    Å/fs, masses (n_atoms,) amu, atomic_numbers, system_idx, and the forces (n_atoms, 3) eV/Å at
    ``positions`` when the model asks for them) plus the jump:

    - ``k``: (n_systems,) int64 number of MD steps of the jump
    - ``dt``: (n_systems,) MD time step in fs
    """

    k: torch.Tensor | None = None
    dt: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.k is None or self.dt is None:
            raise ValueError("a KStepInput needs the jump's k and dt, (n_systems,) each")

    @classmethod
    def of(cls, state: MDState, k: int, dt_fs: float) -> KStepInput:
        """The jump of ``k`` steps of ``dt_fs`` from every structure of ``state``."""
        n, device = state.n_systems, state.positions.device
        return cls(
            **{name: getattr(state, name) for name in MDState.__dataclass_fields__},
            k=torch.full((n,), int(k), dtype=torch.long, device=device),
            dt=torch.full((n,), float(dt_fs), dtype=state.positions.dtype, device=device),
        )

    @classmethod
    def molecules(
        cls,
        atomic_numbers: torch.Tensor,
        masses: torch.Tensor,
        positions: torch.Tensor,
        velocities: torch.Tensor,
        system_idx: torch.Tensor,
        k: torch.Tensor,
        dt: torch.Tensor,
        forces: torch.Tensor | None = None,
    ) -> KStepInput:
        """Molecules in vacuum (no cell, no periodicity), ``len(k)`` of them."""
        n = len(k)
        return cls(
            positions=positions,
            velocities=velocities,
            masses=masses,
            atomic_numbers=atomic_numbers,
            system_idx=system_idx,
            cell=torch.zeros(n, 3, 3, dtype=positions.dtype, device=positions.device),
            pbc=torch.zeros(n, 3, dtype=torch.bool, device=positions.device),
            forces=forces,
            k=k,
            dt=dt,
        )


def clamp_norm(vectors: torch.Tensor, max_norm: float) -> torch.Tensor:
    """Smoothly bound vector lengths: ``d * max * tanh(|d| / max) / |d|``. (n, 3) -> (n, 3).

    Rotation-equivariant (acts on the norm only); ~identity for ``|d| << max``.
    """
    norm = vectors.norm(dim=-1, keepdim=True)
    safe = norm.clamp_min(1e-12)
    scale = max_norm * torch.tanh(safe / max_norm) / safe
    return vectors * scale


def radius_graph(
    positions: torch.Tensor, system_idx: torch.Tensor, cutoff: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """All ordered pairs ``(i, j)``, ``i != j``, of the same system closer than ``cutoff``.

    Returns ``senders`` (n_edges,) and ``receivers`` (n_edges,); brute force over the batch,
    which is the fast path for the small molecules k-step models are trained on.
    """
    n = positions.shape[0]
    with torch.no_grad():
        same = system_idx[:, None] == system_idx[None, :]
        dist = torch.cdist(positions.detach(), positions.detach())
        mask = same & (dist < cutoff) & ~torch.eye(n, dtype=torch.bool, device=positions.device)
        receivers, senders = mask.nonzero(as_tuple=True)
    return senders, receivers


def gaussian_rbf(r: torch.Tensor, cutoff: float, n_rbf: int) -> torch.Tensor:
    """Gaussian radial basis on [0, cutoff]: (n_edges,) -> (n_edges, n_rbf)."""
    centres = torch.linspace(0.0, cutoff, n_rbf, device=r.device, dtype=r.dtype)
    width = cutoff / max(n_rbf - 1, 1)
    return torch.exp(-0.5 * ((r[:, None] - centres) / width) ** 2)


def cosine_envelope(r: torch.Tensor, cutoff: float) -> torch.Tensor:
    """Smooth cutoff 0.5 (cos(pi r / rc) + 1) for r < rc, else 0. (n_edges,)"""
    env = 0.5 * (torch.cos(math.pi * r / cutoff) + 1.0)
    return env * (r < cutoff).to(r.dtype)


def mlp(n_in: int, n_hidden: int, n_out: int, act: type[nn.Module] = nn.SiLU) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, n_hidden), act(), nn.Linear(n_hidden, n_out))


def input_vectors(inp: KStepInput, use_forces: bool) -> torch.Tensor:
    """The equivariant input channels, all in Å: (n_atoms, n_channels, 3).

    Channel 0 is the ballistic displacement ``v * tau`` (``tau = k * dt``); with forces, channel
    1 is ``a * tau^2 / 2`` with ``a = F / m`` converted to Å/fs².
    """
    tau = (inp.k.to(inp.positions.dtype) * inp.dt)[inp.system_idx][:, None]  # (n, 1) fs
    channels = [inp.velocities * tau]
    if use_forces:
        if inp.forces is None:
            raise ValueError(
                "this k-step model was built with use_forces=True but got no forces; "
                "pass the forces at x_t (the corrector has them) or use a model without them"
            )
        accel = inp.forces / inp.masses[:, None] * units.ACCEL_PER_FORCE_OVER_MASS  # Å/fs²
        channels.append(0.5 * accel * tau**2)
    return torch.stack(channels, dim=1)


def scalar_inputs(inp: KStepInput, tau_scale: float) -> torch.Tensor:
    """Invariant per-atom inputs: (n_atoms, 4) = [log mass, tau/scale, k/10, |v| tau / 1 Å]."""
    tau = (inp.k.to(inp.positions.dtype) * inp.dt)[inp.system_idx]
    kk = inp.k.to(inp.positions.dtype)[inp.system_idx]
    speed = inp.velocities.norm(dim=-1) * tau
    return torch.stack([torch.log(inp.masses), tau / tau_scale, kk / 10.0, speed], dim=-1)


def time_span(inp: KStepInput) -> torch.Tensor:
    """(n_atoms, 1) jump duration ``k * dt`` in fs for each atom's system."""
    return (inp.k.to(inp.positions.dtype) * inp.dt)[inp.system_idx][:, None]


__all__ = [
    "DELTA_POSITIONS",
    "DELTA_VELOCITIES",
    "KStepInput",
    "clamp_norm",
    "radius_graph",
    "gaussian_rbf",
    "cosine_envelope",
    "input_vectors",
    "scalar_inputs",
    "time_span",
    "keys",
]
