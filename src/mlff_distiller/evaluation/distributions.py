"""Ensemble comparison of one molecule, test (e.g. k-step hybrid) vs reference MD, as distributions.

An ensemble is R independent replicas of F frames: ``positions (R, F, n, 3)`` Å and
``velocities (R, F, n, 3)`` Å/fs, with ``masses (n,)`` amu, ``atomic_numbers (n,)`` and a
:class:`~mlff_distiller.kstep.topology.Topology`. :func:`compare_ensembles` reports, per kind of
internal coordinate and per element pair, a distribution distance test-vs-reference next to the
same distance between two independent halves of the reference (the noise floor), and per element
the temperature (:mod:`mlff_distiller.thermo`) with standard errors over replicas.

**Coordinate metric: normalised Wasserstein-1.** Per coordinate (each bond, angle, dihedral
separately) ``d = W1(P, Q) / s_ref``. W1 is the exact earth mover's distance between the two
empirical 1-D distributions, ``integral |F_P(x) - F_Q(x)| dx``; for dihedrals it is taken on the
circle, ``min_a integral |F_P - F_Q - a|`` (Rabin, Delon & Gousseau 2011), so 179° and -179° are 2°
apart. ``s_ref = mean |x - median|`` of the whole reference (circular median and arc distance for
dihedrals) is the W1 distance of the reference to its best point mass, i.e. its spread. **Unit:
reference spreads** (dimensionless); a kind's value is the mean over its coordinates. Why W1: it
needs no bins and sees every change of shape, not only of the mean. A shift by delta reads
``delta / s_ref``; widening a location-scale distribution by a factor ``1 + e`` reads exactly ``e``
(a bond 20% wider, as in a hotter system, reads 0.2 with an unchanged mean). Dividing by the
spread makes stiff and soft coordinates count alike in the mean over a kind.

**RDF metric.** Per unordered element pair (heavier element first: "O-C", "O-H", "C-H"), the
fraction of all that pair's interatomic distances per bin of ``[0, r_max)`` plus an overflow entry
(``>= r_max``); the difference is ``100 x`` the total-variation distance ``0.5 sum |p - q|`` in %:
0 identical, 100 disjoint.

**Fair noise floor.** Distances between finite samples are biased upward (two samples of one
distribution are not at distance 0), and the bias shrinks with sample size. Each of ``n_splits``
random splits draws two disjoint reference sets A, B of m replicas and a test set T of m
replicas, ``m = min(R_ref // 2, R_test)``, all of F frames (the longer ensemble is subsampled at
evenly spaced frames to the shorter one's F), and takes ``test_vs_ref = (d(T, A) + d(T, B)) / 2``
and ``ref_vs_ref = d(A, B)``: both carry the same sample-size bias, so their ratio is ~1 when the
ensembles agree. Reported values are means over splits with the standard deviation over splits as
error bar: the spread over pairings of replicas (splits share replicas, so it is not an
independent-sample standard error).
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from ase.data import chemical_symbols

from mlff_distiller import thermo
from mlff_distiller.evaluation.observables import bond_lengths
from mlff_distiller.kstep.topology import Topology

KINDS = ("bond", "angle", "dihedral")
PERIOD = {"bond": None, "angle": None, "dihedral": 360.0}
COORDINATE_UNIT = "reference spreads (W1 / mean |x - median|)"


def wrap_degrees(degrees: np.ndarray) -> np.ndarray:
    """Angles in degrees mapped to (-180, 180]."""
    return 180.0 - np.mod(180.0 - degrees, 360.0)


def bond_angles(positions: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """positions (..., n, 3) Å, angles (n_angles, 3) i-j-k with apex j -> (..., n_angles) degrees
    in [0, 180]."""
    pos = np.asarray(positions, dtype=float)
    a = np.asarray(angles, dtype=int).reshape(-1, 3)
    u = pos[..., a[:, 0], :] - pos[..., a[:, 1], :]
    v = pos[..., a[:, 2], :] - pos[..., a[:, 1], :]
    return np.degrees(np.arctan2(np.linalg.norm(np.cross(u, v), axis=-1), np.sum(u * v, -1)))


def dihedral_angles(positions: np.ndarray, dihedrals: np.ndarray) -> np.ndarray:
    """positions (..., n, 3) Å, dihedrals (n_dihedrals, 4) i-j-k-l -> (..., n_dihedrals) degrees in
    (-180, 180]: 0 cis, 180 trans; IUPAC sign (positive when, looking from j to k, the front bond
    j-i turns clockwise, by less than 180°, onto the back bond k-l)."""
    pos = np.asarray(positions, dtype=float)
    d = np.asarray(dihedrals, dtype=int).reshape(-1, 4)
    p0, p1, p2, p3 = (pos[..., d[:, c], :] for c in range(4))
    b1, b2, b3 = p1 - p0, p2 - p1, p3 - p2
    n2 = np.cross(b2, b3)
    y = np.linalg.norm(b2, axis=-1) * np.sum(b1 * n2, -1)
    x = np.sum(np.cross(b1, b2) * n2, -1)
    return wrap_degrees(np.degrees(np.arctan2(y, x)))


def internal_coordinates(positions: np.ndarray, topology: Topology) -> dict[str, np.ndarray]:
    """positions (..., n, 3) -> {"bond": (..., n_bonds) Å, "angle": (..., n_angles) degrees,
    "dihedral": (..., n_dihedrals) degrees}."""
    return {
        "bond": bond_lengths(positions, topology.bonds),
        "angle": bond_angles(positions, topology.angles),
        "dihedral": dihedral_angles(positions, topology.dihedrals),
    }


def wasserstein_1(a: np.ndarray, b: np.ndarray, period: float | None = None) -> float:
    """Exact W1 between the empirical distributions of samples ``a`` (N,) and ``b`` (M,), in their
    unit; with ``period`` on the circle of that circumference (values taken modulo period)."""
    a, b = np.sort(np.ravel(a)), np.sort(np.ravel(b))
    if period is None:
        x = np.sort(np.concatenate([a, b]))
    else:
        a, b = np.sort(np.mod(a, period)), np.sort(np.mod(b, period))
        x = np.concatenate([[0.0], np.sort(np.concatenate([a, b])), [period]])
    dx = np.diff(x)
    left = x[:-1]
    cdf = np.searchsorted(a, left, "right") / len(a) - np.searchsorted(b, left, "right") / len(b)
    if period is not None:  # optimal shift of the CDF difference: its dx-weighted median
        order = np.argsort(cdf)
        cum = np.cumsum(dx[order])
        cdf = cdf - cdf[order][min(np.searchsorted(cum, 0.5 * cum[-1]), len(cum) - 1)]
    return float(np.sum(np.abs(cdf) * dx))


def spread(x: np.ndarray, period: float | None = None) -> float:
    """Mean distance of samples ``x`` (N,) to their median (with ``period``: circular median, arc
    distance), i.e. W1 to the best point mass; ``sigma sqrt(2/pi)`` for a Gaussian."""
    x = np.ravel(np.asarray(x, dtype=float))
    if period is None:
        return float(np.mean(np.abs(x - np.median(x))))
    n_grid = 720
    hist, edges = np.histogram(np.mod(x, period), bins=n_grid, range=(0.0, period))
    c = 0.5 * (edges[1:] + edges[:-1])
    arc = np.abs(np.mod(c[:, None] - c[None] + period / 2, period) - period / 2)
    centre = c[np.argmin(arc @ hist)]
    return float(np.mean(np.abs(np.mod(x - centre + period / 2, period) - period / 2)))


def coordinate_distances(
    a: np.ndarray, b: np.ndarray, kind: str, scale: np.ndarray | None = None
) -> np.ndarray:
    """Samples ``a`` (..., n_coord) and ``b`` (..., n_coord) of one ``kind`` ("bond", "angle",
    "dihedral"; leading dimensions pooled) -> (n_coord,) W1 per coordinate divided by ``scale``
    (n_coord,), by default the :func:`spread` of ``b``."""
    period = PERIOD[kind]
    a, b = np.reshape(a, (-1, np.shape(a)[-1])), np.reshape(b, (-1, np.shape(b)[-1]))
    if scale is None:
        scale = np.array([spread(b[:, j], period) for j in range(b.shape[1])])
    w = np.array([wasserstein_1(a[:, j], b[:, j], period) for j in range(a.shape[1])])
    return w / np.maximum(scale, 1e-6)  # a coordinate rigid to 1e-6 Å or degrees: no division


class TemperatureEstimate(NamedTuple):
    """Temperature in K: mean over replicas, its standard error, per-replica means (R,)."""

    mean: float
    stderr: float
    per_replica: np.ndarray


def _estimate(per_frame: np.ndarray) -> TemperatureEstimate:
    per = np.asarray(per_frame, dtype=float).mean(axis=1)  # (R, F) -> (R,)
    se = float(per.std(ddof=1) / np.sqrt(len(per))) if len(per) > 1 else float("nan")
    return TemperatureEstimate(float(per.mean()), se, per)


def element_temperatures(
    velocities: np.ndarray, masses: np.ndarray, atomic_numbers: np.ndarray
) -> dict[str, TemperatureEstimate]:
    """velocities (R, F, n, 3) Å/fs -> {symbol: estimate} from :func:`thermo.element_temperature`
    averaged over the frames of each replica."""
    v = np.asarray(velocities, dtype=float)
    per_z = thermo.element_temperature(v, np.asarray(masses, float), np.asarray(atomic_numbers))
    return {chemical_symbols[z]: _estimate(t) for z, t in sorted(per_z.items())}


def molecule_temperature(velocities: np.ndarray, masses: np.ndarray) -> TemperatureEstimate:
    """velocities (R, F, n, 3) Å/fs -> whole-molecule :func:`thermo.temperature` estimate."""
    v = np.asarray(velocities, dtype=float)
    return _estimate(thermo.temperature(v, np.asarray(masses, dtype=float))[..., 0])


def element_pairs(atomic_numbers: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"O-H": (i (n_pairs,), j (n_pairs,)), ...}: atom index pairs ``i < j`` per unordered element
    pair, heavier element first, pairs ordered by descending atomic numbers."""
    z = np.asarray(atomic_numbers, dtype=int)
    i, j = np.triu_indices(len(z), k=1)
    hi, lo = np.maximum(z[i], z[j]), np.minimum(z[i], z[j])
    out = {}
    for zh, zl in sorted(set(zip(hi.tolist(), lo.tolist())), reverse=True):
        mask = (hi == zh) & (lo == zl)
        out[f"{chemical_symbols[zh]}-{chemical_symbols[zl]}"] = (i[mask], j[mask])
    return out


def _edges(r_max: float, bin_width: float) -> np.ndarray:
    return np.linspace(0.0, r_max, max(int(round(r_max / bin_width)), 1) + 1)


def _pair_counts(positions: np.ndarray, pairs: dict, edges: np.ndarray) -> dict[str, np.ndarray]:
    """positions (R, F, n, 3) -> {pair: (R, n_bins + 1) counts, last column >= r_max}."""
    n_bins = len(edges) - 1
    out = {p: np.zeros((positions.shape[0], n_bins + 1)) for p in pairs}
    for r, pos in enumerate(positions):
        for p, (i, j) in pairs.items():
            d = np.linalg.norm(pos[:, i] - pos[:, j], axis=-1).ravel()
            idx = np.minimum(np.searchsorted(edges, d, "right") - 1, n_bins)
            out[p][r] = np.bincount(idx, minlength=n_bins + 1)
    return out


def pair_distance_histograms(
    positions: np.ndarray, atomic_numbers: np.ndarray, r_max: float = 6.0, bin_width: float = 0.025
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """positions (..., n, 3) Å -> (edges (n_bins + 1,) Å, {pair: (n_bins + 1,)}): the fraction of
    the pair's distances in each bin of [0, r_max), last entry the fraction >= r_max (sums to 1)."""
    pos = np.asarray(positions, dtype=float)
    edges = _edges(r_max, bin_width)
    counts = _pair_counts(pos.reshape(1, -1, *pos.shape[-2:]), element_pairs(atomic_numbers), edges)
    return edges, {p: c[0] / c[0].sum() for p, c in counts.items()}


def histogram_difference_percent(p: np.ndarray, q: np.ndarray) -> float:
    """100 x total-variation distance of two histograms (counts or fractions, same bins), in %."""
    p, q = np.asarray(p, dtype=float), np.asarray(q, dtype=float)
    return float(50.0 * np.sum(np.abs(p / p.sum() - q / q.sum())))


@dataclass
class Ensemble:
    """R independent replicas of one molecule: ``positions (R, F, n, 3)`` Å, ``velocities
    (R, F, n, 3)`` Å/fs or None (no temperatures)."""

    positions: np.ndarray
    velocities: np.ndarray | None = None


@dataclass
class Distance:
    """A distance test-vs-reference and reference-vs-reference (mean, std over splits), in
    ``unit``; ``ratio = test_vs_ref / ref_vs_ref`` (~1: indistinguishable from the noise floor)."""

    test_vs_ref: float
    test_vs_ref_err: float
    ref_vs_ref: float
    ref_vs_ref_err: float
    ratio: float
    unit: str

    @classmethod
    def from_splits(cls, test: np.ndarray, ref: np.ndarray, unit: str) -> Distance:
        t, r = float(np.mean(test)), float(np.mean(ref))
        ratio = t / r if r > 0 else (float("inf") if t > 0 else float("nan"))
        return cls(t, float(np.std(test)), r, float(np.std(ref)), ratio, unit)


@dataclass
class TemperatureComparison:
    """Temperatures (K, mean and stderr over replicas) and ``100 (T_test - T_ref) / T_ref`` %."""

    test_mean: float
    test_stderr: float
    ref_mean: float
    ref_stderr: float
    relative_difference_percent: float
    relative_difference_err_percent: float


@dataclass
class EnsembleComparison:
    """Result of :func:`compare_ensembles`. ``coordinates[kind]``: mean normalised W1 over the
    kind's coordinates; ``per_coordinate[kind]``: {"test_vs_ref", "ref_vs_ref"} (n_coord,) each;
    ``temperatures``: per element symbol and "molecule"; ``rdf[pair]``: TV difference in %."""

    coordinates: dict[str, Distance]
    per_coordinate: dict[str, dict[str, np.ndarray]]
    temperatures: dict[str, TemperatureComparison]
    rdf: dict[str, Distance]
    rdf_max_test_vs_ref: float
    rdf_max_ref_vs_ref: float
    replicas_per_set: int
    n_frames: int
    n_splits: int
    curves: dict = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict:
        """JSON-ready dict (lists for arrays), without the plotting curves."""
        d = {k: v for k, v in asdict(self).items() if k != "curves"}
        return json.loads(json.dumps(d, default=lambda o: np.asarray(o).tolist()))

    def table(self) -> str:
        """Markdown tables: distances (test vs ref, ref vs ref, ratio) and temperatures."""
        rows = ["| quantity | test vs ref | ref vs ref | ratio |", "|---|---|---|---|"]
        items = [(f"{k} W1 (ref spreads)", v, 3) for k, v in self.coordinates.items()]
        items += [(f"RDF {p} (TV %)", v, 2) for p, v in self.rdf.items()]
        for name, v, dp in items:
            rows.append(
                f"| {name} | {v.test_vs_ref:.{dp}f} ± {v.test_vs_ref_err:.{dp}f} | "
                f"{v.ref_vs_ref:.{dp}f} ± {v.ref_vs_ref_err:.{dp}f} | {v.ratio:.2f} |"
            )
        rdf_max = self.rdf_max_test_vs_ref, self.rdf_max_ref_vs_ref
        rows.append("| RDF max over pairs (TV %) | {:.2f} | {:.2f} | |".format(*rdf_max))
        if self.temperatures:
            rows += ["", "| temperature | test (K) | ref (K) | difference (%) |", "|---" * 4 + "|"]
            for name, t in self.temperatures.items():
                rows.append(
                    f"| {name} | {t.test_mean:.1f} ± {t.test_stderr:.1f} | {t.ref_mean:.1f} ± "
                    f"{t.ref_stderr:.1f} | {t.relative_difference_percent:+.2f} ± "
                    f"{t.relative_difference_err_percent:.2f} |"
                )
        return "\n".join(rows)

    def plot(self, path: str | Path, test_label: str = "hybrid", ref_label: str = "reference"):
        """PNG at ``path``: the most different coordinate of each kind (test vs reference
        histograms), element temperatures with error bars, element-pair distance histograms."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(2, 3, figsize=(15, 8))
        for ax, kind in zip(axes[0], KINDS):
            c = self.curves.get(kind)
            if c is None:
                ax.set_axis_off()
                continue
            ax.stairs(c["test"], c["edges"], label=test_label)
            ax.stairs(c["reference"], c["edges"], label=ref_label, linestyle="--")
            ax.set(title=c["label"], xlabel=c["unit"], ylabel="density")
            ax.legend()
        ax = axes[1, 0]
        names = list(self.temperatures)
        x = np.arange(len(names))
        for dx, who, label in ((-0.1, "test", test_label), (0.1, "ref", ref_label)):
            mean = [getattr(self.temperatures[n], f"{who}_mean") for n in names]
            err = [getattr(self.temperatures[n], f"{who}_stderr") for n in names]
            ax.errorbar(x + dx, mean, yerr=err, fmt="o", capsize=4, label=label)
        ax.set(xticks=x, xticklabels=names, ylabel="temperature (K)", title="temperatures")
        ax.legend()
        ax = axes[1, 1]
        rdf = self.curves.get("rdf", {})
        for k, (pair, c) in enumerate(rdf.get("pairs", {}).items()):
            ax.stairs(c["test"], rdf["edges"], color=f"C{k}", label=pair)
            ax.stairs(c["reference"], rdf["edges"], color=f"C{k}", linestyle="--")
        ax.set(xlabel="r (Å)", ylabel="density (1/Å)", title=f"pair distances (--: {ref_label})")
        ax.legend()
        ax = axes[1, 2]
        ratios = {**self.coordinates, **{f"RDF {p}": v for p, v in self.rdf.items()}}
        ax.bar(list(ratios), [v.ratio for v in ratios.values()])
        ax.axhline(1.0, color="k", linestyle=":")
        ax.set(ylabel="test-vs-ref / ref-vs-ref", title="distance ratio")
        ax.tick_params(axis="x", rotation=45)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)


def _validate(ens, name: str, n_atoms: int) -> tuple[np.ndarray, np.ndarray | None]:
    pos, vel = (ens.positions, ens.velocities) if isinstance(ens, Ensemble) else tuple(ens)
    pos = np.asarray(pos, dtype=float)
    if pos.ndim != 4 or pos.shape[-1] != 3 or pos.shape[-2] != n_atoms or 0 in pos.shape:
        raise ValueError(f"{name} positions must have shape (R, F, {n_atoms}, 3), got {pos.shape}")
    if not np.all(np.isfinite(pos)):
        bad = np.nonzero(~np.isfinite(pos).all(axis=(1, 2, 3)))[0].tolist()
        raise ValueError(f"{name} positions contain NaN or inf (replicas {bad})")
    if vel is not None:
        vel = np.asarray(vel, dtype=float)
        if vel.shape != pos.shape:
            raise ValueError(f"{name} velocities shape {vel.shape} != positions shape {pos.shape}")
        if not np.all(np.isfinite(vel)):
            raise ValueError(f"{name} velocities contain NaN or inf")
    return pos, vel


def _subsample(x: np.ndarray, n_frames: int) -> np.ndarray:
    return x[:, np.round(np.linspace(0, x.shape[1] - 1, n_frames)).astype(int)]


def compare_ensembles(
    test: Ensemble | tuple,
    reference: Ensemble | tuple,
    masses: np.ndarray,
    atomic_numbers: np.ndarray,
    topology: Topology,
    r_max: float = 6.0,
    bin_width: float = 0.025,
    n_splits: int = 8,
    seed: int = 0,
) -> EnsembleComparison:
    """Compare ``test`` with ``reference`` (each an :class:`Ensemble` or a ``(positions,
    velocities)`` tuple of shape (R, F, n, 3); the reference needs R >= 2) against the
    reference-vs-reference noise floor; see the module docstring for the metrics and the splits."""
    masses = np.asarray(masses, dtype=float)
    numbers = np.asarray(atomic_numbers, dtype=int)
    if masses.ndim != 1 or numbers.shape != masses.shape or np.any(masses <= 0):
        raise ValueError(
            f"masses (n,) must be positive with atomic_numbers of the same shape, got masses "
            f"{masses.shape} and atomic_numbers {numbers.shape}"
        )
    n = len(masses)
    for name in ("bonds", "angles", "dihedrals"):
        idx = np.asarray(getattr(topology, name))
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise ValueError(f"topology.{name} refers to atom {idx.max()} of a {n}-atom molecule")
    pos_t, vel_t = _validate(test, "test", n)
    pos_r, vel_r = _validate(reference, "reference", n)
    if len(pos_r) < 2:
        raise ValueError(f"reference needs >= 2 independent replicas to split, got {len(pos_r)}")
    n_frames = min(pos_t.shape[1], pos_r.shape[1])
    sub_t, sub_r = _subsample(pos_t, n_frames), _subsample(pos_r, n_frames)
    m = min(len(pos_r) // 2, len(pos_t))
    rng = np.random.default_rng(seed)
    splits = []
    for _ in range(n_splits):
        perm = rng.permutation(len(pos_r))
        splits.append((rng.choice(len(pos_t), m, replace=False), perm[:m], perm[m : 2 * m]))

    coords, per_coord, curves = {}, {}, {}
    ct, cr = internal_coordinates(sub_t, topology), internal_coordinates(sub_r, topology)
    for kind in KINDS:
        k = ct[kind].shape[-1]
        if k == 0:
            continue
        t_all, r_all = ct[kind].reshape(-1, k), cr[kind].reshape(-1, k)
        scale = np.array([spread(r_all[:, j], PERIOD[kind]) for j in range(k)])
        dist = functools.partial(coordinate_distances, kind=kind, scale=scale)
        d_t, d_r = _over_splits(ct[kind], cr[kind], splits, dist)
        coords[kind] = Distance.from_splits(d_t.mean(1), d_r.mean(1), COORDINATE_UNIT)
        per_coord[kind] = {"test_vs_ref": d_t.mean(0), "ref_vs_ref": d_r.mean(0)}
        j = int(np.argmax(d_t.mean(0)))  # plot the most different coordinate
        both = np.concatenate([t_all[:, j], r_all[:, j]])
        lo, hi = (-180.0, 180.0) if kind == "dihedral" else (both.min(), both.max() + 1e-9)
        edges = np.linspace(lo, hi, 121 if kind == "dihedral" else 61)
        curves[kind] = {
            "label": f"{kind} {'-'.join(map(str, getattr(topology, kind + 's')[j]))}",
            "unit": "Å" if kind == "bond" else "degrees",
            "edges": edges,
            "test": np.histogram(t_all[:, j], bins=edges, density=True)[0],
            "reference": np.histogram(r_all[:, j], bins=edges, density=True)[0],
        }

    edges = _edges(r_max, bin_width)
    h_t = _pair_counts(sub_t, element_pairs(numbers), edges)
    h_r = _pair_counts(sub_r, element_pairs(numbers), edges)
    rdf, curves["rdf"] = {}, {"edges": edges, "pairs": {}}
    for p in h_t:
        d_t, d_r = _over_splits(
            h_t[p], h_r[p], splits, lambda x, y: histogram_difference_percent(x.sum(0), y.sum(0))
        )
        rdf[p] = Distance.from_splits(d_t, d_r, "%")
        curves["rdf"]["pairs"][p] = {
            who: h.sum(0)[:-1] / h.sum() / np.diff(edges)
            for who, h in (("test", h_t[p]), ("reference", h_r[p]))
        }

    return EnsembleComparison(
        coordinates=coords,
        per_coordinate=per_coord,
        temperatures=_compare_temperatures(vel_t, vel_r, masses, numbers),
        rdf=rdf,
        rdf_max_test_vs_ref=max((v.test_vs_ref for v in rdf.values()), default=float("nan")),
        rdf_max_ref_vs_ref=max((v.ref_vs_ref for v in rdf.values()), default=float("nan")),
        replicas_per_set=m,
        n_frames=n_frames,
        n_splits=n_splits,
        curves=curves,
    )


def _over_splits(test, ref, splits, dist) -> tuple[np.ndarray, np.ndarray]:
    """test (R_t, ...), ref (R_r, ...) per replica -> (test-vs-ref, ref-vs-ref) per split."""
    d_t = [(dist(test[t], ref[a]) + dist(test[t], ref[b])) / 2 for t, a, b in splits]
    return np.array(d_t), np.array([dist(ref[a], ref[b]) for _, a, b in splits])


def _compare_temperatures(vel_t, vel_r, masses, numbers) -> dict[str, TemperatureComparison]:
    if vel_t is None or vel_r is None:
        return {}
    est_t = element_temperatures(vel_t, masses, numbers)
    est_r = element_temperatures(vel_r, masses, numbers)
    est_t["molecule"] = molecule_temperature(vel_t, masses)
    est_r["molecule"] = molecule_temperature(vel_r, masses)
    out = {}
    for name, t in est_t.items():
        r = est_r[name]
        err = 100.0 * np.hypot(t.stderr / r.mean, t.mean * r.stderr / r.mean**2)
        rel = 100.0 * (t.mean - r.mean) / r.mean
        out[name] = TemperatureComparison(t.mean, t.stderr, r.mean, r.stderr, rel, float(err))
    return out
