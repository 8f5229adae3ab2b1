"""k-step trainer (Lightning): learns, exports a loadable best model, resumes to the same weights
as an uninterrupted run, transfer learning keeps frozen layers fixed, checkpoints are never
unpickled."""

import pickle

import pytest
import torch

from mlff_distiller.kstep.dataset import KStepWindows, build_windows
from mlff_distiller.models.io import load_model
from mlff_distiller.training.kstep_datamodule import KStepDataModule
from mlff_distiller.training.kstep_trainer import KStepTrainConfig, fit_kstep, train_kstep
from mlff_distiller.training.trainer import load_checkpoint

SMALL = {"hidden": 16, "n_layers": 2, "n_vectors": 4, "n_rbf": 8, "cutoff": 5.0}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Networks this small gain nothing from intra-op threads; on a machine with a busy core
    the threads spin-wait for each other and a 0.2 s run takes 10 s."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


def _last(run_dir):
    return load_checkpoint(run_dir / "checkpoint" / "last.ckpt")


def test_training_lowers_the_loss_and_exports_the_best_model(windows, tmp_path):
    train, val = windows
    res, module = fit_kstep(_cfg(tmp_path, epochs=4), train, val)
    assert res.epochs_done == 4 and [r["epoch"] for r in res.history] == [1, 2, 3, 4]
    first, last = res.history[0], res.history[-1]
    assert last["train_loss"] < 0.9 * first["train_loss"]
    assert "val_loss" in last and "train_bond" in last and last["lr"] > 0
    # the best checkpoint is the epoch of lowest validation loss; best/ holds its weights
    assert res.best_val_loss == min(r["val_loss"] for r in res.history)
    best = load_checkpoint(tmp_path / "checkpoint" / "best.ckpt")
    assert best["kstep"]["history"][-1]["val_loss"] == res.best_val_loss
    model = load_model(res.best_model)
    assert model.architecture == "egnn" and res.best_model == tmp_path / "best"
    inp, _ = next(val.batches(8))
    with torch.no_grad():
        expected = module.eval_model().eval()(inp)
        got = model(inp)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=0)


def test_resume_matches_an_uninterrupted_run(windows, tmp_path):
    train, val = windows
    kw = dict(epochs=2, accumulate=2, noise_positions=0.01, noise_velocities=0.002, ema_decay=0.9)
    straight = train_kstep(_cfg(tmp_path / "a", **kw), train, val)
    killed = train_kstep(_cfg(tmp_path / "b", **kw), train, val, stop_after_epochs=1)
    assert killed.epochs_done == 1 and len(killed.history) == 1
    resumed = train_kstep(_cfg(tmp_path / "b", **kw), train, val, resume=True)
    assert resumed.epochs_done == 2
    assert [r["epoch"] for r in resumed.history] == [1, 2]  # epoch 1 is not trained again
    assert resumed.history[0] == killed.history[0]
    assert resumed.history[-1]["train_loss"] == pytest.approx(
        straight.history[-1]["train_loss"], rel=1e-5
    )
    a, b = _last(tmp_path / "a"), _last(tmp_path / "b")
    assert a["global_step"] == b["global_step"] == 2 * 2  # 4 batches / accumulate 2, 2 epochs
    assert int(a["state_dict"]["ema.n_updates"]) == a["global_step"]  # once per optimiser step
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(value, b["state_dict"][key], atol=1e-6, rtol=1e-5)
    opt_a, opt_b = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    for index, state in opt_a.items():
        torch.testing.assert_close(state["exp_avg_sq"], opt_b[index]["exp_avg_sq"])
    assert a["lr_schedulers"][0]["last_epoch"] == b["lr_schedulers"][0]["last_epoch"]
    # resuming a finished run trains nothing
    again = train_kstep(_cfg(tmp_path / "b", **kw), train, val, resume=True)
    assert again.epochs_done == 2 and again.history == resumed.history
    assert _last(tmp_path / "b")["global_step"] == b["global_step"]


def test_transfer_learning_freezes_first_layers(windows, tmp_path):
    train, val = windows
    base = train_kstep(_cfg(tmp_path / "mm", epochs=1, architecture="transformer_egnn"), train)
    assert "val_loss" not in base.history[-1]  # without validation the training loss is kept
    assert base.best_val_loss == base.history[-1]["train_loss"]
    before = load_model(base.best_model).state_dict()
    tuned = train_kstep(
        _cfg(tmp_path / "qm", epochs=1, init_from=str(base.best_model), freeze_layers=1, lr=1e-3),
        train,
        val,
    )
    after = load_model(tuned.best_model).state_dict()
    frozen = ("embed.", "vec_in.", "layers.0.", "attention.0.")
    assert any(name.startswith("attention.0.") for name in before)
    for name, value in before.items():
        if name.startswith(frozen):
            assert torch.equal(value, after[name]), name
    assert not torch.equal(before["layers.1.phi_e.0.0.weight"], after["layers.1.phi_e.0.0.weight"])
    # only the trainable weights are in the optimiser
    n_trainable = sum(1 for name in before if not name.startswith(frozen))
    assert len(_last(tmp_path / "qm")["optimizer_states"][0]["state"]) <= n_trainable


def test_a_former_checkpoint_starts_fresh(windows, tmp_path, capsys):
    train, val = windows
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "trainer_state.json").write_text("{}")  # the hand-rolled loop's
    res = train_kstep(_cfg(tmp_path, epochs=1, device="cpu"), train, val, resume=True)
    assert "starting fresh" in capsys.readouterr().err
    assert res.epochs_done == 1 and len(res.history) == 1


def test_bf16_autocast_trains(windows, tmp_path):
    train, val = windows
    res = train_kstep(_cfg(tmp_path, epochs=1, precision="bf16", device="cpu"), train, val)
    assert all(torch.isfinite(torch.tensor(v)) for v in res.history[0].values())
    assert load_model(res.best_model).embed.weight.dtype == torch.float32


_trap_fired = []


def _fire_trap():
    _trap_fired.append(True)
    return "pwned"


class _Trap:
    def __reduce__(self):
        return (_fire_trap, ())


def test_checkpoints_are_read_without_unpickling(windows, tmp_path, monkeypatch):
    train, _ = windows
    cfg = _cfg(tmp_path, epochs=2)
    train_kstep(cfg, train, stop_after_epochs=1)
    real_load = torch.load
    weights_only = []

    def spy(*args, **kwargs):
        weights_only.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    assert train_kstep(cfg, train, resume=True).epochs_done == 2
    assert weights_only and all(flag is True for flag in weights_only)
    # a checkpoint carrying a pickled object is refused, and the object is never built
    path = tmp_path / "checkpoint" / "last.ckpt"
    checkpoint = real_load(path, weights_only=True)
    checkpoint["payload"] = _Trap()
    torch.save(checkpoint, path)
    with pytest.raises(pickle.UnpicklingError):
        train_kstep(_cfg(tmp_path, epochs=3), train, resume=True)
    assert not _trap_fired


def test_training_epochs_are_the_window_sources_seeded_batches(windows):
    train, _ = windows
    data = KStepDataModule(train, None, batch_size=8, seed=3, noise_positions=0.01)
    loader = data.train_dataloader()
    loader.sampler.set_epoch(2)
    got = list(loader)
    expected = list(train.batches(8, shuffle=True, seed=3 + 2))
    assert len(got) == len(expected) == len(loader) > 1
    for (inp, tgt), (inp_ref, tgt_ref) in zip(got, expected, strict=True):
        assert torch.equal(inp.velocities, inp_ref.velocities)  # no velocity noise asked for
        noise = inp.positions - inp_ref.positions
        assert 0 < noise.abs().max() < 0.1
        torch.testing.assert_close(tgt.delta_positions, tgt_ref.delta_positions - noise)
    again = list(loader)  # the same epoch again: the same noise
    assert torch.equal(again[0][0].positions, got[0][0].positions)
    assert data.val_dataloader() == []
