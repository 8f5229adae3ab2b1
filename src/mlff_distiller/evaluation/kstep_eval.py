"""k-step hybrid MD against reference MD of the same engine: same corrector, same ensemble, same
start structure, replicas run as one batch.

:func:`compare_hybrid_to_reference` runs the hybrid (R replicas) and the reference (2R replicas:
:func:`~mlff_distiller.md.hybrid.run_hybrid` with :class:`~mlff_distiller.md.hybrid.NoJump` and
``k = 0``, i.e. plain BAOAB or velocity-Verlet steps) with independent start velocities, and
compares them as distributions (:func:`mlff_distiller.evaluation.distributions.compare_ensembles`:
per-element temperature, bond/angle/dihedral distributions and element-pair RDFs next to the
reference-vs-reference floor), plus force calls, ms per network and corrector call, wall-clock
speed-up and (NVE) the energy drift. :func:`jump_energy_error`: the total-energy error of single
jumps from trajectory frames, all frames in one batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
from ase import Atoms
from ase.data import atomic_masses

from mlff_distiller import keys
from mlff_distiller.data.state import MDState
from mlff_distiller.evaluation.distributions import EnsembleComparison, compare_ensembles
from mlff_distiller.evaluation.observables import energy_drift
from mlff_distiller.kstep.topology import Topology
from mlff_distiller.md.forces import CountedForces
from mlff_distiller.md.hybrid import (
    HybridConfig,
    HybridIntegrator,
    HybridResult,
    IntegrationError,
    NoJump,
    run_hybrid,
)
from mlff_distiller.md.integrators import with_forces


@dataclass
class KStepComparison:
    """One hybrid-vs-reference comparison of one molecule (times in s, drifts kJ/mol/ps per
    molecule, mean and standard error over replicas)."""

    molecule: str
    corrector: str
    k: int
    ensemble: str
    replicas: int
    simulated_fs: float
    hybrid: dict[str, Any]  # HybridResult.summary()
    reference: dict[str, Any]
    force_call_ratio: float  # reference calls / hybrid calls, same simulated time per replica
    speedup: float  # reference wall-clock / hybrid wall-clock (network time included)
    hybrid_drift: tuple[float, float] | None  # NVE only
    reference_drift: tuple[float, float] | None
    completed: bool
    distributions: EnsembleComparison | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["distributions"] = self.distributions.to_dict() if self.distributions else None
        return out


def replica_frames(result: HybridResult, n_replicas: int, discard_fs: float = 0.0):
    """(positions, velocities) (R, F, n, 3) of a run of R replicas of one molecule, frames after
    ``discard_fs``; plus the per-replica total energy (R, F) and the times (F,)."""
    frames = result.frame_arrays()
    keep = frames["time"] >= discard_fs
    n_frames = int(keep.sum())
    pos = frames["positions"][keep].reshape(n_frames, n_replicas, -1, 3).swapaxes(0, 1)
    vel = frames["velocities"][keep].reshape(n_frames, n_replicas, -1, 3).swapaxes(0, 1)
    total = (frames["potential_energy"] + frames["kinetic_energy"])[keep].T
    return pos, vel, total, frames["time"][keep]


def _drift(total: np.ndarray, time_fs: np.ndarray) -> tuple[float, float]:
    drifts = np.array([energy_drift(time_fs, e) for e in total])
    return float(drifts.mean()), float(drifts.std(ddof=1) / np.sqrt(len(drifts)))


def compare_hybrid_to_reference(
    network: torch.nn.Module,
    make_provider: Callable[[Sequence[Atoms]], Any],
    atoms: Atoms,
    topology: Topology,
    config: HybridConfig,
    cycles: int,
    replicas: int = 8,
    discard_fs: float = 0.0,
    molecule: str = "",
    corrector: str = "",
    progress: bool = False,
) -> KStepComparison:
    """Hybrid (``replicas``) and reference (2 x ``replicas``) runs of ``atoms`` for
    ``cycles * (k + 1)`` steps each; ``make_provider(structures)`` builds a fresh provider
    (corrector) for each run. Frames are saved every cycle (every ``k + 1`` reference steps);
    the first ``discard_fs`` are left out of the distributions. Start velocities: Maxwell-
    Boltzmann at ``config.temperature_k``, seeds ``config.seed`` (hybrid) and ``seed + 1``
    (reference), so the runs are independent."""
    molecule = molecule or atoms.get_chemical_formula()
    hybrid_set = [atoms.copy() for _ in range(replicas)]
    ref_set = [atoms.copy() for _ in range(2 * replicas)]
    topologies = [topology] * replicas
    completed, notes = True, []
    try:
        hyb = run_hybrid(network, make_provider(hybrid_set), hybrid_set, config, cycles,
                         topologies, progress=progress, keep_frames=True)  # fmt: skip
    except IntegrationError as err:
        completed, hyb = False, err.result
        notes.append(str(err))
    ref_config = replace(config, k=0, rescale=False, energy_tol_per_atom=None,
                         save_every=config.k + 1, seed=config.seed + 1)  # fmt: skip
    n_steps = cycles * (config.k + 1)
    ref = run_hybrid(NoJump(), make_provider(ref_set), ref_set, ref_config, n_steps,
                     progress=progress, keep_frames=True)  # fmt: skip
    h_pos, h_vel, h_total, h_time = replica_frames(hyb, replicas, discard_fs)
    r_pos, r_vel, r_total, r_time = replica_frames(ref, 2 * replicas, discard_fs)
    masses = atoms.get_masses()
    dist = None
    if h_pos.shape[1] >= 2 and r_pos.shape[1] >= 2:
        dist = compare_ensembles((h_pos, h_vel), (r_pos, r_vel), masses, atoms.numbers, topology)
    hybrid_calls = hyb.force_calls / replicas
    ref_calls = ref.force_calls / (2 * replicas)
    nve = config.ensemble == "nve"
    return KStepComparison(
        molecule=molecule,
        corrector=corrector,
        k=config.k,
        ensemble=config.ensemble,
        replicas=replicas,
        simulated_fs=hyb.cycles * config.cycle_fs,
        hybrid=hyb.summary(),
        reference=ref.summary(),
        force_call_ratio=ref_calls * hyb.cycles / max(cycles, 1) / max(hybrid_calls, 1e-12),
        speedup=(ref.wall_seconds / 2) * hyb.cycles / max(cycles, 1) / max(hyb.wall_seconds, 1e-12),
        hybrid_drift=_drift(h_total, h_time) if nve and len(h_time) > 2 else None,
        reference_drift=_drift(r_total, r_time) if nve and len(r_time) > 2 else None,
        completed=completed,
        distributions=dist,
        notes=notes,
    )


@dataclass
class JumpEnergyError:
    """Total-energy change of single jumps from trajectory frames, eV/atom: the network's
    ``E(x + dx) + K(v + dv) - E(x) - K(v)`` and the trajectory's own over the same k steps."""

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
    network: torch.nn.Module,
    provider: Any,
    trajectory: dict[str, np.ndarray],
    k: int,
    dt_fs: float,
    every: int = 50,
    molecule: str = "",
    frame_steps: int = 1,
) -> JumpEnergyError:
    """Jumps of ``k`` MD steps of ``dt_fs`` from frames ``0, every, 2 every, ...`` of
    ``trajectory`` (``atomic_numbers`` (n,), ``masses`` (n,), ``positions`` (F, n, 3) Å, on-step
    ``velocities`` (F, n, 3) Å/fs; consecutive frames ``frame_steps`` MD steps apart, so the
    trajectory's own partner frame is ``k / frame_steps`` frames later), all in one batch;
    energies from ``provider`` (a batched provider, or a per-structure one built for
    ``len(starts)`` copies of the molecule)."""
    if k % frame_steps:
        raise ValueError(f"k = {k} is not a multiple of the {frame_steps} steps between frames")
    x_all, v_all = trajectory["positions"], trajectory["velocities"]
    k_frames = k // frame_steps
    starts = np.arange(0, len(x_all) - k_frames, every)
    if not len(starts):
        raise ValueError(f"the trajectory has {len(x_all)} frames: too short for k = {k}")
    numbers = np.asarray(trajectory["atomic_numbers"])
    masses = np.asarray(trajectory.get(keys.MASSES, atomic_masses[numbers]), dtype=float)
    n_atoms = len(numbers)

    def state_of(frames: np.ndarray) -> MDState:
        structures = [Atoms(numbers=numbers, positions=x_all[i], masses=masses) for i in frames]
        state = MDState.from_atoms(structures)
        vel = torch.as_tensor(np.concatenate([v_all[i] for i in frames]))
        return with_forces(state.replace(velocities=vel), provider)

    counted = CountedForces(provider)
    hybrid = HybridIntegrator(network, counted, HybridConfig(k=k, dt_fs=dt_fs, ensemble="nve"),
                              None)  # fmt: skip
    start = state_of(starts)
    jumped = with_forces(hybrid.jump(start, 1.0, predicted=False).replace(forces=None), counted)
    after = state_of(starts + k_frames)
    e0 = start.energy + start.kinetic_energy()
    net = ((jumped.energy + jumped.kinetic_energy() - e0) / n_atoms).numpy()
    true = ((after.energy + after.kinetic_energy() - e0) / n_atoms).numpy()
    return JumpEnergyError(
        molecule=molecule,
        k=k,
        n_jumps=len(net),
        network_mean=float(net.mean()),
        network_rms=float(np.sqrt((net**2).mean())),
        trajectory_mean=float(true.mean()),
        trajectory_rms=float(np.sqrt((true**2).mean())),
    )
