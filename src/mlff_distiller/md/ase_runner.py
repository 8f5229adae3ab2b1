"""Student MD for one molecule through ASE (``StudentCalculator`` + ASE's integrators).

The same :class:`~mlff_distiller.md.runner.MDConfig` and HDF5 trajectory layout as the
batched engine, so the two paths are interchangeable and comparable.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator
from ase.md.langevin import Langevin
from ase.md.verlet import VelocityVerlet

from mlff_distiller import keys, thermo, units
from mlff_distiller.md.runner import MDConfig, MDError, MDResult, with_velocities


def run_ase_md(
    calculator: Calculator,
    atoms: Atoms,
    config: MDConfig,
    out: str | Path | None = None,
    progress: bool = True,
) -> tuple[Atoms, MDResult]:
    """Run ``config.steps`` ASE steps of ``atoms`` with ``calculator``; returns the final atoms
    and an :class:`MDResult` (its ``state`` is ``None``). Frames go to ``out`` as they come."""
    from mlff_distiller.data.hdf5 import DatasetWriter

    atoms = with_velocities(atoms, config.temperature_k, np.random.default_rng(config.seed))
    atoms.calc = calculator
    dt = config.dt_fs * units.ASE_TIME_PER_FS
    if config.ensemble == "nve":
        dyn = VelocityVerlet(atoms, timestep=dt)
    else:
        dyn = Langevin(
            atoms,
            timestep=dt,
            temperature_K=config.temperature_k,
            friction=config.friction_per_ps / (units.PS * units.ASE_TIME_PER_FS),
            rng=np.random.default_rng(config.seed),
        )
    name = atoms.info.get("name") or atoms.get_chemical_formula()
    attrs = {"teacher": "student", keys.VELOCITY_CONVENTION: keys.ON_STEP}
    writer = DatasetWriter(out, attrs=attrs) if out is not None else None

    def save() -> None:
        energy = atoms.get_potential_energy()
        if not np.isfinite(energy) or not np.isfinite(atoms.positions).all():
            raise MDError(f"MD of {name} blew up at {dyn.nsteps} steps; use a smaller time step")
        if writer is None:
            return
        atoms.info["time"] = dyn.nsteps * config.dt_fs
        velocities = units.velocities_ase_to_internal(atoms.get_velocities())
        atoms.info["kinetic_energy"] = float(
            thermo.kinetic_energy(velocities, atoms.get_masses())[0]
        )
        atoms.info["potential_energy"] = energy
        writer.append(atoms, molecule=name, with_velocities=True)

    dyn.attach(save, interval=config.save_every)  # ASE calls it at step 0 too
    bar = None
    if progress:
        from rich.progress import Progress

        bar = Progress(transient=True)
        bar.start()
        task = bar.add_task(f"MD {name}", total=config.steps)
        dyn.attach(lambda: bar.update(task, completed=dyn.nsteps), interval=1)
    t0 = time.perf_counter()
    try:
        dyn.run(config.steps)
    finally:
        if bar is not None:
            bar.stop()
        frames = len(writer) if writer is not None else 0
        if writer is not None:
            writer.close()
    return atoms, MDResult(None, config.steps, frames, time.perf_counter() - t0)
