"""Hessian-informed training: the student's batched Hessian rows equal its full Hessian, the
loss term vanishes on its own rows and its parameter gradient matches finite differences of the
loss, padded rows are ignored, and the option runs end to end (off by default)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlff_distiller import keys
from mlff_distiller.data.batch import AtomsBatch
from mlff_distiller.data.hdf5 import Dataset, DatasetWriter
from mlff_distiller.models.hessian import energy_forces_hessian_rows, full_hessian
from mlff_distiller.models.painn import PaiNN, PaiNNConfig
from mlff_distiller.training.config import TrainConfig
from mlff_distiller.training.losses import hessian_rows_mse

FIXTURES_N = 300


def _model(seed: int = 0, dtype=torch.float64) -> PaiNN:
    torch.manual_seed(seed)
    return PaiNN(PaiNNConfig(hidden=16, n_interactions=2, n_rbf=8, cutoff=4.0)).to(dtype)


def _two_structures(ethanol_h5) -> AtomsBatch:
    with Dataset(ethanol_h5) as ds:
        ethanol = ds[3]
    fragment = ethanol[[2, 6, 7]]  # any 3 atoms: a second, smaller structure
    fragment.positions += 0.05
    return AtomsBatch.from_atoms([ethanol, fragment], dtype=torch.float64)


INDEX = torch.tensor([[0, 13, -1, 26], [8, -1, 2, 4]])


def test_batched_rows_equal_each_structure_full_hessian(ethanol_h5):
    model = _model()
    batch = _two_structures(ethanol_h5)
    out = energy_forces_hessian_rows(model, batch, INDEX)
    rows = out[keys.HESSIAN_ROWS]
    assert rows.shape == (9 + 3, 4, 3) and not rows.requires_grad
    reference = model.energy_and_forces(batch, method="autograd")
    torch.testing.assert_close(out[keys.FORCES], reference[keys.FORCES])
    counts = batch.atoms_per_system.tolist()
    for s, (part, z, pos) in enumerate(
        zip(rows.split(counts), batch.atomic_numbers.split(counts), batch.positions.split(counts))
    ):
        one = AtomsBatch(z, pos, torch.zeros(len(z), dtype=torch.long), batch.cell[s : s + 1],
                         batch.pbc[s : s + 1])  # fmt: skip
        h = full_hessian(model, one)
        assert torch.allclose(h, h.T, atol=1e-12)
        for k, i in enumerate(INDEX[s].tolist()):
            got = part[:, k].reshape(-1)
            if i < 0:
                assert not got.any()
            else:
                torch.testing.assert_close(got, h[i], rtol=1e-10, atol=1e-12)


def test_loss_zero_on_own_rows_and_gradient_matches_finite_differences(ethanol_h5):
    model = _model()
    batch = _two_structures(ethanol_h5)
    own = energy_forces_hessian_rows(model, batch, INDEX)[keys.HESSIAN_ROWS]

    def loss(labels):
        rows = energy_forces_hessian_rows(model, batch, INDEX, create_graph=True)
        return hessian_rows_mse(rows[keys.HESSIAN_ROWS], labels, INDEX, batch.system_idx)

    zero = loss(own)
    assert float(zero.detach()) == pytest.approx(0.0, abs=1e-24)
    labels = own + torch.randn(
        own.shape, generator=torch.Generator().manual_seed(1), dtype=own.dtype
    )
    value = loss(labels)
    model.zero_grad()
    value.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    # the rows depend on every block's weights: the gradient reaches the message, update and
    # filter parameters, not only the readout
    for name in ("filter_weight", "messages.0.phi_out.weight", "updates.1.mlp_in.weight"):
        assert grads[name].abs().max() > 0, name
    # directional derivative along a random parameter direction vs central differences
    gen = torch.Generator().manual_seed(2)
    params = [p for _, p in model.named_parameters()]
    direction = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
    analytic = sum((grads[n] * d).sum() for (n, _), d in zip(model.named_parameters(), direction)
                   if n in grads)  # fmt: skip
    eps = 1e-5
    values = []
    with torch.no_grad():
        for sign in (1.0, -1.0):
            for p, d in zip(params, direction):
                p.add_(sign * eps * d)
            values.append(float(loss(labels).detach()))
            for p, d in zip(params, direction):
                p.sub_(sign * eps * d)
    numeric = (values[0] - values[1]) / (2 * eps)
    assert float(analytic) == pytest.approx(numeric, rel=1e-5)


def test_padded_rows_are_left_out_of_the_mean():
    system_idx = torch.tensor([0, 0, 1])
    index = torch.tensor([[1, -1], [0, 2]])
    pred = torch.zeros(3, 2, 3)
    ref = torch.zeros(3, 2, 3)
    ref[:, 1, :] = 2.0  # row 1 of structure 0 is padding: its (garbage) values do not count
    ref[2, 1, :] = 1.0  # structure 1 row 1 has a 1.0 error in its 3 entries
    ref[0, 1, :] = 0.0
    value = hessian_rows_mse(pred, ref, index, system_idx)
    # valid entries: structure 0 row 0 (2 atoms x 3), structure 1 rows 0 and 1 (1 atom x 3 each)
    assert float(value) == pytest.approx(3 * 1.0 / 12)
    none = hessian_rows_mse(pred, ref, torch.full((2, 2), -1), system_idx)
    assert float(none) == 0.0


def test_config_default_off_and_checked():
    assert TrainConfig().hessian_weight == 0.0
    with pytest.raises(ValueError, match="hessian_weight"):
        TrainConfig(hessian_weight=-1.0)
    from mlff_distiller.cli.train import HELP

    assert "hessian_weight" in HELP


# -- end to end -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hessian_h5(ethanol_h5, tmp_path_factory):
    """24 ethanol frames labelled by a small PaiNN teacher with 2 Hessian rows each (autograd)."""
    from mlff_distiller.teachers.hessian import frame_rows, hessian_rows

    teacher = _model(5)
    path = tmp_path_factory.mktemp("hessian") / "ethanol_rows.h5"
    with Dataset(ethanol_h5) as ds, DatasetWriter(path, flush_every=100) as w:
        for i in range(24):
            atoms = ds[i]
            batch = AtomsBatch.from_atoms([atoms], dtype=torch.float64)
            out = teacher.energy_and_forces(batch, method="autograd")
            rows = frame_rows(len(atoms), 2, seed=0, index=i)
            w.append_frame(
                atoms.numbers,
                atoms.positions,
                energy=float(out[keys.ENERGY][0]),
                forces=out[keys.FORCES].numpy(),
                molecule="ethanol",
                hessian_index=rows,
                hessian_rows=hessian_rows(atoms, teacher, rows),
            )
    return path


TINY = dict(size="fast", train_size=16, val_size=8, max_epochs=2, batch_size=8, warmup_steps=1,
            ema_decay=0.0, patience=0, progress_bar=False, seed=3)  # fmt: skip


def test_training_with_hessian_rows_end_to_end(hessian_h5, tmp_path, monkeypatch):
    from mlff_distiller.training import module as module_mod
    from mlff_distiller.training.trainer import train

    calls = []
    real = module_mod.DistillationModule.training_step

    def spy(self, batch, batch_idx):
        calls.append(keys.HESSIAN_INDEX in batch.labels)
        return real(self, batch, batch_idx)

    monkeypatch.setattr(module_mod.DistillationModule, "training_step", spy)
    on = train(TrainConfig(data=str(hessian_h5), out=str(tmp_path / "on"), hessian_weight=1.0,
                           **TINY))  # fmt: skip
    assert calls and all(calls) and np.isfinite(on.best_val_force_mae)
    # off (the default): Hessian labels are not even read and the autograd path never runs
    calls.clear()
    import mlff_distiller.models.hessian as hessian_mod

    def boom(*args, **kwargs):
        raise AssertionError("Hessian path used with hessian_weight 0")

    monkeypatch.setattr(hessian_mod, "energy_forces_hessian_rows", boom)
    off = train(TrainConfig(data=str(hessian_h5), out=str(tmp_path / "off"), **TINY))
    assert calls and not any(calls) and np.isfinite(off.best_val_force_mae)


def test_hessian_weight_needs_rows(ethanol_h5, tmp_path):
    from mlff_distiller.training.datamodule import HDF5DataModule

    cfg = TrainConfig(data=str(ethanol_h5), out=str(tmp_path / "x"), hessian_weight=1.0, **TINY)
    with pytest.raises(ValueError, match="no Hessian rows"):
        HDF5DataModule(cfg)
