"""Trajectory observables: energy drift, bond-length RMSE, distance RDF (kinetic energy and
temperature: :mod:`mlff_distiller.thermo`).

Inputs are numpy arrays in internal units (Å, eV, fs, amu, Å/fs):
``positions (n_frames, n_atoms, 3)``, ``time (n_frames,)``, energies ``(n_frames,)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mlff_distiller import units


def energy_drift(time_fs: np.ndarray, total_energy_ev: np.ndarray) -> float:
    """Least-squares slope of the total energy against time, in kJ/mol/ps (whole system).

    time_fs: (n_frames,); total_energy_ev: (n_frames,). Needs at least two distinct times.
    """
    t = np.asarray(time_fs, dtype=float)
    e = np.asarray(total_energy_ev, dtype=float)
    if t.shape != e.shape or t.ndim != 1 or len(t) < 2 or np.ptp(t) == 0:
        raise ValueError(
            f"energy_drift needs matching 1-D time and energy with >= 2 distinct times, got "
            f"shapes {t.shape} and {e.shape}"
        )
    slope_ev_per_fs = np.polyfit(t, e, 1)[0]
    return float(slope_ev_per_fs / units.KJ_PER_MOL * units.PS)


def bond_lengths(positions: np.ndarray, bonds: np.ndarray) -> np.ndarray:
    """positions: (n_frames, n_atoms, 3) or (n_atoms, 3); bonds: (n_bonds, 2).
    Returns (n_frames, n_bonds) or (n_bonds,) in Å."""
    pos = np.asarray(positions, dtype=float)
    b = np.asarray(bonds, dtype=int).reshape(-1, 2)
    return np.linalg.norm(pos[..., b[:, 0], :] - pos[..., b[:, 1], :], axis=-1)


def bond_length_rmse(
    positions_a: np.ndarray, positions_b: np.ndarray, bonds: np.ndarray, mode: str = "mean"
) -> float:
    """RMSE (Å) between the bond lengths of two trajectories of the same molecule.

    ``mode="mean"``: compare each bond's time-averaged length (structure fidelity; independent of
    the frame count and of chaotic phase divergence). ``mode="frame"``: compare frame by frame
    (needs the same number of frames, e.g. the same times).
    """
    la = bond_lengths(positions_a, bonds)
    lb = bond_lengths(positions_b, bonds)
    if mode == "mean":
        la = la.reshape(-1, la.shape[-1]).mean(0)
        lb = lb.reshape(-1, lb.shape[-1]).mean(0)
    elif mode == "frame":
        if la.shape != lb.shape:
            raise ValueError(
                f"frame-wise bond RMSE needs equal frame counts: {la.shape} vs {lb.shape}"
            )
    else:
        raise ValueError(f"mode must be 'mean' or 'frame', got {mode!r}")
    return float(np.sqrt(np.mean((la - lb) ** 2)))


@dataclass
class RDF:
    """Distance distribution of a molecule: ``r`` bin centres (n_bins,) Å, ``density`` (n_bins,)
    normalised to integrate to 1 over ``r``, ``g`` the same divided by ``4 pi r^2`` (a radial
    distribution function up to a constant; a finite molecule has no bulk density)."""

    r: np.ndarray
    density: np.ndarray
    g: np.ndarray


def distance_rdf(positions: np.ndarray, r_max: float = 8.0, n_bins: int = 160) -> RDF:
    """RDF of all interatomic distances over all frames. positions: (n_frames, n_atoms, 3)."""
    pos = np.asarray(positions, dtype=float)
    if pos.ndim == 2:
        pos = pos[None]
    i, j = np.triu_indices(pos.shape[1], k=1)
    d = np.linalg.norm(pos[:, i] - pos[:, j], axis=-1).ravel()
    edges = np.linspace(0.0, r_max, n_bins + 1)
    counts, _ = np.histogram(d, bins=edges)
    width = edges[1] - edges[0]
    density = counts / max(len(d), 1) / width
    r = 0.5 * (edges[1:] + edges[:-1])
    return RDF(r=r, density=density, g=density / (4.0 * np.pi * r**2))


def rdf_difference(a: RDF, b: RDF) -> float:
    """Total-variation distance between two distance distributions, in [0, 1]:
    ``0.5 * integral |p_a(r) - p_b(r)| dr`` (0: identical, 1: no overlap)."""
    if a.r.shape != b.r.shape or not np.allclose(a.r, b.r):
        raise ValueError("the two RDFs must use the same bins (same r_max and n_bins)")
    width = a.r[1] - a.r[0]
    return float(0.5 * np.sum(np.abs(a.density - b.density)) * width)
