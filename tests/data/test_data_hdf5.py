"""HDF5 writer/reader round trips, lazy access, batches, validator errors."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from mlff_distiller import keys, units
from mlff_distiller.data.batch import AtomsBatch
from mlff_distiller.data.hdf5 import (
    Dataset,
    DatasetError,
    DatasetWriter,
    TorchDataset,
    collate,
    validate,
)


def _frames(n: int, seed: int = 0, stress: bool = False) -> list[Atoms]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        k = int(rng.integers(2, 9))
        atoms = Atoms(numbers=rng.integers(1, 9, k), positions=rng.normal(size=(k, 3)) * 2)
        results = {"energy": float(rng.normal()), "forces": rng.normal(size=(k, 3))}
        if stress:
            results["stress"] = rng.normal(size=6)
        atoms.calc = SinglePointCalculator(atoms, **results)
        atoms.info["name"] = f"mol{i % 3}"
        out.append(atoms)
    return out


@pytest.fixture(scope="module")
def h5_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("h5") / "frames.h5"
    with DatasetWriter(path, attrs={"teacher": "xtb", "teacher_settings": {"method": "GFN2"}}) as w:
        w.append(_frames(40)[:10])
        for atoms in _frames(40)[10:]:
            w.append(atoms)
        assert len(w) == 40
    return path


def test_root_attrs_and_schema(h5_path):
    summary = validate(h5_path)
    assert summary["n_structures"] == 40 and summary["n_molecules"] == 3
    with h5py.File(h5_path, "r") as h5:
        assert h5.attrs["format"] == "mlff_distiller" and h5.attrs["format_version"] == 1
        for name in ("atomic_numbers", "positions", "cells", "pbc", "n_atoms", "molecule_id"):
            assert f"structures/{name}" in h5
        assert h5["structures/cells"].shape == (40, 3, 3)
        assert h5["labels/forces"].shape == (h5["structures/n_atoms"][:].sum(), 3)
        assert h5["labels/energy"].maxshape == (None,)  # resizable
    with Dataset(h5_path) as ds:
        assert ds.attrs["teacher_settings"] == {"method": "GFN2"}
        assert ds.attrs["units"] == units.UNITS_ATTRS
        assert ds.molecule_names == ["mol0", "mol1", "mol2"]
        np.testing.assert_array_equal(ds.molecule_ids, np.arange(40) % 3)
        assert ds.has("forces") and not ds.has("stress")


def test_round_trip_atoms(h5_path):
    ref = _frames(40)
    with Dataset(h5_path) as ds:
        assert len(ds) == 40
        for i in (0, 17, 39, -1):
            got, want = ds[i], ref[i]
            np.testing.assert_array_equal(got.numbers, want.numbers)
            np.testing.assert_array_equal(got.positions, want.positions)
            assert got.get_potential_energy() == want.get_potential_energy()
            np.testing.assert_array_equal(got.get_forces(), want.get_forces())
            assert got.info["name"] == want.info["name"]
        with pytest.raises(IndexError):
            ds[40]


def test_random_access_equals_sequential(h5_path):
    with Dataset(h5_path) as ds:
        sequential = [ds.get_arrays(i) for i in range(len(ds))]
        order = np.random.default_rng(3).permutation(len(ds))
        for i in order:
            got = ds.get_arrays(int(i))
            for key in ("positions", "forces", "energy", "atomic_numbers"):
                np.testing.assert_array_equal(got[key], sequential[i][key])


@pytest.mark.parametrize("cache_mib", [64.0, 0.0])
def test_get_batch_equals_one_by_one(h5_path, cache_mib):
    ref = _frames(40)
    idx = [31, 2, 3, 4, 17, 2, 39, 0]  # unsorted, with a duplicate and a contiguous run
    with Dataset(h5_path, cache_mib=cache_mib) as ds:
        batch = ds.get_batch(idx, dtype=torch.float64)
    expected = AtomsBatch.from_atoms([ref[i] for i in idx], dtype=torch.float64)
    assert torch.equal(batch.atomic_numbers, expected.atomic_numbers)
    assert torch.equal(batch.system_idx, expected.system_idx)
    assert torch.equal(batch.positions, expected.positions)
    assert torch.equal(batch.labels["energy"], expected.labels["energy"])
    assert torch.equal(batch.labels["forces"], expected.labels["forces"])
    assert batch.cell.shape == (8, 3, 3) and batch.pbc.shape == (8, 3)


def test_dataset_pickles_by_path(h5_path):
    import pickle

    with Dataset(h5_path) as ds:
        clone = pickle.loads(pickle.dumps(ds))
        assert len(clone) == len(ds)
        assert torch.equal(clone.get_batch([3, 1]).positions, ds.get_batch([3, 1]).positions)
        clone.close()


def test_torch_dataset_collate(h5_path):
    tds = TorchDataset(h5_path, indices=[5, 6, 7])
    loader = torch.utils.data.DataLoader(tds, batch_size=3, collate_fn=collate)
    (batch,) = list(loader)
    with Dataset(h5_path) as ds:
        direct = ds.get_batch([5, 6, 7])
    assert torch.equal(batch.positions, direct.positions)
    assert torch.equal(batch.labels["forces"], direct.labels["forces"])


def test_trajectory_fields_velocities_in_a_per_fs(tmp_path):
    path = tmp_path / "traj.h5"
    atoms = Atoms("H2O", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    v_a_per_fs = np.array([[0.01, 0, 0], [0, -0.02, 0], [0, 0, 0.03]])
    atoms.set_velocities(units.velocities_internal_to_ase(v_a_per_fs))
    atoms.calc = SinglePointCalculator(atoms, energy=-1.0, forces=np.zeros((3, 3)))
    with DatasetWriter(path) as w:
        for step in range(3):
            atoms.info.update(time=step * 0.5, kinetic_energy=0.1, potential_energy=-1.0)
            w.append(atoms)
    with Dataset(path) as ds:
        arr = ds.get_arrays(2)
        np.testing.assert_allclose(arr["velocities"], v_a_per_fs)
        assert arr["time"] == 1.0
        np.testing.assert_allclose(ds[1].get_velocities(), atoms.get_velocities())
        batch = ds.get_batch([0, 2], labels=["energy", "velocities", "time"])
        assert batch.labels["velocities"].shape == (6, 3)
        assert batch.labels["time"].tolist() == [0.0, 1.0]


def test_stress_and_periodic_cells(tmp_path):
    path = tmp_path / "stress.h5"
    frames = _frames(4, stress=True)
    for a in frames:
        a.cell = [6.0, 7.0, 8.0]
        a.pbc = True
    with DatasetWriter(path) as w:
        w.append(frames)
    with Dataset(path) as ds:
        assert ds.has("stress")
        got = ds[2]
        assert got.pbc.all() and np.allclose(got.cell.lengths(), [6, 7, 8])
        np.testing.assert_allclose(got.get_stress(voigt=True), frames[2].calc.results["stress"])


def test_inconsistent_frames_rejected(tmp_path):
    with DatasetWriter(tmp_path / "x.h5") as w:
        w.append_frame([1, 1], [[0, 0, 0], [0, 0, 0.74]], energy=-1.0)
        with pytest.raises(DatasetError, match=r"frame 1 .*lacks \['energy'\]"):
            w.append_frame([1, 1], [[0, 0, 0], [0, 0, 0.74]])
        with pytest.raises(DatasetError, match=r"forces has shape \(3, 3\), expected \(2, 3\)"):
            w.append_frame([1, 1], [[0, 0, 0], [0, 0, 0.74]], energy=1.0, forces=np.zeros((3, 3)))
        with pytest.raises(DatasetError, match="NaN"):
            w.append_frame([1, 1], [[0, 0, 0], [0, 0, np.nan]], energy=1.0)


def test_append_mode_continues(tmp_path):
    path = tmp_path / "a.h5"
    frames = _frames(6)
    with DatasetWriter(path) as w:
        w.append(frames[:4])
    with DatasetWriter(path, mode="a") as w:
        assert len(w) == 4
        w.append(frames[4:])
    with Dataset(path) as ds:
        assert len(ds) == 6
        assert ds.molecule_names == ["mol0", "mol1", "mol2"]  # molecules are not duplicated
        np.testing.assert_array_equal(ds[5].get_forces(), frames[5].get_forces())


# ----------------------------------------------------------------------------- malformed files


def _copy(src, dst):
    dst.write_bytes(src.read_bytes())
    return dst


def test_not_hdf5_and_truncated(tmp_path, h5_path):
    text = tmp_path / "text.h5"
    text.write_text("hello")
    with pytest.raises(DatasetError, match="truncated, corrupt or not HDF5"):
        validate(text)
    with pytest.raises(DatasetError, match="truncated, corrupt or not HDF5"):
        Dataset(text)
    cut = tmp_path / "cut.h5"
    cut.write_bytes(h5_path.read_bytes()[: h5_path.stat().st_size // 2])
    with pytest.raises(DatasetError, match="truncated"):
        validate(cut)
    with pytest.raises(FileNotFoundError):
        validate(tmp_path / "missing.h5")


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda h5: h5.attrs.__setitem__("format", "other"), "root attribute 'format'"),
        (
            lambda h5: h5.__delitem__("structures/positions"),
            "missing dataset 'structures/positions'",
        ),
        (lambda h5: h5["labels/forces"].resize(5, axis=0), "dataset 'labels/forces' has shape"),
        (lambda h5: h5["structures/cells"].resize(3, axis=0), "dataset 'structures/cells'"),
        (
            lambda h5: h5["structures/n_atoms"].__setitem__(0, 50),
            "dataset 'structures/atomic_numbers' has shape",  # sum(n_atoms) != N_total
        ),
        (lambda h5: h5["labels/energy"].__setitem__(3, np.nan), "'labels/energy' holds NaN"),
        (lambda h5: h5["structures/positions"].__setitem__(7, np.inf), "positions' holds NaN/inf"),
        (lambda h5: h5["structures/atomic_numbers"].__setitem__(2, 0), "atomic number 0"),
        (lambda h5: h5["structures/molecule_id"].__setitem__(1, 9), "refers to molecule 9"),
        (lambda h5: h5.create_dataset("splits/s/train", data=[0, 40]), "'splits/s/train'"),
    ],
)
def test_validator_names_the_broken_dataset(tmp_path, h5_path, damage, message):
    path = _copy(h5_path, tmp_path / "broken.h5")
    with h5py.File(path, "a") as h5:
        damage(h5)
    with pytest.raises(DatasetError, match=message):
        validate(path)


def test_missing_group(tmp_path):
    path = tmp_path / "nogroup.h5"
    with h5py.File(path, "w") as h5:
        h5.attrs["format"] = "mlff_distiller"
        h5.attrs["format_version"] = 1
    with pytest.raises(DatasetError, match="missing group 'structures'"):
        validate(path)
    with h5py.File(path, "w") as h5:
        h5["x"] = [1]
    with pytest.raises(DatasetError, match="not an mlff_distiller dataset"):
        Dataset(path)


def test_keys_are_shared_names():
    assert keys.ENERGY == "energy" and keys.FORCES == "forces"
