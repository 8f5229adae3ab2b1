"""Force providers: everything that gives the MD engine energies and forces.

One interface, the student's: ``energy_and_forces(batch: AtomsBatch, method=...) ->
{ENERGY: (n_systems,) eV, FORCES: (n_atoms, 3) eV/Å}``. A PaiNN student or a committee is one
already (batched). Teachers join through two adapters, which loop over the structures of a
batch:

- :class:`CalculatorForces`: any ASE calculator (``xtb`` via tblite, SevenNet-0, a
  ``StudentCalculator``), one calculator per structure; a teacher's checked ``evaluate`` is
  called directly (no ASE state comparison per call);
- :class:`OpenMMForces`: an OpenMM teacher through its native ``Context`` (one
  ``setPositions`` + ``getState`` per structure and call, no ASE round trip).

Per-structure providers are built for a fixed list of structures; a batch names which of them it
holds in ``batch.labels[keys.STRUCTURE_ID]`` (n_systems,) (the engine's
:class:`~mlff_distiller.data.state.MDState` sets it, also for a subset of its structures).
:class:`CountedForces` wraps any provider and counts structure-calls and seconds (the k-step
benchmark's currency). :func:`make_force_provider` builds one by name.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from ase import Atoms

from mlff_distiller import keys
from mlff_distiller.data.batch import AtomsBatch
from mlff_distiller.teachers.parallel import teacher_pool

OPENMM_TEACHERS = ("openmm-gaff2", "openmm-amber14")


@runtime_checkable
class ForceProvider(Protocol):
    def energy_and_forces(self, batch: AtomsBatch, method: str = ...) -> dict: ...


def structure_ids(batch: AtomsBatch) -> list[int]:
    """Which of a provider's structures the batch's systems are (default 0..n_systems-1)."""
    ids = batch.labels.get(keys.STRUCTURE_ID)
    return list(range(batch.n_systems)) if ids is None else [int(i) for i in ids.tolist()]


class _PerStructure:
    """Loop over a batch's structures; ``_one(s, positions (n, 3) Å) -> (eV, (n, 3) eV/Å)``.
    With a ``_pool`` (a thread pool) the structures are evaluated concurrently."""

    structures: list[Atoms]
    _pool: ThreadPoolExecutor | None = None

    def energy_and_forces(self, batch: AtomsBatch, method: str = "analytical", **_) -> dict:
        pos = batch.positions.detach().cpu().double().numpy()
        idx = batch.system_idx.cpu().numpy()
        energies = np.zeros(batch.n_systems)
        forces = np.zeros_like(pos)
        masks = []
        for s, sid in enumerate(structure_ids(batch)):
            mask = idx == s
            if int(mask.sum()) != len(self.structures[sid]):
                raise ValueError(
                    f"structure {sid} of this force provider has {len(self.structures[sid])} "
                    f"atoms, the batch gave {int(mask.sum())}"
                )
            masks.append((sid, mask))
        if self._pool is not None and len(masks) > 1:
            results = list(self._pool.map(lambda job: self._one(job[0], pos[job[1]]), masks))
        else:
            results = [self._one(sid, pos[mask]) for sid, mask in masks]
        for s, ((_, mask), (energy, f)) in enumerate(zip(masks, results)):
            energies[s], forces[mask] = energy, f
        like = batch.positions
        return {
            keys.ENERGY: torch.as_tensor(energies, dtype=like.dtype, device=like.device),
            keys.FORCES: torch.as_tensor(forces, dtype=like.dtype, device=like.device),
        }


class CalculatorForces(_PerStructure):
    """ASE calculators, one per structure: ``make_calculator(atoms)`` builds each.

    Teachers whose engine runs independent instances at once (``concurrent_calls``: GFN2-xTB
    through tblite, which releases the GIL) are evaluated on a thread pool, one worker per
    available CPU (``workers``: another count; 1: serially;
    :func:`~mlff_distiller.teachers.parallel.teacher_pool`): plain xTB MD of 8 isopropanol
    replicas 1.56x faster than the serial loop on 2 cores (``benchmarks/teacher_md.py``)."""

    def __init__(
        self, structures: Sequence[Atoms], make_calculator, name: str = "ase",
        workers: int | None = None,
    ):  # fmt: skip
        self.structures = [a.copy() for a in structures]
        for atoms in self.structures:
            atoms.calc = make_calculator(atoms)
        self.name = name
        calcs = [a.calc for a in self.structures]
        concurrent = all(getattr(c, "concurrent_calls", False) for c in calcs)
        shared = len({id(c) for c in calcs}) < len(calcs)  # one engine, two structures at once
        if not shared and (concurrent or (workers is not None and workers > 1)):
            self._pool = teacher_pool(len(self.structures), workers)

    def _one(self, s: int, positions: np.ndarray) -> tuple[float, np.ndarray]:
        atoms = self.structures[s]
        atoms.positions = positions
        evaluate = getattr(atoms.calc, "evaluate", None)
        if evaluate is not None:  # a teacher: checked, without ASE's state bookkeeping
            return evaluate(atoms)
        return float(atoms.get_potential_energy()), np.array(atoms.get_forces(), dtype=float)


class OpenMMForces(_PerStructure):
    """An OpenMM teacher's native ``Context`` per structure (no constraints); ``teacher``: one
    teacher for all structures or a list with one per structure."""

    def __init__(self, teacher: Any, structures: Sequence[Atoms], name: str = "openmm"):
        import openmm

        self.structures = [a.copy() for a in structures]
        teachers = teacher if isinstance(teacher, list) else [teacher] * len(self.structures)
        self.contexts = [
            t.create_context(a, openmm.VerletIntegrator(0.001))[0]
            for t, a in zip(teachers, self.structures)
        ]
        self.name = name

    def _one(self, s: int, positions: np.ndarray) -> tuple[float, np.ndarray]:
        from mlff_distiller.teachers.openmm_base import positions_to_openmm, state_energy_forces

        context = self.contexts[s]
        context.setPositions(positions_to_openmm(positions))
        return state_energy_forces(context.getState(getEnergy=True, getForces=True))


class RecordedForces:
    """Forces known in advance: ``forces`` (n_atoms, 3) eV/Å (and ``energy`` (n_systems,) eV,
    zeros if not given) are returned for whatever positions a batch holds. The k-step rollout
    loss corrects a predicted state with the teacher's recorded forces at the true position;
    the engine's step stays differentiable through the kicks and the drift."""

    def __init__(self, forces: torch.Tensor, energy: torch.Tensor | None = None):
        self.forces = forces
        self.energy = energy

    def energy_and_forces(self, batch: AtomsBatch, method: str = "analytical", **_) -> dict:
        if batch.positions.shape != self.forces.shape:
            raise ValueError(
                f"recorded forces of shape {tuple(self.forces.shape)} for a batch of "
                f"{batch.n_atoms} atoms"
            )
        energy = self.energy
        if energy is None:
            energy = self.forces.new_zeros(batch.n_systems)
        return {keys.ENERGY: energy, keys.FORCES: self.forces}


class CountedForces:
    """A provider that counts its work: ``calls`` (batched calls), ``structure_calls`` (one per
    structure per call: the cost of a teacher) and ``seconds``."""

    def __init__(self, provider: Any):
        self.provider = provider
        self.calls = 0
        self.structure_calls = 0
        self.seconds = 0.0

    def energy_and_forces(self, batch: AtomsBatch, method: str = "analytical", **kwargs) -> dict:
        start = time.perf_counter()
        out = self.provider.energy_and_forces(batch, method, **kwargs)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        self.structure_calls += batch.n_systems
        return out

    def __getattr__(self, name: str):  # parameters(), elements, ... of the wrapped provider
        if name == "provider":
            raise AttributeError(name)
        return getattr(self.provider, name)


def make_force_provider(name: str, structures: Sequence[Atoms], **options: Any):
    """Provider ``name`` for ``structures`` (one entry per structure of the MD state).

    - ``openmm-gaff2`` / ``openmm-amber14``: native OpenMM (``smiles`` from each structure's
      ``info`` for GAFF2, other options to the teacher)
    - ``xtb`` and any other teacher of :func:`mlff_distiller.teachers.get_teacher`: its ASE
      calculator, one per structure
    - ``student`` (option ``model``: a saved PaiNN student or committee): the batched model in
      float64
    """
    from mlff_distiller.teachers import get_teacher

    structures = list(structures)
    if name == "student":
        model = options.pop("model", None)
        if model is None:
            raise ValueError("the 'student' force provider needs model=PATH of a saved student")
        return load_student(Path(model))
    if name in OPENMM_TEACHERS:
        by_smiles: dict[str | None, Any] = {}
        for atoms in structures:
            smiles = options.get("smiles") or atoms.info.get(keys.SMILES)
            if smiles not in by_smiles:
                extra = {"smiles": smiles} if name == "openmm-gaff2" and smiles else {}
                by_smiles[smiles] = get_teacher(name, **{**options, **extra})
        teachers = [by_smiles[options.get("smiles") or a.info.get(keys.SMILES)] for a in structures]
        return OpenMMForces(teachers, structures, name)
    return CalculatorForces(structures, lambda atoms: get_teacher(name, **options), name)


def load_student(path: Path) -> torch.nn.Module:
    """A saved student (PaiNN or committee) as a float64 provider, eager, on the CPU."""
    from mlff_distiller.models.io import load_model

    if not path.exists():
        raise FileNotFoundError(f"student model {path} does not exist")
    return load_model(path).double().eval()
