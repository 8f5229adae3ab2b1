"""Reference MD with a teacher: NVT Langevin (equilibration until the target temperature is
reached, then production) and an optional NVE window, saved as an HDF5 trajectory that is
flushed per frame and can be resumed.

Two engines behind one loop: ASE's integrators for any teacher (``Langevin``,
``VelocityVerlet``), and OpenMM's own (``LangevinMiddleIntegrator``, ``VerletIntegrator``) for
the OpenMM teachers, which avoids a Python round trip per step. Frame times are measured from
the start of production (equilibration frames are not saved); NVE follows production.

**Equilibration** (:func:`equilibrate`). A minimised structure started with Maxwell-Boltzmann
velocities at ``T`` holds half the equilibrium energy (equipartition moves half the kinetic
energy into the potential), and under Langevin friction ``gamma`` the energy deficit of a
(near-)harmonic molecule decays as ``exp(-gamma t)``: ``d<E>/dt = gamma (n_dof kT - 2<K>)``. At
the production friction this is far too slow (1/ps: 1 ps per e-fold; 0.1/ps: 10 ps), which is
why 100 fs at 1/ps left the demo's "400 K" xTB MD at 252-281 K. So equilibration

1. runs at a strong friction ``gamma_eq = max(friction, 10/ps)``
   (``equilibration_friction_per_ps``) for at least ``equilibration_fs`` and at least
   ``equilibration_relaxation_times`` (5) relaxation times ``1/gamma_eq`` (500 fs at 10/ps):
   the start-up deficit (<= 50 %) then decays to < 0.4 %. This floor is what guarantees small
   molecules, whose temperature cannot be measured precisely in a short window (below);
2. then checks, every ``equilibration_window_fs`` (200 fs), the mean kinetic temperature over
   the last window against the target, and goes on until it is within
   ``max(temperature_tolerance * T, equilibration_sigmas * sigma_W)``, or until
   ``max_equilibration_fs``. ``sigma_W`` is the expected standard deviation of a window mean
   in equilibrium: one sample of the temperature of ``n_dof = 3N - 3 - n_constraints`` degrees
   of freedom fluctuates by ``T sqrt(2 / n_dof)`` (exact for the canonical ensemble: the
   kinetic energy is a chi-square of ``n_dof`` components), and a mean over ``W`` of a
   quantity that decorrelates at the thermostat rate ``gamma_eq`` has the variance factor
   ``f(x) = 2 (x - 1 + exp(-x)) / x^2``, ``x = gamma_eq W`` (``sigma_W = T sqrt(2 f / n_dof)``;
   an upper bound for harmonic modes, where only the energy part decays as slowly as
   ``gamma``). 2 sigma (not 3): a false alarm only costs one more window, a false pass would
   let a cold start into production. For a large system ``sigma_W`` is small and the 5 %
   tolerance decides; for a tiny molecule (methanol: ``sigma_W`` ~ 28 % of ``T`` at 200 fs)
   the check only catches gross errors and the floor of step 1 does the work;
3. then switches to the production friction. A run that reaches the cap without passing
   warns (:class:`EquilibrationWarning`) and records ``passed: false``; its data are kept.

Temperatures are measured only with :func:`mlff_distiller.thermo.temperature` (``3N - 3``
internal degrees of freedom). With ``n_c`` holonomic constraints (OpenMM H-bond constraints)
the kinetic energy is spread over ``3N - 3 - n_c`` degrees of freedom, so that reading is
multiplied by the ratio ``(3N - 3) / (3N - 3 - n_c)`` (recorded as ``temperature_dof``).
OpenMM's leapfrog integrators report half-step velocities ``v(t - dt/2)``; for
``LangevinMiddleIntegrator`` (LFMiddle) these are the velocities that sample the kinetic
temperature accurately (OpenMM documentation, and Zhang et al., J. Phys. Chem. A 123, 6056
(2019)), so the check and the recorded temperatures use them as they are.

**What the file records** (root attributes): ``keys.TARGET_TEMPERATURE``,
``keys.MEASURED_TEMPERATURE`` (mean over the production frames), ``measured_temperature_nve_k``
(mean over the NVE frames, NaN without NVE), ``equilibration`` (JSON: friction, minimum, cap,
window, time used, criterion, window mean, tolerance, passed), ``temperature_dof``, and
``keys.VELOCITY_CONVENTION``: ``keys.ON_STEP`` (ASE integrators: ``v(t)``) or
``keys.HALF_STEP`` (OpenMM's leapfrog integrators: ``v(t - dt/2)``).
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from mlff_distiller import keys, thermo, units
from mlff_distiller.teachers.base import TeacherCalculator, UnsupportedElementError
from mlff_distiller.teachers.parallel import teacher_pool

DEFAULT_DT_FS = {"mm": 2.0, "qm": 0.5, "ml": 0.5}
STRONG_FRICTION_PER_PS = 10.0  # default equilibration friction floor
CHECK_SAMPLES_PER_WINDOW = 20  # temperature samples per equilibration window (at least)

# root attributes written next to keys.TARGET_TEMPERATURE / keys.MEASURED_TEMPERATURE
EQUILIBRATION_ATTR = "equilibration"
MEASURED_NVE_TEMPERATURE = "measured_temperature_nve_k"
TEMPERATURE_DOF_ATTR = "temperature_dof"


class EquilibrationWarning(UserWarning):
    """Equilibration reached ``max_equilibration_fs`` without reaching the target."""


@dataclass
class SamplingConfig:
    """Options of one reference MD run (names match ``mlffd sample`` options).

    ``dt_fs`` None: 2 fs with H-bond constraints for MM teachers, 0.5 fs for QM/ML teachers.
    ``friction_per_ps``: Langevin friction of production. ``save_every``: steps between saved
    frames. ``nve_fs``: length of the NVE window after production (0: none), time step
    ``nve_dt_fs`` (None: ``dt_fs``). ``constraints``: ``"auto"`` (H-bonds for MM at dt > 1 fs),
    ``"hbonds"`` or ``"none"`` (OpenMM teachers only).

    Equilibration (see the module docstring): at ``equilibration_friction_per_ps`` (None:
    ``max(friction_per_ps, 10)``) for at least ``equilibration_fs`` and
    ``equilibration_relaxation_times / friction``, then until the mean temperature over the last
    ``equilibration_window_fs`` is within ``max(temperature_tolerance * T,
    equilibration_sigmas * sigma_window)`` of ``temperature_k``, at most
    ``max_equilibration_fs`` (None: the minimum + 10 windows). ``equilibration_fs = 0``: no
    equilibration at all (production starts from the given structure and fresh velocities).

    ``initial_temperature_k``: temperature of the fresh Maxwell-Boltzmann velocities (None:
    ``temperature_k``). From a minimised structure, ``2 * temperature_k`` reaches
    ``temperature_k`` by equipartition within a few vibrational periods, without equilibration
    steps (useful when every step is an expensive teacher call).
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
    equilibration_friction_per_ps: float | None = None
    equilibration_relaxation_times: float = 5.0
    equilibration_window_fs: float = 200.0
    temperature_tolerance: float = 0.05
    equilibration_sigmas: float = 2.0
    max_equilibration_fs: float | None = None
    initial_temperature_k: float | None = None

    @property
    def start_temperature_k(self) -> float:
        """K: the temperature of fresh starting velocities."""
        if self.initial_temperature_k is None:
            return self.temperature_k
        return self.initial_temperature_k

    def resolved(self, kind: str) -> SamplingConfig:
        """A copy with defaults that depend on the teacher kind filled in, checked."""
        out = SamplingConfig(**asdict(self))
        out.dt_fs = float(self.dt_fs or DEFAULT_DT_FS.get(kind, 0.5))
        out.nve_dt_fs = float(self.nve_dt_fs or out.dt_fs)
        if out.constraints == "auto":
            out.constraints = "hbonds" if kind == "mm" and out.dt_fs > 1.0 else "none"
        if out.constraints not in ("hbonds", "none"):
            raise ValueError(f"constraints must be auto, hbonds or none, not {out.constraints!r}")
        if out.equilibration_friction_per_ps is None:
            out.equilibration_friction_per_ps = max(out.friction_per_ps, STRONG_FRICTION_PER_PS)
        out.equilibration_friction_per_ps = float(out.equilibration_friction_per_ps)
        for name in (
            "temperature_k",
            "dt_fs",
            "friction_per_ps",
            "equilibration_friction_per_ps",
            "equilibration_window_fs",
        ):
            if getattr(out, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(out, name)}")
        if out.initial_temperature_k is not None and out.initial_temperature_k < 0:
            raise ValueError(
                "initial_temperature_k (mlffd sample --initial-temperature) must be >= 0 K, got "
                f"{out.initial_temperature_k}"
            )
        for name in (
            "equilibration_fs",
            "production_fs",
            "nve_fs",
            "equilibration_relaxation_times",
            "temperature_tolerance",
            "equilibration_sigmas",
        ):
            if getattr(out, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(out, name)}")
        if out.save_every < 1:
            raise ValueError(f"save_every must be >= 1, got {out.save_every}")
        if out.max_equilibration_fs is None:
            out.max_equilibration_fs = _min_equilibration_fs(out) + 10 * out.equilibration_window_fs
        out.max_equilibration_fs = float(out.max_equilibration_fs)
        if out.max_equilibration_fs < out.equilibration_fs:
            raise ValueError(
                f"max_equilibration_fs ({out.max_equilibration_fs:g}) must be >= "
                f"equilibration_fs ({out.equilibration_fs:g})"
            )
        return out


def _min_equilibration_fs(cfg: SamplingConfig) -> float:
    """Minimum equilibration of a resolved config: ``equilibration_fs``, and at least
    ``equilibration_relaxation_times / gamma_eq`` (never above the cap; 0 stays 0)."""
    if cfg.equilibration_fs <= 0:
        return 0.0
    floor = cfg.equilibration_relaxation_times * units.PS / cfg.equilibration_friction_per_ps
    t_min = max(cfg.equilibration_fs, floor)
    if cfg.max_equilibration_fs is not None:
        t_min = min(t_min, cfg.max_equilibration_fs)
    return float(t_min)


def window_sigma(
    temperature_k: float, n_dof: int, friction_per_ps: float, window_fs: float
) -> float:
    """Expected standard deviation (K) of the mean kinetic temperature over ``window_fs`` of
    Langevin dynamics at ``friction_per_ps`` in equilibrium: ``T sqrt(2 f(x) / n_dof)``,
    ``f(x) = 2 (x - 1 + exp(-x)) / x^2``, ``x = gamma W`` (module docstring)."""
    x = friction_per_ps / units.PS * window_fs
    f = 1.0 if x < 1e-6 else 2.0 * (x - 1.0 + math.exp(-x)) / x**2
    return float(temperature_k * math.sqrt(2.0 * f / n_dof))


@dataclass
class SampleResult:
    """Outcome of one (molecule, replica) run: ``ok`` with the path, or the error message.

    Temperatures (K) as the file records them (:func:`trajectory_temperatures`): the target,
    the mean over the production frames and over the NVE frames (None: none), and whether
    equilibration reached the target (None: not checked) after ``equilibration_fs``."""

    name: str
    replica: int
    path: Path | None
    ok: bool
    n_frames: int = 0
    error: str = ""
    target_temperature_k: float | None = None
    measured_temperature_k: float | None = None
    measured_temperature_nve_k: float | None = None
    equilibration_passed: bool | None = None
    equilibration_fs: float | None = None


# -- engines --------------------------------------------------------------------------------
class _ASEEngine:
    """ASE integrators around any teacher calculator (on-step velocities)."""

    velocity_convention = keys.ON_STEP

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
            thermalize_momenta(self.atoms, temperature_K=cfg.start_temperature_k, rng=rng)
            Stationary(self.atoms, preserve_temperature=False)
            ZeroRotation(self.atoms, preserve_temperature=False)
        else:
            self.atoms.set_velocities(units.velocities_internal_to_ase(velocities))
        self.masses = np.asarray(self.atoms.get_masses(), dtype=np.float64)
        self.n_constraints = 0
        self.cfg = cfg
        self.nve = False
        self.dyn = Langevin(
            self.atoms,
            timestep=cfg.dt_fs * units.ASE_TIME_PER_FS,
            temperature_K=cfg.temperature_k,
            friction=self._ase_friction(cfg.friction_per_ps),
            rng=rng,
            fixcm=False,
        )

    @staticmethod
    def _ase_friction(per_ps: float) -> float:
        return per_ps / units.PS / units.ASE_TIME_PER_FS  # 1/(ASE time)

    def set_friction(self, per_ps: float) -> None:
        if not self.nve:
            self.dyn.set_friction(self._ase_friction(per_ps))

    def to_nve(self) -> None:
        from ase.md.verlet import VelocityVerlet

        if self.nve:
            return
        self.nve = True
        self.dyn = VelocityVerlet(self.atoms, timestep=self.cfg.nve_dt_fs * units.ASE_TIME_PER_FS)

    def run(self, n_steps: int) -> None:
        self.dyn.run(n_steps)

    def velocities(self) -> np.ndarray:
        return units.velocities_ase_to_internal(self.atoms.get_velocities())

    def frame(self) -> dict[str, Any]:
        a = self.atoms
        velocities = self.velocities()
        return {
            keys.POSITIONS: a.positions.copy(),
            keys.VELOCITIES: velocities,
            keys.ENERGY: float(a.get_potential_energy()),
            keys.FORCES: a.get_forces().copy(),
            keys.KINETIC_ENERGY: float(thermo.kinetic_energy(velocities, a.get_masses())[0]),
        }


class _OpenMMEngine:
    """OpenMM's integrators on the teacher's own System (the fast path for MM teachers).
    Velocities of these leapfrog integrators are half a step behind the positions."""

    velocity_convention = keys.HALF_STEP

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

        self.langevin = openmm.LangevinMiddleIntegrator(
            cfg.temperature_k * unit.kelvin,
            cfg.friction_per_ps / unit.picosecond,
            cfg.dt_fs * unit.femtosecond,
        )
        self.langevin.setRandomNumberSeed(int(rng.integers(1, 2**31 - 1)))
        verlet = openmm.VerletIntegrator(cfg.nve_dt_fs * unit.femtosecond)
        self.integrator = openmm.CompoundIntegrator()
        self.integrator.addIntegrator(self.langevin)
        self.integrator.addIntegrator(verlet)
        constraints = "hbonds" if cfg.constraints == "hbonds" else None
        self.context, self.system = teacher.create_context(atoms, self.integrator, constraints)
        if constraints:
            self.langevin.setConstraintTolerance(1e-7)
            verlet.setConstraintTolerance(1e-7)
            self.context.applyConstraints(1e-7)
        if velocities is None:
            self.context.setVelocitiesToTemperature(
                cfg.start_temperature_k * unit.kelvin, int(rng.integers(1, 2**31 - 1))
            )
        else:
            self.context.setVelocities(velocities_to_openmm(velocities))
        if constraints:
            self.context.applyVelocityConstraints(1e-7)
        self.masses = np.array(
            [
                self.system.getParticleMass(i).value_in_unit(unit.dalton)
                for i in range(self.system.getNumParticles())
            ],
            dtype=np.float64,
        )
        self.n_constraints = int(self.system.getNumConstraints())

    def set_friction(self, per_ps: float) -> None:
        from openmm import unit

        self.langevin.setFriction(per_ps / unit.picosecond)

    def to_nve(self) -> None:
        self.integrator.setCurrentIntegrator(1)

    def run(self, n_steps: int) -> None:
        self.integrator.step(int(n_steps))

    def velocities(self) -> np.ndarray:
        from mlff_distiller.teachers.openmm_base import state_velocities

        return state_velocities(self.context.getState(getVelocities=True))

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


# -- temperatures ---------------------------------------------------------------------------
def temperature_dof(engine) -> int:
    """Kinetic degrees of freedom of the engine's molecule: ``3N - 3 - n_constraints``."""
    return 3 * len(engine.masses) - 3 - int(engine.n_constraints)


def kinetic_temperature(velocities: np.ndarray, engine) -> np.ndarray | float:
    """Temperature (K) of ``velocities`` ((n, 3) or (frames, n, 3), Å/fs) with the engine's
    masses: :func:`mlff_distiller.thermo.temperature`, times ``(3N - 3) / (3N - 3 - n_c)``
    when ``n_c`` bonds are constrained (module docstring)."""
    from mlff_distiller import thermo  # torch: imported when first needed

    n_dof = temperature_dof(engine)
    if n_dof <= 0:
        return float("nan") if np.ndim(velocities) == 2 else np.full(len(velocities), np.nan)
    scale = (3 * len(engine.masses) - 3) / n_dof
    t = np.asarray(thermo.temperature(np.asarray(velocities), engine.masses))[..., 0] * scale
    return float(t) if t.ndim == 0 else t


def equilibrate(
    engine,
    cfg: SamplingConfig,
    on_steps: Callable[[int], None] | None = None,
    name: str = "",
) -> dict[str, Any]:
    """Equilibrate ``engine`` (resolved ``cfg``) as the module docstring describes; leaves it at
    the production friction. Returns the record stored in the ``equilibration`` attribute."""
    target = float(cfg.temperature_k)
    t_min, t_max = _min_equilibration_fs(cfg), float(cfg.max_equilibration_fs)
    window, gamma = float(cfg.equilibration_window_fs), float(cfg.equilibration_friction_per_ps)
    n_dof = temperature_dof(engine)
    record: dict[str, Any] = {
        "friction_per_ps": gamma,
        "min_fs": t_min,
        "max_fs": t_max,
        "window_fs": window,
        "time_fs": 0.0,
        "checks": 0,
        "window_mean_k": None,
        "window_sigma_k": None,
        "tolerance_k": None,
        "passed": None,
    }
    if cfg.equilibration_fs <= 0:
        record["criterion"] = "none (equilibration_fs = 0)"
        return record
    if n_dof <= 0:
        record["criterion"] = "none (no internal degrees of freedom)"
    sigma = window_sigma(target, n_dof, gamma, window) if n_dof > 0 else float("nan")
    tolerance = max(cfg.temperature_tolerance * target, cfg.equilibration_sigmas * sigma)
    if n_dof > 0:
        record.update(
            criterion=(
                f"|mean T over the last {window:g} fs - {target:g} K| <= max("
                f"{cfg.temperature_tolerance:g} T, {cfg.equilibration_sigmas:g} sigma_W), "
                f"sigma_W = T sqrt(2 f(gamma W) / {n_dof}) (thermo.temperature, "
                f"{engine.velocity_convention} velocities)"
            ),
            window_sigma_k=sigma,
            tolerance_k=tolerance,
        )
    n_min = max(1, int(round(t_min / cfg.dt_fs)))
    n_max = max(n_min, int(round(t_max / cfg.dt_fs)))
    n_win = max(1, int(round(window / cfg.dt_fs)))
    every = max(1, min(cfg.save_every, n_win // CHECK_SAMPLES_PER_WINDOW))
    engine.set_friction(gamma)
    samples: list[tuple[int, float]] = []
    step, next_check = 0, n_min
    while True:
        n = min(every, next_check - step)
        engine.run(n)
        step += n
        if on_steps:
            on_steps(n)
        if n_dof <= 0:
            if step >= n_min:
                break
            continue
        samples.append((step, kinetic_temperature(engine.velocities(), engine)))
        if step < next_check:
            continue
        samples = [s for s in samples if s[0] > step - n_win]
        mean = float(np.mean([t for _, t in samples]))
        record["checks"] += 1
        record["window_mean_k"] = mean
        record["passed"] = bool(abs(mean - target) <= tolerance)
        if record["passed"] or step >= n_max:
            break
        next_check = min(step + n_win, n_max)
    engine.set_friction(cfg.friction_per_ps)
    record["time_fs"] = step * cfg.dt_fs
    if record["passed"] is False:
        warnings.warn(
            f"{name or 'sampling'}: equilibration did not reach {target:g} K within "
            f"{record['time_fs']:g} fs (max_equilibration_fs): the mean over the last "
            f"{window:g} fs was {record['window_mean_k']:.1f} K, tolerance +-{tolerance:.1f} K. "
            "The data are kept and the file records passed=false in its 'equilibration' "
            "attribute; raise max_equilibration_fs or equilibration_friction_per_ps.",
            EquilibrationWarning,
            stacklevel=3,
        )
    return record


def equilibrated_structure(
    teacher, atoms: Atoms, cfg: SamplingConfig, kind: str, name: str = ""
) -> tuple[Atoms, dict[str, Any]]:
    """``atoms`` moved by :func:`equilibrate` with ``teacher`` (any ASE calculator; OpenMM
    teachers on their own integrators), returned without momenta so that each run drawn from
    it starts with fresh Maxwell-Boltzmann velocities (the k-step benchmark's start protocol),
    and the equilibration record. ``kind``: ``mm`` or ``qm`` (time-step defaults)."""
    cfg = cfg.resolved(kind)
    start = atoms.copy()
    start.set_momenta(np.zeros((len(start), 3)))
    engine = make_engine(teacher, start, cfg, seed=cfg.seed)
    record = equilibrate(engine, cfg, name=name)
    out = atoms.copy()
    out.positions = engine.frame()[keys.POSITIONS]
    out.set_momenta(np.zeros((len(out), 3)))
    return out, record


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
    """Run equilibration (until the target temperature is reached, :func:`equilibrate`),
    production (NVT) and the NVE window for ``atoms``; write every ``save_every``-th step of
    production/NVE to ``out_path``. Returns the frames in the file; the temperatures it reached
    are root attributes of the file (:func:`trajectory_temperatures`).

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
    old_times, old_velocities, old_attrs = np.zeros(0), None, {}
    if resume and out_path.exists():
        with Dataset(out_path) as ds:
            n_done = len(ds)
            if n_done:
                old_attrs = dict(ds.attrs)
                old = [ds.get_arrays(i) for i in range(n_done)]
                old_times = np.array([float(f[keys.TIME]) for f in old])
                old_velocities = np.stack([f[keys.VELOCITIES] for f in old])
                positions, velocities = old[-1][keys.POSITIONS], old[-1][keys.VELOCITIES]
                start_step = _step_of_time(float(old_times[-1]), cfg, n_prod)
    if start_step >= total_saved_steps and velocities is not None:
        if on_steps:
            on_steps(_n_equil(cfg) + total_saved_steps)
        with Dataset(out_path) as ds:
            return len(ds)
    work = atoms.copy()
    work.positions = positions
    engine = make_engine(teacher, work, cfg, velocities, seed + start_step)
    stored = old_attrs.get(keys.VELOCITY_CONVENTION)
    if stored is not None and stored != engine.velocity_convention:
        raise ValueError(
            f"{out_path} holds {stored} velocities but this engine writes "
            f"{engine.velocity_convention} ones; resume it with the teacher that wrote it"
        )
    attrs = {
        **teacher.info.attrs(),
        "sampling": json.dumps(asdict(cfg)),
        "nve_start_fs": cfg.production_fs,
        "replica_seed": seed,
        keys.VELOCITY_CONVENTION: engine.velocity_convention,
        keys.TARGET_TEMPERATURE: float(cfg.temperature_k),
        keys.MEASURED_TEMPERATURE: float("nan"),  # set when the run ends
        MEASURED_NVE_TEMPERATURE: float("nan"),
        TEMPERATURE_DOF_ATTR: temperature_dof(engine),
        EQUILIBRATION_ATTR: {"passed": None, "criterion": "not run yet"},
    }
    mode = "a" if (resume and velocities is not None) else "w"
    if mode == "a":  # keep what the file says; add what an older file lacks
        attrs[EQUILIBRATION_ATTR] = {"passed": None, "criterion": "not recorded"}
        attrs = {k: v for k, v in attrs.items() if k not in old_attrs}
    times = list(old_times)
    temps = list(kinetic_temperature(old_velocities, engine)) if old_velocities is not None else []
    with DatasetWriter(out_path, mode=mode, attrs=attrs) as writer:
        if velocities is None:  # fresh start: equilibrate, save the t=0 frame
            record = equilibrate(engine, cfg, on_steps, name)
            writer.set_attrs({EQUILIBRATION_ATTR: record})
            temps.append(_save(writer, engine, work.numbers, 0.0, name, smiles))
            times.append(0.0)
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
            temps.append(_save(writer, engine, work.numbers, writer_time, name, smiles))
            times.append(writer_time)
        writer.set_attrs(_measured_temperatures(np.array(times), np.array(temps), cfg, n_prod))
        return len(writer)


def _measured_temperatures(times, temps, cfg: SamplingConfig, n_prod: int) -> dict[str, float]:
    """Mean temperature of the production frames (t <= t_prod; none without production) and
    of the NVE frames (t > t_prod, and the t = 0 frame when there is no production)."""
    t_prod = n_prod * cfg.dt_fs
    if n_prod > 0:
        prod, nve = times <= t_prod + 1e-9, times > t_prod + 1e-9
    else:
        prod, nve = np.zeros(len(times), dtype=bool), np.ones(len(times), dtype=bool)
    return {
        keys.MEASURED_TEMPERATURE: float(np.mean(temps[prod])) if prod.any() else float("nan"),
        MEASURED_NVE_TEMPERATURE: float(np.mean(temps[nve])) if nve.any() else float("nan"),
    }


def trajectory_temperatures(path: str | Path) -> dict[str, Any]:
    """What a sampled trajectory says about its temperature: ``target_k``, ``measured_k``
    (production mean), ``measured_nve_k`` (None: not recorded or no such frames),
    ``equilibration`` (the record of :func:`equilibrate`, {} if absent), ``velocity_convention``.
    """
    from mlff_distiller.data.hdf5 import read_root_attrs

    attrs = read_root_attrs(path)

    def number(key):
        value = attrs.get(key)
        return None if value is None or not math.isfinite(float(value)) else float(value)

    equilibration = attrs.get(EQUILIBRATION_ATTR) or {}
    return {
        "target_k": number(keys.TARGET_TEMPERATURE),
        "measured_k": number(keys.MEASURED_TEMPERATURE),
        "measured_nve_k": number(MEASURED_NVE_TEMPERATURE),
        "equilibration": equilibration if isinstance(equilibration, dict) else {},
        "velocity_convention": attrs.get(keys.VELOCITY_CONVENTION),
    }


def _n_equil(cfg: SamplingConfig) -> int:
    """Steps of the minimum equilibration (more are run if the check asks for them)."""
    return int(round(_min_equilibration_fs(cfg) / cfg.dt_fs))


def _time_of_step(step: int, cfg: SamplingConfig, n_prod: int) -> float:
    if step <= n_prod:
        return step * cfg.dt_fs
    return n_prod * cfg.dt_fs + (step - n_prod) * cfg.nve_dt_fs


def _step_of_time(t: float, cfg: SamplingConfig, n_prod: int) -> int:
    t_prod = n_prod * cfg.dt_fs
    if t <= t_prod + 1e-9:
        return int(round(t / cfg.dt_fs))
    return n_prod + int(round((t - t_prod) / cfg.nve_dt_fs))


def _save(writer, engine, numbers, time_fs: float, name: str, smiles: str) -> float:
    """Append the engine's current frame; returns its temperature (K)."""
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
    return kinetic_temperature(fr[keys.VELOCITIES], engine)


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
    workers: int | None = None,
) -> list[SampleResult]:
    """Sample every molecule ``replicas`` times into ``out_dir/<name>_r<k>.h5``; replica ``k``
    uses seed ``config.seed + k``. A molecule that fails (unsupported element, SCF, force-field
    parametrization) is reported in its :class:`SampleResult` and the others go on. Each result
    carries the target and measured temperatures its file records. Results are returned in
    (molecule, replica) order.

    Teachers that can run at once (``concurrent_calls``: GFN2-xTB) sample their runs on a
    thread pool, one teacher per run, built in this thread
    (:func:`~mlff_distiller.teachers.parallel.teacher_pool`; ``workers=1``, or a factory that
    returns one instance for several runs: one run after another); ``on_steps`` is then called
    from the worker threads and ``on_result`` from this one, as runs finish. Each run has its
    own seed and file, so its trajectory does not depend on the others."""
    from mlff_distiller.teachers.base import TeacherError

    cfg = config or SamplingConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [
        str(a.info.get(keys.NAME) or a.info.get(keys.SMILES) or a.get_chemical_formula())
        for a in molecules
    ]

    def run(atoms: Atoms, name: str, k: int, teacher) -> SampleResult:
        path = out_dir / run_file_name(name, k)
        try:
            teacher = teacher or teacher_factory(atoms)
            n = sample(teacher, atoms, path, cfg, resume=resume, seed=cfg.seed + k,
                       on_steps=on_steps)  # fmt: skip
            temps = trajectory_temperatures(path)
            return SampleResult(
                name, k, path, True, n,
                target_temperature_k=temps["target_k"],
                measured_temperature_k=temps["measured_k"],
                measured_temperature_nve_k=temps["measured_nve_k"],
                equilibration_passed=temps["equilibration"].get("passed"),
                equilibration_fs=temps["equilibration"].get("time_fs"),
            )  # fmt: skip
        except (TeacherError, UnsupportedElementError, ValueError, RuntimeError) as err:
            return SampleResult(name, k, None, False, error=str(err))

    jobs = [(atoms, name, k) for atoms, name in zip(molecules, names) for k in range(replicas)]
    teachers, first = None, None
    if jobs and workers != 1:
        teachers, first = _run_teachers(teacher_factory, jobs)
    pool = teacher_pool(len(jobs), workers) if teachers is not None else None
    if pool is None:  # one run after another, one teacher per molecule
        results: list[SampleResult] = []
        for m, (atoms, name) in enumerate(zip(molecules, names)):
            teacher = first if m == 0 else None
            for k in range(replicas):
                try:
                    teacher = teacher or teacher_factory(atoms)
                except (TeacherError, UnsupportedElementError, ValueError, RuntimeError):
                    teacher = None  # run() builds it again and reports the error
                res = run(atoms, name, k, teacher)
                results.append(res)
                if on_result:
                    on_result(res)
                if not res.ok:
                    break  # the other replicas of this molecule would fail the same way
        return results
    with pool:
        futures = {
            pool.submit(run, atoms, name, k, teacher): j
            for j, ((atoms, name, k), teacher) in enumerate(zip(jobs, teachers))
        }
        done: dict[int, SampleResult] = {}
        for future in as_completed(futures):
            res = future.result()
            done[futures[future]] = res
            if on_result:
                on_result(res)
    return [done[j] for j in range(len(jobs))]


def _run_teachers(teacher_factory, jobs) -> tuple[list | None, Any]:
    """``(one teacher per run or None, the first run's teacher)``. The teachers are built here
    in the calling thread (None for a run whose teacher fails to build: the run reports the
    error). No list when the first teacher cannot run concurrently (then it is the only one
    built, for the serial path to use) or when the factory hands one instance to two runs
    (one engine must never compute two structures at once)."""
    from mlff_distiller.teachers.base import TeacherError

    def build(atoms):
        try:
            return teacher_factory(atoms)
        except (TeacherError, UnsupportedElementError, ValueError, RuntimeError):
            return None

    first = build(jobs[0][0])
    if first is None or not getattr(first, "concurrent_calls", False):
        return None, first
    teachers = [first, *(build(atoms) for atoms, _, _ in jobs[1:])]
    built = [t for t in teachers if t is not None]
    concurrent = all(getattr(t, "concurrent_calls", False) for t in built)
    if not concurrent or len({id(t) for t in built}) < len(built):
        return None, first
    return teachers, first


def total_steps(config: SamplingConfig, kind: str) -> int:
    """Integrator steps of one run (for a progress bar), counting the minimum equilibration:
    a run whose temperature check asks for more equilibration does more steps."""
    cfg = config.resolved(kind)
    return (
        _n_equil(cfg)
        + int(round(cfg.production_fs / cfg.dt_fs))
        + int(round(cfg.nve_fs / cfg.nve_dt_fs))
    )
