"""Observables against hand-computed values."""

import numpy as np
import pytest
from ase import units as ase_units

from mlff_distiller.evaluation.observables import (
    bond_length_rmse,
    distance_rdf,
    energy_drift,
    rdf_difference,
)


def test_energy_drift_is_least_squares_slope_in_kj_per_mol_per_ps():
    t = np.arange(0.0, 1000.0, 10.0)  # fs, 1 ps window
    slope_ev_per_fs = 1e-6
    centred = (t - t.mean()) / 500.0
    noise = 1e-4 * (centred**2 - np.mean(centred**2))  # symmetric in time: no linear trend
    e = 3.0 + slope_ev_per_fs * t + noise
    expected = slope_ev_per_fs * 1000.0 / (ase_units.kJ / ase_units.mol)  # eV/ps -> kJ/mol/ps
    assert energy_drift(t, e) == pytest.approx(expected, rel=1e-9)
    assert expected == pytest.approx(0.0964853, rel=1e-4)
    with pytest.raises(ValueError, match="energy_drift"):
        energy_drift(t[:1], e[:1])


def test_bond_rmse_by_hand():
    bonds = np.array([[0, 1], [1, 2]])
    a = np.zeros((2, 3, 3))
    a[:, 1, 0] = 1.0
    a[:, 2, 0] = 2.5  # bonds 1.0 and 1.5 in every frame
    b = a.copy()
    b[0, 2, 0] = 2.7  # frame 0 second bond 1.7
    b[1, 2, 0] = 2.5
    # mean mode: bond 2 means 1.5 vs 1.6 -> rmse sqrt((0 + 0.01)/2)
    assert bond_length_rmse(a, b, bonds) == pytest.approx(np.sqrt(0.01 / 2))
    # frame mode: deviations (0, 0.2, 0, 0) -> sqrt(0.04/4)
    assert bond_length_rmse(a, b, bonds, mode="frame") == pytest.approx(0.1)


def test_rdf_of_a_triangle_and_difference():
    # triangle vs line: distances {1.05 x3} vs {1.05, 1.05, 2.1}
    tri = np.array([[[0, 0, 0], [1, 0, 0], [0.5, np.sqrt(3) / 2, 0]]], dtype=float)
    line = np.array([[[0, 0, 0], [1, 0, 0], [2, 0, 0]]], dtype=float)
    tri, line = 1.05 * tri, 1.05 * line  # distances at bin centres, away from bin edges
    ra = distance_rdf(tri, r_max=4.0, n_bins=40)  # 0.1 Å bins
    rb = distance_rdf(line, r_max=4.0, n_bins=40)
    width = 0.1
    assert ra.density.sum() * width == pytest.approx(1.0)
    assert ra.density[10] * width == pytest.approx(1.0)
    assert rb.density[10] * width == pytest.approx(2 / 3)
    assert rb.density[21] * width == pytest.approx(1 / 3)
    assert rdf_difference(ra, rb) == pytest.approx(1 / 3)
    assert rdf_difference(ra, ra) == 0.0
