"""The failure definition of student MD (loop and benchmarks): hand-built water frames."""

from __future__ import annotations

import numpy as np

from mlff_distiller.distill.failure import failure, reference_bonds

NUMBERS = np.array([8, 1, 1])
WATER = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])


def test_bonds_are_the_two_o_h_bonds_with_their_lengths():
    bonds, lengths = reference_bonds(NUMBERS, WATER)
    assert bonds.tolist() == [[0, 1], [0, 2]]  # H-H at 1.52 A is not a bond (limit 0.74 A)
    np.testing.assert_allclose(lengths, [0.96, np.hypot(0.24, 0.93)], rtol=1e-12)


def test_a_bond_past_one_and_a_half_times_its_length_fails_and_is_named():
    bonds, ref = reference_bonds(NUMBERS, WATER)
    frame = WATER.copy()
    frame[1, 0] = 0.96 * 1.49
    assert failure(frame, NUMBERS, bonds, ref) == ""
    frame[1, 0] = 0.96 * 1.62
    assert failure(frame, NUMBERS, bonds, ref) == "O-H 0-1 x1.62"


def test_close_contact_and_non_finite_positions_fail():
    bonds, ref = reference_bonds(NUMBERS, WATER)
    frame = WATER.copy()
    frame[2] = frame[1] + [0.0, 0.49, 0.0]  # H-H 0.49 A; both O-H bonds stay under 1.5x
    assert failure(frame, NUMBERS, bonds, ref) == "atoms 1-2 closer than 0.5 A"
    frame[2] = frame[1] + [0.0, 0.51, 0.0]
    assert failure(frame, NUMBERS, bonds, ref) == ""
    frame[0, 2] = np.nan
    assert failure(frame, NUMBERS, bonds, ref) == "non-finite positions"
