"""StudentCalculator: agrees with the model, drives ASE MD (NVE conservation) and optimizers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import units
from ase.build import molecule
from ase.md.velocitydistribution import Stationary, ZeroRotation, thermalize_momenta
from ase.md.verlet import VelocityVerlet
from ase.optimize import BFGS

from mlff_distiller import keys
from mlff_distiller.data.batch import AtomsBatch
from mlff_distiller.md.calculator import StudentCalculator, UnsupportedElementError
from mlff_distiller.models.io import save_model
from mlff_distiller.models.painn import PaiNN, PaiNNConfig


@pytest.fixture(scope="module")
def model() -> PaiNN:
    torch.manual_seed(1)
    m = PaiNN(PaiNNConfig(hidden=16, n_interactions=2, n_rbf=12, cutoff=4.0))
    ref = torch.zeros(119, dtype=torch.float64)
    ref[[1, 6, 8]] = torch.tensor([-13.6, -1029.0, -2041.0], dtype=torch.float64)
    m.set_reference_energies(ref, elements=[1, 6, 8])
    m.set_scale_shift(1.5, 0.0)
    return m.double()


def test_calculator_matches_model_and_both_force_methods(model, tmp_path):
    atoms = molecule("CH3CH2OH")
    save_model(model, tmp_path / "m")
    results = {}
    for method in ("analytical", "autograd"):
        atoms.calc = StudentCalculator(tmp_path / "m", forces=method, dtype=torch.float64)
        results[method] = (atoms.get_potential_energy(), atoms.get_forces())
    batch = AtomsBatch.from_arrays([atoms.numbers], [atoms.positions], dtype=torch.float64)
    ref = model.energy_and_forces(batch, "autograd")
    for energy, forces in results.values():
        assert energy == pytest.approx(float(ref[keys.ENERGY][0]), abs=1e-9)
        np.testing.assert_allclose(forces, ref[keys.FORCES].numpy(), atol=1e-10)
    assert atoms.get_potential_energy(force_consistent=True) == pytest.approx(energy)


def test_unsupported_element_is_named(model):
    atoms = molecule("CH3Cl")
    atoms.calc = StudentCalculator(model, dtype=torch.float64)
    with pytest.raises(UnsupportedElementError, match="Cl"):
        atoms.get_potential_energy()


def test_nve_conserves_energy(model):
    """1000 velocity-Verlet steps of 0.25 fs, float64, ethanol.

    Tolerance: total-energy drift (last - first) and spread (max - min) below 1 meV;
    measured 2e-5 eV drift and 1e-4 eV spread while the kinetic energy swings by 0.6 eV.
    """
    atoms = molecule("CH3CH2OH")
    atoms.calc = StudentCalculator(model, forces="analytical", dtype=torch.float64)
    thermalize_momenta(atoms, temperature_K=300, rng=np.random.default_rng(0))
    Stationary(atoms)
    ZeroRotation(atoms)
    dyn = VelocityVerlet(atoms, timestep=0.25 * units.fs)
    total, kinetic = [], []

    def record():
        total.append(atoms.get_potential_energy() + atoms.get_kinetic_energy())
        kinetic.append(atoms.get_kinetic_energy())

    dyn.attach(record, interval=10)
    dyn.run(1000)
    total = np.asarray(total)
    drift = abs(total[-1] - total[0])
    spread = total.max() - total.min()
    # the dynamics is non-trivial: kinetic energy moves by much more than the total energy
    assert np.ptp(kinetic) > 20 * spread
    print(f"NVE: drift {drift:.2e} eV, spread {spread:.2e} eV, kinetic range {np.ptp(kinetic):.2e}")
    assert drift < 1e-3 and spread < 1e-3, f"drift {drift:.2e} eV, spread {spread:.2e} eV"


def test_ase_optimizer_lowers_the_energy(model):
    atoms = molecule("H2O")
    atoms.rattle(0.05, seed=1)
    atoms.calc = StudentCalculator(model, dtype=torch.float64)
    start = atoms.get_potential_energy()
    BFGS(atoms, logfile=None).run(fmax=0.05, steps=50)
    assert atoms.get_potential_energy() < start


def test_recomputes_exactly_when_the_structure_changes(model):
    atoms = molecule("CH3CH2OH")
    calc = StudentCalculator(model, dtype=torch.float64)
    atoms.calc = calc
    f0 = atoms.get_forces()
    assert calc.check_state(atoms) == []  # unchanged: the stored results are served
    atoms.positions[3, 1] += 1e-12  # any change of a position is a change
    assert calc.check_state(atoms) == ["positions"]
    assert not np.array_equal(atoms.get_forces(), f0)
    atoms.cell = [10.0, 10.0, 10.0]
    assert "cell" in calc.check_state(atoms)
    other = molecule("CH3CH2OH")
    other.numbers[0] = 7  # another element at the same place
    assert "numbers" in calc.check_state(other)
