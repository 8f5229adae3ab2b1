"""Uncertainty-biased dynamics: MD that is drawn towards where a committee disagrees.

Unbiased student MD meets the rare excursions that end a long run (a stretched O-H, a
collapsing methyl group) only about as often as the run itself would, so an active-learning
loop that explores a few picoseconds per round rarely labels them. A bias potential on the
committee's energy variance makes those regions common (Kulichenko et al., Nat. Comput. Sci.
2023; Zaverkin et al., npj Comput. Mater. 2024):

    E_bias = A * (exp(-var / (N B^2)) - 1),    var = (1/M) sum_m (E_m - E_mean)^2

per structure of N atoms, with M members. ``E_bias`` falls by at most ``A`` (eV) as the variance
grows, so the bias cannot drive a structure arbitrarily far; ``B`` (eV per sqrt(atom)) sets the
variance at which it acts (its force is largest at ``var = N B^2 / 2``). The bias force needs no
second derivative: with ``F_m = -dE_m/dx``,

    d var / dx = -(2/M) sum_m (E_m - E_mean) (F_m - F_mean),
    F_bias = -dE_bias/dx = A / (N B^2) * exp(-var / (N B^2)) * d var / dx.

Frames of a biased run are candidates for teacher labels only; their energies and forces in the
trajectory include the bias.
"""

from __future__ import annotations

import torch
from torch import nn

from mlff_distiller import keys
from mlff_distiller.data.batch import AtomsBatch

BIAS_ENERGY = "bias_energy"


def energy_variance(member_energies: torch.Tensor) -> torch.Tensor:
    """(M, S) member energies (eV) -> (S,) population variance over the members (eV^2)."""
    return (member_energies - member_energies.mean(0)).square().mean(0)


class UncertaintyBias(nn.Module):
    """A committee whose mean energy and forces carry the bias above (a force provider of the
    MD engine: ``energy_and_forces(batch) -> {ENERGY (S,), FORCES (n, 3), BIAS_ENERGY (S,),
    ...the committee's other outputs}``).

    ``strength_ev``: A (eV), ``width_ev``: B (eV per sqrt(atom)), both > 0.
    """

    def __init__(self, committee: nn.Module, strength_ev: float, width_ev: float):
        super().__init__()
        if not (strength_ev > 0 and width_ev > 0):
            raise ValueError(
                f"the bias needs strength_ev > 0 and width_ev > 0, got {strength_ev}, {width_ev}"
            )
        if not hasattr(committee, "n_members"):
            raise TypeError(f"the uncertainty bias needs a committee, got {type(committee)}")
        self.committee = committee
        self.strength_ev = float(strength_ev)
        self.width_ev = float(width_ev)

    @property
    def elements(self):
        return self.committee.elements

    @property
    def elements_restricted(self) -> bool:
        return self.committee.elements_restricted

    def compile_forces(self, enabled: bool = True) -> UncertaintyBias:
        self.committee.compile_forces(enabled)
        return self

    def energy_and_forces(
        self, batch: AtomsBatch, method: str = "analytical", **kwargs
    ) -> dict[str, torch.Tensor]:
        out = dict(self.committee.energy_and_forces(batch, method, **kwargs))
        if keys.MEMBER_ENERGIES not in out:  # Committee.check_every > 1: member 0 alone
            raise ValueError(
                "the uncertainty bias needs every member on every call: run the committee with "
                "check_every=1"
            )
        energies = out[keys.MEMBER_ENERGIES]  # (M, S)
        forces = out[keys.MEMBER_FORCES]  # (M, n, 3)
        n_members = energies.shape[0]
        n_atoms = torch.bincount(batch.system_idx, minlength=batch.n_systems).to(energies.dtype)
        scale = n_atoms * self.width_ev**2  # (S,) N B^2
        weight = torch.exp(-energy_variance(energies) / scale)  # (S,)
        deviation = energies - energies.mean(0)  # (M, S)
        per_atom = deviation[:, batch.system_idx].unsqueeze(-1)  # (M, n, 1)
        grad_var = -2.0 / n_members * (per_atom * (forces - forces.mean(0))).sum(0)  # (n, 3)
        factor = (self.strength_ev / scale * weight)[batch.system_idx].unsqueeze(-1)  # (n, 1)
        bias = self.strength_ev * (weight - 1.0)
        out[BIAS_ENERGY] = bias
        out[keys.ENERGY] = out[keys.ENERGY] + bias
        out[keys.FORCES] = out[keys.FORCES] + factor * grad_var
        return out
