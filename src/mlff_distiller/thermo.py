"""Kinetic energy and temperature, defined once for every engine, sampler and report.

**Degrees of freedom (the one convention).** A structure's temperature counts its internal
motion: the centre-of-mass velocity is removed and its 3 degrees of freedom are not counted, so a
structure of N atoms has ``3N - 3``. Atom ``i`` of a structure of total mass ``M`` carries
``3 (1 - m_i / M)`` of them (they sum to ``3N - 3``); this is exact equipartition for a system
whose centre of mass moves freely (Langevin NVT, periodic boxes, thermostatted molecules):
``<m_i |v_i - v_com|^2> = 3 kT (1 - m_i / M)``. Per-element temperatures use the same weights.
Rotation is not removed: an isolated molecule in NVE with conserved angular momentum has 3 more
non-thermal degrees of freedom, and its temperature then reads up to ``3 / (3N - 3)`` low; the
k-step and MD comparisons measure both runs with this same definition.

Kinetic *energy* is the full ``sum m v^2 / 2`` (centre of mass included): the total energy
``E_pot + K`` is what velocity Verlet conserves.

Shapes: ``velocities (..., n_atoms, 3)`` Å/fs (leading frame dimensions allowed), ``masses
(n_atoms,)`` amu, ``system_idx (n_atoms,)`` sorted structure index (None: one structure).
Torch tensors in, torch tensors out; numpy in, numpy out.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from mlff_distiller import units


def _numpy_in_numpy_out(fn):
    @functools.wraps(fn)
    def wrapper(velocities, masses, *args, **kwargs):
        if isinstance(velocities, torch.Tensor):
            return fn(velocities, masses, *args, **kwargs)
        v = torch.as_tensor(np.asarray(velocities, dtype=np.float64))
        m = torch.as_tensor(np.asarray(masses, dtype=np.float64))
        args = [torch.as_tensor(np.asarray(a)) if isinstance(a, np.ndarray) else a for a in args]
        kwargs = {
            k: torch.as_tensor(np.asarray(a)) if isinstance(a, np.ndarray) else a
            for k, a in kwargs.items()
        }
        out = fn(v, m, *args, **kwargs)
        if isinstance(out, dict):
            return {k: o.numpy() for k, o in out.items()}
        return out.numpy()

    return wrapper


def _index(masses: torch.Tensor, system_idx, n_systems) -> tuple[torch.Tensor, int]:
    if system_idx is None:
        system_idx = torch.zeros(masses.shape[0], dtype=torch.long, device=masses.device)
    system_idx = torch.as_tensor(system_idx, dtype=torch.long, device=masses.device)
    if n_systems is None:
        n_systems = int(system_idx.max()) + 1 if system_idx.numel() else 0
    return system_idx, n_systems


def _per_system(
    values: torch.Tensor, system_idx: torch.Tensor, n_systems: int, vector: bool = False
) -> torch.Tensor:
    """Sum ``values (..., n_atoms)`` (or ``(..., n_atoms, 3)`` with ``vector``) over each
    structure's atoms: (..., n_systems) (or (..., n_systems, 3))."""
    dim = values.ndim - 2 if vector else values.ndim - 1
    shape = list(values.shape)
    shape[dim] = n_systems
    return values.new_zeros(shape).index_add(dim, system_idx, values)


def centre_of_mass_velocity(
    velocities: torch.Tensor, masses: torch.Tensor, system_idx=None, n_systems=None
) -> torch.Tensor:
    """(..., n_systems, 3) Å/fs: each structure's mass-weighted mean velocity."""
    system_idx, n_systems = _index(masses, system_idx, n_systems)
    momentum = _per_system(masses[:, None] * velocities, system_idx, n_systems, vector=True)
    return momentum / _per_system(masses, system_idx, n_systems)[:, None]


def internal_velocities(
    velocities: torch.Tensor, masses: torch.Tensor, system_idx=None, n_systems=None
) -> torch.Tensor:
    """(..., n_atoms, 3) Å/fs: velocities minus their structure's centre-of-mass velocity."""
    system_idx, n_systems = _index(masses, system_idx, n_systems)
    v_com = centre_of_mass_velocity(velocities, masses, system_idx, n_systems)
    return velocities - v_com[..., system_idx, :]


def atom_degrees_of_freedom(masses: torch.Tensor, system_idx=None, n_systems=None) -> torch.Tensor:
    """(n_atoms,): ``3 (1 - m_i / M)``, atom i's share of its structure's ``3N - 3``."""
    system_idx, n_systems = _index(masses, system_idx, n_systems)
    total = _per_system(masses, system_idx, n_systems)[system_idx]
    return 3.0 * (1.0 - masses / total)


@_numpy_in_numpy_out
def kinetic_energy(velocities, masses, system_idx=None, n_systems=None) -> torch.Tensor:
    """(..., n_systems) eV: ``sum m v^2 / 2`` per structure, centre-of-mass motion included."""
    system_idx, n_systems = _index(masses, system_idx, n_systems)
    per_atom = 0.5 * masses * velocities.square().sum(-1) * units.MASS_VELOCITY2_TO_EV
    return _per_system(per_atom, system_idx, n_systems)


def kinetic_energy_change(
    velocities: torch.Tensor, masses: torch.Tensor, delta: torch.Tensor
) -> torch.Tensor:
    """(..., n_atoms) eV: each atom's first-order change of the kinetic energy when its
    velocity moves by ``delta`` (..., n_atoms, 3) Å/fs, ``m v . delta``."""
    return masses * (velocities * delta).sum(-1) * units.MASS_VELOCITY2_TO_EV


def internal_twice_kinetic_energy(
    velocities: torch.Tensor, masses: torch.Tensor, system_idx=None, n_systems=None
) -> torch.Tensor:
    """(..., n_atoms) eV: each atom's ``m |v - v_com|^2``, twice its internal kinetic energy."""
    internal = internal_velocities(velocities, masses, system_idx, n_systems)
    return masses * internal.square().sum(-1) * units.MASS_VELOCITY2_TO_EV


@_numpy_in_numpy_out
def temperature(velocities, masses, system_idx=None, n_systems=None) -> torch.Tensor:
    """(..., n_systems) K: ``2 K_internal / ((3N - 3) k_B)`` (see the module docstring)."""
    system_idx, n_systems = _index(masses, system_idx, n_systems)
    twice_ke = internal_twice_kinetic_energy(velocities, masses, system_idx, n_systems)
    return temperature_of(twice_ke, masses, system_idx, n_systems)


def temperature_of(
    twice_ke: torch.Tensor, masses: torch.Tensor, system_idx=None, n_systems=None
) -> torch.Tensor:
    """(..., n_systems) K from :func:`internal_twice_kinetic_energy` (..., n_atoms) eV."""
    system_idx, n_systems = _index(masses, system_idx, n_systems)
    dof = _per_system(atom_degrees_of_freedom(masses, system_idx, n_systems), system_idx, n_systems)
    return _per_system(twice_ke, system_idx, n_systems) / (dof * units.BOLTZMANN)


@_numpy_in_numpy_out
def element_temperature(
    velocities, masses, atomic_numbers, system_idx=None, n_systems=None
) -> dict[int, torch.Tensor]:
    """``{Z: (...,) K}``: the temperature of each element's atoms over all structures, from
    their internal velocities and their ``3 (1 - m_i / M)`` degrees of freedom each."""
    system_idx, n_systems = _index(masses, system_idx, n_systems)
    twice_ke = internal_twice_kinetic_energy(velocities, masses, system_idx, n_systems)
    return element_temperature_of(twice_ke, masses, atomic_numbers, system_idx, n_systems)


def element_temperature_of(
    twice_ke: torch.Tensor, masses: torch.Tensor, atomic_numbers, system_idx=None, n_systems=None
) -> dict[int, torch.Tensor]:
    """:func:`element_temperature` from :func:`internal_twice_kinetic_energy` (..., n_atoms) eV
    (a sum over frames gives the summed temperatures)."""
    system_idx, n_systems = _index(masses, system_idx, n_systems)
    numbers = torch.as_tensor(atomic_numbers, device=masses.device)
    dof = atom_degrees_of_freedom(masses, system_idx, n_systems)
    out = {}
    for z in torch.unique(numbers).tolist():
        mask = numbers == z
        out[int(z)] = twice_ke[..., mask].sum(-1) / (dof[mask].sum() * units.BOLTZMANN)
    return out


def maxwell_boltzmann_velocities(
    masses: torch.Tensor,
    temperature_k: float | torch.Tensor,
    system_idx=None,
    n_systems=None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(n_atoms, 3) Å/fs: Maxwell-Boltzmann velocities at ``temperature_k`` (a number or one per
    structure) with each structure's centre-of-mass velocity removed."""
    system_idx, n_systems = _index(masses, system_idx, n_systems)
    kt = torch.as_tensor(temperature_k, dtype=masses.dtype, device=masses.device) * units.BOLTZMANN
    kt_atom = kt.expand(n_systems)[system_idx] if kt.ndim else kt.expand(masses.shape[0])
    sigma = torch.sqrt(kt_atom * units.ACCEL_PER_FORCE_OVER_MASS / masses)
    noise = torch.randn(
        (masses.shape[0], 3), dtype=masses.dtype, device=masses.device, generator=generator
    )
    return internal_velocities(sigma[:, None] * noise, masses, system_idx, n_systems)
