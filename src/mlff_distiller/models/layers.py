"""Small building blocks of the PaiNN student, each with its derivative written out.

The analytical force path (:mod:`mlff_distiller.models.analytic_forces`) needs d/dx of every
position-dependent function, so each function here comes with its derivative next to it.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def silu(pre_activation: torch.Tensor) -> torch.Tensor:
    """``SiLU(h) = h * sigmoid(h)`` (elementwise, any shape)."""
    return torch.nn.functional.silu(pre_activation)


def silu_derivative(pre_activation: torch.Tensor) -> torch.Tensor:
    """``d SiLU / dh = sig(h) (1 + h (1 - sig(h)))`` written out (reference for the fused one)."""
    sig = torch.sigmoid(pre_activation)
    return sig * (1.0 + pre_activation * (1.0 - sig))


def silu_backward(pre_activation: torch.Tensor, grad_output: torch.Tensor) -> torch.Tensor:
    """``grad_output * dSiLU/dh`` at the saved pre-activation ``h`` (same shapes, broadcastable).

    Evaluates the formula of :func:`silu_derivative` with ATen's fused elementwise kernel: one op
    instead of four. ATen's kernel has no derivative of its own, so when a gradient will flow
    through the result (training on analytical forces) the written-out formula is used.
    """
    if torch.is_grad_enabled() and (pre_activation.requires_grad or grad_output.requires_grad):
        return grad_output * silu_derivative(pre_activation)
    if grad_output.shape != pre_activation.shape:
        grad_output = grad_output.expand_as(pre_activation)
    return torch.ops.aten.silu_backward(grad_output, pre_activation)


class CosineCutoff(nn.Module):
    """``f(d) = 0.5 * (cos(pi d / r_c) + 1)`` for ``d < r_c``, else 0; (n_edges,) -> (n_edges,)."""

    def __init__(self, cutoff: float):
        super().__init__()
        self.cutoff = float(cutoff)

    def forward(self, distances: torch.Tensor) -> torch.Tensor:
        inside = distances < self.cutoff
        return (0.5 * torch.cos(distances * (math.pi / self.cutoff)) + 0.5) * inside

    def derivative(self, distances: torch.Tensor) -> torch.Tensor:
        """``df/dd = -0.5 * pi / r_c * sin(pi d / r_c)`` inside the cutoff, 0 outside."""
        inside = distances < self.cutoff
        k = math.pi / self.cutoff
        return (-0.5 * k) * torch.sin(distances * k) * inside


class RadialBasis(nn.Module):
    """Expand distances (n_edges,) into (n_edges, n_rbf) features.

    ``kind="sinc"``: ``sin(n pi d / r_c) / d`` for n = 1..n_rbf (PaiNN's choice).
    ``kind="gaussian"``: ``exp(-gamma (d - mu_n)^2)`` with centres evenly spaced on [0, r_c].
    """

    def __init__(self, n_rbf: int, cutoff: float, kind: str = "sinc"):
        super().__init__()
        if kind not in ("sinc", "gaussian"):
            raise ValueError(f"radial basis kind must be 'sinc' or 'gaussian', got {kind!r}")
        self.kind = kind
        self.n_rbf = n_rbf
        if kind == "sinc":
            freq = torch.arange(1, n_rbf + 1, dtype=torch.float64) * math.pi / cutoff
            self.register_buffer("freq", freq, persistent=False)
        else:
            centres = torch.linspace(0.0, cutoff, n_rbf, dtype=torch.float64)
            width = cutoff / max(n_rbf - 1, 1)
            self.register_buffer("centres", centres, persistent=False)
            self.gamma = 0.5 / width**2

    def forward(self, distances: torch.Tensor) -> torch.Tensor:
        return self.value_and_derivative(distances, derivative=False)[0]

    def value_and_derivative(
        self, distances: torch.Tensor, derivative: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Values (n_edges, n_rbf) and, if asked, d/dd of them (n_edges, n_rbf)."""
        d = distances[:, None]
        if self.kind == "sinc":
            arg = d * self.freq.to(distances.dtype)
            values = torch.sin(arg) / d
            if not derivative:
                return values, None
            # d/dd [sin(k d) / d] = (k cos(k d) - sin(k d) / d) / d
            deriv = (self.freq.to(distances.dtype) * torch.cos(arg) - values) / d
            return values, deriv
        diff = d - self.centres.to(distances.dtype)
        values = torch.exp(-self.gamma * diff.square())
        if not derivative:
            return values, None
        return values, (-2.0 * self.gamma) * diff * values
