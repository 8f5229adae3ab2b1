"""Unit constants against independent definitions, and AtomsBatch construction."""

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from mlff_distiller import keys, units
from mlff_distiller.data.batch import AtomsBatch


def test_energy_conversions_match_codata():
    # 1 kcal = 4.184 kJ (thermochemical calorie); 1 eV = 96.485 kJ/mol (CODATA)
    assert units.KCAL_PER_MOL == pytest.approx(0.0433641, rel=1e-6)
    assert units.KCAL_PER_MOL / units.KJ_PER_MOL == pytest.approx(4.184, rel=1e-12)
    assert 1.0 / units.KJ_PER_MOL == pytest.approx(96.485, rel=1e-4)
    assert units.HARTREE == pytest.approx(27.211386, rel=1e-6)
    assert units.energy_to_ev(1.0, "kcal/mol") == units.KCAL_PER_MOL
    assert units.energy_from_ev(units.energy_to_ev(3.5, "Hartree"), "hartree") == pytest.approx(3.5)


def test_length_and_velocity_conversions():
    assert units.length_to_angstrom(0.7, "nm") == pytest.approx(7.0)
    assert units.BOHR == pytest.approx(0.52917721, rel=1e-7)
    # an atom moving 0.01 Å/fs: ASE stores Å per ASE time unit (1 fs = 0.0982 ASE units)
    v = np.array([0.01, 0.0, 0.0])
    v_ase = units.velocities_internal_to_ase(v)
    assert v_ase[0] == pytest.approx(0.01 / 0.09822694788464063)
    np.testing.assert_allclose(units.velocities_ase_to_internal(v_ase), v)


def test_atoms_batch_from_atoms_keeps_structures_apart():
    water = Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    methane = Atoms("CH4", positions=np.random.default_rng(0).normal(size=(5, 3)))
    for a, e in ((water, -1.0), (methane, -2.0)):
        a.calc = SinglePointCalculator(a, energy=e, forces=np.ones((len(a), 3)) * e)
    batch = AtomsBatch.from_atoms([water, methane], dtype=torch.float64)
    assert batch.n_atoms == 8 and batch.n_systems == 2
    assert batch.system_idx.tolist() == [0, 0, 0, 1, 1, 1, 1, 1]
    assert batch.atoms_per_system.tolist() == [3, 5]
    assert batch.labels[keys.ENERGY].tolist() == [-1.0, -2.0]
    assert batch.labels[keys.FORCES].shape == (8, 3)
    torch.testing.assert_close(batch.positions[3:], torch.as_tensor(methane.positions))
    assert batch.to(dtype=torch.float32).positions.dtype == torch.float32
    assert batch.to(dtype=torch.float32).atomic_numbers.dtype == torch.int64
