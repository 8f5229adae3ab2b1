"""When a molecular MD frame has failed: the one definition used by the loop and the benchmarks.

A frame has **failed** when its positions are not finite, when a bond of the reference structure
(atoms closer than 1.2x the sum of their covalent radii there) is stretched past 1.5x its
reference length, or when two atoms are closer than 0.5 Å. The stretch limit sits far beyond
thermal vibration (a C-H bond at 1000 K stretches by about 10%) and well before dissociation
products would form bonds of their own.
"""

from __future__ import annotations

import numpy as np
from ase.data import chemical_symbols

from mlff_distiller.kstep.topology import perceive_bonds

STRETCH_LIMIT = 1.5
CLOSEST_A = 0.5


def reference_bonds(numbers: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bonded pairs (b, 2) of a reference structure and their lengths (b,) Å."""
    bonds = perceive_bonds(numbers, positions, scale=1.2)
    pos = np.asarray(positions, dtype=float)
    return bonds, np.linalg.norm(pos[bonds[:, 0]] - pos[bonds[:, 1]], axis=1)


def failure(positions: np.ndarray, numbers: np.ndarray, bonds: np.ndarray, ref: np.ndarray) -> str:
    """"" when the frame (positions (n, 3) Å) is sound, else what failed: the most stretched
    bond (``O-H 12-20 x1.62``), a close contact, or non-finite positions."""
    positions = np.asarray(positions, dtype=float)
    if not np.isfinite(positions).all():
        return "non-finite positions"
    stretched = np.linalg.norm(positions[bonds[:, 0]] - positions[bonds[:, 1]], axis=1) / ref
    if (stretched > STRETCH_LIMIT).any():
        b = int(np.argmax(stretched))
        i, j = (int(x) for x in bonds[b])
        pair = f"{chemical_symbols[numbers[i]]}-{chemical_symbols[numbers[j]]}"
        return f"{pair} {i}-{j} x{stretched[b]:.2f}"
    i, j = np.triu_indices(len(positions), k=1)
    close = np.linalg.norm(positions[i] - positions[j], axis=1) < CLOSEST_A
    return f"atoms {i[close][0]}-{j[close][0]} closer than {CLOSEST_A} A" if close.any() else ""
