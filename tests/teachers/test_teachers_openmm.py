"""OpenMM teachers (GAFF2, amber14): forces are -dE/dx, the ASE-calculator path equals the
native OpenMM path, systems are neutral, parametrizations are cached, Langevin holds T."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from teachers_testlib import assert_fd_forces, molecule

from mlff_distiller import keys
from mlff_distiller.teachers import TeacherError, get_teacher

ALA2_H5 = Path(__file__).resolve().parents[1] / "fixtures" / "mdtraj_ala2.h5"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("gaff2_cache")


@pytest.fixture(scope="module")
def gaff2(cache_dir):
    return get_teacher("openmm-gaff2", cache_dir=str(cache_dir), platform="Reference")


@pytest.mark.parametrize("smiles", ["O", "C", "CCO", "CC(=O)OC1=CC=CC=C1C(=O)O"])
def test_gaff2_forces_are_minus_fd_gradient(gaff2, smiles):
    atoms = molecule(smiles)
    # Reference platform, double precision: central differences agree to 1e-5 eV/Å
    assert_fd_forces(gaff2, atoms, h=1e-4, atol=2e-4, rtol=1e-4)


def _native_energy_forces(teacher, atoms, constraints=None):
    import openmm

    from mlff_distiller.teachers.openmm_base import state_energy_forces

    context, _ = teacher.create_context(atoms, openmm.VerletIntegrator(0.001), constraints)
    return state_energy_forces(context.getState(getEnergy=True, getForces=True))


@pytest.mark.parametrize("constraints", [None, "hbonds"])
def test_gaff2_ase_path_equals_native_path(gaff2, constraints):
    atoms = molecule("CCO", name="ethanol")
    a = atoms.copy()
    a.calc = gaff2
    e_native, f_native = _native_energy_forces(gaff2, atoms, constraints)
    assert a.get_potential_energy() == pytest.approx(e_native, abs=1e-9)
    np.testing.assert_allclose(a.get_forces(), f_native, atol=1e-9)


@pytest.mark.parametrize("smiles", ["O", "CCO", "CC(=O)OC1=CC=CC=C1C(=O)O", "c1ccncc1"])
def test_gaff2_systems_are_neutral(gaff2, smiles):
    _, system = gaff2.build_system(molecule(smiles))
    total = gaff2.check_net_charge(system, 0, smiles)
    assert abs(total) < 1e-9


def test_gaff2_charged_molecule_keeps_its_integral_charge(gaff2):
    _, system = gaff2.build_system(molecule("CC(=O)[O-]", name="acetate"))
    assert gaff2.check_net_charge(system, -1, "acetate") == pytest.approx(-1.0, abs=1e-9)


def test_gaff2_perceives_bonds_without_smiles_and_caches(gaff2, cache_dir):
    atoms = molecule("CCO")
    a = atoms.copy()
    a.calc = gaff2
    e_smiles = a.get_potential_energy()
    b = atoms.copy()
    del b.info[keys.SMILES]
    b.calc = get_teacher("openmm-gaff2", cache_dir=str(cache_dir), platform="Reference")
    assert b.get_potential_energy() == pytest.approx(e_smiles, abs=1e-9)
    folders = [p for p in cache_dir.iterdir() if (p / "smiles.txt").exists()]
    assert any((p / "smiles.txt").read_text().strip() == "CCO" for p in folders)


def test_gaff2_smiles_geometry_mismatch_is_reported(cache_dir):
    teacher = get_teacher("openmm-gaff2", smiles="COC", cache_dir=str(cache_dir))
    atoms = molecule("CCO")
    atoms.info.pop(keys.SMILES)
    atoms.calc = teacher
    with pytest.raises(TeacherError, match="does not match its SMILES 'COC'"):
        atoms.get_potential_energy()


@pytest.fixture(scope="module")
def ala2():
    from mlff_distiller.teachers.openmm_amber import read_mdtraj_h5

    _, frames = read_mdtraj_h5(ALA2_H5)
    teacher = get_teacher("openmm-amber14", topology=str(ALA2_H5), platform="Reference")
    return teacher, frames


def test_amber14_reads_the_mdtraj_file(ala2):
    _, frames = ala2
    assert len(frames) == 100 and len(frames[0]) == 22
    # nm -> Å: C-N peptide bond about 1.33 Å
    d = np.linalg.norm(frames[0].positions[4] - frames[0].positions[6])
    assert 1.2 < d < 1.5


def test_amber14_forces_are_minus_fd_gradient(ala2):
    teacher, frames = ala2
    assert_fd_forces(teacher, frames[3], h=1e-4, atol=2e-4, rtol=1e-4)


def test_amber14_ase_equals_native_and_is_neutral(ala2):
    teacher, frames = ala2
    a = frames[5].copy()
    a.calc = teacher
    e_native, f_native = _native_energy_forces(teacher, frames[5], "hbonds")
    assert a.get_potential_energy() == pytest.approx(e_native, abs=1e-9)
    np.testing.assert_allclose(a.get_forces(), f_native, atol=1e-9)
    _, system = teacher.build_system(frames[5])
    assert abs(teacher.check_net_charge(system, 0, "ala2")) < 1e-6


def test_amber14_wrong_molecule_is_a_value_error(ala2):
    teacher, _ = ala2
    atoms = molecule("CCO")
    atoms.calc = teacher
    with pytest.raises(ValueError, match="does not match the amber14 topology"):
        atoms.get_potential_energy()


def _mean_temperature(path, n_constraints):
    """Mean temperature of the frames of ``path`` from :func:`mlff_distiller.thermo.temperature`
    (3N - 3 degrees of freedom), scaled to the 3N - 3 - n_constraints that move."""
    from ase.data import atomic_masses

    from mlff_distiller.data.hdf5 import Dataset
    from mlff_distiller.thermo import temperature

    with Dataset(path) as ds:
        frames = [ds.get_arrays(i) for i in range(len(ds))]
    v = np.stack([f["velocities"] for f in frames])
    masses = atomic_masses[frames[0]["atomic_numbers"]]
    n_free = 3 * len(masses) - 3
    t = temperature(v, masses)[:, 0] * n_free / (n_free - n_constraints)
    return float(np.mean(t)), len(frames)


def test_native_langevin_holds_temperature(cache_dir, tmp_path):
    """GAFF2 ethanol, OpenMM LangevinMiddle, 2 fs with H-bond constraints, friction 5/ps:
    the mean temperature over 20 ps of production (after 2 ps) is within 8 % of 300 K."""
    from mlff_distiller.teachers.sampling import SamplingConfig, sample, trajectory_temperatures

    atoms = molecule("CCO", name="ethanol")
    cfg = SamplingConfig(
        temperature_k=300,
        friction_per_ps=5.0,
        equilibration_fs=2000,
        production_fs=20000,
        save_every=10,
        seed=3,
    )
    teacher = get_teacher("openmm-gaff2", cache_dir=str(cache_dir), platform="CPU", threads=1)
    sample(teacher, atoms, tmp_path / "nvt.h5", cfg)
    t_mean, n = _mean_temperature(tmp_path / "nvt.h5", 6)  # 6 X-H bonds constrained
    print(f"OpenMM Langevin: mean T {t_mean:.1f} K over {n} frames (20 ps)")
    assert abs(t_mean - 300) < 0.08 * 300
    recorded = trajectory_temperatures(tmp_path / "nvt.h5")
    assert recorded["measured_k"] == pytest.approx(t_mean, rel=1e-3)  # OpenMM vs ASE masses
    assert recorded["target_k"] == 300 and recorded["velocity_convention"] == keys.HALF_STEP


def test_ase_langevin_holds_temperature(gaff2, tmp_path):
    """The ASE engine (ase.md.langevin) with the GAFF2 teacher as an ASE calculator, 1 fs,
    friction 10/ps: mean T over 10 ps (after 1 ps) within 10 % of 300 K."""
    from mlff_distiller.teachers.sampling import SamplingConfig, _ASEEngine, kinetic_temperature

    atoms = molecule("CCO", name="ethanol")
    cfg = SamplingConfig(temperature_k=300, dt_fs=1.0, friction_per_ps=10.0).resolved("ml")
    engine = _ASEEngine(gaff2, atoms, cfg, None, np.random.default_rng(4))
    engine.run(1000)
    temps = []
    for _ in range(500):
        engine.run(20)
        temps.append(kinetic_temperature(engine.velocities(), engine))
    t_mean = float(np.mean(temps))
    print(f"ASE Langevin: mean T {t_mean:.1f} K over 10 ps")
    assert abs(t_mean - 300) < 0.10 * 300


def test_default_platform_is_chosen_by_size_and_changes_no_numbers(cache_dir):
    """``platform=None`` takes Reference for small systems (computed in the calling thread: 100x
    faster for 12-21 atoms on this machine, ``benchmarks/teachers.py --only-openmm``) and CPU
    from REFERENCE_MAX_PARTICLES on; both platforms give aspirin the same energy and forces
    (CPU computes in mixed precision)."""
    from mlff_distiller.teachers.openmm_base import REFERENCE_MAX_PARTICLES, openmm_platform

    assert openmm_platform(None, n_particles=21)[0].getName() == "Reference"
    assert openmm_platform(None, n_particles=REFERENCE_MAX_PARTICLES + 1)[0].getName() == "CPU"
    assert openmm_platform("CPU", threads=1, n_particles=21)[1] == {"Threads": "1"}
    atoms = molecule("CC(=O)OC1=CC=CC=C1C(=O)O")
    results = {}
    for platform in (None, "CPU"):
        teacher = get_teacher("openmm-gaff2", cache_dir=str(cache_dir), platform=platform)
        results[platform] = _native_energy_forces(teacher, atoms)
        assert teacher._energy_context(atoms).getPlatform().getName() == (platform or "Reference")
    (e_ref, f_ref), (e_cpu, f_cpu) = results[None], results["CPU"]
    assert e_ref == pytest.approx(e_cpu, abs=1e-5)  # eV
    np.testing.assert_allclose(f_ref, f_cpu, atol=1e-4)  # eV/Å; |F| up to ~5
    assert np.abs(f_ref).max() > 0.5  # a structure with real forces
