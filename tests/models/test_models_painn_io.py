"""Save/load round trip, clear errors for foreign files, reference-energy fitting."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from mlff_distiller import keys
from mlff_distiller.data.batch import AtomsBatch
from mlff_distiller.models.io import ModelFileError, load_model, read_config, save_model
from mlff_distiller.models.painn import PaiNN, PaiNNConfig
from mlff_distiller.models.reference import (
    ReferenceFitError,
    fit_reference_energies,
    fit_scale_shift,
)


@pytest.fixture()
def saved(tmp_path):
    torch.manual_seed(3)
    model = PaiNN(PaiNNConfig(hidden=16, n_interactions=2, n_rbf=8, cutoff=4.0))
    ref = torch.zeros(119, dtype=torch.float64)
    ref[[1, 8]] = torch.tensor([-13.0, -2040.0], dtype=torch.float64)
    model.set_reference_energies(ref, elements=[1, 8])
    model.set_scale_shift(0.5, 0.1)
    save_model(model, tmp_path / "student")
    return model, tmp_path / "student"


def test_round_trip(saved):
    model, path = saved
    assert (path / "model.safetensors").is_file() and (path / "config.json").is_file()
    loaded = load_model(path)
    assert isinstance(loaded, PaiNN) and loaded.config == model.config
    assert loaded.elements == [1, 8] and float(loaded.scale) == 0.5
    rng = np.random.default_rng(0)
    batch = AtomsBatch.from_arrays([np.array([8, 1, 1])], [rng.normal(size=(3, 3))])
    a = model.energy_and_forces(batch, "analytical")
    b = loaded.energy_and_forces(batch, "analytical")
    torch.testing.assert_close(a[keys.ENERGY], b[keys.ENERGY], rtol=0, atol=0)
    torch.testing.assert_close(a[keys.FORCES], b[keys.FORCES], rtol=0, atol=0)
    document = read_config(path / "model.safetensors")
    assert document["architecture"] == "painn" and document["metadata"]["elements"] == [1, 8]


def _edit_config(path, **changes):
    document = json.loads((path / "config.json").read_text())
    document.update(changes)
    (path / "config.json").write_text(json.dumps(document))


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"architecture": "schnet"}, "unknown model architecture 'schnet'"),
        ({"format_version": 99}, "format version 99"),
        ({"format": "something-else"}, "format"),
        ({"config": {"hidden": 16, "n_interactions": 2, "n_rbf": 8, "depth": 3}}, "config"),
        ({"config": {"hidden": 32, "n_interactions": 2, "n_rbf": 8, "cutoff": 4.0}}, "shape"),
    ],
)
def test_foreign_or_inconsistent_files_fail_clearly(saved, changes, match):
    _, path = saved
    _edit_config(path, **changes)
    with pytest.raises(ModelFileError, match=match):
        load_model(path)


def test_missing_keys_bad_json_and_wrong_tensors(saved):
    _, path = saved
    with pytest.raises(ModelFileError, match="expected 'egnn'"):
        load_model(path, architecture="egnn")
    tensors = load_file(str(path / "model.safetensors"))
    tensors.pop("embedding.weight")
    save_file(tensors, str(path / "model.safetensors"))
    with pytest.raises(ModelFileError, match="missing"):
        load_model(path)
    (path / "config.json").write_text(json.dumps({"weights": 1}))
    with pytest.raises(ModelFileError, match="lacks keys"):
        load_model(path)
    (path / "config.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="not valid JSON"):
        load_model(path)
    with pytest.raises(ModelFileError, match="no config.json"):
        load_model(path / "elsewhere")
    assert issubclass(ModelFileError, ValueError)


def test_fit_reference_energies_recovers_elements():
    rng = np.random.default_rng(0)
    truth = {1: -13.6, 6: -1029.0, 8: -2041.0}
    numbers, energies = [], []
    for _ in range(40):
        z = rng.choice([1, 6, 8], size=int(rng.integers(3, 12)))
        numbers.append(z)
        energies.append(sum(truth[int(a)] for a in z) + rng.normal(0, 1e-3))
    ref = fit_reference_energies(numbers, energies)
    assert ref.shape == (119,)
    for z, e in truth.items():
        assert abs(float(ref[z]) - e) < 1e-2
    assert float(ref[7]) == 0.0
    forces = [rng.normal(0, 2.0, (len(z), 3)) for z in numbers]
    scale, shift = fit_scale_shift(numbers, energies, ref, forces)
    assert abs(shift) < 1e-2 and 1.5 < scale < 2.5
    with pytest.raises(ReferenceFitError, match="one energy per structure"):
        fit_reference_energies(numbers, energies[:-1])


def test_fit_on_conformers_of_one_molecule_is_defined():
    numbers = [np.array([6, 1, 1, 1, 1])] * 5
    energies = np.array([-1083.0, -1083.1, -1082.9, -1083.05, -1083.2])
    ref = fit_reference_energies(numbers, energies)
    residual = energies - float(ref[6] + 4 * ref[1])
    assert np.all(np.isfinite(ref.numpy())) and abs(residual.mean()) < 1e-3
