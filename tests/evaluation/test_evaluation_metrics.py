"""Metric values against numbers worked out by hand."""

import numpy as np
import pytest

from mlff_distiller.evaluation.metrics import (
    energy_mae,
    energy_mae_per_atom,
    error_summary,
    force_cosine_similarity,
    force_mae,
    force_rmse,
    per_element_force_errors,
    per_group_errors,
)


def test_energy_mae_per_atom_by_hand():
    # errors 0.3 eV over 3 atoms (0.1 eV/atom) and -0.4 eV over 2 atoms (0.2 eV/atom)
    e_ref = np.array([1.0, 2.0])
    e_pred = np.array([1.3, 1.6])
    n = np.array([3, 2])
    assert energy_mae_per_atom(e_pred, e_ref, n) == pytest.approx(150.0)  # meV/atom
    assert energy_mae(e_pred, e_ref) == pytest.approx(350.0)  # meV


def test_force_mae_rmse_by_hand():
    ref = np.zeros((2, 3))
    pred = np.array([[0.1, -0.2, 0.0], [0.0, 0.0, 0.3]])
    assert force_mae(pred, ref) == pytest.approx(100.0)  # (0.1+0.2+0.3)/6 eV/Å
    assert force_rmse(pred, ref) == pytest.approx(np.sqrt((0.01 + 0.04 + 0.09) / 6) * 1000)


def test_force_cosine_by_hand():
    ref = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    pred = np.array([[3.0, 0.0, 0.0], [0.0, 1.0, 1.0]])  # cos = 1 and 1/sqrt(2)
    assert force_cosine_similarity(pred, ref) == pytest.approx((1 + 1 / np.sqrt(2)) / 2)
    assert force_cosine_similarity(-pred, ref) == pytest.approx(-(1 + 1 / np.sqrt(2)) / 2)


def test_per_element_and_per_molecule_split_the_atoms():
    z = np.array([1, 6, 1, 8, 1])  # structure 0: atoms 0-2, structure 1: atoms 3-4
    n = np.array([3, 2])
    f_ref = np.zeros((5, 3))
    f_pred = np.zeros((5, 3))
    f_pred[1, 0] = 0.6  # the carbon
    f_pred[3, 2] = -0.3  # the oxygen
    per_el = per_element_force_errors(f_pred, f_ref, z)
    assert set(per_el) == {"H", "C", "O"}
    assert per_el["H"]["force_mae_mev_per_a"] == 0.0
    assert per_el["H"]["n_atoms"] == 3
    assert per_el["C"]["force_mae_mev_per_a"] == pytest.approx(200.0)
    assert per_el["O"]["force_mae_mev_per_a"] == pytest.approx(100.0)
    e = np.array([0.0, 0.0])
    per_mol = per_group_errors(e + [0.3, 0.0], e, f_pred, f_ref, n, ["a", "b"])
    assert per_mol["a"]["force_mae_mev_per_a"] == pytest.approx(600 / 9)
    assert per_mol["b"]["force_mae_mev_per_a"] == pytest.approx(300 / 6)
    assert per_mol["a"]["energy_mae_mev_per_atom"] == pytest.approx(100.0)
    assert per_mol["b"]["energy_mae_mev_per_atom"] == 0.0
    overall = error_summary(e + [0.3, 0.0], e, f_pred, f_ref, n)
    assert overall["force_mae_mev_per_a"] == pytest.approx(900 / 15)
    assert overall["n_atoms"] == 5 and overall["n_structures"] == 2
