"""k-step trainer: learns, resumes to the same weights as an uninterrupted run, transfer
learning keeps frozen layers fixed."""

import pytest
import torch

from mlff_distiller.kstep.dataset import KStepWindows, build_windows
from mlff_distiller.models.io import load_model
from mlff_distiller.training.kstep_trainer import KStepTrainConfig, train_kstep

SMALL = {"hidden": 16, "n_layers": 2, "n_vectors": 4, "n_rbf": 8, "cutoff": 5.0}


@pytest.fixture(scope="module")
def windows(gaff2_trajectories, tmp_path_factory):
    path = tmp_path_factory.mktemp("kstep_w") / "w.h5"
    build_windows(list(gaff2_trajectories.values()), path, ks=(4,), stride=4)
    return (
        KStepWindows.from_file(path, "train", augment_rotations=True),
        KStepWindows.from_file(path, "val"),
    )


def _cfg(tmp_path, **kw):
    base = dict(out_dir=str(tmp_path), model=SMALL, epochs=2, batch_size=8, lr=3e-3, warmup_steps=2)
    return KStepTrainConfig(**{**base, **kw})


def test_training_lowers_the_loss_and_saves_a_loadable_model(windows, tmp_path):
    train, val = windows
    res = train_kstep(_cfg(tmp_path, epochs=4), train, val)
    first, last = res.history[0], res.history[-1]
    assert last["train_loss"] < first["train_loss"]
    assert "val_loss" in last and res.epochs_done == 4
    model = load_model(res.best_model)
    assert model.architecture == "egnn"


def test_resume_matches_an_uninterrupted_run(windows, tmp_path):
    train, val = windows
    straight = train_kstep(_cfg(tmp_path / "a", epochs=2), train, val)
    train_kstep(_cfg(tmp_path / "b", epochs=2), train, val, stop_after_epochs=1)  # "killed"
    resumed = train_kstep(_cfg(tmp_path / "b", epochs=2), train, val, resume=True)
    assert resumed.epochs_done == 2
    a = load_model(tmp_path / "a" / "checkpoint").state_dict()
    b = load_model(tmp_path / "b" / "checkpoint").state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5)
    assert straight.history[-1]["train_loss"] == pytest.approx(
        resumed.history[-1]["train_loss"], rel=1e-5
    )


def test_transfer_learning_freezes_first_layers(windows, tmp_path):
    train, val = windows
    base = train_kstep(_cfg(tmp_path / "mm", epochs=1, architecture="transformer_egnn"), train)
    before = load_model(base.best_model).state_dict()
    tuned = train_kstep(
        _cfg(tmp_path / "qm", epochs=1, init_from=str(base.best_model), freeze_layers=1, lr=1e-3),
        train,
        val,
    )
    after = load_model(tuned.best_model).state_dict()
    assert torch.equal(before["layers.0.phi_e.0.0.weight"], after["layers.0.phi_e.0.0.weight"])
    assert torch.equal(before["attention.0.qkv.weight"], after["attention.0.qkv.weight"])
    assert not torch.equal(before["layers.1.phi_e.0.0.weight"], after["layers.1.phi_e.0.0.weight"])
