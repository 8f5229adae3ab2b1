"""Velocity Verlet (NVE) and Langevin BAOAB (NVT) for a batch of structures at once.

Forces come from a model's ``energy_and_forces(batch, method)`` (the student's analytical
forces by default). Each step is a pure function ``state -> new state``.
"""

from __future__ import annotations

import math

import torch

from mlff_distiller import keys, units
from mlff_distiller.md.state import MDState


def with_forces(state: MDState, model, method: str = "analytical") -> MDState:
    """The state with ``forces`` (n, 3) and ``energy`` (s,) evaluated at its positions."""
    out = model.energy_and_forces(state.to_batch(), method)
    return state.replace(forces=out[keys.FORCES], energy=out[keys.ENERGY])


def _half_kick(state: MDState, dt_fs: float) -> torch.Tensor:
    accel = state.forces / state.masses[:, None] * units.ACCEL_PER_FORCE_OVER_MASS
    return state.velocities + 0.5 * dt_fs * accel


def velocity_verlet_step(
    state: MDState, model, dt_fs: float, method: str = "analytical"
) -> MDState:
    """One NVE step: v += dt/2 a; x += dt v; new forces; v += dt/2 a."""
    if state.forces is None:
        state = with_forces(state, model, method)
    velocities = _half_kick(state, dt_fs)
    moved = state.replace(positions=state.positions + dt_fs * velocities, velocities=velocities)
    moved = with_forces(moved, model, method)
    return moved.replace(velocities=_half_kick(moved, dt_fs))


def langevin_baoab_step(
    state: MDState,
    model,
    dt_fs: float,
    temperature_k: float | torch.Tensor,
    friction_per_fs: float,
    generator: torch.Generator | None = None,
    method: str = "analytical",
) -> MDState:
    """One BAOAB Langevin step (Leimkuhler-Matthews): B, A, O, A, forces, B.

    ``temperature_k``: a number or (n_systems,) per structure. ``friction_per_fs``: gamma.
    With ``friction_per_fs=0`` this is exactly velocity Verlet.
    """
    if state.forces is None:
        state = with_forces(state, model, method)
    v = _half_kick(state, dt_fs)  # B
    x = state.positions + 0.5 * dt_fs * v  # A
    c1 = math.exp(-friction_per_fs * dt_fs)  # O
    if c1 < 1.0:
        kt = torch.as_tensor(temperature_k, dtype=v.dtype, device=v.device) * units.BOLTZMANN
        kt_atom = kt.expand(state.n_systems)[state.system_idx] if kt.ndim else kt
        sigma = torch.sqrt(kt_atom * units.ACCEL_PER_FORCE_OVER_MASS / state.masses)  # Å/fs
        noise = torch.randn(v.shape, dtype=v.dtype, device=v.device, generator=generator)
        v = c1 * v + math.sqrt(1.0 - c1 * c1) * sigma[..., None] * noise
    x = x + 0.5 * dt_fs * v  # A
    moved = with_forces(state.replace(positions=x, velocities=v), model, method)
    return moved.replace(velocities=_half_kick(moved, dt_fs))  # B
