"""Exponential moving average of a model's weights, kept as a frozen copy of the model.

``shadow = decay_t * shadow + (1 - decay_t) * weights`` after every optimiser step, with
``decay_t = min(decay, (1 + t) / (10 + t))`` so that the average does not remember the random
initial weights for long. Floating buffers are averaged too; other buffers are copied. The copy is
a submodule, so its weights and the update count live in every checkpoint.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class ExponentialMovingAverage(nn.Module):
    """Holds ``self.module``, an averaged, gradient-free copy of the model it was built from."""

    def __init__(self, model: nn.Module, decay: float):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.module = copy.deepcopy(model)
        self.module.requires_grad_(False)
        self.register_buffer("n_updates", torch.zeros((), dtype=torch.long))

    def current_decay(self) -> float:
        t = int(self.n_updates)
        return min(self.decay, (1.0 + t) / (10.0 + t))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average one step towards ``model``'s current weights."""
        decay = self.current_decay()
        averaged = list(self.module.parameters())
        current = [p.detach() for p in model.parameters()]
        if len(averaged) != len(current):
            raise ValueError("EMA: the model's parameters no longer match the averaged copy")
        torch._foreach_lerp_(averaged, current, 1.0 - decay)  # one op for all tensors
        for avg, new in zip(self.module.buffers(), model.buffers(), strict=True):
            if avg.is_floating_point():
                avg.lerp_(new.detach().to(avg.dtype), 1.0 - decay)
            else:
                avg.copy_(new)
        self.n_updates += 1
