"""Run the student in torch-sim (``torch-sim-atomistic``): a ``ModelInterface`` and an MD runner.

>>> from mlff_distiller.md.torchsim import StudentModel, run_torchsim_md
>>> ts_model = StudentModel("runs/student/", device="cuda", dtype=torch.float64)
>>> out = ts_model(sim_state)  # {"energy": (n_systems,) eV, "forces": (n_atoms, 3) eV/Å}
>>> result = run_torchsim_md(student, structures, MDConfig(steps=1000), out="md.h5")

torch-sim is optional (``pip install mlff_distiller[torchsim]``); importing this module without
it raises an ``ImportError`` that says so, and nothing else in :mod:`mlff_distiller.md` imports it.

Conventions at the boundary (converted here and nowhere else):

- torch-sim's ``SimState.cell`` holds lattice vectors as *columns*; :class:`AtomsBatch` and
  :class:`~mlff_distiller.data.state.MDState` hold them as rows (``row_vector_cell``).
- torch-sim's time unit is ASE's, ``sqrt(amu Å^2 / eV)`` (about 10.18 fs): ``dt`` is
  ``dt_fs * units.ASE_TIME_PER_FS``, momenta are amu·Å per that unit, friction is per that unit.
- torch-sim 0.3 has one ``pbc`` flag for all systems (periodic in all three directions or none).
"""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from ase import Atoms

from mlff_distiller import keys, units
from mlff_distiller.data.batch import AtomsBatch
from mlff_distiller.data.state import MDState
from mlff_distiller.md.calculator import check_elements, model_elements
from mlff_distiller.md.runner import (
    MDConfig,
    MDResult,
    StepProgress,
    _config_attrs,
    check_finite,
    initial_state,
    model_device,
    write_frames,
)
from mlff_distiller.models.fast_path import private_copy, resolve_compile
from mlff_distiller.models.io import load_model

try:
    from torch_sim import integrators as ts_integrators
    from torch_sim.models.interface import ModelInterface
    from torch_sim.state import SimState
except ImportError as _err:  # pragma: no cover - exercised only without torch-sim
    raise ImportError(
        "mlff_distiller.md.torchsim needs torch-sim (torch-sim-atomistic>=0.3,<0.4, "
        f"Python >= 3.11): pip install 'mlff_distiller[torchsim]' ({_err})"
    ) from _err

__all__ = [
    "StudentModel",
    "run_torchsim_md",
    "state_to_batch",
    "from_torchsim_state",
    "to_torchsim_state",
]

FORCE_METHODS = ("analytical", "autograd")


class StudentModel(ModelInterface):
    """A student force field (e.g. :class:`~mlff_distiller.models.painn.PaiNN`) as a torch-sim
    ``ModelInterface``.

    ``model``: an ``nn.Module`` with ``energy_and_forces(batch, method)`` or a directory saved by
    :func:`~mlff_distiller.models.io.save_model`. A private copy on ``device`` in ``dtype`` runs
    (the caller's module is never cast or changed). ``device``: default the model's device.
    ``forces``: ``"analytical"`` or ``"autograd"``. ``compile``: None (default) runs the
    compiled analytical forces where possible (see :mod:`mlff_distiller.models.fast_path`),
    False eager, True insists on compiling.
    ``compute_stress=True`` needs a model whose ``energy_and_forces`` accepts ``stress=True``
    (returning ``keys.STRESS`` (n_systems, 3, 3) eV/Å^3, ASE's sign convention).

    ``forward(state)`` returns ``{"energy": (n_systems,) eV, "forces": (n_atoms, 3) eV/Å}``
    (+ ``"stress"`` (n_systems, 3, 3) eV/Å^3 with ``compute_stress``), in the state's dtype.
    """

    def __init__(
        self,
        model: torch.nn.Module | str | Path,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float64,
        compute_forces: bool = True,
        compute_stress: bool = False,
        forces: str = "analytical",
        compile: bool | None = None,
    ) -> None:
        super().__init__()
        if forces not in FORCE_METHODS:
            raise ValueError(f"forces must be 'analytical' or 'autograd', got {forces!r}")
        if isinstance(model, (str, Path)):
            student = load_model(model, device=device).to(dtype=dtype).eval()  # ours to cast
        else:
            student = private_copy(model, device or model_device(model), dtype)
        self._device = model_device(student)
        self._dtype = dtype
        compiled = resolve_compile(compile, forces, self._device)
        if hasattr(student, "compile_forces"):
            student.compile_forces(compiled)
        elif compiled and compile:
            raise ValueError(f"{type(student).__name__} has no compiled forces (compile_forces)")
        else:
            compiled = False
        self.compiled = compiled
        self.model = student
        self._memory_scales_with = "n_atoms_x_density"  # radial cutoff: neighbours ~ density
        self.force_method = forces
        self._stress_supported = "stress" in inspect.signature(student.energy_and_forces).parameters
        self._compute_forces = bool(compute_forces)
        self._compute_stress = False
        self.compute_stress = compute_stress  # validated by the setter

    # torch-sim's validate_model_outputs switches these on when the setters allow it
    @property
    def compute_forces(self) -> bool:
        """Whether ``forward`` returns ``"forces"``."""
        return self._compute_forces

    @compute_forces.setter
    def compute_forces(self, value: bool) -> None:
        self._compute_forces = bool(value)

    @property
    def compute_stress(self) -> bool:
        """Whether ``forward`` returns ``"stress"`` (only models with stress support)."""
        return self._compute_stress

    @compute_stress.setter
    def compute_stress(self, value: bool) -> None:
        if value and not self._stress_supported:
            raise NotImplementedError(
                f"{type(self.model).__name__}.energy_and_forces has no stress=True option, so "
                "StudentModel cannot compute stress: use compute_stress=False (NVE/NVT only)"
            )
        self._compute_stress = bool(value)

    def forward(self, state: SimState | dict, **kwargs) -> dict[str, torch.Tensor]:
        """Energy (n_systems,) eV, forces (n_atoms, 3) eV/Å [, stress (n_systems, 3, 3) eV/Å^3]
        of a torch-sim ``SimState`` or state dict (``positions`` Å, ``cell`` (n_systems, 3, 3)
        Å with lattice vectors as columns, ``system_idx``, ``atomic_numbers``, ``pbc``)."""
        batch = state_to_batch(state, device=self._device, dtype=self._dtype)
        out_dtype, out_device = _get(state, "positions").dtype, _get(state, "positions").device
        if self._compute_forces or self._compute_stress:
            extra = {"stress": True} if self._compute_stress else {}
            out = self.model.energy_and_forces(batch, self.force_method, **extra)
        else:
            with torch.no_grad():
                out = self.model(batch)

        def back(t: torch.Tensor) -> torch.Tensor:
            return t.detach().to(device=out_device, dtype=out_dtype)

        result = {"energy": back(out[keys.ENERGY])}
        if self._compute_forces:
            result["forces"] = back(out[keys.FORCES])
        if self._compute_stress:
            result["stress"] = back(out[keys.STRESS])
        return result


def state_to_batch(
    state: SimState | dict,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> AtomsBatch:
    """The :class:`AtomsBatch` of a torch-sim state (cell transposed to row vectors, ``pbc``
    broadcast to (n_systems, 3), indices as int64); a state dict may omit ``system_idx`` (one
    system) and ``pbc`` (non-periodic)."""
    positions = _get(state, "positions")
    device = positions.device if device is None else torch.device(device)
    dtype = positions.dtype if dtype is None else dtype
    cell = _get(state, "cell")
    if cell.ndim == 2:
        cell = cell[None]
    n_systems = int(cell.shape[0])
    system_idx = _get(state, "system_idx", None)
    if system_idx is None:
        system_idx = torch.zeros(positions.shape[0], dtype=torch.long, device=positions.device)
    pbc = _get(state, "pbc", False)
    return AtomsBatch(
        atomic_numbers=_get(state, "atomic_numbers").to(device=device, dtype=torch.long),
        positions=positions.to(device=device, dtype=dtype),
        system_idx=system_idx.to(device=device, dtype=torch.long),
        cell=cell.transpose(-1, -2).to(device=device, dtype=dtype),  # columns -> rows
        pbc=_pbc_rows(pbc, n_systems, device),
    )


def to_torchsim_state(state: MDState) -> ts_integrators.MDState:
    """torch-sim ``MDState`` (momenta amu·Å/ASE-time, column-vector cell) of a batched
    :class:`~mlff_distiller.data.state.MDState` (velocities Å/fs); energy and forces are zeros
    unless ``state`` has them. All systems must share one pbc, all True or all False."""
    pbc = state.pbc
    if not (bool(pbc.all()) or not bool(pbc.any())):
        raise ValueError(
            "torch-sim 0.3 has one pbc flag for all systems: every structure must be periodic "
            "in all three directions or in none (use --engine batched otherwise)"
        )
    velocities_ase = units.velocities_internal_to_ase(state.velocities)
    n_sys = state.n_systems
    energy = state.energy if state.energy is not None else state.positions.new_zeros(n_sys)
    forces = state.forces if state.forces is not None else torch.zeros_like(state.positions)
    return ts_integrators.MDState(
        positions=state.positions.clone(),
        masses=state.masses,
        cell=state.cell.transpose(-1, -2).contiguous(),  # rows -> columns
        pbc=bool(pbc.all()),
        atomic_numbers=state.atomic_numbers,
        system_idx=state.system_idx,
        momenta=state.masses[:, None] * velocities_ase,
        energy=energy,
        forces=forces,
    )


def from_torchsim_state(state: ts_integrators.MDState) -> MDState:
    """Batched :class:`~mlff_distiller.data.state.MDState` (velocities Å/fs, row-vector cell,
    pbc (n_systems, 3)) of a torch-sim ``MDState``."""
    n_sys = int(state.cell.shape[0])
    return MDState(
        positions=state.positions,
        velocities=units.velocities_ase_to_internal(state.momenta / state.masses[:, None]),
        masses=state.masses,
        atomic_numbers=state.atomic_numbers.long(),
        system_idx=state.system_idx.long(),
        cell=state.row_vector_cell,
        pbc=_pbc_rows(state.pbc, n_sys, state.positions.device),
        forces=state.forces,
        energy=state.energy,
    )


def run_torchsim_md(
    model: torch.nn.Module | StudentModel | str | Path,
    structures: Sequence[Atoms],
    config: MDConfig,
    out: str | Path | None = None,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device | None = None,
    progress: bool = True,
    compile: bool | None = None,
    retain_memory: bool = True,
) -> MDResult:
    """Advance all ``structures`` ``config.steps`` steps together with torch-sim's integrators.

    NVT: torch-sim's Langevin BAOAB (``nvt_langevin``, friction ``config.friction_per_ps``);
    NVE: its velocity Verlet (``nve``). Initial velocities are those of the batched engine
    (:func:`~mlff_distiller.md.runner.initial_state`: the structures' own momenta, else seeded
    Maxwell-Boltzmann at ``config.temperature_k`` with zero total momentum); the Langevin noise
    is seeded with ``config.seed`` (the global torch RNG is restored afterwards).

    ``out``: HDF5 trajectory in the format of :func:`~mlff_distiller.md.runner.run_md` (one
    frame per structure every ``save_every`` steps, positions Å, velocities Å/fs, forces eV/Å,
    potential and kinetic energy eV, time fs). ``model``: a student module, a saved model
    directory, or a :class:`StudentModel` (then ``dtype``/``device``/``compile`` are its own).
    ``compile``, ``retain_memory``: as in :func:`~mlff_distiller.md.runner.run_md`.
    Returns an :class:`~mlff_distiller.md.runner.MDResult` whose state is the final
    :class:`~mlff_distiller.data.state.MDState`.
    """
    from mlff_distiller.data.hdf5 import DatasetWriter
    from mlff_distiller.models.cpu_memory import retain_freed_cpu_memory

    if retain_memory:
        retain_freed_cpu_memory()
    if isinstance(model, StudentModel):
        ts_model = model
    else:
        ts_model = StudentModel(
            model, device=device, dtype=dtype, forces=config.forces, compile=compile
        )
    dtype, device = ts_model.dtype, ts_model.device
    structures = list(structures)
    if not structures:
        raise ValueError("run_torchsim_md needs at least one structure")
    numbers = np.concatenate([a.numbers for a in structures])
    check_elements(model_elements(ts_model.model), numbers, "the structures")
    n_sys = len(structures)
    names = [a.info.get("name") or a.get_chemical_formula() for a in structures]

    start = to_torchsim_state(
        initial_state(structures, config.temperature_k, config.seed, dtype, device)
    )
    dt = torch.tensor(config.dt_fs * units.ASE_TIME_PER_FS, dtype=dtype, device=device)
    kT = torch.tensor(config.temperature_k * units.BOLTZMANN, dtype=dtype, device=device)
    if config.ensemble == "nve":
        init_fn, update_fn = ts_integrators.nve(ts_model, dt=dt, kT=kT, seed=config.seed)
    else:
        # 1/ps -> 1/fs -> per ASE time unit
        gamma = config.friction_per_ps / units.PS / units.ASE_TIME_PER_FS
        init_fn, update_fn = ts_integrators.nvt_langevin(
            ts_model,
            dt=dt,
            kT=kT,
            gamma=torch.tensor(gamma, dtype=dtype, device=device),
            seed=config.seed,
        )

    writer = None
    if out is not None:
        attrs = {"teacher": "student", "md": {**_config_attrs(config), "engine": "torchsim"},
                 keys.VELOCITY_CONVENTION: keys.ON_STEP}  # fmt: skip
        writer = DatasetWriter(Path(out), mode="w", attrs=attrs, flush_every=n_sys)
    try:
        with _seeded_rng(torch.device(device), config.seed):
            state = init_fn(start)  # keeps the momenta of `start`, computes energy and forces
            current = from_torchsim_state(state)
            check_finite(current, names, 0)
            if writer is not None:
                write_frames(writer, current, names, 0.0)
            t0 = time.perf_counter()
            with StepProgress(progress, config.steps) as advance:
                for step in range(1, config.steps + 1):
                    state = update_fn(state)
                    if step % config.save_every == 0:
                        current = from_torchsim_state(state)
                        check_finite(current, names, step)
                        if writer is not None:
                            write_frames(writer, current, names, step * config.dt_fs)
                    advance()
            seconds = time.perf_counter() - t0
        final = from_torchsim_state(state)
        check_finite(final, names, config.steps)
        frames = len(writer) if writer is not None else 0
    finally:
        if writer is not None:
            writer.close()
    return MDResult(final, config.steps, frames, seconds)


# ---------------------------------------------------------------------------- helpers
def _get(state, name: str, *default):
    if isinstance(state, dict):
        return state.get(name, *default) if default else state[name]
    return getattr(state, name, *default)


def _pbc_rows(pbc, n_systems: int, device) -> torch.Tensor:
    """(n_systems, 3) bool from a bool, a (3,) or an (n_systems, 3) flag."""
    flags = torch.as_tensor(pbc, dtype=torch.bool, device=device)
    if flags.ndim == 0:
        flags = flags.reshape(1, 1)
    return flags.expand(n_systems, 3).clone()


@contextlib.contextmanager
def _seeded_rng(device: torch.device, seed: int) -> Iterator[None]:
    """Seed the RNG torch-sim's Langevin noise draws from (``randn_like`` on ``device``) and
    restore the global RNG state afterwards."""
    cuda = device.type == "cuda"
    index = 0
    if cuda:
        index = device.index if device.index is not None else torch.cuda.current_device()
    with torch.random.fork_rng(devices=[index] if cuda else []):
        torch.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        yield
