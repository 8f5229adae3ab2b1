"""train_committee on rMD17 ethanol: bootstrap members on one validation split, one committee
file, finished members are not retrained, and the uncertainty grows away from the data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mlff_distiller import keys
from mlff_distiller.data.batch import AtomsBatch
from mlff_distiller.data.splits import make_split
from mlff_distiller.models.committee import Committee
from mlff_distiller.models.io import load_model
from mlff_distiller.training.committee import train_committee
from mlff_distiller.training.config import TrainConfig

TINY = dict(
    train_size=150, val_size=50, hidden=32, n_interactions=2, n_rbf=12, max_epochs=30,
    batch_size=10, warmup_steps=10, lr=1e-2, ema_decay=0.9, patience=0, progress_bar=False,
    seed=5,
)  # fmt: skip


@pytest.fixture(scope="module")
def committee_run(ethanol_h5, tmp_path_factory):
    out = tmp_path_factory.mktemp("committee") / "run"
    config = TrainConfig(data=str(ethanol_h5), out=str(out), **TINY)
    return config, train_committee(config, members=2)


def read_split(run_dir: Path) -> dict:
    return json.loads((run_dir / "split.json").read_text())


def test_members_bootstrap_one_validation_split(committee_run, ethanol_h5):
    config, result = committee_run
    assert result.trained == [0, 1] and len(result.members) == 2
    common = make_split(ethanol_h5, "frame", (150, 50, 0), seed=config.seed)
    trains = []
    for k, member in enumerate(result.members):
        run = Path(member.out_dir)
        assert run == Path(config.out) / f"member_{k}"
        split = read_split(run)
        assert split["val"] == common["val"].tolist()
        train = np.array(split["train"])
        assert len(train) == 150 and set(train) <= set(common["train"].tolist())
        assert len(np.unique(train)) < 140  # drawn with replacement: ~63% unique
        trains.append(train)
        saved = TrainConfig(**yaml.safe_load((run / "config.yaml").read_text()))
        assert (saved.seed, saved.committee) == (config.seed + k, 0)
    assert not np.array_equal(trains[0], trains[1])
    a, b = (load_model(m.model_path).state_dict() for m in result.members)
    assert not torch.equal(a["embedding.weight"], b["embedding.weight"])


def test_saved_committee_holds_the_members(committee_run, ethanol_h5):
    from mlff_distiller.data.hdf5 import Dataset

    _, result = committee_run
    committee = load_model(result.model_path)
    assert isinstance(committee, Committee) and committee.n_members == 2
    members = [load_model(m.model_path) for m in result.members]
    with Dataset(ethanol_h5) as ds:
        batch = ds.get_batch([0, 5])
    out = committee.energy_and_forces(batch)
    forces = torch.stack([m.energy_and_forces(batch)[keys.FORCES] for m in members])
    torch.testing.assert_close(out[keys.MEMBER_FORCES], forces, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[keys.FORCES], forces.mean(0), rtol=1e-5, atol=1e-6)


def stretch_ch(batch: AtomsBatch, carbon: int, by: float) -> AtomsBatch:
    """``batch`` with, in every structure, the hydrogen nearest to atom ``carbon`` moved ``by``
    Å further along its bond."""
    positions = batch.positions.clone()
    for s in range(batch.n_systems):
        atoms = torch.nonzero(batch.system_idx == s).flatten()
        pos, z = positions[atoms], batch.atomic_numbers[atoms]
        hydrogens = torch.nonzero(z == 1).flatten()
        bonds = pos[hydrogens] - pos[carbon]
        nearest = int(torch.linalg.vector_norm(bonds, dim=1).argmin())
        bond = bonds[nearest]
        positions[atoms[hydrogens[nearest]]] += by * bond / torch.linalg.vector_norm(bond)
    return AtomsBatch(batch.atomic_numbers, positions, batch.system_idx, batch.cell, batch.pbc)


def test_uncertainty_grows_for_a_stretched_bond(committee_run, ethanol_h5):
    """Ten held-out frames against the same frames with one C-H bond 0.6 Å longer (for either
    carbon): the committee is on average more than twice as unsure of the stretched ones."""
    from mlff_distiller.data.hdf5 import Dataset

    _, result = committee_run
    committee = load_model(result.model_path).double()
    val = read_split(Path(result.members[0].out_dir))["val"][:10]
    with Dataset(ethanol_h5) as ds:
        batch = ds.get_batch(val, dtype=torch.float64)
    carbons = torch.nonzero(batch.atomic_numbers[batch.system_idx == 0] == 6).flatten().tolist()
    assert len(carbons) == 2
    near = committee.energy_and_forces(batch)[keys.STRUCTURE_UNCERTAINTY]
    for carbon in carbons:
        far = committee.energy_and_forces(stretch_ch(batch, carbon, 0.6))
        ratio = float(far[keys.STRUCTURE_UNCERTAINTY].mean() / near.mean())
        assert ratio > 2.0, (carbon, ratio)


def test_rerun_trains_only_missing_members(committee_run):
    config, first = committee_run
    member_0 = Path(first.members[0].out_dir)
    stamp = (member_0 / "model" / "model.safetensors").stat().st_mtime_ns
    again = train_committee(config, members=2)
    assert again.trained == []
    assert [m.to_dict() for m in again.members] == [m.to_dict() for m in first.members]
    shutil.rmtree(Path(first.members[1].out_dir))
    third = train_committee(config, members=2)
    assert third.trained == [1]
    assert (member_0 / "model" / "model.safetensors").stat().st_mtime_ns == stamp
    # the same seeds and samples: member 1 comes back with the same weights
    a = load_model(first.model_path)  # rewritten by the third call
    assert isinstance(a, Committee)
    np.testing.assert_allclose(
        third.members[1].best_val_force_mae, first.members[1].best_val_force_mae, rtol=1e-5
    )


def test_config_field_and_cli(committee_run):
    from typer.testing import CliRunner

    from mlff_distiller.cli.main import app

    with pytest.raises(ValueError, match="committee"):
        TrainConfig(committee=1)
    config, _ = committee_run
    options = ["train", "--data", config.data, "--out", config.out, "--committee", "2"]
    result = CliRunner().invoke(app, options)  # both members are done: nothing is trained
    assert result.exit_code == 0, result.output
    assert "committee of 2" in result.output
    assert isinstance(load_model(Path(config.out) / "model"), Committee)
