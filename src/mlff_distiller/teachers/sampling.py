"""Reference MD with a teacher: NVT Langevin (equilibration, then production) and an optional
NVE window, saved as an HDF5 trajectory that is flushed per frame and can be resumed.

Two engines behind one loop: ASE's integrators for any teacher (``Langevin``,
``VelocityVerlet``), and OpenMM's own (``LangevinMiddleIntegrator``, ``VerletIntegrator``) for
the OpenMM teachers, which avoids a Python round trip per step. Frame times are measured from
the start of production (equilibration frames are not saved); NVE follows production.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from mlff_distiller import keys, units
from mlff_distiller.teachers.base import TeacherCalculator, UnsupportedElementError

DEFAULT_DT_FS = {"mm": 2.0, "qm": 0.5, "ml": 0.5}


@dataclass
class SamplingConfig:
    """Options of one reference MD run (names match ``mlffd sample`` options).

    ``dt_fs`` None: 2 fs with H-bond constraints for MM teachers, 0.5 fs for QM/ML teachers.
    ``friction_per_ps``: Langevin friction. ``save_every``: steps between saved frames.
    ``nve_fs``: length of the NVE window after production (0: none), time step ``nve_dt_fs``
    (None: ``dt_fs``). ``constraints``: ``"auto"`` (H-bonds for MM at dt > 1 fs), ``"hbonds"``
    or ``"none"`` (OpenMM teachers only).
    """

    temperature_k: float = 300.0
    dt_fs: float | None = None
    friction_per_ps: float = 1.0
    equilibration_fs: float = 1000.0
    production_fs: float = 10000.0
    nve_fs: float = 0.0
    nve_dt_fs: float | None = None
    save_every: int = 10
    seed: int = 0
    constraints: str = "auto"

    def resolved(self, kind: str) -> SamplingConfig:
        """A copy with defaults that depend on the teacher kind filled in, checked."""
        out = SamplingConfig(**asdict(self))
        out.dt_fs = float(self.dt_fs or DEFAULT_DT_FS.get(kind, 0.5))
        out.nve_dt_fs = float(self.nve_dt_fs or out.dt_fs)
        if out.constraints == "auto":
            out.constraints = "hbonds" if kind == "mm" and out.dt_fs > 1.0 else "none"
        if out.constraints not in ("hbonds", "none"):
            raise ValueError(f"constraints must be auto, hbonds or none, not {out.constraints!r}")
        for name in ("temperature_k", "dt_fs", "friction_per_ps"):
            if getattr(out, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(out, name)}")
        for name in ("equilibration_fs", "production_fs", "nve_fs"):
            if getattr(out, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(out, name)}")
        if out.save_every < 1:
            raise ValueError(f"save_every must be >= 1, got {out.save_every}")
        return out


@dataclass
class SampleResult:
    """Outcome of one (molecule, replica) run: ``ok`` with the path, or the error message."""

    name: str
    replica: int
    path: Path | None
    ok: bool
    n_frames: int = 0
    error: str = ""


# -- engines --------------------------------------------------------------------------------
class _ASEEngine:
    """ASE integrators around any teacher calculator."""

    def __init__(
        self,
        teacher: TeacherCalculator,
        atoms: Atoms,
        cfg: SamplingConfig,
        velocities: np.ndarray | None,
        rng: np.random.Generator,
    ) -> None:
        from ase.md.langevin import Langevin
        from ase.md.velocitydistribution import (
            MaxwellBoltzmannDistribution,
            Stationary,
            ZeroRotation,
        )

        self.atoms = atoms.copy()
        self.atoms.calc = teacher
        if velocities is None:
            try:  # ASE >= 3.28 name
                from ase.md.velocitydistribution import thermalize_momenta
            except ImportError:
                thermalize_momenta = MaxwellBoltzmannDistribution
            thermalize_momenta(self.atoms, temperature_K=cfg.temperature_k, rng=rng)
            Stationary(self.atoms)
            ZeroRotation(self.atoms)
        else:
            self.atoms.set_velocities(units.velocities_internal_to_ase(velocities))
        friction = cfg.friction_per_ps / units.PS / units.ASE_TIME_PER_FS  # 1/(ASE time)
        self.cfg = cfg
        self.nve = False
        self.dyn = Langevin(
            self.atoms,
            timestep=cfg.dt_fs * units.ASE_TIME_PER_FS,
            temperature_K=cfg.temperature_k,
            friction=friction,
            rng=rng,
            fixcm=False,
        )

    def to_nve(self) -> None:
        from ase.md.verlet import VelocityVerlet

        if self.nve:
            return
        self.nve = True
        self.dyn = VelocityVerlet(self.atoms, timestep=self.cfg.nve_dt_fs * units.ASE_TIME_PER_FS)

    def run(self, n_steps: int) -> None:
        self.dyn.run(n_steps)

    def frame(self) -> dict[str, Any]:
        a = self.atoms
        return {
            keys.POSITIONS: a.positions.copy(),
            keys.VELOCITIES: units.velocities_ase_to_internal(a.get_velocities()),
            keys.ENERGY: float(a.get_potential_energy()),
            keys.FORCES: a.get_forces().copy(),
            keys.KINETIC_ENERGY: float(a.get_kinetic_energy()),
        }


class _OpenMMEngine:
    """OpenMM's integrators on the teacher's own System (the fast path for MM teachers).
    Velocities of these leapfrog integrators are half a step behind the positions."""

    def __init__(
        self,
        teacher,
        atoms: Atoms,
        cfg: SamplingConfig,
        velocities: np.ndarray | None,
        rng: np.random.Generator,
    ) -> None:
        import openmm
        from openmm import unit

        from mlff_distiller.teachers.openmm_base import velocities_to_openmm

        langevin = openmm.LangevinMiddleIntegrator(
            cfg.temperature_k * unit.kelvin,
            cfg.friction_per_ps / unit.picosecond,
            cfg.dt_fs * unit.femtosecond,
        )
        langevin.setRandomNumberSeed(int(rng.integers(1, 2**31 - 1)))
        verlet = openmm.VerletIntegrator(cfg.nve_dt_fs * unit.femtosecond)
        self.integrator = openmm.CompoundIntegrator()
        self.integrator.addIntegrator(langevin)
        self.integrator.addIntegrator(verlet)
        constraints = "hbonds" if cfg.constraints == "hbonds" else None
        self.context, self.system = teacher.create_context(atoms, self.integrator, constraints)
        if constraints:
            langevin.setConstraintTolerance(1e-7)
            verlet.setConstraintTolerance(1e-7)
            self.context.applyConstraints(1e-7)
        if velocities is None:
            self.context.setVelocitiesToTemperature(
                cfg.temperature_k * unit.kelvin, int(rng.integers(1, 2**31 - 1))
            )
        else:
            self.context.setVelocities(velocities_to_openmm(velocities))
        if constraints:
            self.context.applyVelocityConstraints(1e-7)

    def to_nve(self) -> None:
        self.integrator.setCurrentIntegrator(1)

    def run(self, n_steps: int) -> None:
        self.integrator.step(int(n_steps))

    def frame(self) -> dict[str, Any]:
        from openmm import unit

        from mlff_distiller.teachers.openmm_base import state_energy_forces, state_velocities

        state = self.context.getState(
            getPositions=True, getVelocities=True, getEnergy=True, getForces=True
        )
        energy, forces = state_energy_forces(state)
        pos = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer) * units.NM
        ke = state.getKineticEnergy().value_in_unit(unit.kilojoule_per_mole) * units.KJ_PER_MOL
        return {
            keys.POSITIONS: np.asarray(pos, dtype=np.float64),
            keys.VELOCITIES: state_velocities(state),
            keys.ENERGY: energy,
            keys.FORCES: forces,
            keys.KINETIC_ENERGY: float(ke),
        }


def make_engine(
    teacher: TeacherCalculator,
    atoms: Atoms,
    cfg: SamplingConfig,
    velocities: np.ndarray | None = None,
    seed: int = 0,
):
    """The fastest engine for ``teacher``: OpenMM's integrators if it is an OpenMM teacher."""
    from mlff_distiller.teachers.openmm_base import OpenMMTeacher

    rng = np.random.default_rng(seed)
    if isinstance(teacher, OpenMMTeacher):
        return _OpenMMEngine(teacher, atoms, cfg, velocities, rng)
    if cfg.constraints == "hbonds":
        raise ValueError("H-bond constraints need an OpenMM teacher; use constraints='none'")
    return _ASEEngine(teacher, atoms, cfg, velocities, rng)


# -- one run ------------------------------------------------------------------------------
def sample(
    teacher: TeacherCalculator,
    atoms: Atoms,
    out_path: str | Path,
    config: SamplingConfig | None = None,
    resume: bool = False,
    seed: int | None = None,
    on_steps: Callable[[int], None] | None = None,
) -> int:
    """Run equilibration, production (NVT) and the NVE window for ``atoms``; write every
    ``save_every``-th step of production/NVE to ``out_path``. Returns the frames in the file.

    ``resume``: continue from the last saved frame (positions and velocities) of an existing
    file; a finished file is left as it is. ``on_steps(n)`` is called as steps are done."""
    from mlff_distiller.data.hdf5 import Dataset, DatasetWriter

    cfg = (config or SamplingConfig()).resolved(teacher.info.kind)
    seed = cfg.seed if seed is None else seed
    teacher.check_elements(atoms)
    out_path = Path(out_path)
    name = str(atoms.info.get(keys.NAME) or atoms.get_chemical_formula())
    smiles = atoms.info.get(keys.SMILES) or ""
    n_prod = int(round(cfg.production_fs / cfg.dt_fs))
    n_nve = int(round(cfg.nve_fs / cfg.nve_dt_fs))
    total_saved_steps = n_prod + n_nve

    start_step, positions, velocities = 0, atoms.positions, None
    if resume and out_path.exists():
        with Dataset(out_path) as ds:
            n_done = len(ds)
            if n_done:
                last = ds.get_arrays(n_done - 1)
                t_last = float(last[keys.TIME])
                positions, velocities = last[keys.POSITIONS], last[keys.VELOCITIES]
                start_step = _step_of_time(t_last, cfg, n_prod)
    if start_step >= total_saved_steps and velocities is not None:
        if on_steps:
            on_steps(_n_equil(cfg) + total_saved_steps)
        with Dataset(out_path) as ds:
            return len(ds)
    work = atoms.copy()
    work.positions = positions
    engine = make_engine(teacher, work, cfg, velocities, seed + start_step)
    attrs = {
        **teacher.info.attrs(),
        "sampling": json.dumps(asdict(cfg)),
        "nve_start_fs": cfg.production_fs,
        "replica_seed": seed,
    }
    mode = "a" if (resume and velocities is not None) else "w"
    with DatasetWriter(out_path, mode=mode, attrs=attrs if mode == "w" else None) as writer:
        if velocities is None:  # fresh start: equilibrate, save the t=0 frame
            n_eq = _n_equil(cfg)
            _run_chunked(engine, n_eq, on_steps)
            _save(writer, engine, work.numbers, 0.0, name, smiles)
        elif on_steps:
            on_steps(_n_equil(cfg) + start_step)
        step = start_step
        while step < total_saved_steps:
            if step < n_prod:
                n = min(cfg.save_every, n_prod - step)
            else:
                engine.to_nve()
                n = min(cfg.save_every, total_saved_steps - step)
            engine.run(n)
            step += n
            if on_steps:
                on_steps(n)
            writer_time = _time_of_step(step, cfg, n_prod)
            _save(writer, engine, work.numbers, writer_time, name, smiles)
        return len(writer)


def _n_equil(cfg: SamplingConfig) -> int:
    return int(round(cfg.equilibration_fs / cfg.dt_fs))


def _time_of_step(step: int, cfg: SamplingConfig, n_prod: int) -> float:
    if step <= n_prod:
        return step * cfg.dt_fs
    return n_prod * cfg.dt_fs + (step - n_prod) * cfg.nve_dt_fs


def _step_of_time(t: float, cfg: SamplingConfig, n_prod: int) -> int:
    t_prod = n_prod * cfg.dt_fs
    if t <= t_prod + 1e-9:
        return int(round(t / cfg.dt_fs))
    return n_prod + int(round((t - t_prod) / cfg.nve_dt_fs))


def _run_chunked(engine, n_steps: int, on_steps, chunk: int = 50) -> None:
    done = 0
    while done < n_steps:
        n = min(chunk, n_steps - done)
        engine.run(n)
        done += n
        if on_steps:
            on_steps(n)


def _save(writer, engine, numbers, time_fs: float, name: str, smiles: str) -> None:
    fr = engine.frame()
    writer.append_frame(
        numbers,
        fr[keys.POSITIONS],
        energy=fr[keys.ENERGY],
        forces=fr[keys.FORCES],
        velocities=fr[keys.VELOCITIES],
        time=time_fs,
        kinetic_energy=fr[keys.KINETIC_ENERGY],
        potential_energy=fr[keys.ENERGY],
        molecule=name,
        smiles=smiles,
    )


# -- many molecules and replicas ---------------------------------------------------------------
def run_file_name(name: str, replica: int) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "molecule"
    return f"{safe[:80]}_r{replica}.h5"


def sample_many(
    teacher_factory: Callable[[Atoms], TeacherCalculator],
    molecules: Sequence[Atoms],
    out_dir: str | Path,
    config: SamplingConfig | None = None,
    replicas: int = 1,
    resume: bool = False,
    on_steps: Callable[[int], None] | None = None,
    on_result: Callable[[SampleResult], None] | None = None,
) -> list[SampleResult]:
    """Sample every molecule ``replicas`` times into ``out_dir/<name>_r<k>.h5``; replica ``k``
    uses seed ``config.seed + k``. A molecule that fails (unsupported element, SCF, force-field
    parametrization) is reported in its :class:`SampleResult` and the others go on."""
    from mlff_distiller.teachers.base import TeacherError

    cfg = config or SamplingConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for atoms in molecules:
        name = str(
            atoms.info.get(keys.NAME) or atoms.info.get(keys.SMILES) or atoms.get_chemical_formula()
        )
        teacher = None
        for k in range(replicas):
            path = out_dir / run_file_name(name, k)
            try:
                teacher = teacher or teacher_factory(atoms)
                n = sample(
                    teacher, atoms, path, cfg, resume=resume, seed=cfg.seed + k, on_steps=on_steps
                )
                res = SampleResult(name, k, path, True, n)
            except (TeacherError, UnsupportedElementError, ValueError, RuntimeError) as err:
                res = SampleResult(name, k, None, False, error=str(err))
            results.append(res)
            if on_result:
                on_result(res)
            if not res.ok:
                break  # the other replicas of this molecule would fail the same way
    return results


def total_steps(config: SamplingConfig, kind: str) -> int:
    """Integrator steps of one run (for a progress bar)."""
    cfg = config.resolved(kind)
    return (
        _n_equil(cfg)
        + int(round(cfg.production_fs / cfg.dt_fs))
        + int(round(cfg.nve_fs / cfg.nve_dt_fs))
    )
