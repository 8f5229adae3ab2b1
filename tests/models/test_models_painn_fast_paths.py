"""Fast-path pieces of the PaiNN analytical forces: fused SiLU backward, torch.compile opt-in."""

from __future__ import annotations

import pytest
import torch

from mlff_distiller import keys
from mlff_distiller.data.batch import AtomsBatch
from mlff_distiller.models.layers import silu_backward, silu_derivative
from mlff_distiller.models.painn import PaiNN, PaiNNConfig


def test_fused_silu_backward_equals_the_written_formula_and_autograd():
    h = torch.linspace(-12.0, 12.0, 401, dtype=torch.float64).reshape(1, -1).repeat(3, 1)
    g = torch.randn_like(h, generator=torch.Generator().manual_seed(0))
    fused = silu_backward(h, g)
    torch.testing.assert_close(fused, g * silu_derivative(h), rtol=1e-14, atol=1e-15)
    leaf = h.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad((torch.nn.functional.silu(leaf) * g).sum(), leaf)
    torch.testing.assert_close(fused, auto, rtol=1e-14, atol=1e-15)
    # a broadcast gradient (the readout's weight vector) is expanded, not misread
    w = torch.randn(h.shape[1], dtype=torch.float64)
    torch.testing.assert_close(silu_backward(h, w), w * silu_derivative(h))


@pytest.mark.slow
def test_compiled_analytical_forces_equal_autograd():
    """``compile_forces()`` (torch.compile, ~30 s to compile) gives the eager numbers."""
    torch.manual_seed(0)
    model = PaiNN(PaiNNConfig(hidden=16, n_interactions=2, n_rbf=8)).double().eval()
    gen = torch.Generator().manual_seed(1)
    numbers = [torch.randint(1, 9, (n,), generator=gen) for n in (5, 11)]
    positions = [torch.rand(n, 3, generator=gen, dtype=torch.float64) * 4.0 for n in (5, 11)]
    batch = AtomsBatch.from_arrays(
        [z.numpy() for z in numbers], [p.numpy() for p in positions], dtype=torch.float64
    )
    ref = model.energy_and_forces(batch, "autograd")
    got = model.compile_forces().energy_and_forces(batch, "analytical")
    model.compile_forces(False)
    torch.testing.assert_close(got[keys.ENERGY], ref[keys.ENERGY], rtol=1e-12, atol=0)
    rel = (got[keys.FORCES] - ref[keys.FORCES]).norm() / ref[keys.FORCES].norm()
    assert rel < 1e-10


def _force_loss_gradients(model: PaiNN, batch: AtomsBatch, method: str) -> dict:
    """Parameter gradients of an energy + force MSE loss through ``method``'s forces."""
    model.zero_grad()
    out = model.energy_and_forces(batch, method, create_graph=True)
    target_f = torch.linspace(-1.0, 1.0, out[keys.FORCES].numel(), dtype=torch.float64)
    loss = (out[keys.FORCES] - target_f.view(-1, 3)).square().mean() + 0.1 * (
        out[keys.ENERGY] + 3.0
    ).square().mean()
    loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def _two_molecules() -> AtomsBatch:
    gen = torch.Generator().manual_seed(1)
    sizes = (5, 11)
    numbers = [torch.randint(1, 9, (n,), generator=gen).numpy() for n in sizes]
    positions = [(torch.rand(n, 3, generator=gen, dtype=torch.float64) * 4.0).numpy()
                 for n in sizes]
    return AtomsBatch.from_arrays(numbers, positions, dtype=torch.float64)


@pytest.mark.parametrize("shared_filters", [False, True])
def test_training_through_analytical_forces_gives_the_double_backward_gradients(shared_filters):
    """Force training on the hand-derived backward (recorded by autograd, one ordinary backward)
    gives the parameter gradients of autograd's double backward, for every parameter."""
    torch.manual_seed(0)
    model = PaiNN(PaiNNConfig(hidden=16, n_interactions=3, n_rbf=8,
                              shared_filters=shared_filters)).double()
    batch = _two_molecules()
    ref = _force_loss_gradients(model, batch, "autograd")
    got = _force_loss_gradients(model, batch, "analytical")
    # every trained parameter gets a gradient on both paths (the embedding rows of absent
    # elements are zero on both)
    assert set(got) == set(ref) and len(ref) == len(list(model.parameters()))
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-9, atol=1e-12, msg=name)
    assert max(float(g.abs().max()) for g in ref.values()) > 1e-3


@pytest.mark.slow
def test_compiled_training_step_equals_eager():
    """``compile_forces()`` on the training path (torch.compile with autograd, ~30 s to
    compile) gives the eager energies, forces and parameter gradients."""
    torch.manual_seed(0)
    model = PaiNN(PaiNNConfig(hidden=16, n_interactions=2, n_rbf=8)).double()
    batch = _two_molecules()
    ref = _force_loss_gradients(model, batch, "analytical")
    got = _force_loss_gradients(model.compile_forces(), batch, "analytical")
    model.compile_forces(False)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-9, atol=1e-12, msg=name)
