"""The MD engine's integrators for a batch of structures: velocity Verlet (NVE) and Langevin
BAOAB (NVT), built from three pieces, each written once here:

- ``B`` (:func:`half_kick`): ``v += dt/2 F / m`` with the state's forces;
- ``A`` (drift): ``x += h v``;
- ``O`` (:func:`ornstein_uhlenbeck`): the exact solution of the friction + noise part over a
  duration ``h``: ``v = c v + sqrt(1 - c^2) sqrt(kT / m) xi``, ``c = exp(-gamma h)``; it leaves
  the Maxwell-Boltzmann distribution invariant for any ``h``.

Forces come from a provider's ``energy_and_forces(batch, method)``
(:mod:`mlff_distiller.md.forces`). A step starts from the forces stored in the state (whatever
put them there: the last step, or a k-step network's prediction) and ends with real forces at the
new positions. Each step is a pure function ``state -> new state``.
"""

from __future__ import annotations

import math

import torch

from mlff_distiller import keys, thermo, units
from mlff_distiller.data.state import MDState


def with_forces(state: MDState, model, method: str = "analytical") -> MDState:
    """The state with ``forces`` (n, 3) and ``energy`` (s,) evaluated at its positions."""
    out = model.energy_and_forces(state.to_batch(), method)
    return state.replace(forces=out[keys.FORCES], energy=out[keys.ENERGY])


def half_kick(state: MDState, dt_fs: float) -> torch.Tensor:
    """B: the velocities after half a step's kick of the state's forces, (n, 3) Å/fs."""
    accel = state.forces / state.masses[:, None] * units.ACCEL_PER_FORCE_OVER_MASS
    return state.velocities + 0.5 * dt_fs * accel


def ornstein_uhlenbeck(
    state: MDState,
    duration_fs: float,
    temperature_k: float | torch.Tensor,
    friction_per_fs: float,
    generator: torch.Generator | None = None,
) -> MDState:
    """O: exact friction + noise over ``duration_fs``; the identity (no random numbers drawn)
    when ``friction_per_fs * duration_fs`` is 0. ``temperature_k``: a number or (s,)."""
    c1 = math.exp(-friction_per_fs * duration_fs)
    if c1 >= 1.0:
        return state
    v = state.velocities
    kt = torch.as_tensor(temperature_k, dtype=v.dtype, device=v.device) * units.BOLTZMANN
    kt_atom = kt.expand(state.n_systems)[state.system_idx] if kt.ndim else kt
    sigma = torch.sqrt(kt_atom * units.ACCEL_PER_FORCE_OVER_MASS / state.masses)  # Å/fs
    noise = torch.randn(v.shape, dtype=v.dtype, device=v.device, generator=generator)
    return state.replace(velocities=c1 * v + math.sqrt(1.0 - c1 * c1) * sigma[..., None] * noise)


def velocity_verlet_step(
    state: MDState, model, dt_fs: float, method: str = "analytical"
) -> MDState:
    """One NVE step: B, A (dt), forces, B."""
    if state.forces is None:
        state = with_forces(state, model, method)
    v = half_kick(state, dt_fs)
    moved = with_forces(state.replace(positions=state.positions + dt_fs * v, velocities=v),
                        model, method)  # fmt: skip
    return moved.replace(velocities=half_kick(moved, dt_fs))


def langevin_baoab_step(
    state: MDState,
    model,
    dt_fs: float,
    temperature_k: float | torch.Tensor,
    friction_per_fs: float,
    generator: torch.Generator | None = None,
    method: str = "analytical",
    heat: list | None = None,
) -> MDState:
    """One BAOAB Langevin step (Leimkuhler-Matthews): B, A (dt/2), O (dt), A (dt/2), forces, B.

    ``temperature_k``: a number or (n_systems,) per structure. ``friction_per_fs``: gamma.
    With ``friction_per_fs=0`` this is exactly velocity Verlet. ``heat``: a list that gets the
    kinetic energy (s,) eV the O part added (the thermostat's heat; the rest of a change of
    the total energy is the integration error).
    """
    if state.forces is None:
        state = with_forces(state, model, method)
    v = half_kick(state, dt_fs)
    state = state.replace(positions=state.positions + 0.5 * dt_fs * v, velocities=v)
    before = state
    state = ornstein_uhlenbeck(state, dt_fs, temperature_k, friction_per_fs, generator)
    if heat is not None:
        heat.append(state.kinetic_energy() - before.kinetic_energy())
    state = state.replace(positions=state.positions + 0.5 * dt_fs * state.velocities)
    moved = with_forces(state, model, method)
    return moved.replace(velocities=half_kick(moved, dt_fs))


def rigid_body_velocities(state: MDState) -> torch.Tensor:
    """(n, 3) Å/fs: each structure's centre-of-mass velocity plus its rigid rotation
    ``omega x (x - x_com)`` with ``omega = I^-1 L`` (rotation only for non-periodic structures;
    a pseudo-inverse for linear ones). ``v - rigid_body_velocities`` is the internal motion: it
    carries no linear and no angular momentum."""
    m, idx, n_sys = state.masses, state.system_idx, state.n_systems
    v_com = thermo.centre_of_mass_velocity(state.velocities, m, idx, n_sys)
    r = state.positions - thermo.centre_of_mass_velocity(state.positions, m, idx, n_sys)[idx]
    v = state.velocities - v_com[idx]
    angular = torch.zeros(n_sys, 3, dtype=v.dtype, device=v.device).index_add(
        0, idx, m[:, None] * torch.linalg.cross(r, v)
    )
    eye = torch.eye(3, dtype=v.dtype, device=v.device)
    per_atom = m[:, None, None] * (
        r.square().sum(-1)[:, None, None] * eye - r[:, :, None] * r[:, None]
    )
    inertia = torch.zeros(n_sys, 3, 3, dtype=v.dtype, device=v.device).index_add(0, idx, per_atom)
    omega = (torch.linalg.pinv(inertia) @ angular[:, :, None]).squeeze(-1)
    omega = torch.where(state.pbc.any(-1, keepdim=True), torch.zeros_like(omega), omega)
    return v_com[idx] + torch.linalg.cross(omega[idx], r)


def rescale_to_energy(state: MDState, total_energy: torch.Tensor) -> tuple[MDState, torch.Tensor]:
    """Scale each structure's internal velocities (centre-of-mass and rigid-rotation motion
    removed, :func:`rigid_body_velocities`) so that ``energy + kinetic energy`` equals
    ``total_energy`` (s,) eV; linear and angular momentum are unchanged (the three parts of the
    kinetic energy are orthogonal). Returns ``(state, ok (s,) bool)``; a structure whose target
    is below its potential plus rigid-body kinetic energy (or without internal motion) is left
    as it was, ``ok=False``."""
    m, idx, n_sys = state.masses, state.system_idx, state.n_systems
    rigid = rigid_body_velocities(state)
    internal = state.velocities - rigid
    k_int = thermo.kinetic_energy(internal, m, idx, n_sys)
    k_rigid = thermo.kinetic_energy(rigid, m, idx, n_sys)
    wanted = total_energy - state.energy - k_rigid
    ok = (wanted > 0) & (k_int > 0)
    alpha = torch.where(ok, torch.sqrt(wanted.clamp_min(0) / k_int.clamp_min(1e-300)), 1.0)
    return state.replace(velocities=rigid + alpha[idx, None] * internal), ok
