"""Hybrid k-step MD against plain velocity-Verlet MD from the same start with the same kind of
corrector: force calls, wall-clock (network time included), NVE energy drift, bond-length
RMSE, distance-RDF difference and temperature; and the total-energy error of single jumps from
trajectory frames (:func:`jump_energy_error`), the per-cycle bias behind a hybrid's drift."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from mlff_distiller.evaluation.observables import (
    bond_length_rmse,
    distance_rdf,
    energy_drift,
    rdf_difference,
    temperature,
)
from mlff_distiller.kstep.correctors import Corrector
from mlff_distiller.kstep.integrator import (
    HybridConfig,
    HybridIntegrator,
    IntegrationError,
    kinetic_energy,
    velocity_verlet_trajectory,
)
from mlff_distiller.kstep.topology import Topology


@dataclass
class KStepComparison:
    """One hybrid-vs-reference comparison; drifts in kJ/mol/ps, times in s, T in K, Å."""

    molecule: str
    k: int
    simulated_fs: float
    hybrid_force_calls: int
    reference_force_calls: int
    force_call_ratio: float  # reference calls / hybrid calls for the same simulated time
    hybrid_seconds: float
    network_seconds: float
    reference_seconds: float
    speedup: float  # reference wall-clock / hybrid wall-clock (network time included)
    hybrid_drift: float
    reference_drift: float
    bond_rmse: float
    rdf_difference: float
    hybrid_temperature: float
    reference_temperature: float
    retries: int
    fallbacks: int
    completed: bool  # False when the hybrid stopped with an IntegrationError
    failures: dict[str, int] = field(default_factory=dict)  # rejected jumps by check

    def to_dict(self) -> dict:
        return asdict(self)


def compare_hybrid_to_reference(
    model: torch.nn.Module,
    make_corrector: Callable[[], Corrector],
    atomic_numbers: np.ndarray,
    masses: np.ndarray,
    positions: np.ndarray,
    velocities: np.ndarray,
    topology: Topology,
    config: HybridConfig,
    n_cycles: int,
    molecule: str = "",
    device: str = "cpu",
) -> KStepComparison:
    """Run the hybrid for ``n_cycles`` cycles (``n_cycles (k + 1)`` MD steps) and the reference
    for as many steps, each with a fresh corrector from ``make_corrector``."""
    hybrid = HybridIntegrator(
        model,
        make_corrector(),
        atomic_numbers,
        masses,
        topology.bonds,
        topology.bond_lengths,
        config,
        device=device,
    )
    completed = True
    try:
        res = hybrid.run(positions, velocities, n_cycles)
    except IntegrationError as err:
        res, completed = err.result, False
    n_steps = n_cycles * (config.k + 1)
    ref, ref_stats = velocity_verlet_trajectory(
        make_corrector(), positions, velocities, masses, config.dt, n_steps, config.k + 1
    )  # frames at the hybrid's cycle ends, so both observables use the same times
    hyb = res.arrays()
    ref_calls_same_time = ref_stats["force_calls"] * (res.md_steps / max(n_steps, 1))
    ref_seconds_same_time = ref_stats["wall_seconds"] * (res.md_steps / max(n_steps, 1))
    n_dof = 3 * len(masses) - 6
    return KStepComparison(
        molecule=molecule,
        k=config.k,
        simulated_fs=res.md_steps * config.dt,
        hybrid_force_calls=res.force_calls,
        reference_force_calls=int(ref_stats["force_calls"]),
        force_call_ratio=ref_calls_same_time / max(res.force_calls, 1),
        hybrid_seconds=res.wall_seconds,
        network_seconds=res.network_seconds,
        reference_seconds=ref_stats["wall_seconds"],
        speedup=ref_seconds_same_time / max(res.wall_seconds, 1e-12),
        hybrid_drift=_drift(hyb),
        reference_drift=_drift(ref),
        bond_rmse=bond_length_rmse(hyb["positions"], ref["positions"], topology.bonds),
        rdf_difference=rdf_difference(
            distance_rdf(hyb["positions"]), distance_rdf(ref["positions"])
        ),
        hybrid_temperature=float(np.mean(temperature(hyb["velocities"], masses, n_dof))),
        reference_temperature=float(np.mean(temperature(ref["velocities"], masses, n_dof))),
        retries=res.retries,
        fallbacks=res.fallbacks,
        completed=completed,
        failures=dict(res.failures),
    )


def _drift(frames: dict[str, np.ndarray]) -> float:
    if len(frames["time"]) < 2:
        return float("nan")
    return energy_drift(frames["time"], frames["potential_energy"] + frames["kinetic_energy"])


@dataclass
class JumpEnergyError:
    """Total-energy change over one k-step jump, eV/atom, from frames of a trajectory: of the
    network's jumps and, for scale, of the trajectory's own k steps. ``mean`` is the systematic
    part (it heats or cools the hybrid every cycle), ``rms`` the spread."""

    molecule: str
    k: int
    n_jumps: int
    network_mean: float
    network_rms: float
    trajectory_mean: float
    trajectory_rms: float

    def to_dict(self) -> dict:
        return asdict(self)


def jump_energy_error(
    model: torch.nn.Module,
    corrector: Corrector,
    trajectory: dict[str, np.ndarray],
    masses: np.ndarray,
    k: int,
    dt: float,
    every: int = 50,
    molecule: str = "",
) -> JumpEnergyError:
    """Per-jump total-energy error of ``model`` on frames ``0, every, 2 every, ...`` of
    ``trajectory`` (``positions`` (n_frames, n_atoms, 3) Å, ``velocities`` on-step Å/fs, consecutive
    frames ``dt`` fs apart), with energies from ``corrector``. Returns eV/atom."""
    x_all, v_all = trajectory["positions"], trajectory["velocities"]
    numbers = np.asarray(trajectory["atomic_numbers"])
    hybrid = HybridIntegrator(
        model, corrector, numbers, masses, np.zeros((0, 2)), np.zeros(0), HybridConfig(k=k, dt=dt)
    )
    n_atoms = len(masses)
    net, true = [], []
    for i in range(0, len(x_all) - k, every):
        x, v = x_all[i], v_all[i]
        e0, f0 = corrector.forces(x)
        start = e0 + kinetic_energy(v, masses)
        dx, dv, _ = hybrid.predict(x, v, f0)
        e_jump, _ = corrector.forces(x + dx)
        net.append((e_jump + kinetic_energy(v + dv, masses) - start) / n_atoms)
        e_k, _ = corrector.forces(x_all[i + k])
        true.append((e_k + kinetic_energy(v_all[i + k], masses) - start) / n_atoms)
    net_a, true_a = np.asarray(net), np.asarray(true)
    return JumpEnergyError(
        molecule=molecule,
        k=k,
        n_jumps=len(net_a),
        network_mean=float(net_a.mean()),
        network_rms=float(np.sqrt((net_a**2).mean())),
        trajectory_mean=float(true_a.mean()),
        trajectory_rms=float(np.sqrt((true_a**2).mean())),
    )
