"""Which uncertain MD frames the teacher labels: the most uncertain, thinned to a diverse set.

Frames above the threshold are candidates. Diversity is farthest-point sampling in a descriptor
that is invariant to rotation, translation and atom order within a molecule: the sorted inverse
interatomic distances (n_atoms * (n_atoms - 1) / 2 values, Å^-1). Frames of different molecules
are never compared: each molecule gets a share of the quota proportional to its candidates.
"""

from __future__ import annotations

import numpy as np


def inverse_distance_descriptor(positions: np.ndarray) -> np.ndarray:
    """(n_frames, n_atoms, 3) Å -> (n_frames, n_pairs) sorted inverse distances, Å^-1."""
    positions = np.asarray(positions, dtype=np.float64)
    i, j = np.triu_indices(positions.shape[1], k=1)
    dist = np.linalg.norm(positions[:, i] - positions[:, j], axis=-1)
    return np.sort(1.0 / dist, axis=1)


def farthest_point_sampling(descriptors: np.ndarray, k: int, first: int = 0) -> list[int]:
    """Indices of ``k`` rows of ``descriptors`` (n, d), greedily each the farthest (Euclidean)
    from those already chosen, starting from row ``first``. Deterministic."""
    n = len(descriptors)
    if k >= n:
        return list(range(n))
    chosen = [first]
    nearest = np.linalg.norm(descriptors - descriptors[first], axis=1)
    while len(chosen) < k:
        nxt = int(np.argmax(nearest))
        chosen.append(nxt)
        nearest = np.minimum(nearest, np.linalg.norm(descriptors - descriptors[nxt], axis=1))
    return chosen


def select_frames(
    uncertainty: np.ndarray,
    molecule: np.ndarray,
    positions: list[np.ndarray],
    threshold: float,
    quota: int,
) -> list[int]:
    """Frames to label: those with ``uncertainty`` (n_frames,) eV/Å above ``threshold``, at most
    ``quota``, diverse within each molecule.

    ``molecule``: (n_frames,) molecule label per frame; ``positions``: per frame (n_atoms, 3).
    Each molecule's share starts from its most uncertain frame. Returns sorted frame indices.
    """
    uncertainty = np.asarray(uncertainty, dtype=np.float64)
    molecule = np.asarray(molecule)
    candidates = np.flatnonzero(uncertainty > threshold)
    if quota <= 0 or len(candidates) == 0:
        return []
    names, counts = np.unique(molecule[candidates], return_counts=True)
    shares = _shares(counts, min(quota, len(candidates)))
    picked: list[int] = []
    for name, share in zip(names, shares, strict=True):
        idx = candidates[molecule[candidates] == name]
        idx = idx[np.argsort(-uncertainty[idx], kind="stable")]  # most uncertain first
        desc = inverse_distance_descriptor(np.stack([positions[i] for i in idx]))
        picked += [int(idx[k]) for k in farthest_point_sampling(desc, int(share))]
    return sorted(picked)


def _shares(counts: np.ndarray, total: int) -> np.ndarray:
    """Split ``total`` over groups proportionally to ``counts`` (largest remainders), each at
    most its count and, where possible, at least one."""
    raw = counts / counts.sum() * total
    shares = np.minimum(np.floor(raw).astype(int), counts)
    order = np.argsort(-(raw - np.floor(raw)), kind="stable")
    k = 0
    while shares.sum() < total:
        g = order[k % len(order)]
        if shares[g] < counts[g]:
            shares[g] += 1
        k += 1
    return shares
