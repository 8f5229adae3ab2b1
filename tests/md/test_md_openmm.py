"""The student as an OpenMM PythonForce: agrees with StudentCalculator, conserves energy under
OpenMM's Verlet, reproduces ASE's velocity Verlet (leapfrog offset), embeds in an MM water
cluster (mixed ML/MM system) and runs through ``mlffd md --engine openmm``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase import units as ase_units
from ase.md.verlet import VelocityVerlet

from mlff_distiller import keys, units
from mlff_distiller.data.hdf5 import Dataset, read_root_attrs
from mlff_distiller.data.structures import from_smiles
from mlff_distiller.md.calculator import StudentCalculator, UnsupportedElementError
from mlff_distiller.md.openmm_engine import (
    mixed_system,
    run_openmm_md,
    student_force,
    student_system,
)
from mlff_distiller.md.runner import MDConfig
from mlff_distiller.models.painn import PaiNN, PaiNNConfig

openmm = pytest.importorskip("openmm")
from openmm import app, unit  # noqa: E402

from mlff_distiller.teachers.openmm_base import positions_to_openmm  # noqa: E402


@pytest.fixture(scope="module")
def model() -> PaiNN:
    torch.manual_seed(3)
    m = PaiNN(PaiNNConfig(hidden=16, n_interactions=2, n_rbf=12, cutoff=4.0))
    ref = torch.zeros(119, dtype=torch.float64)
    ref[[1, 6, 7, 8]] = torch.tensor([-13.6, -1029.0, -1485.0, -2041.0], dtype=torch.float64)
    m.set_reference_energies(ref, elements=[1, 6, 7, 8])
    m.set_scale_shift(4.0, 0.0)
    return m.double()


def _context(system, platform: str = "Reference", integrator=None):
    integrator = integrator or openmm.VerletIntegrator(0.0005)
    return openmm.Context(system, integrator, openmm.Platform.getPlatformByName(platform))


def _energy_forces(context, groups=-1) -> tuple[float, np.ndarray, np.ndarray]:
    """(energy eV, forces (n, 3) eV/Å, positions (n, 3) Å) of the Context's state."""
    st = context.getState(getEnergy=True, getForces=True, getPositions=True, groups=groups)
    energy = st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) * units.KJ_PER_MOL
    forces = st.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
    pos = st.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    return energy, np.asarray(forces) * units.KJ_PER_MOL_PER_NM, np.asarray(pos) * units.NM


def _calculator_energy_forces(model, atoms: Atoms) -> tuple[float, np.ndarray]:
    a = atoms.copy()
    a.calc = StudentCalculator(model, dtype=torch.float64, compile=False)
    return a.get_potential_energy(), a.get_forces()


# ------------------------------------------------------------------ the force itself
@pytest.mark.parametrize("platform", ["Reference", "CPU"])
def test_force_matches_student_calculator(model, platform):
    """19 atoms from RDKit: OpenMM's energy and forces (kJ/mol, kJ/mol/nm, converted back)
    equal StudentCalculator's on the positions OpenMM holds, to 1e-9 relative."""
    atoms = from_smiles("CC(=O)NCC(O)C")[0]
    assert len(atoms) == 19
    system, top = student_system(atoms, model)
    assert system.getNumForces() == 1 and top.getNumAtoms() == 19
    assert system.getParticleMass(0).value_in_unit(unit.dalton) == pytest.approx(
        atoms.get_masses()[0]
    )
    context = _context(system, platform)
    context.setPositions(positions_to_openmm(atoms.positions))
    energy, forces, pos = _energy_forces(context)
    np.testing.assert_allclose(pos, atoms.positions, atol=1e-6)
    moved = atoms.copy()
    moved.positions = pos
    ref_e, ref_f = _calculator_energy_forces(model, moved)
    assert np.abs(ref_f).max() > 0.2  # forces are not negligible
    assert energy == pytest.approx(ref_e, rel=1e-9)
    np.testing.assert_allclose(forces, ref_f, rtol=1e-9, atol=1e-9 * np.abs(ref_f).max())


def test_periodic_force_uses_the_box(model):
    """A box smaller than molecule + cutoff: periodic images interact; OpenMM's result equals
    StudentCalculator's periodic one and differs from the isolated molecule's."""
    atoms = from_smiles("CCO")[0]
    atoms.positions -= atoms.positions.mean(0)
    atoms.positions += 3.0
    atoms.set_cell(np.diag([6.0, 6.5, 7.0]))
    atoms.pbc = True
    system, top = student_system(atoms, model)
    assert system.usesPeriodicBoundaryConditions()
    context = _context(system)
    context.setPositions(positions_to_openmm(atoms.positions))
    energy, forces, pos = _energy_forces(context)
    moved = atoms.copy()
    moved.positions = pos
    ref_e, ref_f = _calculator_energy_forces(model, moved)
    isolated = moved.copy()
    isolated.pbc = False
    iso_e, _ = _calculator_energy_forces(model, isolated)
    assert abs(ref_e - iso_e) > 1e-3
    assert energy == pytest.approx(ref_e, rel=1e-9)
    np.testing.assert_allclose(forces, ref_f, atol=1e-9 * np.abs(ref_f).max())


def test_model_is_not_cast_and_unknown_elements_are_named(model):
    single = PaiNN(PaiNNConfig(hidden=8, n_interactions=1, n_rbf=4))
    single.set_reference_energies(torch.zeros(119), elements=[1, 6])
    force = student_force(single, [6, 1, 1, 1, 1], dtype=torch.float64)
    assert isinstance(force, openmm.PythonForce)
    assert next(single.parameters()).dtype == torch.float32
    with pytest.raises(UnsupportedElementError, match="Cl"):
        student_force(single, [6, 17, 1, 1, 1])
    with pytest.raises(ValueError, match="atom indices"):
        student_force(model, [6, 1], atom_indices=[0, 1, 2])


# ------------------------------------------------------------------ dynamics
def test_nve_conserves_energy(model, tmp_path):
    """500 OpenMM Verlet steps of 0.25 fs (ethanol, float64, Reference platform).

    Total energy (potential + OpenMM's on-step kinetic estimate) spread below 1 meV and below
    1/20 of the kinetic-energy swing; measured 4e-4 eV against 0.7 eV. Checked by hand: a 5%
    error in the force unit factor gives a 3e-2 eV spread, dropping its nm/Å factor 0.4 eV, a
    flipped sign 0.75 eV; the half-step velocities' kinetic energy would give 2e-2 eV.
    """
    atoms = from_smiles("CCO")[0]
    config = MDConfig(steps=500, dt_fs=0.25, ensemble="nve", save_every=5, temperature_k=300)
    out = tmp_path / "nve.h5"
    final, result = run_openmm_md(
        model, atoms, config, out=out, platform="Reference", progress=False
    )
    assert result.steps_done == 500 and result.frames_written == 101
    with Dataset(out) as ds:
        frames = [ds.get_arrays(i) for i in range(len(ds))]
    potential = np.array([f[keys.POTENTIAL_ENERGY] for f in frames])
    kinetic = np.array([f[keys.KINETIC_ENERGY] for f in frames])
    total = potential + kinetic
    spread, swing = np.ptp(total), np.ptp(kinetic)
    print(f"NVE: total-energy spread {spread:.2e} eV, kinetic swing {swing:.2e} eV")
    assert swing > 20 * spread
    assert spread < 1e-3
    np.testing.assert_allclose(final.positions, frames[-1][keys.POSITIONS])


def test_verlet_matches_ase_velocity_verlet_with_half_step_velocities(model, tmp_path):
    """OpenMM's leapfrog started from v(-dt/2) = v(0) - dt/2 a(0) follows ASE's velocity Verlet
    (StudentCalculator) exactly: same positions, and the velocities OpenMM reports are the
    half-step ones v(t) - dt/2 a(t) ("half-step" convention in the file)."""
    atoms = from_smiles("CCO")[0]
    rng = np.random.default_rng(5)
    v0 = rng.normal(0.0, 0.01, atoms.positions.shape)  # Å/fs
    dt = 0.5
    # a = F/m: eV/(Å amu) is Å per (ASE time unit)^2 -> Å/fs^2
    inv_mass = units.ASE_TIME_PER_FS**2 / atoms.get_masses()[:, None]
    _, f0 = _calculator_energy_forces(model, atoms)

    ase_atoms = atoms.copy()
    ase_atoms.calc = StudentCalculator(model, dtype=torch.float64, compile=False)
    ase_atoms.set_velocities(units.velocities_internal_to_ase(v0))
    dyn = VelocityVerlet(ase_atoms, timestep=dt * ase_units.fs)
    ref = []
    dyn.attach(
        lambda: ref.append(
            (
                ase_atoms.positions.copy(),
                units.velocities_ase_to_internal(ase_atoms.get_velocities()),
                ase_atoms.get_forces(),
            )
        ),
        interval=5,
    )
    dyn.run(20)

    start = atoms.copy()
    start.set_velocities(units.velocities_internal_to_ase(v0 - 0.5 * dt * f0 * inv_mass))
    config = MDConfig(steps=20, dt_fs=dt, ensemble="nve", save_every=5)
    out = tmp_path / "vv.h5"
    run_openmm_md(model, start, config, out=out, platform="Reference", progress=False)
    assert read_root_attrs(out)["velocity_convention"] == "half-step"
    with Dataset(out) as ds:
        assert len(ds) == len(ref) == 5
        for k, (pos, vel, frc) in enumerate(ref):
            f = ds.get_arrays(k)
            assert f[keys.TIME] == pytest.approx(5 * k * dt)
            np.testing.assert_allclose(f[keys.POSITIONS], pos, atol=1e-9)
            np.testing.assert_allclose(f[keys.FORCES], frc, atol=1e-8)
            half = vel - 0.5 * dt * frc * inv_mass
            np.testing.assert_allclose(f[keys.VELOCITIES], half, atol=1e-10)


# ------------------------------------------------------------------ mixed ML/MM
WATER = np.array([[0.0, 0.0, 0.0], [0.9572, 0.0, 0.0], [-0.2400, 0.9266, 0.0]])  # O H H, Å


def _water_cluster(ethanol: Atoms, n_water: int, seed: int = 0) -> np.ndarray:
    """Positions (3 n_water, 3) Å of waters around the molecule, at least 2.3 Å from any atom."""
    rng = np.random.default_rng(seed)
    center = ethanol.positions.mean(0)
    placed = [p for p in ethanol.positions]
    out = []
    while len(out) < 3 * n_water:
        direction = rng.normal(size=3)
        oxygen = center + rng.uniform(3.5, 5.5) * direction / np.linalg.norm(direction)
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        water = oxygen + WATER @ q.T
        if min(np.linalg.norm(np.asarray(placed) - w, axis=1).min() for w in water) < 2.3:
            continue
        placed += list(water)
        out += list(water)
    return np.asarray(out)


@pytest.fixture(scope="module")
def solvated(tmp_path_factory):
    """Ethanol (GAFF2, Gasteiger charges) + 6 flexible TIP3P waters, no cutoff.

    Returns (ethanol atoms, topology, positions Å (n, 3), pure MM System, ethanol-alone
    System built independently by the GAFF2 teacher)."""
    from mlff_distiller.teachers.openmm_gaff2 import (
        _xml_atom_names,
        gaff2_forcefield_xml,
        make_gaff2,
        molecule_for_atoms,
        openmm_topology,
    )

    cache = tmp_path_factory.mktemp("gaff2_cache")
    ethanol = from_smiles("CCO")[0]
    mol = molecule_for_atoms(ethanol)
    xml = gaff2_forcefield_xml(mol, "gas", cache)
    top = openmm_topology(mol, _xml_atom_names(xml))
    chain = top.addChain()
    waters = _water_cluster(ethanol, 6)
    for _ in range(6):
        res = top.addResidue("HOH", chain)
        o = top.addAtom("O", app.element.oxygen, res)
        h1 = top.addAtom("H1", app.element.hydrogen, res)
        h2 = top.addAtom("H2", app.element.hydrogen, res)
        top.addBond(o, h1)
        top.addBond(o, h2)
    ff = app.ForceField(str(xml), "amber14/tip3p.xml")
    pure = ff.createSystem(
        top, nonbondedMethod=app.NoCutoff, constraints=None, rigidWater=False, removeCMMotion=False
    )
    _, alone = make_gaff2(charge_method="gas", cache_dir=str(cache)).build_system(ethanol)
    positions = np.concatenate([ethanol.positions, waters])
    return ethanol, top, positions, pure, alone


def _bonded_terms(system) -> dict[str, list[tuple[int, ...]]]:
    out = {}
    for f in system.getForces():
        if isinstance(f, openmm.HarmonicBondForce):
            out["bonds"] = [tuple(f.getBondParameters(i)[:2]) for i in range(f.getNumBonds())]
        elif isinstance(f, openmm.HarmonicAngleForce):
            out["angles"] = [tuple(f.getAngleParameters(i)[:3]) for i in range(f.getNumAngles())]
        elif isinstance(f, openmm.PeriodicTorsionForce):
            n = f.getNumTorsions()
            out["torsions"] = [tuple(f.getTorsionParameters(i)[:4]) for i in range(n)]
    return out


def test_mixed_system_replaces_ml_internal_terms(model, solvated):
    """Mixed = pure MM - ethanol-alone MM (its bonded + internal nonbonded terms) + student:
    energies and forces on every atom to 1e-9 relative; water atoms feel exactly the pure-MM
    forces (ML-MM nonbonded unchanged); force groups separate the student from the MM rest."""
    ethanol, top, positions, pure, alone = solvated
    n_ml, n = len(ethanol), pure.getNumParticles()
    ml = list(range(n_ml))
    n_forces_before = pure.getNumForces()
    mixed = mixed_system(pure, ml, model, top, force_group=1)
    assert pure.getNumForces() == n_forces_before  # the MM system is untouched
    assert mixed.getNumForces() == n_forces_before + 1

    # (a) structure: no bonded term with all atoms ML is left; exactly ethanol's are gone
    terms_pure, terms_mixed, terms_alone = map(_bonded_terms, (pure, mixed, alone))
    for kind in ("bonds", "angles", "torsions"):
        assert not [t for t in terms_mixed[kind] if all(p < n_ml for p in t)]
        assert len(terms_pure[kind]) - len(terms_mixed[kind]) == len(terms_alone[kind]) > 0
    (ml_force,) = [f for f in mixed.getForces() if isinstance(f, openmm.PythonForce)]
    assert list(ml_force.getParticles()) == ml and ml_force.getForceGroup() == 1

    def evaluate(system, pos, groups=-1):
        context = _context(system)
        context.setPositions(positions_to_openmm(pos))
        return _energy_forces(context, groups)

    e_mixed, f_mixed, _ = evaluate(mixed, positions)
    e_pure, f_pure, _ = evaluate(pure, positions)
    e_alone, f_alone_ml, _ = evaluate(alone, ethanol.positions)
    moved = ethanol.copy()
    moved.positions = positions[:n_ml]
    e_student, f_student_ml = _calculator_energy_forces(model, moved)
    f_alone, f_student = np.zeros((n, 3)), np.zeros((n, 3))
    f_alone[:n_ml], f_student[:n_ml] = f_alone_ml, f_student_ml

    expected = f_pure - f_alone + f_student
    scale = np.abs(expected).max()
    np.testing.assert_allclose(f_mixed, expected, atol=1e-9 * scale)
    assert e_mixed == pytest.approx(e_pure - e_alone + e_student, rel=1e-9)
    # (b) MM atoms: the pure-MM forces, ML-MM interactions included
    np.testing.assert_allclose(f_mixed[n_ml:], f_pure[n_ml:], atol=1e-9 * scale)
    assert np.abs(f_pure[:n_ml] - f_alone[:n_ml]).max() > 1e-2  # ML-MM forces are not ~0
    # force groups: 1 is the student alone, 0 is the MM remainder
    e1, f1, _ = evaluate(mixed, positions, groups={1})
    e0, f0, _ = evaluate(mixed, positions, groups={0})
    np.testing.assert_allclose(f1, f_student, atol=1e-9 * scale)
    assert e1 == pytest.approx(e_student, rel=1e-9)
    np.testing.assert_allclose(f0, f_pure - f_alone, atol=1e-9 * scale)


def test_mixed_system_runs_langevin(model, solvated):
    """(c) 20 LangevinMiddle steps of 0.5 fs at 300 K: finite energies, everything moves."""
    ethanol, top, positions, pure, _ = solvated
    mixed = mixed_system(pure, range(len(ethanol)), model, top)
    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 5 / unit.picosecond, 0.0005)
    integrator.setRandomNumberSeed(7)
    context = _context(mixed, "CPU", integrator)
    context.setPositions(positions_to_openmm(positions))
    context.setVelocitiesToTemperature(300 * unit.kelvin, 7)
    integrator.step(20)
    state = context.getState(getEnergy=True, getPositions=True)
    pos = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer) * units.NM
    assert np.isfinite(pos).all()
    assert np.isfinite(state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
    assert np.isfinite(state.getKineticEnergy().value_in_unit(unit.kilojoule_per_mole))
    assert np.linalg.norm(pos - positions, axis=1).min() > 1e-4


def test_mixed_system_rejects_bad_atoms(model, solvated):
    ethanol, top, _, pure, _ = solvated
    with pytest.raises(ValueError, match="distinct particle indices"):
        mixed_system(pure, [0, 0, 1], model, top)


# ------------------------------------------------------------------ CLI
def test_cli_openmm_engine(model, tmp_path):
    from typer.testing import CliRunner

    from mlff_distiller.cli.main import app as cli
    from mlff_distiller.models.io import save_model

    save_model(model, tmp_path / "student")
    out = tmp_path / "md.h5"
    args = ["md", str(tmp_path / "student"), "--engine", "openmm", "-s", "CCO", "--steps", "20"]
    args += ["--save-every", "5", "--dt", "0.5", "--out", str(out), "--no-compile"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    attrs = read_root_attrs(out)
    assert attrs["velocity_convention"] == "half-step"
    assert attrs["md"]["engine"] == "openmm"
    with Dataset(out) as ds:
        assert len(ds) == 5
        times = [float(ds.get_arrays(i)[keys.TIME]) for i in range(5)]
        frame = ds.get_arrays(4)
    assert times == pytest.approx([0.0, 2.5, 5.0, 7.5, 10.0])
    assert np.isfinite(frame[keys.VELOCITIES]).all() and np.abs(frame[keys.FORCES]).max() > 0

    two = CliRunner().invoke(cli, [*args, "-s", "C"])
    assert two.exit_code == 1 and "one molecule" in two.output


def test_a_student_system_is_never_pickled_into_xml():
    """OpenMM serialises a PythonForce by pickling its callback; ours refuses (no pickle for
    model files), so XmlSerializer fails instead of writing the model into the XML."""
    import openmm

    from mlff_distiller.data.structures import from_smiles
    from mlff_distiller.md.openmm_engine import student_system
    from mlff_distiller.models.painn import PaiNN, PaiNNConfig

    system, _ = student_system(
        from_smiles("CCO")[0], PaiNN(PaiNNConfig(hidden=8, n_interactions=1, n_rbf=4))
    )
    with pytest.raises(Exception, match="pickle"):
        openmm.XmlSerializer.serialize(system)
