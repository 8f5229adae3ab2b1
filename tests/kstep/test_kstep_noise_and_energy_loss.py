"""Noise augmentation keeps the true ends and equivariance; the kinetic-energy loss by hand."""

import numpy as np
import pytest
import torch
from ase import units as ase_units
from scipy.spatial.transform import Rotation

from mlff_distiller.kstep.dataset import KStepWindows, build_windows
from mlff_distiller.models.kstep_common import DELTA_POSITIONS, DELTA_VELOCITIES, KStepInput
from mlff_distiller.training.kstep_losses import KStepLossWeights, KStepTargets, kstep_loss
from mlff_distiller.training.kstep_trainer import perturb_windows


@pytest.fixture(scope="module")
def batch(gaff2_trajectories, tmp_path_factory):
    path = tmp_path_factory.mktemp("kstep_noise") / "w.h5"
    build_windows(list(gaff2_trajectories.values()), path, ks=(4,), stride=10, fractions=(1, 0, 0))
    windows = KStepWindows.from_file(path, "train")
    return next(iter(windows.batches(6, shuffle=True, seed=0)))


def _sum_by_system(values: torch.Tensor, inp: KStepInput) -> torch.Tensor:
    out = torch.zeros(inp.n_systems, values.shape[-1], dtype=values.dtype)
    return out.index_add(0, inp.system_idx, values)


def test_noise_changes_the_start_but_not_the_true_end(batch):
    inp, tgt = batch
    gen = torch.Generator().manual_seed(0)
    noisy, ntgt = perturb_windows(inp, tgt, 0.02, 0.003, gen)
    assert (noisy.positions - inp.positions).abs().max() > 1e-3
    torch.testing.assert_close(
        noisy.positions + ntgt.delta_positions, inp.positions + tgt.delta_positions
    )
    torch.testing.assert_close(
        noisy.velocities + ntgt.delta_velocities, inp.velocities + tgt.delta_velocities
    )
    m = inp.masses.to(inp.positions.dtype)[:, None]
    for old, new in ((inp.positions, noisy.positions), (inp.velocities, noisy.velocities)):
        moved = _sum_by_system(m * (new - old), inp)  # centre of mass and momentum kept
        torch.testing.assert_close(moved, torch.zeros_like(moved), atol=1e-5, rtol=0)  # float32
    assert ntgt.forces is tgt.forces and torch.equal(ntgt.bonds, tgt.bonds)
    # lighter atoms get larger velocity noise: equal kinetic energy per atom on average
    e_v = noisy.velocities - inp.velocities
    light, heavy = inp.masses < 2, inp.masses > 11
    ratio = e_v[light].std() / e_v[heavy].std()
    assert 2.0 < float(ratio) < 5.0  # sqrt(12 / 1) = 3.5


def test_noise_is_rotation_equivariant(batch):
    """Rotating the windows and the noise together gives the rotated noisy windows."""
    inp, tgt = batch
    rot = torch.as_tensor(Rotation.random(random_state=3).as_matrix(), dtype=inp.positions.dtype)
    gen = torch.Generator().manual_seed(1)
    noise = (
        torch.randn(inp.positions.shape, generator=gen, dtype=inp.positions.dtype),
        torch.randn(inp.positions.shape, generator=gen, dtype=inp.positions.dtype),
    )
    noisy, ntgt = perturb_windows(inp, tgt, 0.02, 0.003, noise=noise)

    def rotated(obj, names):
        return type(obj)(**{**obj.__dict__, **{n: getattr(obj, n) @ rot.T for n in names}})

    r_inp = rotated(inp, ("positions", "velocities", "forces"))
    r_tgt = rotated(tgt, ("delta_positions", "delta_velocities"))
    r_noisy, r_ntgt = perturb_windows(
        r_inp, r_tgt, 0.02, 0.003, noise=(noise[0] @ rot.T, noise[1] @ rot.T)
    )
    torch.testing.assert_close(r_noisy.positions, noisy.positions @ rot.T)
    torch.testing.assert_close(r_noisy.velocities, noisy.velocities @ rot.T)
    torch.testing.assert_close(r_ntgt.delta_positions, ntgt.delta_positions @ rot.T)
    torch.testing.assert_close(r_ntgt.delta_velocities, ntgt.delta_velocities @ rot.T)


def _h2_and_c(velocities: torch.Tensor, system_idx: list[int]):
    """Two hydrogens (1 amu) and a carbon (12 amu) at the origin with ``velocities`` (3, 3)
    Å/fs, in the molecules ``system_idx``; the true jump changes nothing (k = 4, dt 0.5 fs)."""
    n_sys = max(system_idx) + 1
    inp = KStepInput.molecules(
        atomic_numbers=torch.tensor([1, 1, 6]),
        masses=torch.tensor([1.0, 1.0, 12.0], dtype=torch.float64),
        positions=torch.zeros(3, 3, dtype=torch.float64),
        velocities=velocities,
        system_idx=torch.tensor(system_idx),
        k=torch.full((n_sys,), 4),
        dt=torch.full((n_sys,), 0.5, dtype=torch.float64),
    )
    zeros = torch.zeros(3, 3, dtype=torch.float64)
    tgt = KStepTargets(
        delta_positions=zeros,
        delta_velocities=zeros,
        tau=torch.full((3, 1), 2.0, dtype=torch.float64),
        bonds=torch.zeros(0, 2, dtype=torch.long),
        angles=torch.zeros(0, 3, dtype=torch.long),
        dihedrals=torch.zeros(0, 4, dtype=torch.long),
    )
    return inp, tgt


def test_kinetic_energy_loss_by_hand():
    # two molecules: a "hydrogen pair" and one carbon; velocities in Å/fs
    masses = torch.tensor([1.0, 1.0, 12.0], dtype=torch.float64)
    v = torch.tensor([[0.01, 0, 0], [-0.01, 0, 0], [0, 0.002, 0]], dtype=torch.float64)
    inp, tgt = _h2_and_c(v, system_idx=[0, 0, 1])  # true end: v_t (kinetic energy unchanged)
    zeros = torch.zeros(3, 3, dtype=torch.float64)
    dv = 0.1 * v  # the prediction heats both molecules by 1.1² - 1 = 21 %
    dv[1] = 0.0  # ... except the second hydrogen
    outputs = {DELTA_POSITIONS: zeros, DELTA_VELOCITIES: dv}
    w = KStepLossWeights(delta_x=0, delta_v=0, bond=0, angle=0, dihedral=0, kinetic=2.0)
    total, parts = kstep_loss(outputs, inp.positions, tgt, w, inp)
    k_true = 0.5 * (masses[:, None] * v**2).sum(-1).numpy() / ase_units.fs**2  # eV per atom
    k_pred = k_true * np.array([1.21, 1.0, 1.21])
    rel = np.array(
        [(k_pred[:2].sum() - k_true[:2].sum()) / k_true[:2].sum(), 0.21]
    )  # molecule 0: (0.21 + 0) / 2
    assert float(parts["kinetic"]) == pytest.approx(np.mean(rel**2))
    assert float(total) == pytest.approx(2.0 * np.mean(rel**2))
    _, no_inputs = kstep_loss(outputs, inp.positions, tgt, w)
    assert "kinetic" not in no_inputs  # the term needs the inputs (masses, v_t)


def test_first_order_energy_loss_matches_the_real_energy_change():
    """A small error (e_x, e_v) of the predicted end state changes E + K by what the loss says
    (Lennard-Jones trimer; finite differences to first order)."""
    from ase import Atoms
    from ase.calculators.lj import LennardJones

    atoms = Atoms("Ar3", positions=[[0, 0, 0], [3.6, 0.2, 0], [1.7, 3.1, 0.3]])
    atoms.calc = LennardJones(sigma=3.4, epsilon=0.0104, rc=10.0)
    masses = torch.as_tensor(atoms.get_masses())
    rng = np.random.default_rng(0)
    v_end = rng.normal(scale=0.003, size=(3, 3))  # Å/fs
    e_x = 1e-4 * rng.normal(size=(3, 3))
    e_v = 1e-5 * rng.normal(size=(3, 3))

    def total(x, v):
        atoms.positions = x
        kin = 0.5 * np.sum(atoms.get_masses()[:, None] * v**2) / ase_units.fs**2
        return atoms.get_potential_energy() + kin

    x_end = atoms.positions.copy()
    real_change = total(x_end + e_x, v_end + e_v) - total(x_end, v_end)
    atoms.positions = x_end
    f = torch.as_tensor(atoms.get_forces())
    t = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
    inp = KStepInput.molecules(
        atomic_numbers=torch.tensor([18, 18, 18]),
        masses=masses,
        positions=torch.zeros(3, 3, dtype=torch.float64),
        velocities=torch.zeros(3, 3, dtype=torch.float64),  # so v_t + delta_v_true = v_end
        system_idx=torch.zeros(3, dtype=torch.long),
        k=torch.tensor([4]),
        dt=torch.tensor([0.5], dtype=torch.float64),
    )
    tgt = KStepTargets(
        delta_positions=t(x_end),
        delta_velocities=t(v_end),
        tau=torch.full((3, 1), 2.0, dtype=torch.float64),
        bonds=torch.zeros(0, 2, dtype=torch.long),
        angles=torch.zeros(0, 3, dtype=torch.long),
        dihedrals=torch.zeros(0, 4, dtype=torch.long),
        forces=f,
    )
    outputs = {DELTA_POSITIONS: t(x_end + e_x), DELTA_VELOCITIES: t(v_end + e_v)}
    w = KStepLossWeights(delta_x=0, delta_v=0, bond=0, angle=0, dihedral=0, energy=1.0)
    _, parts = kstep_loss(outputs, inp.positions, tgt, w, inp)
    assert abs(real_change) > 1e-6  # the error does change the energy
    assert float(parts["energy"]) == pytest.approx((real_change / 3) ** 2, rel=1e-2)


def test_element_kinetic_energy_loss_by_hand():
    """A jump that moves kinetic energy from the carbon to the hydrogens of one molecule keeps
    the molecule's total (the molecular term is zero) but not each element's."""
    v = torch.tensor([[0.01, 0, 0], [0, 0.01, 0], [0, 0, 0.002]], dtype=torch.float64)
    inp, tgt = _h2_and_c(v, system_idx=[0, 0, 0])
    zeros = torch.zeros(3, 3, dtype=torch.float64)
    # m v^2: H 1e-4 each (2e-4 together), C 4.8e-5. Move 10% of the C's onto the hydrogens:
    # C x0.9 (v x sqrt(0.9)), hydrogens +4.8e-6 together (v x sqrt(1 + 0.024))
    pred = v.clone()
    pred[2] *= np.sqrt(0.9)
    pred[:2] *= np.sqrt(1.0 + 4.8e-6 / 2e-4)
    outputs = {DELTA_POSITIONS: zeros, DELTA_VELOCITIES: pred - v}
    w = KStepLossWeights(delta_x=0, delta_v=0, bond=0, angle=0, dihedral=0, kinetic=1.0,
                         element_kinetic=3.0)  # fmt: skip
    total, parts = kstep_loss(outputs, inp.positions, tgt, w, inp)
    assert float(parts["kinetic"]) == pytest.approx(0.0, abs=1e-20)
    expected = np.mean([0.024**2, 0.1**2])  # hydrogens +2.4 %, carbon -10 %
    assert float(parts["element_kinetic"]) == pytest.approx(expected, rel=1e-9)
    assert float(total) == pytest.approx(3.0 * expected, rel=1e-9)
