"""Exact E(3) equivariance of the k-step jump networks (rotation, reflection, translation,
permutation) and independence of systems in a batch."""

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from mlff_distiller.models.egnn import EGNNConfig, EGNNJump
from mlff_distiller.models.kstep_common import DELTA_POSITIONS, DELTA_VELOCITIES, KStepInput
from mlff_distiller.models.transformer_egnn import TransformerEGNNConfig, TransformerEGNNJump

OUTPUTS = (DELTA_POSITIONS, DELTA_VELOCITIES, "forces")


def _model(kind: str):
    torch.manual_seed(0)
    common = dict(hidden=16, n_layers=2, n_vectors=4, n_rbf=8, cutoff=4.0, force_head=True)
    model = (
        EGNNJump(EGNNConfig(**common))
        if kind == "egnn"
        else TransformerEGNNJump(TransformerEGNNConfig(n_heads=2, **common))
    )
    # randomise the zero-initialised heads so every path contributes
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.double().eval()


def _inputs(seed: int = 0) -> KStepInput:
    rng = np.random.default_rng(seed)
    counts = [5, 3]
    n = sum(counts)
    return KStepInput.molecules(
        atomic_numbers=torch.tensor([6, 1, 1, 8, 1, 7, 1, 1]),
        masses=torch.tensor([12.0, 1.0, 1.0, 16.0, 1.0, 14.0, 1.0, 1.0], dtype=torch.float64),
        positions=torch.tensor(rng.normal(scale=1.2, size=(n, 3))),
        velocities=torch.tensor(rng.normal(scale=0.01, size=(n, 3))),
        system_idx=torch.repeat_interleave(torch.arange(2), torch.tensor(counts)),
        k=torch.tensor([8, 4]),
        dt=torch.tensor([0.5, 1.0], dtype=torch.float64),
        forces=torch.tensor(rng.normal(scale=1.0, size=(n, 3))),
    )


@pytest.mark.parametrize("kind", ["egnn", "transformer"])
@pytest.mark.parametrize("reflect", [False, True])
def test_rotation_reflection_translation_equivariance(kind, reflect):
    model, inp = _model(kind), _inputs()
    rot = torch.tensor(Rotation.random(random_state=3).as_matrix())
    if reflect:
        rot = rot @ torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))
    shift = torch.tensor([3.0, -2.0, 7.5], dtype=torch.float64)
    out = model(inp)
    moved = model(
        inp.replace(
            positions=inp.positions @ rot.T + shift,
            velocities=inp.velocities @ rot.T,
            forces=inp.forces @ rot.T,
        )
    )
    for key in OUTPUTS:
        assert out[key].abs().max() > 1e-4  # non-trivial output
        torch.testing.assert_close(moved[key], out[key] @ rot.T, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("kind", ["egnn", "transformer"])
def test_permutation_equivariance(kind):
    model, inp = _model(kind), _inputs()
    perm = torch.tensor([3, 0, 4, 2, 1, 6, 7, 5])  # within each system (keeps system_idx sorted)
    out = model(inp)
    permuted = model(
        inp.replace(
            atomic_numbers=inp.atomic_numbers[perm],
            masses=inp.masses[perm],
            positions=inp.positions[perm],
            velocities=inp.velocities[perm],
            forces=inp.forces[perm],
        )
    )
    for key in OUTPUTS:
        torch.testing.assert_close(permuted[key], out[key][perm], atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("kind", ["egnn", "transformer"])
def test_batched_equals_one_by_one(kind):
    model, inp = _model(kind), _inputs()
    out = model(inp)
    for s, atoms in enumerate((slice(0, 5), slice(5, 8))):
        single = model(
            KStepInput.molecules(
                atomic_numbers=inp.atomic_numbers[atoms],
                masses=inp.masses[atoms],
                positions=inp.positions[atoms],
                velocities=inp.velocities[atoms],
                system_idx=torch.zeros(atoms.stop - atoms.start, dtype=torch.long),
                k=inp.k[s : s + 1],
                dt=inp.dt[s : s + 1],
                forces=inp.forces[atoms],
            )
        )
        for key in OUTPUTS:
            torch.testing.assert_close(single[key], out[key][atoms], atol=1e-10, rtol=1e-8)


def test_output_bounds_and_ballistic_prior():
    cfg = EGNNConfig(hidden=8, n_layers=1, n_vectors=2, max_delta_x=0.3, use_forces=False)
    model = EGNNJump(cfg).double()
    inp = _inputs()
    out = model(inp.replace(forces=None))
    # untrained heads are zero: delta_x is the clamped ballistic displacement v * k * dt
    tau = (inp.k * inp.dt)[inp.system_idx][:, None]
    ballistic = inp.velocities * tau
    norm = ballistic.norm(dim=-1, keepdim=True)
    expected = ballistic * 0.3 * torch.tanh(norm / 0.3) / norm
    torch.testing.assert_close(out[DELTA_POSITIONS], expected)
    fast = model(inp.replace(forces=None, velocities=inp.velocities * 1e4))
    assert fast[DELTA_POSITIONS].norm(dim=-1).max() <= 0.3 + 1e-12


def test_unknown_element_is_a_clear_error():
    model = EGNNJump(EGNNConfig(hidden=8, n_layers=1, elements=(1, 6)))
    inp = _inputs().to(dtype=torch.float32)
    with pytest.raises(ValueError, match="not in this k-step model's elements"):
        model(inp)


@pytest.mark.parametrize("kind", ["egnn", "transformer"])
def test_save_load_round_trip(kind, tmp_path):
    from mlff_distiller.models.io import load_model, save_model

    model = _model(kind)
    save_model(model, tmp_path / kind)
    loaded = load_model(tmp_path / kind)
    assert type(loaded) is type(model) and loaded.config == model.config
    inp = _inputs()
    for key in OUTPUTS:
        torch.testing.assert_close(loaded(inp)[key], model(inp)[key])


def test_kstep_input_is_the_engine_state_plus_the_jump():
    from mlff_distiller.data.state import MDState
    from mlff_distiller.data.structures import from_smiles

    state = MDState.from_atoms(from_smiles("CCO", name="ethanol"))
    inp = KStepInput.of(state, 8, 0.5)
    assert isinstance(inp, MDState)
    assert inp.positions is state.positions and inp.n_systems == 1
    assert inp.k.tolist() == [8] and inp.k.dtype == torch.long and inp.dt.tolist() == [0.5]
    moved = inp.to(dtype=torch.float32)
    assert type(moved) is KStepInput  # the jump survives a cast
    assert moved.positions.dtype == torch.float32 and moved.dt.dtype == torch.float32
    assert moved.k.dtype == torch.long and moved.atomic_numbers.dtype == torch.long
    with pytest.raises(ValueError, match="k and dt"):
        KStepInput(**{name: getattr(state, name) for name in MDState.__dataclass_fields__})
