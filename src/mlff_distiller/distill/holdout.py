"""A committee scored on held-out teacher frames: force and energy errors and the calibration of
its uncertainty (see :mod:`mlff_distiller.evaluation.uncertainty` for the conventions)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mlff_distiller import keys


def holdout_predictions(model_path: Path, holdout: Path) -> dict[str, np.ndarray]:
    """The committee on every frame of ``holdout``: per-atom sigma ``sigma`` (n_atoms,) and force
    error ``error`` (n_atoms, 3) eV/Å, ``system_idx`` (n_atoms,), and the energy error per atom
    ``energy_error_per_atom`` (n_frames,) eV."""
    from mlff_distiller.data.hdf5 import Dataset
    from mlff_distiller.models.io import load_model

    model = load_model(model_path)
    sigma, error, system, energy = [], [], [], []
    offset = 0
    with Dataset(holdout) as ds:
        for start in range(0, len(ds), 64):
            batch = ds.get_batch(np.arange(start, min(start + 64, len(ds))))
            out = model.energy_and_forces(batch)
            sigma.append(out[keys.FORCE_UNCERTAINTY].detach().double().numpy())
            error.append((out[keys.FORCES] - batch.labels[keys.FORCES]).detach().double().numpy())
            system.append(batch.system_idx.numpy() + offset)
            offset += batch.n_systems
            de = (out[keys.ENERGY] - batch.labels[keys.ENERGY]).detach().double()
            energy.append((de / batch.atoms_per_system.double()).numpy())
    return {
        "sigma": np.concatenate(sigma),
        "error": np.concatenate(error),
        "system_idx": np.concatenate(system),
        "energy_error_per_atom": np.concatenate(energy),
    }


def score_holdout(model_path: Path, holdout: Path) -> dict:
    """Committee-mean errors on the held-out teacher MD and the rank correlations of predicted
    and true per-structure force errors.

    ``holdout_force_mae_mev`` (meV/Å, over all components), ``holdout_energy_mae_mev_per_atom``,
    ``holdout_spearman`` (predicted vs true structure force RMSE) and ``holdout_spearman_max``
    (largest per-atom sigma vs largest per-atom error)."""
    from mlff_distiller.evaluation.uncertainty import per_structure_values, spearman

    pred = holdout_predictions(model_path, holdout)
    per = per_structure_values(pred["sigma"], pred["error"], pred["system_idx"])
    return {
        "holdout_force_mae_mev": 1000 * float(np.mean(np.abs(pred["error"]))),
        "holdout_energy_mae_mev_per_atom": 1000
        * float(np.mean(np.abs(pred["energy_error_per_atom"]))),
        "holdout_spearman": spearman(per["predicted_rmse_ev_per_a"], per["rmse_ev_per_a"]),
        "holdout_spearman_max": spearman(per["uncertainty_ev_per_a"], per["max_error_ev_per_a"]),
    }
