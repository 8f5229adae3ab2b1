"""Uncertainty-biased dynamics: the bias energy is the formula's, computed here from the
members' energies, and the bias force is minus its gradient by central finite differences."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlff_distiller import keys
from mlff_distiller.data.batch import AtomsBatch
from mlff_distiller.data.structures import from_smiles
from mlff_distiller.md.runner import MDConfig, run_md
from mlff_distiller.md.uncertainty_bias import BIAS_ENERGY, UncertaintyBias
from mlff_distiller.models.committee import Committee
from mlff_distiller.models.painn import PaiNN, PaiNNConfig

ETHANOL = from_smiles("CCO", seed=0)[0]  # 9 atoms, RDKit geometry
WATER = from_smiles("O", seed=0)[0]  # 3 atoms


def committee(seed: int = 0) -> Committee:
    """Three tiny float64 students that disagree (own weights, scale and shift)."""
    torch.manual_seed(seed)
    members = []
    for k in range(3):
        model = PaiNN(PaiNNConfig(hidden=16, n_interactions=2, n_rbf=8, cutoff=4.0)).double()
        ref = torch.zeros(119, dtype=torch.float64)
        ref[[1, 6, 8]] = torch.tensor([-13.6, -1030.0, -2040.0], dtype=torch.float64)
        model.set_reference_energies(ref, elements=[1, 6, 8])
        model.set_scale_shift(0.5 + 0.3 * k, 0.0)
        members.append(model)
    return Committee.from_members(members)


def batch(positions: list[np.ndarray]) -> AtomsBatch:
    numbers = [ETHANOL.numbers, WATER.numbers]
    return AtomsBatch.from_arrays(numbers, positions, dtype=torch.float64)


def start() -> list[np.ndarray]:
    return [ETHANOL.positions.copy(), WATER.positions.copy()]


def biased(width: float) -> UncertaintyBias:
    return UncertaintyBias(committee(), strength_ev=0.7, width_ev=width)


def width_at_half(model: Committee) -> float:
    """B such that ethanol's variance sits where the bias force is largest (var = N B^2 / 2)."""
    e = model.energy_and_forces(batch(start()))[keys.MEMBER_ENERGIES][:, 0].numpy()
    return float(np.sqrt(2 * np.var(e) / 9))


def test_bias_energy_is_the_formula_from_the_member_energies():
    plain = committee()
    width = width_at_half(plain)
    model = UncertaintyBias(plain, strength_ev=0.7, width_ev=width)
    out = model.energy_and_forces(batch(start()))
    members = plain.energy_and_forces(batch(start()))[keys.MEMBER_ENERGIES].numpy()
    for s, n_atoms in enumerate((9, 3)):
        e = members[:, s]
        variance = sum((x - e.mean()) ** 2 for x in e) / len(e)
        expected = 0.7 * (np.exp(-variance / (n_atoms * width**2)) - 1.0)
        assert abs(out[BIAS_ENERGY][s].item() - expected) < 1e-12
        assert abs(out[keys.ENERGY][s].item() - (e.mean() + expected)) < 1e-9
    assert out[BIAS_ENERGY][0].item() < -0.1  # a real bias, not a vanishing one


def test_bias_forces_are_minus_the_gradient_of_the_biased_energy():
    model = biased(width_at_half(committee()))
    pos = start()
    forces = model.energy_and_forces(batch(pos))[keys.FORCES].numpy()
    plain = model.committee.energy_and_forces(batch(pos))[keys.FORCES].numpy()
    assert np.abs(forces - plain).max() > 1e-3  # the bias changes the forces
    h = 1e-5
    for structure, atom in [(0, 0), (0, 2), (0, 8), (1, 0), (1, 2)]:
        for axis in range(3):
            energies = []
            for sign in (1, -1):
                moved = [p.copy() for p in pos]
                moved[structure][atom, axis] += sign * h
                out = model.energy_and_forces(batch(moved))
                energies.append(out[keys.ENERGY].sum().item())
            numeric = -(energies[0] - energies[1]) / (2 * h)
            assert abs(forces[atom + 9 * structure, axis] - numeric) < 1e-6


def test_biased_md_runs_in_the_engine_and_reaches_more_uncertain_frames(tmp_path):
    """Same start and seed: along the run, the bias draws the committee apart (its mean
    energy variance over the saved frames grows by more than a fifth (1.31x);
    with the sign of the bias force flipped it shrinks)."""
    from mlff_distiller.data.hdf5 import Dataset

    plain = committee()
    model = UncertaintyBias(plain, strength_ev=50.0, width_ev=3 * width_at_half(plain))
    ethanol = ETHANOL.copy()
    config = MDConfig(steps=400, dt_fs=0.25, temperature_k=300.0, save_every=20, seed=3)
    variances = {}
    for name, provider in (("plain", plain), ("biased", model)):
        path = tmp_path / f"{name}.h5"
        run_md(provider, [ethanol], config, out=path, progress=False, compile=False)
        with Dataset(path) as ds:
            frames = ds.get_batch(np.arange(1, len(ds)), labels=[])
        e = plain.energy_and_forces(frames.to(dtype=torch.float64))[keys.MEMBER_ENERGIES].numpy()
        variances[name] = np.var(e, axis=0).mean()
    assert variances["biased"] > 1.2 * variances["plain"], variances  # flipped: 0.66x


def test_bias_refuses_a_single_model_and_bad_settings():
    with pytest.raises(TypeError, match="committee"):
        UncertaintyBias(PaiNN(PaiNNConfig(hidden=8, n_interactions=1)), 1.0, 1.0)
    with pytest.raises(ValueError, match="width_ev"):
        UncertaintyBias(committee(), 1.0, 0.0)


def test_bias_says_it_needs_every_member_on_every_call():
    plain = committee()
    model = UncertaintyBias(plain, 1.0, width_at_half(plain))
    plain.set_check_every(4)
    model.energy_and_forces(batch(start()))  # call 0: the whole committee
    with pytest.raises(ValueError, match="check_every=1"):
        model.energy_and_forces(batch(start()))  # call 1: member 0 alone
