"""Train/validation/test splits of a dataset, by frame or by molecule, seeded and stored.

A split is a dict ``{"train": idx, "val": idx, "test": idx}`` of sorted structure indices
(int64). It is stored inside the HDF5 file as ``splits/<name>/{train,val,test}`` (group
attributes ``by``, ``seed``, ``fractions``), or, when the file is read-only, in a JSON sidecar
``<file>.splits.json``. The same file, fractions and seed always give the same split.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mlff_distiller.data.hdf5_reader import Dataset
from mlff_distiller.data.schema import SPLITS, DatasetError

PARTS = ("train", "val", "test")


class SplitError(ValueError):
    """Split settings that cannot be applied to a dataset."""


def parse_fractions(text: str | Sequence[float]) -> tuple[float, ...]:
    """``"0.8,0.1,0.1"`` -> (0.8, 0.1, 0.1); ``"800,100,100"`` -> counts. Two values mean
    train and val (no test)."""
    values = [float(v) for v in text.split(",")] if isinstance(text, str) else list(text)
    if not 1 <= len(values) <= 3 or any(v < 0 for v in values):
        raise SplitError(f"fractions {text!r}: give 1-3 non-negative numbers, e.g. 0.8,0.1,0.1")
    values += [0.0] * (3 - len(values))
    return tuple(values)


def _sizes(n: int, fractions: Sequence[float], what: str) -> list[int]:
    """Number of items per part from fractions (sum <= 1) or counts (any value > 1)."""
    f = list(fractions)
    if any(v > 1 for v in f):  # counts
        counts = [int(round(v)) for v in f]
        if sum(counts) > n:
            raise SplitError(f"split counts {counts} need {sum(counts)} {what}, only {n} exist")
        return counts
    if sum(f) > 1 + 1e-9:
        raise SplitError(f"split fractions {f} sum to {sum(f):.3f} > 1")
    counts = [int(round(v * n)) for v in f]
    for i, v in enumerate(f):  # a non-empty fraction gets at least one item
        if v > 0 and counts[i] == 0:
            counts[i] = 1
    if abs(sum(f) - 1) < 1e-9:  # everything is used: the first part takes the remainder
        counts[0] = n - sum(counts[1:])
    if counts[0] < 0 or sum(counts) > n or (f[0] > 0 and counts[0] == 0):
        raise SplitError(
            f"cannot split {n} {what} into fractions {f}; need at least "
            f"{sum(1 for v in f if v > 0)} {what}"
        )
    return counts


def make_split(
    ds: Dataset | str | Path,
    by: str = "frame",
    fractions: Sequence[float] | str = (0.8, 0.1, 0.1),
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Random split of the structures of ``ds``.

    ``by="frame"``: structures are shuffled (``seed``) and cut by ``fractions``.
    ``by="molecule"``: molecules are shuffled and cut, so every frame of a molecule lands in
    the same part (tests generalisation to unseen molecules).
    """
    if isinstance(ds, (str, Path)):
        with Dataset(ds) as opened:
            return make_split(opened, by, fractions, seed)
    fr = parse_fractions(fractions) if isinstance(fractions, str) else tuple(fractions)
    rng = np.random.default_rng(seed)
    n = len(ds)
    if n == 0:
        raise SplitError(f"{ds.path}: dataset is empty, nothing to split")
    if by == "frame":
        order = rng.permutation(n)
        counts = _sizes(n, fr, "structures")
        parts = np.split(order, np.cumsum(counts))[:3]
    elif by == "molecule":
        mol_ids = np.asarray(ds.molecule_ids)
        molecules = np.unique(mol_ids)
        order = rng.permutation(molecules)
        counts = _sizes(len(molecules), fr, "molecules")
        groups = np.split(order, np.cumsum(counts))[:3]
        parts = [np.flatnonzero(np.isin(mol_ids, g)) for g in groups]
    else:
        raise SplitError(f"split by {by!r}: choose 'frame' or 'molecule'")
    return {name: np.sort(p).astype(np.int64) for name, p in zip(PARTS, parts)}


def sidecar_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".splits.json")


def save_split(
    path: str | Path,
    split: dict[str, np.ndarray],
    name: str = "default",
    meta: dict | None = None,
) -> str:
    """Store ``split`` as ``splits/<name>`` in the HDF5 file (overwriting a split of that
    name), or in the JSON sidecar when the file is read-only. Returns where it went."""
    import h5py

    path = Path(path)
    meta = dict(meta or {})
    if os.access(path, os.W_OK):
        try:
            with h5py.File(path, "a") as h5:
                group = h5.require_group(SPLITS)
                if name in group:
                    del group[name]
                g = group.create_group(name)
                for part in PARTS:
                    g.create_dataset(part, data=np.asarray(split.get(part, []), dtype=np.int64))
                for key, value in meta.items():
                    g.attrs[key] = json.dumps(value) if isinstance(value, (list, dict)) else value
            return f"{path}:/{SPLITS}/{name}"
        except OSError as err:
            raise DatasetError(
                f"{path}: cannot write split {name!r} into the file ({err}); if a writer was "
                "killed, repair it first with DatasetWriter(path, mode='a')"
            ) from None
    side = sidecar_path(path)
    data = json.loads(side.read_text()) if side.exists() else {}
    data[name] = {**{p: np.asarray(split.get(p, [])).tolist() for p in PARTS}, "meta": meta}
    side.write_text(json.dumps(data))
    return str(side)


def list_splits(path: str | Path) -> list[str]:
    """Names of the splits stored for ``path`` (in the file and in its sidecar)."""
    from mlff_distiller.data.schema import open_h5_for_reading

    names = []
    with open_h5_for_reading(path) as h5:
        if SPLITS in h5:
            names += list(h5[SPLITS].keys())
    side = sidecar_path(path)
    if side.exists():
        names += [n for n in json.loads(side.read_text()) if n not in names]
    return names


def load_split(path: str | Path, name: str = "default") -> dict[str, np.ndarray]:
    """The split ``name`` stored for ``path`` (file first, then the JSON sidecar)."""
    from mlff_distiller.data.schema import open_h5_for_reading

    with open_h5_for_reading(path) as h5:
        key = f"{SPLITS}/{name}"
        if key in h5:
            return {p: np.asarray(h5[key][p][:], dtype=np.int64) for p in PARTS if p in h5[key]}
    side = sidecar_path(path)
    if side.exists():
        data = json.loads(side.read_text())
        if name in data:
            return {p: np.asarray(data[name][p], dtype=np.int64) for p in PARTS}
    raise SplitError(
        f"{path}: no split named {name!r} (have {list_splits(path)}); "
        f"create one with `mlffd data split {path} --name {name}`"
    )


def split_dataset(
    path: str | Path,
    by: str = "frame",
    fractions: Sequence[float] | str = (0.8, 0.1, 0.1),
    seed: int = 0,
    name: str = "default",
) -> dict[str, np.ndarray]:
    """Make a split of the dataset at ``path`` and store it under ``name``."""
    fr = parse_fractions(fractions) if isinstance(fractions, str) else tuple(fractions)
    split = make_split(path, by, fr, seed)
    save_split(path, split, name, meta={"by": by, "seed": seed, "fractions": list(fr)})
    return split
