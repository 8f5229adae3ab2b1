"""PaiNN: analytical forces == autograd == finite differences; NequIP-style invariance tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlff_distiller import keys
from mlff_distiller.data.batch import AtomsBatch
from mlff_distiller.models.painn import PaiNN, PaiNNConfig, forces_autograd

E, F = keys.ENERGY, keys.FORCES


def random_molecule(n_atoms: int, rng: np.random.Generator, centre=(0.0, 0.0, 0.0)):
    """(numbers, positions): H/C/N/O on a jittered grid at ~0.1 atoms/Å^3 (no clashes)."""
    spacing = 10.0 ** (1 / 3)
    k = int(np.ceil(n_atoms ** (1 / 3))) + 2
    grid = np.stack(np.meshgrid(*[np.arange(k)] * 3, indexing="ij"), -1).reshape(-1, 3) * spacing
    grid = grid - grid.mean(0)
    pick = grid[np.argsort(np.linalg.norm(grid + rng.normal(0, 0.5, 3), axis=1))[:n_atoms]]
    positions = pick + rng.uniform(-0.4, 0.4, pick.shape) + np.asarray(centre)
    return rng.choice([1, 6, 7, 8], size=n_atoms), positions


def make_batch(sizes, dtype=torch.float64, seed=0, centres=None) -> AtomsBatch:
    rng = np.random.default_rng(seed)
    centres = centres or [(0.0, 0.0, 0.0)] * len(sizes)
    mols = [random_molecule(n, rng, c) for n, c in zip(sizes, centres)]
    return AtomsBatch.from_arrays([m[0] for m in mols], [m[1] for m in mols], dtype=dtype)


def make_model(dtype=torch.float64, seed=0, **config) -> PaiNN:
    torch.manual_seed(seed)
    cfg = dict(hidden=32, n_interactions=3, n_rbf=16, cutoff=5.0)
    cfg.update(config)
    model = PaiNN(PaiNNConfig(**cfg)).to(dtype).eval()
    # non-trivial per-element energies, scale and shift
    ref = torch.zeros(model.config.max_z + 1, dtype=torch.float64)
    ref[[1, 6, 7, 8]] = torch.tensor([-13.6, -1029.5, -1485.3, -2042.6], dtype=torch.float64)
    model.set_reference_energies(ref, elements=[1, 6, 7, 8])
    model.set_scale_shift(0.7, -0.2)
    return model


@pytest.fixture(scope="module")
def model64() -> PaiNN:
    return make_model()


def test_outputs_are_non_trivial(model64):
    out = model64.energy_and_forces(make_batch([12]), "analytical")
    assert out[E].shape == (1,) and out[F].shape == (12, 3)
    assert float(out[F].abs().max()) > 1e-2


@pytest.mark.parametrize("sizes", [[3], [9], [21], [50], [200], [3, 17, 40, 5]])
def test_analytical_equals_autograd_float64(model64, sizes):
    batch = make_batch(sizes, seed=len(sizes) + sizes[0])
    ref = model64.energy_and_forces(batch, "autograd")
    got = model64.energy_and_forces(batch, "analytical")
    torch.testing.assert_close(got[E], ref[E], rtol=1e-12, atol=0)
    rel = (got[F] - ref[F]).norm() / ref[F].norm()
    assert rel < 1e-10, f"relative force error {rel:.2e}"


@pytest.mark.parametrize(
    "config",
    [{"shared_filters": True}, {"rbf": "gaussian"}, {"n_interactions": 1}, {"hidden": 8}],
)
def test_analytical_equals_autograd_variants(config):
    model = make_model(**config)
    batch = make_batch([7, 15], seed=3)
    ref = model.energy_and_forces(batch, "autograd")[F]
    got = model.energy_and_forces(batch, "analytical")[F]
    assert (got - ref).norm() / ref.norm() < 1e-10


@pytest.mark.parametrize("sizes", [[3], [50], [200], [9, 21, 30]])
def test_analytical_equals_autograd_float32(sizes):
    model = make_model(dtype=torch.float32)
    batch = make_batch(sizes, dtype=torch.float32, seed=7)
    ref = model.energy_and_forces(batch, "autograd")[F]
    got = model.energy_and_forces(batch, "analytical")[F]
    assert float((got - ref).abs().max()) < 1e-5


def test_periodic_analytical_equals_autograd(model64):
    rng = np.random.default_rng(5)
    cell = np.array([[6.0, 0.0, 0.0], [1.0, 5.5, 0.0], [0.5, -0.7, 6.2]])
    frac = rng.uniform(0, 1, (14, 3))
    batch = AtomsBatch.from_arrays(
        [rng.choice([1, 6, 8], 14)],
        [frac @ cell],
        [cell],
        [np.array([True, True, True])],
        dtype=torch.float64,
    )
    ref = model64.energy_and_forces(batch, "autograd")
    got = model64.energy_and_forces(batch, "analytical")
    assert (got[F] - ref[F]).norm() / ref[F].norm() < 1e-10
    # periodic: the sum of forces still vanishes (translation invariance)
    assert float(got[F].sum(0).abs().max()) < 1e-10


@pytest.mark.parametrize("method", ["analytical", "autograd"])
def test_forces_are_minus_finite_difference_gradient(model64, method):
    batch = make_batch([8], seed=11)
    forces = model64.energy_and_forces(batch, method)[F]
    h = 1e-4
    numeric = torch.zeros_like(forces)
    for atom in range(batch.n_atoms):
        for axis in range(3):
            energies = []
            for sign in (1.0, -1.0):
                pos = batch.positions.clone()
                pos[atom, axis] += sign * h
                moved = AtomsBatch(
                    batch.atomic_numbers, pos, batch.system_idx, batch.cell, batch.pbc
                )
                with torch.no_grad():
                    energies.append(float(model64(moved)[E]))
            numeric[atom, axis] = -(energies[0] - energies[1]) / (2 * h)
    torch.testing.assert_close(forces, numeric, rtol=1e-6, atol=1e-7)


def _transformed(batch: AtomsBatch, positions: torch.Tensor, order=None) -> AtomsBatch:
    z = batch.atomic_numbers if order is None else batch.atomic_numbers[order]
    return AtomsBatch(z, positions, batch.system_idx, batch.cell, batch.pbc)


def _random_rotation(seed: int, reflect: bool = False) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    if reflect:
        q = q @ np.diag([1.0, 1.0, -1.0])
    return torch.as_tensor(q)


@pytest.mark.parametrize("transform", ["rotation", "reflection", "translation", "permutation"])
def test_symmetry(model64, transform):
    batch = make_batch([13, 6], seed=21)
    base = model64.energy_and_forces(batch, "analytical")
    pos = batch.positions
    if transform in ("rotation", "reflection"):
        rot = _random_rotation(4, reflect=transform == "reflection")
        new = model64.energy_and_forces(_transformed(batch, pos @ rot.T), "analytical")
        expected_forces = base[F] @ rot.T
    elif transform == "translation":
        new = model64.energy_and_forces(
            _transformed(batch, pos + torch.tensor([3.1, -7.4, 12.0], dtype=pos.dtype)),
            "analytical",
        )
        expected_forces = base[F]
    else:  # permute atoms within each structure
        order = torch.cat(
            [
                torch.randperm(13, generator=torch.Generator().manual_seed(1)),
                13 + torch.randperm(6, generator=torch.Generator().manual_seed(2)),
            ]
        )
        new = model64.energy_and_forces(_transformed(batch, pos[order], order), "analytical")
        expected_forces = base[F][order]
    torch.testing.assert_close(new[E], base[E], rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(new[F], expected_forces, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("method", ["analytical", "autograd"])
def test_batched_equals_one_by_one(model64, method):
    sizes = [4, 19, 9, 33]
    batch = make_batch(sizes, seed=2)
    together = model64.energy_and_forces(batch, method)
    start = 0
    for s, n in enumerate(sizes):
        single = AtomsBatch(
            batch.atomic_numbers[start : start + n],
            batch.positions[start : start + n],
            torch.zeros(n, dtype=torch.long),
            batch.cell[s : s + 1],
            batch.pbc[s : s + 1],
        )
        alone = model64.energy_and_forces(single, method)
        torch.testing.assert_close(together[E][s : s + 1], alone[E], rtol=1e-12, atol=1e-10)
        torch.testing.assert_close(together[F][start : start + n], alone[F], rtol=1e-10, atol=1e-12)
        start += n


def test_no_gradient_between_structures(model64):
    # all three molecules overlap in space: only system_idx separates them
    batch = make_batch([6, 8, 5], seed=9)
    pos = batch.positions.detach().requires_grad_(True)
    energy = model64(_transformed(batch, pos))[E]
    (grad,) = torch.autograd.grad(energy[1], pos)
    assert float(grad[:6].abs().max()) == 0.0 and float(grad[14:].abs().max()) == 0.0
    assert float(grad[6:14].abs().max()) > 1e-4


def test_fragments_beyond_cutoff_do_not_interact(model64):
    cutoff = model64.config.cutoff
    apart = make_batch([7, 10], seed=4, centres=[(0, 0, 0), (0, 0, 30.0 + cutoff)])
    merged = AtomsBatch(
        apart.atomic_numbers,
        apart.positions,
        torch.zeros(apart.n_atoms, dtype=torch.long),
        apart.cell[:1],
        apart.pbc[:1],
    )
    separate = model64.energy_and_forces(apart, "analytical")
    joint = model64.energy_and_forces(merged, "analytical")
    torch.testing.assert_close(joint[E], separate[E].sum(0, keepdim=True), rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(joint[F], separate[F], rtol=1e-12, atol=1e-12)


def test_two_distant_copies_have_twice_the_energy(model64):
    one = make_batch([11], seed=6)
    far = one.positions + torch.tensor([0.0, 40.0, 0.0], dtype=torch.float64)
    two = AtomsBatch(
        one.atomic_numbers.repeat(2),
        torch.cat([one.positions, far]),
        torch.zeros(22, dtype=torch.long),
        one.cell,
        one.pbc,
    )
    e1 = model64.energy_and_forces(one, "analytical")
    e2 = model64.energy_and_forces(two, "analytical")
    torch.testing.assert_close(e2[E], 2 * e1[E], rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(e2[F], torch.cat([e1[F], e1[F]]), rtol=1e-12, atol=1e-12)


def test_autograd_forces_train_the_parameters():
    model = make_model(hidden=8)
    batch = make_batch([5], seed=1)
    out = forces_autograd(model, batch, create_graph=True)
    loss = out[F].square().sum()
    loss.backward()
    assert model.filter_weight.grad is not None and float(model.filter_weight.grad.abs().sum()) > 0


def test_analytical_runs_without_autograd(model64):
    batch = make_batch([9], seed=0)
    out = model64.energy_and_forces(batch, "analytical")
    assert out[E].is_inference() and out[F].is_inference()
    with pytest.raises(ValueError, match="analytical"):
        model64.energy_and_forces(batch, "numerical")


def test_mixed_precision_autocast_matches_float32():
    """Under bf16 autocast (what `--precision bf16-mixed` does) energies and autograd forces
    stay close to float32: sums accumulate in float32 while the linear layers run in bf16."""
    model = make_model(dtype=torch.float32)
    batch = make_batch([9, 21], dtype=torch.float32)
    ref = forces_autograd(model, batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = forces_autograd(model, batch)
    assert out[keys.ENERGY].dtype == torch.float32
    scale = ref[keys.FORCES].abs().max()
    assert (out[keys.FORCES] - ref[keys.FORCES]).abs().max() < 0.05 * scale
    assert torch.allclose(out[keys.ENERGY], ref[keys.ENERGY], rtol=0.02, atol=0.02 * scale)
