"""Structural loss against hand-computed values; geometry against ASE; topology perception."""

import math

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule

from mlff_distiller.kstep.topology import build_topology, molecule_topology
from mlff_distiller.models.kstep_common import DELTA_POSITIONS, DELTA_VELOCITIES
from mlff_distiller.training.kstep_losses import (
    KStepLossWeights,
    KStepTargets,
    bond_angles,
    dihedral_angles,
    kstep_loss,
    structural_losses,
)

TRUE = torch.tensor([[1.0, 0, 0], [0, 0, 0], [0, 0, 1], [1, 0, 1]], dtype=torch.float64)
PRED = torch.tensor([[1.0, 0, 1], [0, 0, 0], [0, 0, 1], [0, 1, 1]], dtype=torch.float64)


def _targets(delta_x, delta_v=None, tau=2.0):
    topo = build_topology([6, 6, 6, 6], TRUE.numpy(), bonds=np.array([[0, 1], [1, 2], [2, 3]]))
    n = len(delta_x)
    return KStepTargets(
        delta_positions=delta_x,
        delta_velocities=torch.zeros(n, 3, dtype=torch.float64) if delta_v is None else delta_v,
        tau=torch.full((n, 1), tau, dtype=torch.float64),
        bonds=torch.as_tensor(topo.bonds),
        angles=torch.as_tensor(topo.angles),
        dihedrals=torch.as_tensor(topo.dihedrals),
    )


def test_topology_of_a_chain():
    topo = build_topology([6, 6, 6, 6], TRUE.numpy(), bonds=np.array([[0, 1], [1, 2], [2, 3]]))
    assert topo.angles.tolist() == [[0, 1, 2], [1, 2, 3]]
    assert topo.dihedrals.tolist() == [[0, 1, 2, 3]]
    np.testing.assert_allclose(topo.bond_lengths, [1.0, 1.0, 1.0])


def test_structural_loss_by_hand():
    # pred: bond 0-1 grows 1 -> sqrt(2); angle 0-1-2 closes 90 -> 45 deg; dihedral 0 -> 90 deg
    parts = structural_losses(PRED, TRUE, _targets(torch.zeros(4, 3, dtype=torch.float64)))
    assert float(parts["bond"]) == pytest.approx((math.sqrt(2) - 1) ** 2 / 3)
    assert float(parts["angle"]) == pytest.approx((math.pi / 4) ** 2 / 2)
    assert float(parts["dihedral"]) == pytest.approx(1.0)


def test_total_loss_by_hand():
    x0 = torch.zeros(4, 3, dtype=torch.float64)
    dv_true = torch.zeros(4, 3, dtype=torch.float64)
    dv_pred = torch.full((4, 3), 0.01, dtype=torch.float64)
    outputs = {DELTA_POSITIONS: PRED - x0, DELTA_VELOCITIES: dv_pred}
    w = KStepLossWeights(delta_x=1.0, delta_v=2.0, bond=3.0, angle=4.0, dihedral=5.0)
    total, parts = kstep_loss(outputs, x0, _targets(TRUE - x0, dv_true, tau=2.0), w)
    mse_x = float(
        ((PRED - TRUE) ** 2).mean()
    )  # atom 0 moved by (0,0,1), atom 3 by (-1,1,0): 3 / 12
    assert float(parts["delta_x"]) == pytest.approx(3 / 12) and mse_x == pytest.approx(3 / 12)
    assert float(parts["delta_v"]) == pytest.approx((0.01 * 2.0) ** 2)
    expected = (
        3 / 12
        + 2.0 * 0.02**2
        + 3.0 * (math.sqrt(2) - 1) ** 2 / 3
        + 4.0 * (math.pi / 4) ** 2 / 2
        + 5.0 * 1.0
    )
    assert float(total) == pytest.approx(expected)


def test_angles_and_dihedrals_match_ase():
    rng = np.random.default_rng(1)
    pos = rng.normal(size=(6, 3))
    atoms = Atoms("C6", positions=pos)
    quads = torch.tensor([[0, 1, 2, 3], [5, 4, 3, 2], [1, 3, 0, 5]])
    phi = dihedral_angles(torch.tensor(pos), quads).numpy()
    for q, value in zip(quads.tolist(), phi):
        ase_deg = atoms.get_dihedral(*q)
        diff = (np.degrees(value) - ase_deg + 180.0) % 360.0 - 180.0
        assert abs(diff) < 1e-8
    triples = torch.tensor([[0, 1, 2], [3, 4, 5]])
    theta = bond_angles(torch.tensor(pos), triples).numpy()
    for t, value in zip(triples.tolist(), theta):
        assert np.degrees(value) == pytest.approx(atoms.get_angle(*t))


def test_perceived_topology_of_ethanol_matches_chemistry():
    atoms = molecule("CH3CH2OH")
    topo = molecule_topology("ethanol-test", atoms.numbers, atoms.positions)
    assert topo.n_bonds == 8  # C-C, C-O, O-H, 5 C-H
    again = molecule_topology("ethanol-test", atoms.numbers, atoms.positions + 5.0)
    assert again is topo  # cached per molecule
