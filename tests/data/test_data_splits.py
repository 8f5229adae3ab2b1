"""Splits by frame and by molecule: seeded, reproducible, disjoint, stored and read back."""

from __future__ import annotations

import numpy as np
import pytest

from mlff_distiller.data.hdf5 import DatasetWriter
from mlff_distiller.data.splits import (
    SplitError,
    list_splits,
    load_split,
    make_split,
    parse_fractions,
    sidecar_path,
    split_dataset,
)


@pytest.fixture()
def h5_path(tmp_path):
    path = tmp_path / "mols.h5"
    rng = np.random.default_rng(0)
    with DatasetWriter(path, flush_every=50) as w:
        for i in range(200):
            w.append_frame(
                [6, 1, 1], rng.normal(size=(3, 3)) * 2, energy=1.0 * i, molecule=f"mol{i % 10}"
            )
    return path


def _check_partition(split, n):
    parts = [split["train"], split["val"], split["test"]]
    joined = np.concatenate(parts)
    assert len(joined) == len(np.unique(joined)) == n  # disjoint and complete
    assert all(np.all(np.diff(p) > 0) for p in parts)  # sorted


def test_split_by_frame_reproducible(h5_path):
    a = make_split(h5_path, "frame", (0.8, 0.1, 0.1), seed=1)
    b = make_split(h5_path, "frame", "0.8,0.1,0.1", seed=1)
    c = make_split(h5_path, "frame", (0.8, 0.1, 0.1), seed=2)
    _check_partition(a, 200)
    assert [len(a[p]) for p in ("train", "val", "test")] == [160, 20, 20]
    assert all(np.array_equal(a[p], b[p]) for p in a)
    assert not np.array_equal(a["test"], c["test"])
    counts = make_split(h5_path, "frame", "100,30,20", seed=0)
    assert [len(counts[p]) for p in ("train", "val", "test")] == [100, 30, 20]


def test_split_by_molecule_keeps_molecules_together(h5_path):
    from mlff_distiller.data.hdf5 import Dataset

    split = make_split(h5_path, "molecule", (0.6, 0.2, 0.2), seed=3)
    _check_partition(split, 200)
    with Dataset(h5_path) as ds:
        mols = {p: set(ds.molecule_ids[idx].tolist()) for p, idx in split.items()}
    assert [len(mols[p]) for p in ("train", "val", "test")] == [6, 2, 2]
    assert not (mols["train"] & mols["val"]) and not (mols["train"] & mols["test"])
    assert not (mols["val"] & mols["test"])


def test_store_and_load_in_file(h5_path):
    split = split_dataset(h5_path, by="frame", fractions="0.7,0.3", seed=5, name="mine")
    assert len(split["test"]) == 0 and len(split["val"]) == 60
    loaded = load_split(h5_path, "mine")
    assert all(np.array_equal(split[p], loaded[p]) for p in split)
    assert list_splits(h5_path) == ["mine"]
    with pytest.raises(SplitError, match="no split named 'other'"):
        load_split(h5_path, "other")


def test_sidecar_when_not_writable(h5_path, monkeypatch):
    """A read-only file (simulated: tests may run as root, who can write anything)."""
    import mlff_distiller.data.splits as splits

    monkeypatch.setattr(splits.os, "access", lambda path, mode: False)
    split = split_dataset(h5_path, by="molecule", fractions="0.8,0.1,0.1", seed=0, name="ro")
    assert sidecar_path(h5_path).exists()
    loaded = load_split(h5_path, "ro")
    assert all(np.array_equal(split[p], loaded[p]) for p in split)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"fractions": (0.8, 0.3, 0.1)}, "sum to"),
        ({"fractions": (500, 10, 10)}, "only 200 exist"),
        ({"by": "atom"}, "choose 'frame' or 'molecule'"),
        ({"by": "molecule", "fractions": (3, 4, 5)}, "only 10 exist"),
    ],
)
def test_bad_split_settings(h5_path, kwargs, message):
    with pytest.raises(SplitError, match=message):
        make_split(h5_path, **kwargs)
    with pytest.raises(SplitError):
        parse_fractions("0.5,-0.1")
