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
