"""Run student MD for many structures at once with the batched engine, writing an HDF5 trajectory.

All structures advance together in one :class:`~mlff_distiller.data.state.MDState`; each force
call is one batched ``model.energy_and_forces``. Every ``save_every`` steps one frame per
structure is appended (positions, velocities Å/fs, forces, potential/kinetic energy, time fs)
and committed, so a killed run keeps every saved frame and ``resume=True`` continues from the
last one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.md.velocitydistribution import Stationary, thermalize_momenta

from mlff_distiller import keys, units
from mlff_distiller.data.state import MDState
from mlff_distiller.md.integrators import langevin_baoab_step, velocity_verlet_step, with_forces


class MDError(RuntimeError):
    """The simulation blew up (non-finite positions or energies) or cannot resume."""


@dataclass
class MDConfig:
    """Options of a batched student MD run (field names match ``mlffd md`` options)."""

    steps: int = 1000
    dt_fs: float = 0.5
    ensemble: str = "nvt"  # "nvt" (Langevin BAOAB) or "nve" (velocity Verlet)
    temperature_k: float = 300.0
    friction_per_ps: float = 1.0
    save_every: int = 10
    seed: int = 0
    forces: str = "analytical"  # or "autograd"

    def __post_init__(self) -> None:
        if self.ensemble not in ("nvt", "nve"):
            raise ValueError(f"ensemble must be 'nvt' or 'nve', got {self.ensemble!r}")
        if self.dt_fs <= 0 or self.steps < 0 or self.save_every < 1:
            raise ValueError(
                f"need dt_fs > 0, steps >= 0 and save_every >= 1; got dt_fs={self.dt_fs}, "
                f"steps={self.steps}, save_every={self.save_every}"
            )


@dataclass
class MDResult:
    state: MDState
    steps_done: int
    frames_written: int
    seconds: float
    fallbacks: int = 0  # structure-steps that used the teacher's forces (teacher_fallback)

    @property
    def steps_per_second(self) -> float:
        return self.steps_done / self.seconds if self.seconds > 0 else float("nan")


def initial_state(
    structures: Sequence[Atoms],
    temperature_k: float,
    seed: int,
    dtype: torch.dtype = torch.float64,
    device=None,
) -> MDState:
    """Batched state; structures without momenta get Maxwell-Boltzmann velocities at
    ``temperature_k`` (seeded, zero total momentum)."""
    rng = np.random.default_rng(seed)
    prepared = [with_velocities(atoms, temperature_k, rng) for atoms in structures]
    return MDState.from_atoms(prepared, dtype=dtype, device=device)


def with_velocities(atoms: Atoms, temperature_k: float, rng: np.random.Generator) -> Atoms:
    """A copy of ``atoms``; without momenta it gets Maxwell-Boltzmann velocities at
    ``temperature_k`` from ``rng`` with zero total momentum (the start of every engine's run)."""
    atoms = atoms.copy()
    if not np.any(atoms.get_momenta()):
        thermalize_momenta(atoms, temperature_K=temperature_k, rng=rng)
        Stationary(atoms, preserve_temperature=False)  # ASE would rescale to 3N dof
    return atoms


def run_md(
    model: torch.nn.Module,
    structures: Sequence[Atoms],
    config: MDConfig,
    out: str | Path | None = None,
    resume: bool = False,
    dtype: torch.dtype = torch.float64,
    device=None,
    progress: bool = True,
    compile: bool | None = None,
    retain_memory: bool = True,
    teacher_fallback=None,
    max_uncertainty: float | None = None,
    fallback_out: str | Path | None = None,
    check_every: int = 1,
) -> MDResult:
    """Advance all ``structures`` ``config.steps`` steps together.

    ``out``: HDF5 trajectory (one frame per structure every ``save_every`` steps, structure s
    of save k at index ``k * n_structures + s``). ``resume``: continue from the last complete
    save in ``out`` (positions and velocities), running only the steps still missing.
    ``compile``: None (default) runs the compiled analytical forces where possible (see
    :mod:`mlff_distiller.models.fast_path`), False eager. ``retain_memory`` (default True):
    glibc keeps freed memory in the process (:mod:`mlff_distiller.models.cpu_memory`), so large
    batches keep their per-atom throughput. The caller's model is never modified (a copy runs).
    ``teacher_fallback``: an ASE calculator (a teacher) that takes over every structure and step
    whose committee uncertainty exceeds ``max_uncertainty`` (eV/Å; ``model`` must be a committee,
    see :class:`~mlff_distiller.md.fallback.TeacherFallback`); those frames go to
    ``fallback_out`` with the teacher's labels, and ``MDResult.fallbacks`` counts them.
    ``check_every`` (committees): member 0 drives and the whole committee (its uncertainty,
    the fallback decision) runs every ``check_every`` steps (:attr:`Committee.check_every`).
    """
    import time

    from mlff_distiller.data.hdf5 import DatasetWriter
    from mlff_distiller.models.cpu_memory import retain_freed_cpu_memory
    from mlff_distiller.models.fast_path import private_copy, resolve_compile

    if retain_memory:
        retain_freed_cpu_memory()
    model = private_copy(model, device, dtype)
    from mlff_distiller.md.calculator import check_elements, model_elements

    allowed = model_elements(model)
    for atoms in structures:
        name = atoms.info.get("name") or atoms.get_chemical_formula()
        check_elements(allowed, atoms.numbers, f"structure {name!r}")
    compiled = resolve_compile(compile, config.forces, model_device(model))
    if hasattr(model, "compile_forces"):
        model.compile_forces(compiled)
    if check_every != 1:
        if not hasattr(model, "set_check_every"):
            raise ValueError(f"check_every={check_every} needs a committee model")
        model.set_check_every(check_every)
    n_sys = len(structures)
    names = [a.info.get("name") or a.get_chemical_formula() for a in structures]
    fallback = None
    if teacher_fallback is not None:
        from mlff_distiller.md.fallback import TeacherFallback

        if max_uncertainty is None:
            raise ValueError("teacher_fallback needs max_uncertainty (eV/Å)")
        fallback = TeacherFallback(model, teacher_fallback, max_uncertainty, fallback_out, names)
        model = fallback
    state = initial_state(structures, config.temperature_k, config.seed, dtype, device)
    start_step = 0
    writer = None
    if out is not None:
        out = Path(out)
        if resume and out.exists():
            state, start_step = _resume_state(out, state, n_sys, config)
        attrs = {"teacher": "student", "md": _config_attrs(config),
                 keys.VELOCITY_CONVENTION: keys.ON_STEP}  # fmt: skip
        writer = DatasetWriter(out, mode="a" if resume else "w", attrs=attrs, flush_every=n_sys)
    generator = torch.Generator(device=state.positions.device).manual_seed(config.seed + start_step)
    friction_per_fs = config.friction_per_ps / units.PS
    state = with_forces(state, model, config.forces)
    check_finite(state, names, start_step)
    if writer is not None and start_step == 0:
        write_frames(writer, state, names, 0.0)
    t0 = time.perf_counter()
    steps = range(start_step + 1, config.steps + 1)
    with StepProgress(progress, len(steps)) as advance:
        for step in steps:
            if config.ensemble == "nve":
                state = velocity_verlet_step(state, model, config.dt_fs, config.forces)
            else:
                state = langevin_baoab_step(
                    state,
                    model,
                    config.dt_fs,
                    config.temperature_k,
                    friction_per_fs,
                    generator=generator,
                    method=config.forces,
                )
            if step % config.save_every == 0:
                check_finite(state, names, step)
                if writer is not None:
                    write_frames(writer, state, names, step * config.dt_fs)
            advance()
    seconds = time.perf_counter() - t0
    check_finite(state, names, config.steps)
    frames = 0
    if writer is not None:
        frames = len(writer)
        writer.close()
    if fallback is not None:
        fallback.close()
    return MDResult(state, len(steps), frames, seconds, fallback.n_fallbacks if fallback else 0)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's first parameter (CPU for a model without parameters)."""
    first = next(iter(model.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


def _config_attrs(config: MDConfig) -> dict:
    return {k: getattr(config, k) for k in config.__dataclass_fields__}


def write_frames(writer, state: MDState, names: list[str], time_fs: float) -> None:
    """Append one frame per structure of ``state`` (positions, velocities Å/fs, forces,
    energies) to ``writer``; every engine writes its trajectories through this."""
    pos = state.positions.detach().cpu().double().numpy()
    vel = state.velocities.detach().cpu().double().numpy()
    frc = state.forces.detach().cpu().double().numpy()
    energy = state.energy.detach().cpu().double().numpy()
    kinetic = state.kinetic_energy().detach().cpu().double().numpy()
    z = state.atomic_numbers.cpu().numpy()
    cell = state.cell.detach().cpu().double().numpy()
    pbc = state.pbc.cpu().numpy()
    idx = state.system_idx.cpu().numpy()
    for s, name in enumerate(names):
        m = idx == s
        writer.append_frame(
            z[m],
            pos[m],
            cell=cell[s],
            pbc=pbc[s],
            energy=float(energy[s]),
            forces=frc[m],
            velocities=vel[m],
            time=time_fs,
            kinetic_energy=float(kinetic[s]),
            potential_energy=float(energy[s]),
            molecule=name,
        )


def check_finite(state: MDState, names: list[str], step: int) -> None:
    """Raise :class:`MDError` naming the structures with non-finite positions or energy."""
    bad_atoms = ~torch.isfinite(state.positions).all(dim=1)
    bad = torch.unique(state.system_idx[bad_atoms]).tolist()
    if state.energy is not None:
        bad += torch.nonzero(~torch.isfinite(state.energy)).flatten().tolist()
    if bad:
        which = ", ".join(sorted({names[s] for s in bad}))
        raise MDError(
            f"MD blew up at step {step}: non-finite positions or energy for {which}; "
            "use a smaller time step or check the model on these structures"
        )


def _resume_state(path: Path, state: MDState, n_sys: int, config: MDConfig) -> tuple[MDState, int]:
    from mlff_distiller.data.hdf5 import Dataset

    with Dataset(path) as ds:
        n = len(ds)
        if n == 0:
            return state, 0
        if n % n_sys:
            raise MDError(
                f"{path} holds {n} frames, not a multiple of the {n_sys} structures of this run; "
                "it was written by a different run: choose another --out"
            )
        last = [ds.get_arrays(i) for i in range(n - n_sys, n)]
    z = np.concatenate([f[keys.ATOMIC_NUMBERS] for f in last])
    if not np.array_equal(z, state.atomic_numbers.cpu().numpy()):
        raise MDError(f"{path} holds other structures than this run; choose another --out")
    time_fs = float(last[0][keys.TIME])
    step = int(round(time_fs / config.dt_fs))
    like = state.positions
    pos = torch.as_tensor(np.concatenate([f[keys.POSITIONS] for f in last]), dtype=like.dtype)
    vel = torch.as_tensor(np.concatenate([f[keys.VELOCITIES] for f in last]), dtype=like.dtype)
    return state.replace(positions=pos.to(like.device), velocities=vel.to(like.device)), step


class StepProgress:
    """A rich progress bar (or nothing) whose ``advance()`` moves one step."""

    def __init__(self, enabled: bool, total: int):
        self.enabled, self.total = enabled, total
        self._bar = None

    def __enter__(self):
        if not self.enabled or self.total == 0:
            return lambda: None
        from rich.progress import Progress

        self._bar = Progress(transient=True)
        self._bar.start()
        task = self._bar.add_task("MD steps", total=self.total)
        return lambda: self._bar.advance(task)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()
