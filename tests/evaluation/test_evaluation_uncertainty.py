"""Calibration metrics of committee force uncertainties against analytic expectations.

Synthetic errors: per atom a predicted sigma_i (eV/Å); each force component is drawn from
N(0, (k sigma_i / sqrt 3)^2), so k = 1 is a calibrated committee and k = 2 an overconfident one.
"""

import numpy as np
import pytest
from matplotlib.image import imread
from scipy.integrate import quad
from scipy.stats import norm

from mlff_distiller.evaluation.uncertainty import (
    binned_calibration,
    calibration_summary,
    calibration_title,
    coverage,
    expected_coverage,
    first_exceedance_fs,
    fit_sigma_scale,
    per_structure_values,
    plot_calibration,
    uncertainty_along_md,
)

N_ATOMS = 4000
ATOMS_PER_STRUCTURE = 4
GAUSS = {1: 0.6827, 2: 0.9545, 3: 0.9973}


def synthetic(k: float = 1.0, seed: int = 0, n_atoms: int = N_ATOMS):
    """sigma (n,) log-uniform in [0.02, 0.5] eV/Å, errors (n, 3) with std k sigma / sqrt 3,
    structure labels (n,) in blocks of ATOMS_PER_STRUCTURE."""
    rng = np.random.default_rng(seed)
    sigma = np.exp(rng.uniform(np.log(0.02), np.log(0.5), n_atoms))
    error = rng.normal(size=(n_atoms, 3)) * (k * sigma / np.sqrt(3.0))[:, None]
    system_idx = np.arange(n_atoms) // ATOMS_PER_STRUCTURE
    return sigma, error, system_idx


def is_png(path, min_bytes=10_000):
    data = path.read_bytes()
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > min_bytes


# --- reductions by hand -------------------------------------------------------------------------


def test_per_structure_reduction_by_hand():
    # three structures with unsorted labels 5, 2, 9 (results come in label order 2, 5, 9)
    sigma = np.array([0.1, 0.2, 0.05, 0.3, 0.4, 0.1])
    error = np.array(
        [
            [0.3, 0.4, 0.0],  # |e| = 0.5
            [0.0, 0.0, 0.1],  # 0.1
            [0.1, 0.0, 0.0],  # 0.1
            [0.2, 0.2, 0.1],  # 0.3
            [0.0, 0.0, 0.0],  # 0
            [0.6, 0.0, 0.8],  # 1.0
        ]
    )
    system_idx = np.array([5, 5, 2, 9, 9, 9])
    per = per_structure_values(sigma, error, system_idx)
    np.testing.assert_array_equal(per["labels"], [2, 5, 9])
    np.testing.assert_array_equal(per["n_atoms"], [1, 2, 3])
    np.testing.assert_allclose(per["uncertainty_ev_per_a"], [0.05, 0.2, 0.4])
    np.testing.assert_allclose(per["max_error_ev_per_a"], [0.1, 0.5, 1.0])
    rmse = np.sqrt([0.01 / 3, (0.09 + 0.16 + 0.01) / 6, (0.04 + 0.04 + 0.01 + 0.36 + 0.64) / 9])
    np.testing.assert_allclose(per["rmse_ev_per_a"], rmse)
    predicted = np.sqrt([0.0025 / 3, (0.01 + 0.04) / 6, (0.09 + 0.16 + 0.01) / 9])
    np.testing.assert_allclose(per["predicted_rmse_ev_per_a"], predicted)
    # a sigma equal to each atom's error norm predicts every structure's RMSE exactly
    exact = per_structure_values(np.linalg.norm(error, axis=1), error, system_idx)
    np.testing.assert_allclose(exact["predicted_rmse_ev_per_a"], rmse)

    s = calibration_summary(sigma, error, system_idx)
    assert s["n_structures"] == 3.0 and s["n_atoms"] == 6.0
    assert s["mean_structure_uncertainty_ev_per_a"] == pytest.approx((0.05 + 0.2 + 0.4) / 3)
    assert s["mean_structure_max_error_ev_per_a"] == pytest.approx(1.6 / 3)
    assert s["mean_structure_rmse_ev_per_a"] == pytest.approx(rmse.mean())
    assert s["mean_sigma_ev_per_a"] == pytest.approx(1.15 / 6)
    assert s["force_rmse_ev_per_a"] == pytest.approx(np.sqrt(1.36 / 18))
    # uncertainty and both error reductions rank the structures identically
    assert s["spearman_structure"] == pytest.approx(1.0)
    assert s["spearman_structure_rmse"] == pytest.approx(1.0)
    assert all(isinstance(v, float) for v in s.values())


def test_coverage_and_scale_by_hand():
    # sigma_i = sqrt(3) -> component sigma 1; components |e| = .5, 1.5, 2.5, .5, 3.5, 0
    sigma = np.full(2, np.sqrt(3.0))
    error = np.array([[0.5, 1.5, 2.5], [-0.5, -3.5, 0.0]])
    np.testing.assert_allclose(coverage(sigma, error, [1, 2, 3]), [3 / 6, 4 / 6, 5 / 6])
    assert fit_sigma_scale(sigma, error) == pytest.approx(np.sqrt(21.25 / 6))
    np.testing.assert_allclose(
        expected_coverage([1, 2, 3]), [0.682689, 0.954500, 0.997300], atol=1e-6
    )


def test_zero_sigma_and_constant_inputs():
    sigma = np.array([0.0, 0.0, 0.0])
    error = np.zeros((3, 3))
    s = calibration_summary(sigma, error, np.array([0, 1, 2]))
    assert s["coverage_1sigma"] == 1.0  # |0| <= 0 is covered
    assert np.isnan(s["spearman_structure"]) and np.isnan(s["spearman_atom"])


# --- synthetic committees -----------------------------------------------------------------------


def test_calibrated_gaussian_errors():
    s = calibration_summary(*synthetic(k=1.0))
    for z, expect in GAUSS.items():
        assert s[f"coverage_{z}sigma_expected"] == pytest.approx(expect, abs=1e-4)
        assert abs(s[f"coverage_{z}sigma"] - expect) < 0.015
        assert abs(s[f"coverage_{z}sigma_rescaled"] - expect) < 0.015
    assert s["sigma_scale"] == pytest.approx(1.0, rel=0.03)
    assert s["miscalibration_area"] < 0.015
    # E|e_i|^2 = sigma_i^2: the component RMSE is the RMS of sigma over sqrt 3
    sigma, error, _ = synthetic(k=1.0)
    assert s["force_rmse_ev_per_a"] == pytest.approx(np.sqrt(np.mean(sigma**2) / 3), rel=0.03)
    # sigma predicts the size of the error: clearly positive rank correlation
    assert s["spearman_atom"] > 0.4 and s["spearman_structure"] > 0.4


def test_binned_calibration_follows_diagonal_when_calibrated():
    sigma, error, _ = synthetic(k=1.0)
    b = binned_calibration(sigma, error, n_bins=8)
    assert b["n_atoms"].sum() == N_ATOMS and len(b["n_atoms"]) == 8
    np.testing.assert_allclose(b["rmse_ev_per_a"] / b["rmv_ev_per_a"], 1.0, atol=0.1)
    assert np.all(np.diff(b["rmv_ev_per_a"]) > 0)


def test_overconfident_errors_twice_sigma():
    s = calibration_summary(*synthetic(k=2.0, seed=1))
    assert s["sigma_scale"] == pytest.approx(2.0, rel=0.03)
    # under-coverage before rescaling: P(|N(0, 4)| <= z) = 2 Phi(z / 2) - 1
    for z, expect in GAUSS.items():
        raw = s[f"coverage_{z}sigma"]
        assert raw < expect - 0.02
        assert raw == pytest.approx(2 * norm.cdf(z / 2) - 1, abs=0.015)
        assert abs(s[f"coverage_{z}sigma_rescaled"] - expect) < 0.015
    # miscalibration area against the analytic curve |2 Phi(z_p / 2) - 1 - p|
    area, _ = quad(lambda p: abs(2 * norm.cdf(norm.ppf((1 + p) / 2) / 2) - 1 - p), 0, 1)
    assert s["miscalibration_area"] == pytest.approx(area, abs=0.01)
    assert area > 0.15
    assert s["miscalibration_area_rescaled"] < 0.015


def test_scale_fitted_on_calibration_subset_transfers_to_held_out():
    # twice the atoms, so each half is as large as the other tests' samples
    sigma, error, system_idx = synthetic(k=2.0, seed=2, n_atoms=2 * N_ATOMS)
    n_struct = system_idx.max() + 1
    calib = np.arange(0, n_struct, 2)  # even structures fit, odd ones are held out
    s = calibration_summary(sigma, error, system_idx, calibration_systems=calib)
    assert s["n_calibration_structures"] == float(len(calib))
    fit = np.isin(system_idx, calib)
    assert s["sigma_scale"] == pytest.approx(fit_sigma_scale(sigma[fit], error[fit]))
    assert s["sigma_scale"] == pytest.approx(2.0, rel=0.04)
    held_cov = coverage(s["sigma_scale"] * sigma[~fit], error[~fit], [1, 2, 3])
    for z, c in zip((1, 2, 3), held_cov):
        assert s[f"coverage_{z}sigma_rescaled"] == pytest.approx(c)
        assert abs(c - GAUSS[z]) < 0.02  # scale fitted on the other half: a little more slack
    with pytest.raises(ValueError, match="unknown"):
        calibration_summary(sigma, error, system_idx, calibration_systems=[n_struct + 5])


def test_noise_sigma_has_no_rank_correlation():
    rng = np.random.default_rng(3)
    _, error, system_idx = synthetic(k=1.0, seed=4)
    noise_sigma = np.exp(rng.uniform(np.log(0.02), np.log(0.5), N_ATOMS))  # independent
    s = calibration_summary(noise_sigma, error, system_idx)
    assert abs(s["spearman_atom"]) < 0.1
    assert abs(s["spearman_structure"]) < 0.1
    assert abs(s["spearman_structure_rmse"]) < 0.1


def test_monotone_sigma_has_rank_correlation_one():
    _, error, system_idx = synthetic(k=1.0, seed=5)
    sigma = 0.05 + 2.0 * np.linalg.norm(error, axis=1) ** 1.5  # increasing in |e_i|
    s = calibration_summary(sigma, error, system_idx)
    assert s["spearman_atom"] == pytest.approx(1.0, abs=1e-12)
    # max over atoms commutes with an increasing map: exact at structure level too
    assert s["spearman_structure"] == pytest.approx(1.0, abs=1e-12)
    assert s["spearman_structure_rmse"] > 0.8


def test_input_validation():
    sigma, error, system_idx = synthetic(n_atoms=8)
    with pytest.raises(ValueError, match="force_error"):
        calibration_summary(sigma, error[:, :2], system_idx)
    with pytest.raises(ValueError, match="system_idx"):
        calibration_summary(sigma, error, system_idx[:-1])
    with pytest.raises(ValueError, match="integers"):
        calibration_summary(sigma, error, system_idx.astype(float))
    with pytest.raises(ValueError, match=">= 0"):
        calibration_summary(-sigma, error, system_idx)


# --- plots --------------------------------------------------------------------------------------


def test_plot_calibration_writes_png_with_summary_numbers(tmp_path):
    _, error, system_idx = synthetic(k=1.0, seed=5)
    sigma = 0.05 + 2.0 * np.linalg.norm(error, axis=1) ** 1.5
    path, summary = plot_calibration(sigma, error, system_idx, tmp_path / "calibration.png")
    assert path.exists() and is_png(path)
    image = imread(path)
    assert image.shape[1] > 2 * image.shape[0]  # three panels side by side
    assert image[..., :3].std() > 0.05  # not a blank canvas
    # the numbers quoted on the figure are those of calibration_summary
    assert summary == calibration_summary(sigma, error, system_idx)
    title = calibration_title(summary)
    assert title.startswith("Spearman ρ: max 1.000, RMSE ")
    assert f"{summary['spearman_structure_rmse']:.3f} ({N_ATOMS // 4} structures)" in title

    sigma_cal, error_cal, idx_cal = synthetic(k=2.0, seed=1)
    _, s2 = plot_calibration(sigma_cal, error_cal, idx_cal, tmp_path / "cal2.png")
    assert s2["sigma_scale"] == pytest.approx(2.0, rel=0.03)
    assert f"{s2['spearman_structure']:.3f}" in calibration_title(s2)


def test_uncertainty_along_md(tmp_path):
    times = np.arange(0, 1000, 10.0)  # fs
    flat = 0.05 + 0.01 * np.sin(times / 50)  # never above 0.1 eV/Å
    rising = 0.05 + 1e-4 * times  # above 0.1 from t > 500 fs: first frame 510 fs
    unc = np.stack([flat, rising], axis=1)
    crossing = first_exceedance_fs(times, unc, threshold=0.1)
    assert np.isnan(crossing[0]) and crossing[1] == pytest.approx(510.0)
    np.testing.assert_allclose(first_exceedance_fs(times, rising, 0.1), [510.0])

    path = uncertainty_along_md(times, unc, 0.1, tmp_path / "md.png", labels=["a", "b"])
    assert is_png(path, min_bytes=5_000)
    assert imread(path)[..., :3].std() > 0.05
    single = uncertainty_along_md(times, rising, 0.1, tmp_path / "md1.png", log_y=True)
    assert is_png(single, min_bytes=5_000)
    with pytest.raises(ValueError):
        uncertainty_along_md(times, unc[:-1], 0.1, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="labels"):
        uncertainty_along_md(times, unc, 0.1, tmp_path / "bad.png", labels=["a"])
