"""Losses of the k-step jump networks.

``loss = w_x MSE(delta_x) + w_v MSE(delta_v * tau) + w_bond MSE(bond lengths)
+ w_angle MSE(angles) + w_dihedral mean(1 - cos(dphi)) + w_force MSE(forces)``

- ``delta_v`` is compared after multiplying by the jump duration ``tau = k dt`` so that both
  terms are in Å² and comparable without hand-tuned scales.
- The structural terms compare the geometry of the predicted ``x_t + delta_x`` with the true
  ``x_{t+k}``: bond lengths in Å, angles in radians, dihedrals through ``1 - cos`` (periodic).
- The kinetic term (``inputs`` given) compares each molecule's kinetic energy of the predicted
  ``v_t + delta_v`` with the true one, as a relative error ``(K_pred - K_true) / K_true``
  squared: a per-window error that averages out in ``delta_v`` but is systematically positive
  heats the hybrid MD cycle after cycle.
- The element-kinetic term (``inputs`` given) is the same relative error per (molecule,
  element) group, so that a jump cannot move kinetic energy from one element to another while
  the molecule's total stays right (the hybrid's broken equipartition, README).
- The energy term (``inputs`` given, targets with forces) is the first-order change of the total
  energy that the prediction error causes at the true end state:
  ``dE = sum_i -F_i(x_{t+k}) . (dx_pred - dx_true)_i + m_i v_{t+k,i} . (dv_pred - dv_true)_i``
  per molecule, squared per atom (eV²): errors along the energy gradient are what the hybrid MD
  turns into heating and what its total-energy check rejects, so they are penalised directly.
- The force term (only when the model has a force head and the targets hold forces) compares
  predicted forces at ``x_{t+k}`` with the teacher's, in eV/Å.

Index arrays in :class:`KStepTargets` are global atom indices into the flat batch.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from mlff_distiller import keys, thermo
from mlff_distiller.models.kstep_common import DELTA_POSITIONS, DELTA_VELOCITIES, KStepInput


@dataclass
class KStepTargets:
    """Targets of one batch of windows.

    - ``delta_positions`` (n_atoms, 3) Å, ``delta_velocities`` (n_atoms, 3) Å/fs
    - ``tau`` (n_atoms, 1) fs, the jump duration of each atom's window
    - ``bonds`` (n_bonds, 2), ``angles`` (n_angles, 3), ``dihedrals`` (n_dihedrals, 4) int64
    - ``forces`` optional (n_atoms, 3) eV/Å at ``x_{t+k}``
    - rollout windows only: ``corrector_forces`` (n_atoms, 3) eV/Å at ``x_{t+k+1}``, and
      ``delta_positions_2``, ``delta_velocities_2`` (n_atoms, 3): ``x_{t+2k+1} - x_t`` (Å),
      ``v_{t+2k+1} - v_t`` (Å/fs), the end of the next cycle's jump
    """

    delta_positions: torch.Tensor
    delta_velocities: torch.Tensor
    tau: torch.Tensor
    bonds: torch.Tensor
    angles: torch.Tensor
    dihedrals: torch.Tensor
    forces: torch.Tensor | None = None
    corrector_forces: torch.Tensor | None = None
    delta_positions_2: torch.Tensor | None = None
    delta_velocities_2: torch.Tensor | None = None

    @property
    def has_rollout(self) -> bool:
        return self.delta_positions_2 is not None

    def to(self, device=None, dtype: torch.dtype | None = None) -> KStepTargets:
        def move(t):
            if t is None:
                return None
            if dtype is not None and t.is_floating_point():
                return t.to(device=device, dtype=dtype)
            return t.to(device=device)

        return KStepTargets(**{f.name: move(getattr(self, f.name)) for f in fields(self)})


@dataclass
class KStepLossWeights:
    delta_x: float = 1.0
    delta_v: float = 1.0
    bond: float = 1.0
    angle: float = 0.1
    dihedral: float = 0.01
    force: float = 0.0
    kinetic: float = 0.0
    element_kinetic: float = 0.0
    energy: float = 0.0
    rollout: float = 0.0


def bond_lengths(positions: torch.Tensor, bonds: torch.Tensor) -> torch.Tensor:
    """positions (n, 3), bonds (n_bonds, 2) -> (n_bonds,) Å."""
    return (positions[bonds[:, 0]] - positions[bonds[:, 1]]).norm(dim=-1)


def bond_angles(positions: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """positions (n, 3), angles (n_angles, 3) with apex in the middle -> (n_angles,) radians."""
    a = positions[angles[:, 0]] - positions[angles[:, 1]]
    b = positions[angles[:, 2]] - positions[angles[:, 1]]
    cross = torch.linalg.cross(a, b).norm(dim=-1)
    return torch.atan2(cross, (a * b).sum(-1))  # stable near 0 and pi, unlike acos


def dihedral_angles(positions: torch.Tensor, dihedrals: torch.Tensor) -> torch.Tensor:
    """positions (n, 3), dihedrals (n_dihedrals, 4) -> (n_dihedrals,) radians in (-pi, pi]
    (IUPAC sign, as ``ase.Atoms.get_dihedral`` modulo 2 pi)."""
    p0, p1, p2, p3 = (positions[dihedrals[:, i]] for i in range(4))
    b0, b1, b2 = p1 - p0, p2 - p1, p3 - p2
    n1 = torch.linalg.cross(b0, b1)
    n2 = torch.linalg.cross(b1, b2)
    b1_unit = b1 / b1.norm(dim=-1, keepdim=True)
    return torch.atan2((torch.linalg.cross(n1, n2) * b1_unit).sum(-1), (n1 * n2).sum(-1))


def structural_losses(
    positions_pred: torch.Tensor, positions_true: torch.Tensor, targets: KStepTargets
) -> dict[str, torch.Tensor]:
    """Bond (Å²), angle (rad²) and dihedral (1 - cos) losses; zero when a term has no terms."""
    zero = positions_pred.sum() * 0.0
    out = {"bond": zero, "angle": zero, "dihedral": zero}
    if len(targets.bonds):
        out["bond"] = torch.mean(
            (
                bond_lengths(positions_pred, targets.bonds)
                - bond_lengths(positions_true, targets.bonds)
            )
            ** 2
        )
    if len(targets.angles):
        out["angle"] = torch.mean(
            (
                bond_angles(positions_pred, targets.angles)
                - bond_angles(positions_true, targets.angles)
            )
            ** 2
        )
    if len(targets.dihedrals):
        dphi = dihedral_angles(positions_pred, targets.dihedrals) - dihedral_angles(
            positions_true, targets.dihedrals
        )
        out["dihedral"] = torch.mean(1.0 - torch.cos(dphi))
    return out


def kinetic_energy_loss(
    delta_velocities: torch.Tensor, inputs: KStepInput, targets: KStepTargets
) -> torch.Tensor:
    """Mean over molecules of the squared relative kinetic-energy error of ``v_t + delta_v``."""
    n = inputs.n_systems
    m, idx = inputs.masses.to(delta_velocities.dtype), inputs.system_idx
    pred = thermo.kinetic_energy(inputs.velocities + delta_velocities, m, idx, n)
    true = thermo.kinetic_energy(inputs.velocities + targets.delta_velocities, m, idx, n)
    return torch.mean(((pred - true) / true.clamp_min(1e-12)) ** 2)


def element_kinetic_energy_loss(
    delta_velocities: torch.Tensor, inputs: KStepInput, targets: KStepTargets
) -> torch.Tensor:
    """Mean over (molecule, element) groups of the squared relative error of the group's
    kinetic energy after the jump, ``sum m |v_t + delta_v|^2`` against the true one."""
    m = inputs.masses.to(delta_velocities.dtype)
    key = inputs.system_idx * 128 + inputs.atomic_numbers.to(inputs.system_idx.dtype)
    _, group = torch.unique(key, return_inverse=True)  # (n_atoms,) index of (molecule, Z)
    n = int(group.max()) + 1
    pred = thermo.kinetic_energy(inputs.velocities + delta_velocities, m, group, n)
    true = thermo.kinetic_energy(inputs.velocities + targets.delta_velocities, m, group, n)
    return torch.mean(((pred - true) / true.clamp_min(1e-12)) ** 2)


def first_order_energy_loss(
    delta_positions: torch.Tensor,
    delta_velocities: torch.Tensor,
    inputs: KStepInput,
    targets: KStepTargets,
) -> torch.Tensor:
    """Mean over molecules of ``(dE / n_atoms)²`` (eV²), ``dE`` as in the module docstring;
    needs ``targets.forces`` (eV/Å at ``x_{t+k}``)."""
    dtype = delta_positions.dtype
    m = inputs.masses.to(dtype)
    v_end = inputs.velocities + targets.delta_velocities
    per_atom = -(targets.forces * (delta_positions - targets.delta_positions)).sum(-1)
    per_atom = per_atom + thermo.kinetic_energy_change(
        v_end, m, delta_velocities - targets.delta_velocities
    )
    n, idx = inputs.n_systems, inputs.system_idx
    d_energy = torch.zeros(n, dtype=dtype, device=per_atom.device).index_add(0, idx, per_atom)
    n_atoms = torch.zeros(n, dtype=dtype, device=per_atom.device).index_add(
        0, idx, torch.ones_like(per_atom)
    )
    return torch.mean((d_energy / n_atoms) ** 2)


def kstep_loss(
    outputs: dict[str, torch.Tensor],
    positions: torch.Tensor,
    targets: KStepTargets,
    weights: KStepLossWeights | None = None,
    inputs: KStepInput | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total loss and its detached parts. ``positions``: (n_atoms, 3) ``x_t`` of the batch;
    ``inputs`` (the batch's :class:`KStepInput`) is needed by the kinetic-energy term."""
    w = weights or KStepLossWeights()
    dx, dv = outputs[DELTA_POSITIONS], outputs[DELTA_VELOCITIES]
    parts = {
        "delta_x": torch.mean((dx - targets.delta_positions) ** 2),
        "delta_v": torch.mean(((dv - targets.delta_velocities) * targets.tau) ** 2),
    }
    parts.update(structural_losses(positions + dx, positions + targets.delta_positions, targets))
    total = (
        w.delta_x * parts["delta_x"]
        + w.delta_v * parts["delta_v"]
        + w.bond * parts["bond"]
        + w.angle * parts["angle"]
        + w.dihedral * parts["dihedral"]
    )
    if w.kinetic > 0 and inputs is not None:
        parts["kinetic"] = kinetic_energy_loss(dv, inputs, targets)
        total = total + w.kinetic * parts["kinetic"]
    if w.element_kinetic > 0 and inputs is not None:
        parts["element_kinetic"] = element_kinetic_energy_loss(dv, inputs, targets)
        total = total + w.element_kinetic * parts["element_kinetic"]
    if w.energy > 0 and inputs is not None and targets.forces is not None:
        parts["energy"] = first_order_energy_loss(dx, dv, inputs, targets)
        total = total + w.energy * parts["energy"]
    if w.force > 0 and keys.FORCES in outputs and targets.forces is not None:
        parts["force"] = torch.mean((outputs[keys.FORCES] - targets.forces) ** 2)
        total = total + w.force * parts["force"]
    return total, {name: value.detach() for name, value in parts.items()}
