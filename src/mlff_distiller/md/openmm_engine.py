"""The student as an OpenMM force (``openmm.PythonForce``): pure-student Systems, mixed ML/MM
Systems, and student MD driven by OpenMM's integrators (``mlffd md --engine openmm``).

Units: OpenMM works in nm, ps, kJ/mol; the student in Å, fs, eV. The force converts at the
boundary with :mod:`mlff_distiller.units` (positions nm -> Å, energy eV -> kJ/mol, forces
eV/Å -> kJ/mol/nm); everything this module returns or writes outside OpenMM objects is in
internal units (Å, fs, eV, eV/Å, amu, velocities Å/fs).

Mixed systems follow the usual ML/MM mechanical embedding: in a copy of the MM System, every
bonded term (bond, angle, torsion, CMAP, custom bonded term) whose atoms are *all* ML atoms is
removed, every nonbonded pair of two ML atoms is zeroed (``NonbondedForce`` exceptions,
``CustomNonbondedForce`` exclusions), constraints between two ML atoms are dropped, and the
student is added for the ML atoms only. ML-MM nonbonded interactions and all MM-MM terms stay.

Trajectories (:func:`run_openmm_md`) have the layout of :mod:`mlff_distiller.md.runner`; the
root attribute ``velocity_convention = "half-step"`` records that OpenMM's leapfrog integrators
(``VerletIntegrator``, ``LangevinMiddleIntegrator``) report velocities at ``t - dt/2`` while
positions, forces and energies are at ``t``; ``kinetic_energy`` is OpenMM's own on-step
estimate (``State.getKineticEnergy``).
"""

from __future__ import annotations

import dataclasses
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from ase import Atoms

from mlff_distiller import keys, units
from mlff_distiller.data.batch import AtomsBatch
from mlff_distiller.md.calculator import check_elements, model_elements
from mlff_distiller.md.runner import MDConfig, MDError, MDResult, with_velocities
from mlff_distiller.models.fast_path import private_copy, resolve_compile
from mlff_distiller.teachers.openmm_base import (
    openmm_platform,
    positions_to_openmm,
    state_energy_forces,
    state_velocities,
    velocities_to_openmm,
)

VELOCITY_CONVENTION = keys.HALF_STEP
"""Velocities written by :func:`run_openmm_md` lag the positions by half a time step."""

# Forces whose ML-ML interactions this module cannot remove: refuse rather than double count.
_UNSUPPORTED_FORCES = ("GBSAOBCForce", "CustomGBForce", "CustomManyParticleForce")
_UNSUPPORTED_PREFIXES = ("Amoeba", "Hippo")


class _StudentComputation:
    """The PythonForce callback: OpenMM ``State`` -> (energy kJ/mol, forces (n, 3) kJ/mol/nm).

    ``n`` is the number of particles the force applies to (OpenMM passes only those when the
    force has ``setParticles``). It refuses to be pickled (OpenMM's ``XmlSerializer`` would
    pickle the model into the System's XML): model files are safetensors + JSON only.
    """

    def __reduce__(self):
        raise TypeError(
            "the student force cannot be serialised (it would pickle the model): save the "
            "model with mlff_distiller.models.io.save_model and rebuild the force with "
            "student_force(load_model(path), ...) where the System is loaded"
        )

    def __init__(
        self,
        model: torch.nn.Module,
        numbers: np.ndarray,
        method: str,
        dtype: torch.dtype,
        device: torch.device,
        periodic: bool,
    ) -> None:
        self.model = model
        self.numbers = np.asarray(numbers, dtype=np.int64)
        self.method = method
        self.dtype = dtype
        self.device = device
        self.periodic = periodic

    def __call__(self, state) -> tuple[float, np.ndarray]:
        from openmm import unit

        pos_nm = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        positions = np.asarray(pos_nm, dtype=np.float64) * units.NM  # (n, 3) Å
        if len(positions) != len(self.numbers):
            raise ValueError(
                f"the student force got {len(positions)} positions for {len(self.numbers)} atoms"
            )
        if self.periodic:
            box = state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.nanometer)
            cell = np.asarray(box, dtype=np.float64) * units.NM  # (3, 3) Å, rows = vectors
            pbc = np.ones(3, dtype=bool)
        else:
            cell, pbc = np.zeros((3, 3)), np.zeros(3, dtype=bool)
        batch = AtomsBatch.from_arrays(
            [self.numbers], [positions], [cell], [pbc], dtype=self.dtype, device=self.device
        )
        out = self.model.energy_and_forces(batch, self.method)
        energy_ev = float(out[keys.ENERGY].detach().double().cpu()[0])
        forces = out[keys.FORCES].detach().double().cpu().numpy()  # (n, 3) eV/Å
        return energy_ev / units.KJ_PER_MOL, forces / units.KJ_PER_MOL_PER_NM


def student_force(
    model: torch.nn.Module,
    numbers: Sequence[int],
    atom_indices: Sequence[int] | None = None,
    forces: str = "analytical",
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
    periodic: bool = False,
    compile: bool | None = None,
):
    """An ``openmm.PythonForce`` evaluating the student on some particles of a System.

    ``numbers``: (n_ml,) atomic numbers of those particles, in the order of ``atom_indices``
    (indices into the System; ``None``: all particles, then ``n_ml`` must be the System's
    particle count). Each evaluation reads the particles' positions (nm) from the OpenMM
    State, evaluates ``model.energy_and_forces`` on one structure (Å), and returns the energy
    (kJ/mol) and the forces on those particles ((n_ml, 3) kJ/mol/nm; OpenMM applies them
    through ``setParticles``, other particles get none). ``periodic``: pass the State's box
    as the cell with full PBC (use when the System is periodic). ``forces``: ``"analytical"``
    or ``"autograd"``. ``compile``: None compiles the analytical forces where possible, False
    runs eager, True insists (see :mod:`mlff_distiller.models.fast_path`). The force runs a
    private copy of ``model`` cast to ``dtype``/``device`` (the caller's module is never
    changed). Raises :class:`UnsupportedElementError` for elements the model was not trained on.
    """
    import openmm

    if forces not in ("analytical", "autograd"):
        raise ValueError(f"forces must be 'analytical' or 'autograd', got {forces!r}")
    numbers = np.asarray(numbers, dtype=np.int64).reshape(-1)
    if atom_indices is not None:
        atom_indices = [int(i) for i in atom_indices]
        if len(atom_indices) != len(numbers):
            raise ValueError(f"{len(atom_indices)} atom indices but {len(numbers)} atomic numbers")
        if len(set(atom_indices)) != len(atom_indices) or min(atom_indices, default=0) < 0:
            raise ValueError("atom_indices must be distinct non-negative particle indices")
    check_elements(model_elements(model), numbers)
    device = torch.device(device)
    private = private_copy(model, device, dtype)
    compiled = resolve_compile(compile, forces, device)
    if hasattr(private, "compile_forces"):
        private.compile_forces(compiled)
    elif compiled and compile:
        raise ValueError(f"{type(model).__name__} has no compiled forces (compile_forces)")
    computation = _StudentComputation(private, numbers, forces, dtype, device, periodic)
    force = openmm.PythonForce(computation)
    if atom_indices is not None:
        force.setParticles(atom_indices)
    force.setUsesPeriodicBoundaryConditions(bool(periodic))
    force.setName("StudentForce")
    return force


def student_system(
    atoms: Atoms,
    model: torch.nn.Module,
    forces: str = "analytical",
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
    compile: bool | None = None,
):
    """``(openmm.System, openmm.app.Topology)`` of ``atoms`` with the student as its only force.

    Masses are ASE's (amu). A periodic ``atoms`` (``pbc`` all True) gives a periodic System
    whose default box is ``atoms.cell`` (OpenMM needs a reduced cell: ``a`` along x, ``b`` in
    the xy plane); partly periodic structures are refused. The Topology has one residue with
    one atom per particle and no bonds. ``forces``, ``dtype``, ``device``, ``compile``: as in
    :func:`student_force`.
    """
    import openmm
    from openmm import app

    pbc = np.asarray(atoms.pbc, dtype=bool)
    if pbc.any() and not pbc.all():
        raise ValueError(f"OpenMM needs pbc all True or all False, got {pbc.tolist()}")
    system = openmm.System()
    for mass in atoms.get_masses():
        system.addParticle(float(mass))  # amu = Da, OpenMM's mass unit
    top = app.Topology()
    residue = top.addResidue(atoms.info.get(keys.NAME) or "MOL", top.addChain())
    for k, z in enumerate(atoms.numbers):
        element = app.Element.getByAtomicNumber(int(z))
        top.addAtom(f"{element.symbol}{k + 1}", element, residue)
    periodic = bool(pbc.all())
    if periodic:
        cell_nm = np.asarray(atoms.cell[:], dtype=np.float64) / units.NM
        if np.any(np.abs(cell_nm[np.triu_indices(3, 1)]) > 1e-12):
            raise ValueError(
                "OpenMM needs a reduced cell (a along x, b in the xy plane); rotate the "
                f"structure first, e.g. with ase.build.niggli_reduce; got cell {atoms.cell[:]}"
            )
        vectors = [openmm.Vec3(*row) for row in cell_nm]
        system.setDefaultPeriodicBoxVectors(*vectors)
        top.setPeriodicBoxVectors(vectors)
    system.addForce(
        student_force(
            model, atoms.numbers, None, forces, dtype, device, periodic=periodic, compile=compile
        )
    )
    return system, top


def mixed_system(
    mm_system,
    ml_atoms: Iterable[int],
    model: torch.nn.Module,
    numbers,
    forces: str = "analytical",
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
    remove_constraints: bool = True,
    force_group: int = 0,
    compile: bool | None = None,
):
    """A copy of ``mm_system`` in which the student models the ``ml_atoms``.

    ``ml_atoms``: particle indices of the ML region. ``numbers``: their atomic numbers (same
    order), or an ``openmm.app.Topology`` of the whole System to read them from. In the copy,
    bonded terms whose atoms are all ML atoms are removed, nonbonded interactions between two
    ML atoms are zeroed, constraints between two ML atoms are removed (``remove_constraints``),
    and the student force (in ``force_group``) is added for the ML atoms; ML-MM and MM-MM
    interactions are unchanged. ``mm_system`` itself is not modified. Systems with implicit
    solvent or AMOEBA forces are refused (their ML-ML parts cannot be removed here).
    ``forces``, ``dtype``, ``device``, ``compile``: as in :func:`student_force`.
    """
    import openmm
    from openmm import app

    ml = [int(i) for i in ml_atoms]
    ml_set = set(ml)
    n = mm_system.getNumParticles()
    if not ml or len(ml_set) != len(ml) or min(ml) < 0 or max(ml) >= n:
        raise ValueError(f"ml_atoms must be distinct particle indices in [0, {n}), got {ml}")
    if isinstance(numbers, app.Topology):
        by_index = {a.index: a for a in numbers.atoms()}
        numbers = [by_index[i].element.atomic_number for i in ml]
    for force in mm_system.getForces():
        name = type(force).__name__
        if name in _UNSUPPORTED_FORCES or name.startswith(_UNSUPPORTED_PREFIXES):
            raise ValueError(f"mixed_system cannot remove the ML-ML part of a {name}")

    system = _without_ml_bonded_terms(mm_system, ml_set, remove_constraints)
    for force in system.getForces():
        if isinstance(force, openmm.NonbondedForce):
            for a in range(len(ml)):
                for b in range(a):
                    force.addException(ml[a], ml[b], 0.0, 1.0, 0.0, True)
        elif isinstance(force, openmm.CustomNonbondedForce):
            excluded = set()
            for k in range(force.getNumExclusions()):
                p, q = force.getExclusionParticles(k)
                excluded.add((min(p, q), max(p, q)))
            for a in range(len(ml)):
                for b in range(a):
                    pair = (min(ml[a], ml[b]), max(ml[a], ml[b]))
                    if pair not in excluded:
                        force.addExclusion(*pair)
    ml_force = student_force(
        model,
        numbers,
        ml,
        forces,
        dtype,
        device,
        periodic=system.usesPeriodicBoundaryConditions(),
        compile=compile,
    )
    ml_force.setForceGroup(force_group)
    system.addForce(ml_force)
    return system


def _term_particles(element: ET.Element) -> list[int]:
    """Particle indices of one serialized bonded term (``p1..pN``; CMAP: ``a1..a4 b1..b4``)."""
    out = []
    for name, value in element.attrib.items():
        if len(name) >= 2 and name[0] in "pab" and name[1:].isdigit():
            out.append(int(value))
    return out


def _without_ml_bonded_terms(mm_system, ml_set: set[int], remove_constraints: bool):
    """A deserialized copy of ``mm_system`` without the bonded terms (and, optionally,
    constraints) whose particles all lie in ``ml_set``."""
    import openmm

    root = ET.fromstring(openmm.XmlSerializer.serialize(mm_system))
    for force in root.iter("Force"):
        for section in ("Bonds", "Angles", "Torsions"):
            for terms in force.findall(section):
                for term in list(terms):
                    particles = _term_particles(term)
                    if particles and all(p in ml_set for p in particles):
                        terms.remove(term)
    if remove_constraints:
        for constraints in root.findall("Constraints"):
            for c in list(constraints):
                if int(c.get("p1")) in ml_set and int(c.get("p2")) in ml_set:
                    constraints.remove(c)
    return openmm.XmlSerializer.deserialize(ET.tostring(root, encoding="unicode"))


def run_openmm_md(
    model: torch.nn.Module,
    atoms: Atoms,
    config: MDConfig,
    out: str | Path | None = None,
    platform: str | None = None,
    progress: bool = True,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
    threads: int | None = None,
    compile: bool | None = None,
) -> tuple[Atoms, MDResult]:
    """Run ``config.steps`` OpenMM steps of one structure with the student as its only force.

    NVT: ``LangevinMiddleIntegrator`` (``config.temperature_k``, ``config.friction_per_ps``,
    seeded from ``config.seed``); NVE: ``VerletIntegrator``; time step ``config.dt_fs``.
    Atoms without momenta start from seeded Maxwell-Boltzmann velocities at
    ``config.temperature_k`` (zero total momentum; the same as ``run_ase_md``); given momenta
    are taken as the velocities at ``-dt/2``. Every ``save_every`` steps (and at step 0) a
    frame goes to ``out`` (HDF5, the layout of :mod:`mlff_distiller.md.runner`: positions Å,
    half-step velocities Å/fs, forces eV/Å, energies eV, time fs). Returns the final atoms
    (positions, half-step velocities) and an :class:`MDResult` whose ``state`` is ``None``.
    ``platform``: OpenMM platform (``CPU`` or ``Reference``; ``threads`` for CPU's own work;
    None: Reference for small systems, where it is faster, see
    :func:`~mlff_distiller.teachers.openmm_base.openmm_platform`; aspirin with a PaiNN student:
    3.4-3.7 against 3.9-4.9 ms per step);
    ``compile``: as in :func:`student_force`. The caller's model is never modified.
    """
    import openmm
    from openmm import unit

    from mlff_distiller.data.hdf5 import DatasetWriter

    atoms = with_velocities(atoms, config.temperature_k, np.random.default_rng(config.seed))
    atoms.calc = None
    system, _ = student_system(atoms, model, config.forces, dtype, device, compile=compile)
    dt_ps = config.dt_fs / units.PS
    if config.ensemble == "nve":
        integrator = openmm.VerletIntegrator(dt_ps)
    else:
        integrator = openmm.LangevinMiddleIntegrator(
            config.temperature_k * unit.kelvin, config.friction_per_ps / unit.picosecond, dt_ps
        )
        integrator.setRandomNumberSeed(config.seed + 1)  # OpenMM reads 0 as "pick any seed"
    om_platform, props = openmm_platform(platform, threads, system.getNumParticles())
    context = openmm.Context(system, integrator, om_platform, props)
    context.setPositions(positions_to_openmm(atoms.positions))
    velocities = units.velocities_ase_to_internal(atoms.get_velocities())
    context.setVelocities(velocities_to_openmm(velocities))

    name = atoms.info.get(keys.NAME) or atoms.get_chemical_formula()
    writer = None
    if out is not None:
        md_attrs = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
        md_attrs.update(engine="openmm", platform=om_platform.getName())
        attrs = {"teacher": "student", "md": md_attrs, keys.VELOCITY_CONVENTION: keys.HALF_STEP}
        writer = DatasetWriter(out, attrs=attrs)

    def read(step: int):
        state = context.getState(
            getPositions=True, getVelocities=True, getForces=True, getEnergy=True
        )
        energy, frc = state_energy_forces(state)
        pos = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer) * units.NM
        if not np.isfinite(energy) or not np.isfinite(pos).all():
            raise MDError(f"MD of {name} blew up at step {step}; use a smaller time step")
        kinetic = state.getKineticEnergy().value_in_unit(unit.kilojoule_per_mole)
        return np.asarray(pos), state_velocities(state), frc, energy, kinetic * units.KJ_PER_MOL

    def save(step: int):
        pos, vel, frc, energy, kinetic = frame = read(step)
        if writer is not None:
            writer.append_frame(
                atoms.numbers,
                pos,
                cell=np.asarray(atoms.cell[:]),
                pbc=np.asarray(atoms.pbc),
                energy=energy,
                forces=frc,
                velocities=vel,
                time=step * config.dt_fs,
                kinetic_energy=kinetic,
                potential_energy=energy,
                molecule=name,
                smiles=atoms.info.get(keys.SMILES),
            )
        return frame

    bar = None
    t0 = time.perf_counter()
    try:
        frame = save(0)
        if progress and config.steps > 0:
            from rich.progress import Progress

            bar = Progress(transient=True)
            bar.start()
            task = bar.add_task(f"MD {name} (OpenMM)", total=config.steps)
        step = 0
        while step < config.steps:
            chunk = min(config.save_every - step % config.save_every, config.steps - step)
            integrator.step(chunk)
            step += chunk
            if step % config.save_every == 0:
                frame = save(step)
            if bar is not None:
                bar.update(task, completed=step)
        if config.steps % config.save_every:
            frame = read(config.steps)
    finally:
        if bar is not None:
            bar.stop()
        frames = len(writer) if writer is not None else 0
        if writer is not None:
            writer.close()
    seconds = time.perf_counter() - t0
    atoms.positions = frame[0]
    atoms.set_velocities(units.velocities_internal_to_ase(frame[1]))
    return atoms, MDResult(None, config.steps, frames, seconds)
