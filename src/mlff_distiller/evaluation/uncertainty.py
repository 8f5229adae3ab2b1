"""Calibration of a committee's force uncertainty against its true force error.

A committee of students predicts, per atom, a force uncertainty ``sigma_i`` (eV/Å): the RMS over
members of ``|F_m,i - F_mean,i|`` (``keys.FORCE_UNCERTAINTY``), and per structure the largest
per-atom value (``keys.STRUCTURE_UNCERTAINTY``). The true error is ``F_mean - F_teacher``.

Conventions used throughout:

* **Per component.** ``sigma_i`` is the RMS of a 3-vector deviation, so for an isotropic
  Gaussian error ``E|e_i|^2 = sigma_i^2`` and each Cartesian component has the standard deviation
  ``sigma_i / sqrt(3)``. Coverage, the rescaling factor and the binned calibration are computed
  per force component with that sigma.
* **Per structure.** Two predictions, each paired with the true error of the same reduction:
  the largest per-atom uncertainty ``max_i sigma_i`` against the largest per-atom error
  ``max_i |e_i|`` (``spearman_structure``: does the committee see the worst atom; the quantity
  the active-learning threshold and the teacher fallback use), and the predicted force RMSE
  ``sqrt(mean_i sigma_i^2 / 3)`` against the structure's force RMSE over its 3 n components
  (``spearman_structure_rmse``: does it rank whole structures by their error; the headline
  calibration number, since a structure's force error is its RMSE).
* Coverages are fractions in [0, 1]; forces and sigmas are in eV/Å.

Shapes: per atom ``(n_atoms,)`` or ``(n_atoms, 3)``; ``system_idx`` ``(n_atoms,)`` gives each
atom's structure label (any integers; structures are ordered by sorted label).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.special import erf
from scipy.stats import norm, spearmanr

Z_LEVELS = (1, 2, 3)
SIGMA_FLOOR = 1e-12  # eV/Å: a zero predicted sigma is floored here where it divides


def expected_coverage(z: float | np.ndarray) -> float | np.ndarray:
    """Gaussian probability of ``|e| <= z * sigma``: erf(z / sqrt 2) (0.683, 0.954, 0.997)."""
    return erf(np.asarray(z, dtype=float) / np.sqrt(2.0))


def _check_inputs(
    sigma: np.ndarray, error: np.ndarray, system_idx: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    sigma = np.asarray(sigma, dtype=float)
    error = np.asarray(error, dtype=float)
    system_idx = np.asarray(system_idx)
    n = len(sigma)
    if sigma.ndim != 1:
        raise ValueError(f"predicted_atom_sigma must be (n_atoms,), got {sigma.shape}")
    if error.shape != (n, 3):
        raise ValueError(f"force_error must be ({n}, 3), got {error.shape}")
    if system_idx.shape != (n,):
        raise ValueError(f"system_idx must be ({n},), got {system_idx.shape}")
    if n == 0:
        raise ValueError("no atoms")
    if not np.issubdtype(system_idx.dtype, np.integer):
        raise ValueError("system_idx must hold integers")
    if np.any(sigma < 0) or not np.all(np.isfinite(sigma)) or not np.all(np.isfinite(error)):
        raise ValueError("sigmas must be finite and >= 0 and errors finite")
    return sigma, error, system_idx


def per_structure_values(
    predicted_atom_sigma: np.ndarray, force_error: np.ndarray, system_idx: np.ndarray
) -> dict[str, np.ndarray]:
    """Per-structure reductions, each ``(n_structures,)`` in sorted order of the labels.

    Returns ``labels`` (the structure labels), ``n_atoms``, ``uncertainty_ev_per_a`` (max over
    atoms of sigma_i), ``predicted_rmse_ev_per_a`` (sqrt(mean over atoms of sigma_i^2 / 3), the
    force RMSE the committee predicts), ``max_error_ev_per_a`` (max over atoms of |e_i|) and
    ``rmse_ev_per_a`` (sqrt of the mean over the structure's 3 n_i components of e^2).
    """
    sigma, error, system_idx = _check_inputs(predicted_atom_sigma, force_error, system_idx)
    labels, inv = np.unique(system_idx, return_inverse=True)
    k = len(labels)
    counts = np.bincount(inv, minlength=k)
    unc = np.full(k, -np.inf)
    np.maximum.at(unc, inv, sigma)
    norms = np.linalg.norm(error, axis=1)
    max_err = np.full(k, -np.inf)
    np.maximum.at(max_err, inv, norms)
    sq = np.bincount(inv, weights=np.sum(error**2, axis=1), minlength=k)
    sigma_sq = np.bincount(inv, weights=sigma**2, minlength=k)
    return {
        "labels": labels,
        "n_atoms": counts,
        "uncertainty_ev_per_a": unc,
        "predicted_rmse_ev_per_a": np.sqrt(sigma_sq / (3 * counts)),
        "max_error_ev_per_a": max_err,
        "rmse_ev_per_a": np.sqrt(sq / (3 * counts)),
    }


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation; NaN with fewer than 3 points or a constant input."""
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def normalised_errors(predicted_atom_sigma: np.ndarray, force_error: np.ndarray) -> np.ndarray:
    """``|e_ic| / (sigma_i / sqrt 3)``, shape ``(n_atoms, 3)`` (dimensionless).

    sigma is floored at :data:`SIGMA_FLOOR`, so a zero sigma with a non-zero error gives a huge
    ratio (never covered) and with a zero error gives 0 (covered).
    """
    sigma_c = np.maximum(np.asarray(predicted_atom_sigma, float), SIGMA_FLOOR) / np.sqrt(3.0)
    return np.abs(np.asarray(force_error, float)) / sigma_c[:, None]


def coverage(
    predicted_atom_sigma: np.ndarray, force_error: np.ndarray, z: float | Sequence[float]
) -> np.ndarray:
    """Fraction of force components with ``|e_ic| <= z * sigma_i / sqrt 3``, one per ``z``."""
    r = normalised_errors(predicted_atom_sigma, force_error).ravel()
    return np.array([float(np.mean(r <= zz)) for zz in np.atleast_1d(z)])


def coverage_curve(
    predicted_atom_sigma: np.ndarray, force_error: np.ndarray, n_points: int = 201
) -> tuple[np.ndarray, np.ndarray]:
    """Observed vs expected coverage of central Gaussian intervals.

    For each expected probability ``p`` on a uniform grid over [0, 1] (``n_points``), the
    interval is ``|e| <= z_p sigma_c`` with ``z_p = Phi^-1((1 + p) / 2)``; returns
    ``(p, observed)``, both ``(n_points,)``.
    """
    r = np.sort(normalised_errors(predicted_atom_sigma, force_error).ravel())
    p = np.linspace(0.0, 1.0, n_points)
    z = norm.ppf((1.0 + p) / 2.0)  # 0 .. inf
    observed = np.searchsorted(r, z, side="right") / len(r)
    observed[-1] = 1.0  # z = inf covers everything, including floored sigmas
    return p, observed


def miscalibration_area(predicted_atom_sigma: np.ndarray, force_error: np.ndarray) -> float:
    """Area between the observed-vs-expected coverage curve and the diagonal (0 = calibrated,
    at most 0.5), by the trapezoid rule on :func:`coverage_curve`'s grid."""
    p, obs = coverage_curve(predicted_atom_sigma, force_error)
    gap = np.abs(obs - p)
    return float(np.sum(0.5 * (gap[1:] + gap[:-1]) * np.diff(p)))


def fit_sigma_scale(predicted_atom_sigma: np.ndarray, force_error: np.ndarray) -> float:
    """The factor ``s`` with ``RMS(e_ic / (s sigma_i / sqrt 3)) = 1`` over all components:
    ``s = sqrt(mean((e_ic / (sigma_i / sqrt 3))^2))``; multiply the predicted sigmas by it."""
    r = normalised_errors(predicted_atom_sigma, force_error)
    return float(np.sqrt(np.mean(r**2)))


def binned_calibration(
    predicted_atom_sigma: np.ndarray, force_error: np.ndarray, n_bins: int = 10
) -> dict[str, np.ndarray]:
    """Error against predicted sigma in ``n_bins`` equal-count bins of sigma (per component).

    Per bin: ``rmv_ev_per_a`` = sqrt(mean(sigma_i^2 / 3)) (root mean predicted variance of a
    component), ``rmse_ev_per_a`` = sqrt(mean(e_ic^2)), ``mean_sigma_ev_per_a`` = mean of
    sigma_i / sqrt 3 and ``n_atoms``; all ``(n_bins_used,)`` (empty bins dropped). Calibrated
    sigmas give rmse = rmv.
    """
    sigma = np.asarray(predicted_atom_sigma, float)
    error = np.asarray(force_error, float)
    order = np.argsort(sigma, kind="stable")
    chunks = [c for c in np.array_split(order, max(1, min(n_bins, len(sigma)))) if len(c)]
    return {
        "rmv_ev_per_a": np.array([np.sqrt(np.mean(sigma[c] ** 2) / 3.0) for c in chunks]),
        "rmse_ev_per_a": np.array([np.sqrt(np.mean(error[c] ** 2)) for c in chunks]),
        "mean_sigma_ev_per_a": np.array([np.mean(sigma[c]) / np.sqrt(3.0) for c in chunks]),
        "n_atoms": np.array([len(c) for c in chunks]),
    }


def calibration_summary(
    predicted_atom_sigma: np.ndarray,
    force_error: np.ndarray,
    system_idx: np.ndarray,
    calibration_systems: Sequence[int] | np.ndarray | None = None,
) -> dict[str, float]:
    """Headline calibration numbers of a committee's force uncertainty (all plain floats).

    predicted_atom_sigma: (n_atoms,) eV/Å, per-atom committee uncertainty sigma_i.
    force_error: (n_atoms, 3) eV/Å, committee-mean forces minus teacher forces.
    system_idx: (n_atoms,) integer structure label of each atom.
    calibration_systems: structure labels on which the global factor ``sigma_scale`` is fitted;
        the ``*_rescaled`` numbers are then evaluated on the other structures (held out). None
        (or all structures) fits and evaluates on everything (in-sample).

    Keys (see the module docstring for the conventions):

    * ``n_structures``, ``n_atoms``, ``n_calibration_structures``;
    * ``mean_sigma_ev_per_a`` (mean of sigma_i), ``force_rmse_ev_per_a`` (RMSE over all
      components), ``mean_structure_uncertainty_ev_per_a``, ``mean_structure_max_error_ev_per_a``,
      ``mean_structure_rmse_ev_per_a``;
    * ``spearman_structure`` (max sigma_i vs max per-atom error norm),
      ``spearman_structure_rmse`` (predicted vs true structure force RMSE), ``spearman_atom``
      (sigma_i vs |e_i|);
      NaN when undefined (fewer than 3 points or a constant input);
    * ``coverage_{z}sigma`` for z = 1, 2, 3: fraction of components with
      ``|e_ic| <= z sigma_i / sqrt 3``; ``coverage_{z}sigma_expected``: the Gaussian value;
      ``coverage_{z}sigma_rescaled``: the same with ``sigma_scale * sigma_i``;
    * ``sigma_scale``: ``sqrt(mean((e_ic / (sigma_i / sqrt 3))^2))`` on the calibration set;
    * ``miscalibration_area`` and ``miscalibration_area_rescaled`` (0 .. 0.5).
    """
    sigma, error, system_idx = _check_inputs(predicted_atom_sigma, force_error, system_idx)
    per = per_structure_values(sigma, error, system_idx)
    if calibration_systems is None:
        fit = np.ones(len(sigma), dtype=bool)
    else:
        chosen = np.unique(np.asarray(calibration_systems))
        unknown = np.setdiff1d(chosen, per["labels"])
        if len(chosen) == 0 or len(unknown):
            raise ValueError(f"calibration_systems empty or unknown labels {unknown[:5]}")
        fit = np.isin(system_idx, chosen)
    held = ~fit if not np.all(fit) else fit
    scale = fit_sigma_scale(sigma[fit], error[fit])

    out: dict[str, float] = {
        "n_structures": float(len(per["labels"])),
        "n_atoms": float(len(sigma)),
        "n_calibration_structures": float(len(np.unique(system_idx[fit]))),
        "mean_sigma_ev_per_a": float(np.mean(sigma)),
        "force_rmse_ev_per_a": float(np.sqrt(np.mean(error**2))),
        "mean_structure_uncertainty_ev_per_a": float(np.mean(per["uncertainty_ev_per_a"])),
        "mean_structure_max_error_ev_per_a": float(np.mean(per["max_error_ev_per_a"])),
        "mean_structure_rmse_ev_per_a": float(np.mean(per["rmse_ev_per_a"])),
        "spearman_structure": spearman(per["uncertainty_ev_per_a"], per["max_error_ev_per_a"]),
        "spearman_structure_rmse": spearman(per["predicted_rmse_ev_per_a"], per["rmse_ev_per_a"]),
        "spearman_atom": spearman(sigma, np.linalg.norm(error, axis=1)),
        "sigma_scale": scale,
    }
    raw = coverage(sigma, error, Z_LEVELS)
    rescaled = coverage(scale * sigma[held], error[held], Z_LEVELS)
    for z, c, cr in zip(Z_LEVELS, raw, rescaled):
        out[f"coverage_{z}sigma"] = float(c)
        out[f"coverage_{z}sigma_expected"] = float(expected_coverage(z))
        out[f"coverage_{z}sigma_rescaled"] = float(cr)
    out["miscalibration_area"] = miscalibration_area(sigma, error)
    out["miscalibration_area_rescaled"] = miscalibration_area(scale * sigma[held], error[held])
    return out


def calibration_title(summary: dict[str, float]) -> str:
    """Title of the scatter panel: both structure-level Spearman rhos and the structure count."""
    return (
        f"Spearman ρ: max {summary['spearman_structure']:.3f}, "
        f"RMSE {summary['spearman_structure_rmse']:.3f} "
        f"({int(summary['n_structures'])} structures)"
    )


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_calibration(
    predicted_atom_sigma: np.ndarray,
    force_error: np.ndarray,
    system_idx: np.ndarray,
    path: str | Path,
    calibration_systems: Sequence[int] | np.ndarray | None = None,
    n_bins: int = 10,
) -> tuple[Path, dict[str, float]]:
    """Three-panel calibration PNG at ``path``; returns ``(path, summary)`` where ``summary`` is
    the :func:`calibration_summary` whose numbers the panels quote.

    (a) per-structure predicted uncertainty vs max per-atom error norm (eV/Å, log-log, y = x,
    Spearman rho in the title); (b) binned calibration: component RMSE vs root mean predicted
    component variance in ``n_bins`` equal-count bins of sigma, raw and rescaled by
    ``sigma_scale``, with y = x; (c) observed vs expected coverage, raw and rescaled, with the
    1/2/3 sigma points marked. Inputs as for :func:`calibration_summary`.
    """
    sigma, error, system_idx = _check_inputs(predicted_atom_sigma, force_error, system_idx)
    summary = calibration_summary(sigma, error, system_idx, calibration_systems)
    per = per_structure_values(sigma, error, system_idx)
    scale = summary["sigma_scale"]
    plt = _pyplot()
    from matplotlib.ticker import NullFormatter

    fig, (ax_a, ax_b, ax_c) = plt.subplots(1, 3, figsize=(13.5, 4.5), dpi=120)

    x, y = per["uncertainty_ev_per_a"], per["max_error_ev_per_a"]
    top = float(np.max(np.concatenate([x, y])))
    floor = 1e-3 * top if top > 0 else 1.0  # zeros cannot sit on a log axis
    x, y = np.maximum(x, floor), np.maximum(y, floor)
    ax_a.scatter(x, y, s=6, alpha=0.5, rasterized=True)
    lo, hi = min(x.min(), y.min()), max(x.max(), y.max())
    ax_a.plot([lo, hi], [lo, hi], color="k", lw=0.8, label="y = x")
    ax_a.set_xscale("log")
    ax_a.set_yscale("log")
    ax_a.set_xlabel("predicted structure uncertainty, max σ_i (eV/Å)")
    ax_a.set_ylabel("true structure error, max |ΔF_i| (eV/Å)")
    ax_a.set_title(calibration_title(summary), fontsize=10)
    ax_a.legend(fontsize=8)

    for factor, label, marker in ((1.0, "raw", "o"), (scale, f"× {scale:.2f}", "s")):
        b = binned_calibration(factor * sigma, error, n_bins)
        ax_b.plot(b["rmv_ev_per_a"], b["rmse_ev_per_a"], marker=marker, ms=4, label=label)
    b = binned_calibration(sigma, error, n_bins)
    vals = np.concatenate([b["rmv_ev_per_a"], scale * b["rmv_ev_per_a"], b["rmse_ev_per_a"]])
    vals = vals[vals > 0]
    if len(vals):
        ax_b.plot([vals.min(), vals.max()], [vals.min(), vals.max()], "k", lw=0.8, label="y = x")
    ax_b.set_xscale("log")
    ax_b.set_yscale("log")
    for axis in (ax_b.xaxis, ax_b.yaxis):  # minor labels overlap over a short log range
        axis.set_minor_formatter(NullFormatter())
    ax_b.set_xlabel("RMS predicted σ per component, σ_i/√3 (eV/Å)")
    ax_b.set_ylabel("RMSE of force components in bin (eV/Å)")
    ax_b.set_title(f"binned calibration, scale s = {scale:.3f}", fontsize=10)
    ax_b.legend(fontsize=8)

    for factor, label in ((1.0, "raw"), (scale, f"σ × {scale:.2f}")):
        p, obs = coverage_curve(factor * sigma, error)
        ax_c.plot(p, obs, label=label)
    z = np.array(Z_LEVELS)
    ax_c.scatter(
        expected_coverage(z),
        [summary[f"coverage_{k}sigma"] for k in Z_LEVELS],
        color="C0",
        zorder=3,
        s=15,
    )
    ax_c.plot([0, 1], [0, 1], "k", lw=0.8, label="ideal")
    ax_c.set_xlabel("expected coverage (Gaussian)")
    ax_c.set_ylabel("observed coverage")
    ax_c.set_title(
        f"miscalibration area {summary['miscalibration_area']:.3f} "
        f"(rescaled {summary['miscalibration_area_rescaled']:.3f})",
        fontsize=10,
    )
    ax_c.set_aspect("equal")
    ax_c.legend(fontsize=8)

    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path, summary


def first_exceedance_fs(
    times_fs: np.ndarray, structure_uncertainty: np.ndarray, threshold: float
) -> np.ndarray:
    """First time (fs) each replica's uncertainty exceeds ``threshold`` (eV/Å), NaN if never.

    times_fs: (n_frames,); structure_uncertainty: (n_frames,) or (n_frames, n_replicas).
    Returns (n_replicas,) (length 1 for a 1-D input).
    """
    times = np.asarray(times_fs, dtype=float)
    unc = np.asarray(structure_uncertainty, dtype=float)
    unc = unc[:, None] if unc.ndim == 1 else unc
    if unc.ndim != 2 or unc.shape[0] != len(times):
        raise ValueError(f"uncertainty must be ({len(times)},) or ({len(times)}, n_replicas)")
    above = unc > threshold
    first = np.argmax(above, axis=0)
    return np.where(above.any(axis=0), times[first], np.nan)


def uncertainty_along_md(
    times_fs: np.ndarray,
    structure_uncertainty: np.ndarray,
    threshold: float,
    path: str | Path,
    labels: Sequence[str] | None = None,
    log_y: bool = False,
) -> Path:
    """PNG at ``path`` of the committee's structure uncertainty (eV/Å) against MD time (fs).

    times_fs: (n_frames,); structure_uncertainty: (n_frames,) or (n_frames, n_replicas), one
    line per replica (``labels`` name them); ``threshold`` (eV/Å) is drawn as a dashed line and
    each replica's first crossing (:func:`first_exceedance_fs`) is marked.
    """
    times = np.asarray(times_fs, dtype=float)
    unc = np.asarray(structure_uncertainty, dtype=float)
    unc = unc[:, None] if unc.ndim == 1 else unc
    crossings = first_exceedance_fs(times, unc, threshold)
    n_rep = unc.shape[1]
    if labels is not None and len(labels) != n_rep:
        raise ValueError(f"{len(labels)} labels for {n_rep} replicas")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.8), dpi=120)
    for r in range(n_rep):
        label = labels[r] if labels is not None else (f"replica {r}" if n_rep > 1 else None)
        (line,) = ax.plot(times, unc[:, r], lw=1.0, label=label)
        if np.isfinite(crossings[r]):
            i = int(np.argmax(unc[:, r] > threshold))
            ax.plot(times[i], unc[i, r], "o", color=line.get_color(), ms=4)
    ax.axhline(threshold, color="k", ls="--", lw=0.8, label=f"threshold {threshold:.3g} eV/Å")
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel("time (fs)")
    ax.set_ylabel("structure force uncertainty (eV/Å)")
    n_cross = int(np.sum(np.isfinite(crossings)))
    ax.set_title(f"{n_cross}/{n_rep} trajectories cross the threshold", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
