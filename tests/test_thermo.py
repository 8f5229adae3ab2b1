"""The one kinetic energy and temperature (mlff_distiller.thermo), by hand and against ASE."""

import numpy as np
import pytest
import torch
from ase import Atoms
from ase import units as ase_units

from mlff_distiller import thermo

MASSES = np.array([1.0, 16.0])
V = np.array([[0.01, 0.0, 0.0], [0.0, 0.002, 0.0]])  # Å/fs


def test_kinetic_energy_by_hand_and_against_ase():
    # KE = 1/2 sum m v^2 with v in Å/(ASE time) = v_fs / ase_units.fs
    ke = 0.5 * (1.0 * 0.01**2 + 16.0 * 0.002**2) / ase_units.fs**2
    assert float(thermo.kinetic_energy(V, MASSES)[0]) == pytest.approx(ke, rel=1e-12)
    atoms = Atoms("HO", positions=[[0, 0, 0], [1, 0, 0]], masses=MASSES)
    atoms.set_velocities(V / ase_units.fs)
    assert atoms.get_kinetic_energy() == pytest.approx(ke, rel=1e-12)


def test_temperature_counts_internal_motion_with_3n_minus_3_dof():
    v_com = (MASSES[:, None] * V).sum(0) / MASSES.sum()
    internal = V - v_com
    twice_ke = (MASSES[:, None] * internal**2).sum() / ase_units.fs**2
    expected = twice_ke / (3 * ase_units.kB)  # 2 atoms: 3N - 3 = 3
    assert float(thermo.temperature(V, MASSES)[0]) == pytest.approx(expected, rel=1e-12)
    # a rigid translation carries no temperature
    assert float(thermo.temperature(V * 0 + 0.01, MASSES)[0]) == pytest.approx(0.0, abs=1e-12)
    # per atom 3 (1 - m_i / M): H carries 3 * 16/17 of the 3 dof
    dof = thermo.atom_degrees_of_freedom(torch.as_tensor(MASSES))
    np.testing.assert_allclose(dof.numpy(), [3 * 16 / 17, 3 * 1 / 17])
    per_element = thermo.element_temperature(V, MASSES, np.array([1, 8]))
    h_expected = MASSES[0] * (internal[0] ** 2).sum() / ase_units.fs**2
    assert float(per_element[1]) == pytest.approx(h_expected / (3 * 16 / 17 * ase_units.kB))


def test_batched_frames_and_structures_equal_one_by_one():
    rng = np.random.default_rng(0)
    masses = np.array([12.0, 1.0, 1.0, 16.0, 1.0])
    idx = np.array([0, 0, 0, 1, 1])
    v = rng.normal(size=(4, 5, 3)) * 0.01  # 4 frames
    temps = thermo.temperature(v, masses, idx)
    assert temps.shape == (4, 2)
    for f in range(4):
        for s in range(2):
            m = idx == s
            assert temps[f, s] == pytest.approx(float(thermo.temperature(v[f][m], masses[m])[0]))


def test_maxwell_boltzmann_start_has_the_temperature_on_average():
    masses = torch.tensor([12.011, 1.008, 1.008, 1.008, 15.999, 1.008], dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    temps = torch.stack([
        thermo.temperature(thermo.maxwell_boltzmann_velocities(masses, 400.0, generator=gen),
                           masses)
        for _ in range(4000)
    ])  # fmt: skip
    # 15 dof: the mean of 4000 samples has a relative error sqrt(2/15/4000) = 0.6%
    assert float(temps.mean()) == pytest.approx(400.0, rel=0.025)
