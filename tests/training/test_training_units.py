"""Loss, schedule, EMA and config pieces against hand-computed numbers."""

import dataclasses

import pytest
import torch
import yaml
from typer.testing import CliRunner

from mlff_distiller.training.config import TrainConfig, config_fields, load_config
from mlff_distiller.training.ema import ExponentialMovingAverage
from mlff_distiller.training.losses import distillation_loss, energy_per_atom_mse, forces_mse
from mlff_distiller.training.module import warmup_cosine


def test_losses_by_hand():
    e_pred = torch.tensor([1.3, 1.6])
    e_ref = torch.tensor([1.0, 2.0])
    n = torch.tensor([3, 2])
    # per atom errors 0.1 and -0.2 -> (0.01 + 0.04) / 2
    assert energy_per_atom_mse(e_pred, e_ref, n).item() == pytest.approx(0.025)
    f_ref = torch.zeros(5, 3)
    f_pred = torch.zeros(5, 3)
    f_pred[0, 0] = 0.3
    f_pred[4, 2] = -0.6
    assert forces_mse(f_pred, f_ref).item() == pytest.approx((0.09 + 0.36) / 15)
    parts = distillation_loss(e_pred, e_ref, f_pred, f_ref, n, 2.0, 10.0)
    assert parts["loss"].item() == pytest.approx(2 * 0.025 + 10 * 0.03)


def test_force_loss_variants_by_hand():
    n = torch.tensor([3, 2])
    e = torch.tensor([1.0, 2.0])
    f_ref = torch.zeros(5, 3)
    f_pred = torch.zeros(5, 3)
    f_pred[0] = torch.tensor([0.3, 0.0, 0.4])  # |error| 0.5 eV/Å
    f_pred[4, 2] = -0.002  # below the Huber delta 0.01
    l2mae = distillation_loss(e, e, f_pred, f_ref, n, 1.0, 2.0, "l2mae")
    assert l2mae["loss"].item() == pytest.approx(2.0 * (0.5 + 0.002) / 5, rel=1e-5)
    assert l2mae["forces_mse"].item() == pytest.approx((0.09 + 0.16 + 0.002**2) / 15)
    huber = distillation_loss(e, e, f_pred, f_ref, n, 1.0, 1.0, "huber", huber_delta=0.01)
    # linear branch delta * (|x| - delta / 2) for 0.3 and 0.4, quadratic x^2 / 2 for 0.002
    expected = (0.01 * (0.3 - 0.005) + 0.01 * (0.4 - 0.005) + 0.5 * 0.002**2) / 15
    assert huber["loss"].item() == pytest.approx(expected, rel=1e-5)
    # gradient of the error norm stays finite at a zero residual
    zero = torch.zeros(2, 3, requires_grad=True)
    distillation_loss(e, e, zero, torch.zeros(2, 3), n, 1.0, 1.0, "l2mae")["loss"].backward()
    assert torch.isfinite(zero.grad).all()
    with pytest.raises(ValueError, match="force_loss"):
        TrainConfig(data="x.h5", force_loss="mae")
    with pytest.raises(ValueError, match="huber_delta"):
        TrainConfig(data="x.h5", force_loss="huber", huber_delta=0.0)


def test_warmup_cosine_values():
    lam = warmup_cosine(warmup=4, total=14, min_ratio=0.1)
    assert lam(0) == pytest.approx(0.25)
    assert lam(3) == pytest.approx(1.0)
    assert lam(4) == pytest.approx(1.0)  # cosine starts at its peak
    assert lam(9) == pytest.approx(0.1 + 0.9 * 0.5)  # half way
    assert lam(14) == pytest.approx(0.1)
    assert lam(100) == pytest.approx(0.1)
    assert lam(5, progress_floor=0.5) == pytest.approx(0.1 + 0.9 * 0.5)  # time budget half spent
    assert lam(9, progress_floor=0.2) == pytest.approx(0.1 + 0.9 * 0.5)  # steps ahead of time


def test_ema_update_by_hand():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = ExponentialMovingAverage(model, decay=0.5)
    assert not any(p.requires_grad for p in ema.module.parameters())
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # t=0: decay = min(0.5, 1/10) = 0.1 -> 0.9
    assert ema.module.weight.item() == pytest.approx(0.9)
    ema.update(model)  # t=1: decay = min(0.5, 2/11) -> 0.9 * 2/11 + 9/11
    assert ema.module.weight.item() == pytest.approx(0.9 * 2 / 11 + 9 / 11)
    assert int(ema.n_updates) == 2


def test_yaml_keys_and_cli_options_match(tmp_path):
    from mlff_distiller.cli.main import app

    names = {f.name for f in config_fields()}
    # every field round-trips through YAML
    cfg = TrainConfig(data="x.h5", train_size=950, val_size=50, schedule="plateau")
    cfg.save(tmp_path / "c.yaml")
    assert set(yaml.safe_load((tmp_path / "c.yaml").read_text())) == names
    assert load_config(tmp_path / "c.yaml") == cfg
    # every field is a CLI option, and the CLI has no training option that is not a field
    import typer

    command = typer.main.get_command(app).commands["train"]
    options = {p.name for p in command.params}
    assert options - {"config", "resume"} == names
    flags = {opt for p in command.params for opt in p.opts}
    assert {"--" + n.replace("_", "-") for n in names} <= flags
    result = CliRunner().invoke(app, ["train", "--help"])
    assert result.exit_code == 0


def test_cli_overrides_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"data": "a.h5", "lr": 0.01, "hidden": 16}))
    cfg = load_config(path, lr=0.002, hidden=None)
    assert (cfg.data, cfg.lr, cfg.hidden) == ("a.h5", 0.002, 16)


@pytest.mark.parametrize(
    "bad, word",
    [({"schedule": "linear"}, "schedule"), ({"lr": -1.0}, "lr"), ({"ema_decay": 1.0}, "ema_decay"),
     ({"val_size": 0}, "val_size"), ({"precision": "8-true"}, "precision"),
     ({"force_method": "numerical"}, "force_method"),
     ({"precision": "bf16-mixed"}, "force_method 'autograd'")],
)
def test_bad_config_values_name_the_field(bad, word):
    with pytest.raises(ValueError, match=word):
        TrainConfig(data="x.h5", **bad)


def test_unknown_yaml_key_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: a.h5\nlearning_rate: 0.1\n")
    with pytest.raises(ValueError, match="learning_rate"):
        load_config(path)


def test_config_is_plain_dataclass():
    assert dataclasses.is_dataclass(TrainConfig)


def test_named_sizes_fill_the_architecture_unless_given():
    from mlff_distiller.models.sizes import STUDENT_SIZES
    from mlff_distiller.training.trainer import build_model

    fast = TrainConfig(size="fast")
    for name, value in STUDENT_SIZES["fast"].items():
        assert getattr(fast, name) == value
    model = build_model(fast)
    assert model.config.shared_filters and model.config.hidden == 32
    assert model.filter_weight.shape[0] == 3 * 32  # one filter network for all blocks
    explicit = load_config(None, size="fast", hidden=48, cutoff=4.0)
    assert (explicit.hidden, explicit.cutoff, explicit.n_interactions) == (48, 4.0, 2)
    assert TrainConfig().hidden == 128 and not TrainConfig().shared_filters
    with pytest.raises(ValueError, match="'size' must be one of"):
        TrainConfig(size="huge")
    runner = CliRunner()
    from mlff_distiller.cli.main import app

    result = runner.invoke(app, ["train", "--help"])
    assert "--size" in result.output
