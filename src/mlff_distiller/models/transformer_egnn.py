"""Transformer-EGNN k-step jump network: each EGNN layer is followed by multi-head
self-attention over the node scalars of one system (atoms of different systems never attend to
each other) and a feed-forward block, both pre-norm residual; elements enter through a learned
embedding in addition to the one-hot input of the EGNN.

Attention acts on invariant scalars only, so the network stays exactly E(3)-equivariant.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from mlff_distiller.models.egnn import EGNNConfig, EGNNJump
from mlff_distiller.models.io import register_architecture
from mlff_distiller.models.kstep_common import KStepInput


@dataclass
class TransformerEGNNConfig(EGNNConfig):
    """:class:`EGNNConfig` plus the attention block's sizes."""

    n_heads: int = 4
    ff_multiplier: int = 2
    dropout: float = 0.0


class AttentionBlock(nn.Module):
    """Pre-norm multi-head self-attention + feed-forward over (n_atoms, H) scalars, masked so
    that only atoms of the same system attend to each other."""

    def __init__(self, hidden: int, n_heads: int, ff_multiplier: int, dropout: float):
        super().__init__()
        if hidden % n_heads:
            raise ValueError(f"hidden={hidden} must be divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.norm1 = nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden)
        self.ff = nn.Sequential(
            nn.Linear(hidden, ff_multiplier * hidden),
            nn.SiLU(),
            nn.Linear(ff_multiplier * hidden, hidden),
        )
        self.dropout = dropout

    def forward(self, h: torch.Tensor, same_system: torch.Tensor) -> torch.Tensor:
        """h: (n, H); same_system: (n, n) bool. Returns (n, H)."""
        n, hidden = h.shape
        q, k, v = self.qkv(self.norm1(h)).chunk(3, dim=-1)
        shape = (1, n, self.n_heads, hidden // self.n_heads)
        q, k, v = (t.reshape(shape).transpose(1, 2) for t in (q, k, v))  # (1, heads, n, d)
        att = F.scaled_dot_product_attention(
            q, k, v, attn_mask=same_system, dropout_p=self.dropout if self.training else 0.0
        )
        h = h + self.out(att.transpose(1, 2).reshape(n, hidden))
        return h + self.ff(self.norm2(h))


class TransformerEGNNJump(EGNNJump):
    """EGNN jump network with attention blocks; same inputs and outputs as :class:`EGNNJump`."""

    architecture = "transformer_egnn"

    def __init__(self, config: TransformerEGNNConfig | None = None):
        config = config or TransformerEGNNConfig()
        super().__init__(config)
        self.element_embedding = nn.Embedding(119, config.hidden)
        nn.init.normal_(self.element_embedding.weight, std=0.1)
        self.attention = nn.ModuleList(
            [
                AttentionBlock(config.hidden, config.n_heads, config.ff_multiplier, config.dropout)
                for _ in range(config.n_layers)
            ]
        )

    def initial_scalars(self, inp: KStepInput) -> torch.Tensor:
        return super().initial_scalars(inp) + self.element_embedding(inp.atomic_numbers)

    def block(self, index: int, h: torch.Tensor, vec: torch.Tensor, graph: dict, inp: KStepInput):
        h, vec = self.layers[index](h, vec, **graph)
        same = inp.system_idx[:, None] == inp.system_idx[None, :]
        return self.attention[index](h, same), vec


register_architecture(TransformerEGNNJump.architecture, TransformerEGNNConfig, TransformerEGNNJump)
