"""Rollout loss of the k-step jump networks: two hybrid cycles, unrolled through the corrector.

A window with rollout targets (``KStepWindows(rollout=True)``) starts at ``(x_t, v_t, F_t)``.
The loss runs what the hybrid integrator runs, differentiably:

1. the jump: ``x' = x_t + dx``, ``v' = v_t + dv`` and the network's forces ``F'`` at ``x'``
   (its force head; without one the teacher's ``F(x_{t+k})`` of the window, as the hybrid
   would call the corrector there);
2. the corrector: one velocity-Verlet step of the engine
   (:func:`~mlff_distiller.md.integrators.velocity_verlet_step`) with ``F'`` for the first
   half-kick and, for the second, the teacher's recorded forces at the true ``x_{t+k+1}``
   (:class:`~mlff_distiller.md.forces.RecordedForces`): the teacher cannot be differentiated,
   so its force at the predicted position is taken at the true one, an error of
   ``H (x_pred - x_true)``, small next to the forces for errors well below the bond
   fluctuations);
3. the next jump, from the corrected state, and the error of its end against the true
   ``x_{t+2k+1}``, ``v_{t+2k+1}``: ``MSE(x) + MSE(v tau)`` (Å², like the one-jump terms).

The gradient reaches the first jump through the corrector's kick and drift, so the network
learns to start its next jump from its own (corrected) output, which is where it starts in the
hybrid. The thermostat's O steps of an NVT cycle are left out (friction x cycle time ~ 0.5%).
"""

from __future__ import annotations

import torch
from torch import nn

from mlff_distiller import keys
from mlff_distiller.md.forces import RecordedForces
from mlff_distiller.md.integrators import velocity_verlet_step
from mlff_distiller.models.kstep_common import DELTA_POSITIONS, DELTA_VELOCITIES, KStepInput
from mlff_distiller.training.kstep_losses import KStepTargets


def rollout_loss(
    model: nn.Module,
    outputs: dict[str, torch.Tensor],
    inputs: KStepInput,
    targets: KStepTargets,
) -> torch.Tensor:
    """The two-cycle error (Å²) of the module docstring; ``outputs``: ``model(inputs)``."""
    if not targets.has_rollout:
        raise ValueError(
            "the rollout loss needs rollout windows: KStepWindows(..., rollout=True) from a window "
            "file built with rollout=True (mlffd kstep dataset --rollout)"
        )
    dt = inputs.dt
    if bool((dt != dt[0]).any()):
        raise ValueError(f"a rollout batch needs one MD time step, got {sorted(set(dt.tolist()))}")
    dtype = outputs[DELTA_POSITIONS].dtype
    start = inputs.to(dtype=dtype)
    predicted = outputs.get(keys.FORCES)
    forces = predicted if predicted is not None else targets.forces
    if forces is None:
        raise ValueError("the rollout loss needs a force head or the teacher's forces at x_{t+k}")
    jumped = start.replace(
        positions=start.positions + outputs[DELTA_POSITIONS],
        velocities=start.velocities + outputs[DELTA_VELOCITIES],
        forces=forces.to(dtype),
        energy=None,
    )
    recorded = RecordedForces(targets.corrector_forces.to(dtype))
    corrected = velocity_verlet_step(jumped, recorded, float(dt[0]))
    second = model(corrected)
    x_end = corrected.positions + second[DELTA_POSITIONS].to(dtype)
    v_end = corrected.velocities + second[DELTA_VELOCITIES].to(dtype)
    x_true = start.positions + targets.delta_positions_2.to(dtype)
    v_true = start.velocities + targets.delta_velocities_2.to(dtype)
    tau = targets.tau.to(dtype)
    return torch.mean((x_end - x_true) ** 2) + torch.mean(((v_end - v_true) * tau) ** 2)
