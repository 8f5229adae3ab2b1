"""Neighbour lists against a brute-force reference over boxes, dtypes and batch sizes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from mlff_distiller.data.batch import AtomsBatch
from mlff_distiller.data.neighbors import NeighborListError, edge_vectors, neighbor_list

CUTOFF = 3.0

BOXES = {
    "cubic": (np.eye(3) * 6.0, [True, True, True]),
    "small_cubic": (np.eye(3) * 2.5, [True, True, True]),  # cutoff > box: many images
    "triclinic": (np.array([[5.0, 0.0, 0.0], [1.7, 4.6, 0.0], [-1.2, 0.9, 4.1]]), [True] * 3),
    "mixed_pbc": (
        np.array([[5.5, 0.0, 0.0], [0.8, 5.0, 0.0], [0.0, 0.0, 9.0]]),
        [True, True, False],
    ),
    "non_periodic": (np.zeros((3, 3)), [False, False, False]),
}


def brute_force(positions: np.ndarray, cell: np.ndarray, pbc, cutoff: float) -> set:
    """All (i, j, n1, n2, n3) with |pos[j] - pos[i] + n @ cell| < cutoff, (i, j, n) != (i, i, 0)."""
    pbc = np.asarray(pbc)
    ranges = []
    for axis in range(3):
        if pbc[axis]:
            # distance between lattice planes bounds the number of images needed
            normal = np.cross(cell[(axis + 1) % 3], cell[(axis + 2) % 3])
            height = abs(np.dot(cell[axis], normal)) / np.linalg.norm(normal)
            k = int(np.ceil(cutoff / height)) + 1
            ranges.append(range(-k, k + 1))
        else:
            ranges.append(range(0, 1))
    found = set()
    n = len(positions)
    for shift in itertools.product(*ranges):
        offset = np.asarray(shift, dtype=float) @ cell
        d = positions[None, :, :] - positions[:, None, :] + offset  # d[i, j]
        dist = np.linalg.norm(d, axis=-1)
        for i, j in zip(*np.nonzero(dist < cutoff)):
            if i == j and not any(shift):
                continue
            found.add((int(i), int(j), *shift))
    assert n > 0
    return found


def as_set(edge_index, shifts, cell: np.ndarray, start: int, stop: int) -> set:
    """Edges of atoms start..stop as (i, j, integer shift) relative to that system."""
    out = set()
    inv = np.linalg.pinv(cell) if np.abs(cell).sum() > 0 else None
    for (i, j), s in zip(edge_index.T.tolist(), shifts.double().numpy()):
        if not (start <= i < stop):
            continue
        assert start <= j < stop, "edge between two structures"
        n = np.rint(s @ inv).astype(int) if inv is not None else np.zeros(3, int)
        if inv is not None:
            np.testing.assert_allclose(n @ cell, s, atol=1e-4)
        out.add((i - start, j - start, *n.tolist()))
    return out


def random_structures(box: str, n_systems: int, dtype, seed: int = 0):
    rng = np.random.default_rng(seed)
    cell, pbc = BOXES[box]
    numbers, positions, cells, pbcs = [], [], [], []
    for _ in range(n_systems):
        n = int(rng.integers(2, 30))
        if np.abs(cell).sum() > 0:
            frac = rng.uniform(0, 1, (n, 3))
            frac[:, ~np.asarray(pbc)] = rng.uniform(0.2, 0.8, (n, int((~np.asarray(pbc)).sum())))
            pos = frac @ cell + rng.normal(0, 0.3, (n, 3))  # some atoms outside the cell
        else:
            pos = rng.uniform(0, 6.0, (n, 3))
        numbers.append(rng.integers(1, 9, n))
        positions.append(pos)
        cells.append(cell)
        pbcs.append(np.asarray(pbc))
    batch = AtomsBatch.from_arrays(numbers, positions, cells, pbcs, dtype=dtype)
    return batch, positions


@pytest.mark.parametrize("box", list(BOXES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n_systems", [1, 4])
def test_neighbor_list_matches_brute_force(box, dtype, n_systems):
    batch, positions = random_structures(box, n_systems, dtype, seed=n_systems)
    cell, pbc = BOXES[box]
    methods = ["cell_list", "auto"] + (["all_pairs"] if not any(pbc) else [])
    for method in methods:
        edge_index, shifts = neighbor_list(batch, CUTOFF, method)
        assert edge_index.dtype == torch.long and shifts.dtype == dtype
        start = 0
        for pos in positions:
            stop = start + len(pos)
            got = as_set(edge_index, shifts, cell, start, stop)
            # float32 positions: exclude pairs within 1e-4 of the cutoff from the comparison
            pos32 = batch.positions[start:stop].double().numpy()
            ref = brute_force(pos32, cell, pbc, CUTOFF)
            inner = brute_force(pos32, cell, pbc, CUTOFF - 1e-4)
            assert inner <= got <= ref, f"{method}: edges differ from brute force"
            start = stop
        vec = edge_vectors(batch.positions, edge_index, shifts)
        assert float(vec.norm(dim=1).max()) < CUTOFF + 1e-4


def test_no_edges_between_systems_and_full_list():
    batch, _ = random_structures("non_periodic", 5, torch.float64)
    edge_index, _ = neighbor_list(batch, CUTOFF, "all_pairs")
    sys = batch.system_idx
    assert torch.equal(sys[edge_index[0]], sys[edge_index[1]])
    pairs = set(map(tuple, edge_index.T.tolist()))
    assert pairs == {(j, i) for i, j in pairs}
    assert all(i != j for i, j in pairs)


def test_all_pairs_refuses_periodic_and_bad_input():
    batch, _ = random_structures("cubic", 1, torch.float64)
    with pytest.raises(NeighborListError, match="periodic"):
        neighbor_list(batch, CUTOFF, "all_pairs")
    with pytest.raises(NeighborListError, match="cutoff"):
        neighbor_list(batch, -1.0)
    with pytest.raises(NeighborListError, match="method"):
        neighbor_list(batch, CUTOFF, "octree")
