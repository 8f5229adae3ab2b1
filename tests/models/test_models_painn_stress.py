"""PaiNN stress (periodic systems): analytical and autograd (strain trick) against finite
differences of the energy, against each other, batched vs one by one, through StudentCalculator
(against ASE's numerical stress) and driving an ASE NPT (Berendsen) run.

Convention checked throughout: ASE's ``stress = (1/V) dE/d(strain)`` (eV/Å^3), where the strain
``eps`` maps positions and cell rows ``r -> r (1 + eps)``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.build import molecule
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.fd import calculate_numerical_stress
from ase.md.nptberendsen import NPTBerendsen
from ase.md.velocitydistribution import Stationary, thermalize_momenta

from mlff_distiller import keys
from mlff_distiller.data.batch import AtomsBatch
from mlff_distiller.md.calculator import StudentCalculator
from mlff_distiller.models.painn import PaiNN, PaiNNConfig

E, F, S = keys.ENERGY, keys.FORCES, keys.STRESS
CUTOFF = 3.5

# triclinic cells (rows are lattice vectors, Å); the first has a 3.4 Å vector, shorter than the
# cutoff, so atoms also interact with their own periodic images
CELL_A = np.array([[3.4, 0.0, 0.0], [0.9, 4.6, 0.0], [-0.6, 0.8, 5.1]])
CELL_B = np.array([[5.2, 0.0, 0.0], [-1.1, 4.4, 0.0], [0.7, -0.5, 4.0]])


def random_crystal(cell: np.ndarray, n_atoms: int, seed: int, min_dist: float = 0.9):
    """(numbers, positions): H/C/O at random fractional positions, no two (periodic images
    included) closer than ``min_dist`` Å."""
    rng = np.random.default_rng(seed)
    images = np.stack(np.meshgrid(*[np.arange(-2, 3)] * 3, indexing="ij"), -1).reshape(-1, 3)
    images = images @ cell
    positions: list[np.ndarray] = []
    while len(positions) < n_atoms:
        trial = rng.uniform(0.0, 1.0, 3) @ cell
        if all(np.linalg.norm(trial - p + images, axis=1).min() > min_dist for p in positions):
            positions.append(trial)
    return rng.choice([1, 6, 8], size=n_atoms), np.array(positions)


def make_batch(structures, dtype=torch.float64) -> AtomsBatch:
    """Batch of periodic structures given as (numbers, positions, cell)."""
    return AtomsBatch.from_arrays(
        [s[0] for s in structures],
        [s[1] for s in structures],
        [s[2] for s in structures],
        [np.ones(3, dtype=bool)] * len(structures),
        dtype=dtype,
    )


@pytest.fixture(scope="module")
def model() -> PaiNN:
    torch.manual_seed(0)
    m = PaiNN(PaiNNConfig(hidden=16, n_interactions=2, n_rbf=10, cutoff=CUTOFF)).double()
    m.set_scale_shift(1.0, 0.0)
    return m.eval()


@pytest.fixture(scope="module")
def crystal_a():
    numbers, positions = random_crystal(CELL_A, 8, seed=1)
    return numbers, positions, CELL_A


@pytest.fixture(scope="module")
def crystal_b():
    numbers, positions = random_crystal(CELL_B, 10, seed=2)
    return numbers, positions, CELL_B


def fd_stress(model: PaiNN, numbers, positions, cell, h: float = 1e-5) -> np.ndarray:
    """(3, 3) central finite differences of E under symmetric strains of cell and positions."""
    volume = abs(np.linalg.det(cell))

    def energy(strain: np.ndarray) -> float:
        deform = np.eye(3) + strain
        batch = make_batch([(numbers, positions @ deform, cell @ deform)])
        with torch.no_grad():
            return float(model(batch)[E][0])

    out = np.zeros((3, 3))
    for a in range(3):
        for b in range(a, 3):
            x = np.zeros((3, 3))
            x[a, b] += 0.5 * h
            x[b, a] += 0.5 * h
            out[a, b] = out[b, a] = (energy(x) - energy(-x)) / (2 * h * volume)
    return out


@pytest.mark.parametrize("method", ["analytical", "autograd"])
def test_stress_equals_finite_differences(model, crystal_a, method):
    batch = make_batch([crystal_a])
    edges = model.neighbors(batch)
    # the test is non-trivial: image edges (non-zero shifts) including an atom with its own image
    shifted = edges[1].abs().sum(1) > 0
    assert shifted.any() and (edges[0][0][shifted] == edges[0][1][shifted]).any()
    out = model.energy_and_forces(batch, method, stress=True)
    assert out[S].shape == (1, 3, 3) and out[S].dtype == torch.float64
    got = out[S][0].numpy()
    ref = fd_stress(model, *crystal_a)
    assert np.abs(ref).max() > 1e-3  # eV/Å^3; off-diagonal terms too (triclinic, random)
    assert np.abs(ref - np.diag(np.diag(ref))).max() > 1e-4
    np.testing.assert_allclose(got, got.T, rtol=0, atol=1e-15)
    assert np.abs(got - ref).max() < 1e-6 * np.abs(ref).max()


def test_analytical_equals_autograd_and_forces_unchanged(model, crystal_a, crystal_b):
    batch = make_batch([crystal_a, crystal_b])
    ana = model.energy_and_forces(batch, "analytical", stress=True)
    auto = model.energy_and_forces(batch, "autograd", stress=True)
    assert (ana[S] - auto[S]).abs().max() < 1e-10 * auto[S].abs().max()
    # the forces are those of the stress-free call
    plain = model.energy_and_forces(batch, "analytical")
    assert S not in plain and S not in model.energy_and_forces(batch, "autograd")
    torch.testing.assert_close(ana[F], plain[F], rtol=0, atol=1e-13)
    torch.testing.assert_close(auto[F], plain[F], rtol=0, atol=1e-12)
    torch.testing.assert_close(ana[E], plain[E], rtol=1e-14, atol=0)


@pytest.mark.parametrize("method", ["analytical", "autograd"])
def test_batched_stress_equals_one_by_one(model, crystal_a, crystal_b, method):
    batched = model.energy_and_forces(make_batch([crystal_a, crystal_b]), method, stress=True)
    assert batched[S].shape == (2, 3, 3)
    for k, crystal in enumerate((crystal_a, crystal_b)):
        single = model.energy_and_forces(make_batch([crystal]), method, stress=True)
        torch.testing.assert_close(batched[S][k], single[S][0], rtol=1e-12, atol=1e-15)
    assert (batched[S][0] - batched[S][1]).abs().max() > 1e-4  # two different stresses
    # and each against finite differences of its own structure
    ref_b = fd_stress(model, *crystal_b)
    assert np.abs(batched[S][1].numpy() - ref_b).max() < 1e-6 * np.abs(ref_b).max()


def test_stress_is_differentiable_for_training(model, crystal_a, crystal_b):
    """Parameter gradients of a stress loss: hand-derived graph == autograd double backward."""
    batch = make_batch([crystal_a, crystal_b])
    grads = {}
    for method in ("analytical", "autograd"):
        model.zero_grad()
        out = model.energy_and_forces(batch, method, create_graph=True, stress=True)
        (out[S] - 0.01).square().sum().backward()
        grads[method] = {
            n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None
        }
    model.zero_grad()
    assert grads["analytical"].keys() == grads["autograd"].keys()
    for name, ref in grads["autograd"].items():
        torch.testing.assert_close(grads["analytical"][name], ref, rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("method", ["analytical", "autograd"])
def test_non_periodic_stress_is_a_clear_error(model, crystal_a, method):
    numbers, positions, _ = crystal_a
    mol = AtomsBatch.from_arrays([numbers], [positions], dtype=torch.float64)
    with pytest.raises(ValueError, match="periodic in all three directions"):
        model.energy_and_forces(mol, method, stress=True)
    slab = AtomsBatch.from_arrays(
        [numbers], [positions], [CELL_A], [np.array([True, True, False])], dtype=torch.float64
    )
    with pytest.raises(ValueError, match=r"structure\(s\) \[0\]"):
        model.energy_and_forces(slab, method, stress=True)
    mixed = AtomsBatch.from_arrays(
        [numbers, numbers],
        [positions, positions],
        [CELL_A, np.zeros((3, 3))],
        [np.ones(3, bool), np.zeros(3, bool)],
        dtype=torch.float64,
    )
    with pytest.raises(ValueError, match=r"structure\(s\) \[1\]"):
        model.energy_and_forces(mixed, method, stress=True)
    assert model.energy_and_forces(mixed, method)[F].shape == (16, 3)  # forces still fine


@pytest.mark.parametrize("method", ["analytical", "autograd"])
def test_calculator_stress_equals_ase_numerical_stress(model, crystal_b, method):
    numbers, positions, cell = crystal_b
    atoms = Atoms(numbers=numbers, positions=positions, cell=cell, pbc=True)
    atoms.calc = StudentCalculator(model, forces=method, dtype=torch.float64)
    stress = atoms.get_stress()
    assert stress.shape == (6,)
    ref = calculate_numerical_stress(atoms, eps=1e-5)  # Voigt xx, yy, zz, yz, xz, xy
    assert np.abs(ref).max() > 1e-3 and np.abs(ref[3:]).max() > 1e-4
    assert np.abs(stress - ref).max() < 1e-6 * np.abs(ref).max()
    full = atoms.get_stress(voigt=False)
    np.testing.assert_allclose(
        full,
        model.energy_and_forces(make_batch([crystal_b]), method, stress=True)[S][0].numpy(),
        rtol=1e-12,
        atol=1e-15,
    )


def test_calculator_computes_stress_only_when_asked(model, crystal_b):
    numbers, positions, cell = crystal_b
    calls = []

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def energy_and_forces(self, batch, method, **kwargs):
            calls.append(kwargs)
            return self.inner.energy_and_forces(batch, method, **kwargs)

    atoms = Atoms(numbers=numbers, positions=positions, cell=cell, pbc=True)
    atoms.calc = StudentCalculator(Spy(), dtype=torch.float64)
    atoms.get_forces()
    assert calls == [{}]
    atoms.get_stress()
    assert calls == [{}, {"stress": True}]
    assert "stress" in StudentCalculator.implemented_properties


def test_calculator_non_periodic_stress_raises(model):
    atoms = molecule("H2O")
    atoms.calc = StudentCalculator(model, dtype=torch.float64)
    assert atoms.get_forces().shape == (3, 3)  # forces of a molecule still work
    with pytest.raises(PropertyNotImplementedError, match="periodic in all three directions"):
        atoms.get_stress()
    atoms.cell = CELL_A
    atoms.pbc = [True, True, False]
    with pytest.raises(PropertyNotImplementedError, match="periodic"):
        atoms.get_stress()


@pytest.mark.parametrize("side", [-1.0, 1.0])
def test_npt_berendsen_moves_volume_towards_target_pressure(model, crystal_b, side):
    """NPT (Berendsen barostat and thermostat, 60 steps of 0.5 fs) driven by StudentCalculator.

    The target pressure is set a quarter of the configurational pressure away from the true
    initial pressure (ASE's finite-difference stress plus the ideal-gas term), below it
    (``side=-1``: the box must grow) or above it (``side=+1``: it must shrink). Heavy masses and
    10 K keep the atoms nearly still, so the barostat alone moves the volume. A stress with the
    wrong sign (or far off) makes one of the two fail: the box would move away from the target.
    """
    numbers, positions, cell = crystal_b
    atoms = Atoms(numbers=numbers, positions=positions, cell=cell, pbc=True)
    atoms.set_masses(np.full(len(atoms), 100.0))
    atoms.calc = StudentCalculator(model, forces="analytical", dtype=torch.float64)
    thermalize_momenta(atoms, temperature_K=10, rng=np.random.default_rng(0))
    Stationary(atoms)
    volume0 = atoms.get_volume()
    p_config = -np.trace(calculate_numerical_stress(atoms, eps=1e-5, voigt=False)) / 3
    p_true = p_config + 2 * atoms.get_kinetic_energy() / (3 * volume0)
    assert abs(p_config) > 5e-4  # eV/Å^3 (0.08 GPa): a clear pressure to act on
    target = p_true + side * 0.25 * abs(p_config)
    dyn = NPTBerendsen(
        atoms,
        timestep=0.5 * units.fs,
        temperature_K=10,
        pressure_au=target,
        taut=50 * units.fs,
        taup=100 * units.fs,
        compressibility_au=0.3 / abs(p_config),  # ~1e-3 relative volume change per step
    )
    volumes = []
    dyn.attach(lambda: volumes.append(atoms.get_volume()), interval=1)
    dyn.run(60)
    change = (volumes[-1] - volume0) / volume0
    print(f"side {side:+.0f}: p_true {p_true:.4f} target {target:.4f} eV/Å^3, dV/V {change:.2e}")
    assert len(volumes) == 61 and np.isfinite(volumes).all()
    assert abs(change) > 1e-3  # the volume moved
    assert np.sign(change) == -side  # towards the target: grows if the target is below


@pytest.mark.slow
def test_compiled_stress_equals_eager(model, crystal_a, crystal_b):
    """``compile_forces()`` with ``stress=True`` (one torch.compile, ~1 min) == eager."""
    batch = make_batch([crystal_a, crystal_b])
    ref = model.energy_and_forces(batch, "analytical", stress=True)
    try:
        got = model.compile_forces().energy_and_forces(batch, "analytical", stress=True)
    finally:
        model.compile_forces(False)
    torch.testing.assert_close(got[E], ref[E], rtol=1e-12, atol=0)
    torch.testing.assert_close(got[F], ref[F], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got[S], ref[S], rtol=1e-10, atol=1e-13)
