"""Real training runs on rMD17 ethanol labels with a tiny PaiNN: it learns, it is reproducible,
the exported safetensors model equals the checkpoint, checkpoints need no pickle."""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from mlff_distiller import keys
from mlff_distiller.training.config import TrainConfig
from mlff_distiller.training.trainer import build_model, load_checkpoint, train

TINY = dict(
    train_size=150, val_size=50, hidden=32, n_interactions=2, n_rbf=12, max_epochs=8,
    batch_size=10, warmup_steps=10, lr=3e-3, ema_decay=0.9, patience=0, progress_bar=False,
    weight_decay=0.0,  # the autograd-vs-analytical curve test: no decay term to amplify rounding
)


@pytest.fixture(scope="module")
def two_runs(ethanol_h5, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    results = []
    for name in ("a", "b"):
        cfg = TrainConfig(data=str(ethanol_h5), out=str(root / name), seed=7, **TINY)
        results.append((cfg, train(cfg)))
    return results


def test_training_lowers_val_force_error(two_runs, ethanol_h5, val_curve):
    from mlff_distiller.data.hdf5 import Dataset

    cfg, result = two_runs[0]
    curve = val_curve(Path(cfg.out))
    assert len(curve) == cfg.max_epochs
    with Dataset(ethanol_h5) as ds:
        forces = ds.get_batch(np.arange(len(ds)), labels=[keys.FORCES]).labels[keys.FORCES]
    zero_model_mae = float(forces.abs().mean()) * 1000  # meV/Å of predicting F = 0
    assert result.best_val_force_mae == pytest.approx(min(curve), rel=1e-5)
    assert result.best_val_force_mae < 0.5 * curve[0]
    assert result.best_val_force_mae < 0.3 * zero_model_mae
    # the training RMSE is logged once per epoch (summed over the steps, not per-step logs)
    with next(Path(cfg.out).glob("logs/version_*/metrics.csv")).open() as fh:
        train_rmse = [float(r["train_force_rmse_epoch"]) for r in csv.DictReader(fh)
                      if r["train_force_rmse_epoch"]]
    assert len(train_rmse) == cfg.max_epochs and train_rmse[-1] < 0.5 * train_rmse[0]


def test_same_seed_same_run(two_runs, val_curve):
    (cfg_a, a), (cfg_b, b) = two_runs
    assert val_curve(Path(cfg_a.out)) == val_curve(Path(cfg_b.out))
    wa = load_checkpoint(a.best_checkpoint)["state_dict"]
    wb = load_checkpoint(b.best_checkpoint)["state_dict"]
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=0)


def test_autograd_training_follows_the_analytical_run(two_runs, tmp_path, val_curve):
    """The same run with autograd's double backward for the force loss (instead of the default
    hand-derived backward) follows the same validation curve: the gradients are the same up to
    float32 rounding, which the 8 epochs only slightly amplify."""
    cfg_a, _ = two_runs[0]
    cfg = TrainConfig(**{**cfg_a.to_dict(), "out": str(tmp_path / "autograd"),
                         "force_method": "autograd"})
    train(cfg)
    analytical, autograd = val_curve(Path(cfg_a.out)), val_curve(Path(cfg.out))
    assert cfg_a.force_method == "analytical" and len(autograd) == len(analytical)
    np.testing.assert_allclose(autograd, analytical, rtol=2e-3)


def test_exported_model_equals_best_checkpoint(two_runs, ethanol_h5):
    from mlff_distiller.data.hdf5 import Dataset
    from mlff_distiller.models.io import load_model

    cfg, result = two_runs[0]
    exported = load_model(result.model_path)
    ckpt = load_checkpoint(result.best_checkpoint)  # weights_only=True: no pickle needed
    ema_state = {
        k.removeprefix("ema.module."): v
        for k, v in ckpt["state_dict"].items()
        if k.startswith("ema.module.")
    }
    reference = build_model(cfg)
    reference.load_state_dict(ema_state)
    with Dataset(ethanol_h5) as ds:
        batch = ds.get_batch(np.arange(200, 232))
    e1 = exported.energy_and_forces(batch, method="autograd")
    e2 = reference.energy_and_forces(batch, method="autograd")
    torch.testing.assert_close(e1[keys.ENERGY], e2[keys.ENERGY], rtol=0, atol=1e-6)
    torch.testing.assert_close(e1[keys.FORCES], e2[keys.FORCES], rtol=0, atol=1e-6)
    # and it learnt the scale of the labels: energies within 0.1 eV/atom of the references
    err = (e1[keys.ENERGY] - batch.labels[keys.ENERGY]).abs() / 9
    assert float(err.max()) < 0.1



def test_last_checkpoint_follows_every_epoch(ethanol_h5, tmp_path):
    """last.ckpt is the final epoch even when validation got worse (Lightning's own save_last
    writes it only with a better checkpoint): a kill loses at most one epoch."""
    cfg = TrainConfig(
        data=str(ethanol_h5), out=str(tmp_path / "diverge"), train_size=60, val_size=20,
        hidden=8, n_interactions=1, n_rbf=6, max_epochs=5, batch_size=10, warmup_steps=1,
        lr=0.5, grad_clip=0.0, ema_decay=0.0, patience=0, progress_bar=False, seed=1,
    )  # fmt: skip  (a learning rate that makes validation worse after the first epochs)
    result = train(cfg)
    last = load_checkpoint(Path(cfg.out) / "checkpoints" / "last.ckpt")
    best = load_checkpoint(result.best_checkpoint)
    assert last["epoch"] == cfg.max_epochs - 1
    assert last["global_step"] == result.global_step
    assert best["epoch"] < last["epoch"]  # the case Lightning's save_last gets wrong


def test_warm_start_continues_from_the_saved_model(two_runs, tmp_path, val_curve):
    """``init_from``: the run starts from the saved weights: its first validation error is that
    of the saved model (a fresh run starts far above), and another architecture is refused."""
    from mlff_distiller.models.io import ModelFileError

    cfg, result = two_runs[0]
    warm = TrainConfig(**{**cfg.to_dict(), "out": str(tmp_path / "warm"), "max_epochs": 1,
                          "lr": 1e-9, "warmup_steps": 0, "init_from": result.model_path})
    train(warm)
    first = val_curve(tmp_path / "warm")[0]
    assert first == pytest.approx(result.best_val_force_mae, rel=0.02)
    assert first < 0.5 * val_curve(Path(cfg.out))[0]
    other = TrainConfig(**{**warm.to_dict(), "hidden": 16, "out": str(tmp_path / "other")})
    with pytest.raises(ModelFileError, match="architecture"):
        train(other)
