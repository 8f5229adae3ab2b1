"""The mlff_distiller HDF5 layout (format version 1) and its validator.

One file holds S structures with N_total atoms in all, stored flat (atoms of structure ``i``
are rows ``offsets[i]:offsets[i+1]`` of every per-atom dataset, ``offsets = cumsum(n_atoms)``)::

    /                           attrs: format="mlff_distiller", format_version=1,
                                       units (JSON), teacher, teacher_settings (JSON),
                                       n_structures, n_atoms_total (the commit marker), ...
    commit                      [2]              int64    [n_structures, n_atoms_total] (mirror)
    structures/atomic_numbers   [N_total]        int32
    structures/positions        [N_total, 3]     float64  Å
    structures/cells            [S, 3, 3]        float64  Å (rows are lattice vectors)
    structures/pbc              [S, 3]           bool
    structures/n_atoms          [S]              int32
    structures/molecule_id      [S]              int32    row of molecules/names
    structures/charge           [S]              int32    optional, total charge (e)
    molecules/names             [M]              bytes (UTF-8)
    molecules/smiles            [M]              bytes (UTF-8, "" when unknown)
    labels/energy               [S]              float64  eV
    labels/forces               [N_total, 3]     float64  eV/Å
    labels/stress               [S, 3, 3]        float64  eV/Å^3, optional
    labels/hessian_index        [S, r]           int64    optional: rows of the Hessian given
                                                          (flat coordinate 3*atom+axis, -1: none)
    labels/hessian_rows         [N_total, r, 3]  float64  eV/Å^2, those rows laid out per atom
    trajectory/velocities       [N_total, 3]     float64  Å/fs
    trajectory/time             [S]              float64  fs
    trajectory/kinetic_energy   [S]              float64  eV
    trajectory/potential_energy [S]              float64  eV
    splits/<name>/{train,val,test}  index arrays (see :mod:`mlff_distiller.data.splits`)

``r`` (Hessian rows per structure) is fixed per file by its first frame (frames with fewer rows
pad with index -1 and zero rows). All datasets are chunked and resizable. The root attribute
``n_structures`` is written last after each append (a commit marker): a reader uses only the
first ``n_structures`` rows, so a writer killed mid-append leaves a readable file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlff_distiller import keys, units

FORMAT = "mlff_distiller"
FORMAT_VERSION = 1
N_STRUCTURES_ATTR = "n_structures"
N_ATOMS_TOTAL_ATTR = "n_atoms_total"
COMMIT_DATASET = "commit"
MOLECULE_NAME_BYTES = 128
MOLECULE_SMILES_BYTES = 512


class DatasetError(ValueError):
    """An HDF5 dataset file that is malformed, truncated or inconsistent; says where."""


class UncommittedFileError(DatasetError):
    """A file whose writer was killed before it committed its first frame: it holds no frames
    (readers see an empty dataset; ``DatasetWriter(mode="a")`` starts it afresh)."""


@dataclass(frozen=True)
class Field:
    """One HDF5 dataset of the schema: ``group/name``, per atom or per structure."""

    key: str  # the key in get_arrays() dicts and AtomsBatch labels
    group: str
    name: str
    per_atom: bool
    tail: tuple[int | None, ...]  # None: any size, fixed per file by its first frame
    dtype: str
    required: bool = False

    @property
    def path(self) -> str:
        return f"{self.group}/{self.name}"

    def tail_matches(self, tail: tuple[int, ...]) -> bool:
        """Whether ``tail`` (a shape after the row axis) fits this field's ``tail``."""
        return len(tail) == len(self.tail) and all(
            want is None or want == got for want, got in zip(self.tail, tail)
        )


STRUCTURES, LABELS, TRAJECTORY, MOLECULES, SPLITS = (
    "structures",
    "labels",
    "trajectory",
    "molecules",
    "splits",
)

FIELDS: dict[str, Field] = {
    f.key: f
    for f in (
        Field(keys.ATOMIC_NUMBERS, STRUCTURES, "atomic_numbers", True, (), "int32", True),
        Field(keys.POSITIONS, STRUCTURES, "positions", True, (3,), "float64", True),
        Field(keys.CELL, STRUCTURES, "cells", False, (3, 3), "float64", True),
        Field(keys.PBC, STRUCTURES, "pbc", False, (3,), "bool", True),
        Field(keys.N_ATOMS, STRUCTURES, "n_atoms", False, (), "int32", True),
        Field(keys.MOLECULE_ID, STRUCTURES, "molecule_id", False, (), "int32", True),
        Field("charge", STRUCTURES, "charge", False, (), "int32"),
        Field(keys.ENERGY, LABELS, "energy", False, (), "float64"),
        Field(keys.FORCES, LABELS, "forces", True, (3,), "float64"),
        Field(keys.STRESS, LABELS, "stress", False, (3, 3), "float64"),
        Field(keys.HESSIAN_INDEX, LABELS, "hessian_index", False, (None,), "int64"),
        Field(keys.HESSIAN_ROWS, LABELS, "hessian_rows", True, (None, 3), "float64"),
        Field(keys.VELOCITIES, TRAJECTORY, "velocities", True, (3,), "float64"),
        Field(keys.TIME, TRAJECTORY, "time", False, (), "float64"),
        Field(keys.KINETIC_ENERGY, TRAJECTORY, "kinetic_energy", False, (), "float64"),
        Field(keys.POTENTIAL_ENERGY, TRAJECTORY, "potential_energy", False, (), "float64"),
    )
}
LABEL_FIELDS = tuple(k for k, f in FIELDS.items() if f.group == LABELS)
TRAJECTORY_FIELDS = tuple(k for k, f in FIELDS.items() if f.group == TRAJECTORY)

UNITS = {
    keys.POSITIONS: "Å",
    keys.CELL: "Å",
    keys.ENERGY: "eV",
    keys.FORCES: "eV/Å",
    keys.STRESS: "eV/Å³",
    keys.HESSIAN_ROWS: "eV/Å²",
    keys.VELOCITIES: "Å/fs",
    keys.TIME: "fs",
    keys.KINETIC_ENERGY: "eV",
    keys.POTENTIAL_ENERGY: "eV",
}


def encode_attr(value):
    """Root attribute value as HDF5 stores it: dicts/lists/None become JSON strings."""
    if isinstance(value, (dict, list, tuple)) or value is None:
        return json.dumps(value, default=_json_default)
    if isinstance(value, Path):
        return str(value)
    return value


def decode_attr(value):
    """Inverse of :func:`encode_attr` (JSON strings that start with ``{`` or ``[`` decode)."""
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value[:1] in "{[" and value:
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def default_root_attrs() -> dict:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "units": json.dumps(units.UNITS_ATTRS),
        N_STRUCTURES_ATTR: 0,
        N_ATOMS_TOTAL_ATTR: 0,
    }


def open_h5_for_reading(path: str | Path):
    """Open ``path`` read-only; a file being written, or left by a killed writer, is opened
    in SWMR-read mode. Raises FileNotFoundError, or DatasetError for a non-HDF5/truncated file.
    """
    import h5py

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset file not found: {path}")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        message = str(err)
    if "already open for write" in message:  # being written, or its writer was killed
        try:
            return h5py.File(path, "r", swmr=True)
        except OSError as err:
            message = str(err)
        if "not already open for SWMR writing" in message:
            raise UncommittedFileError(
                f"{path}: its writer stopped before committing a frame; it holds no frames"
            )
    raise DatasetError(
        f"{path}: cannot open as HDF5 (the file is truncated, corrupt or not HDF5): {message}"
    )


def committed_counts(h5) -> tuple[int, int]:
    """(n_structures, n_atoms_total) a reader may trust: the commit marker, clipped to what
    the datasets hold. The marker is the root attribute ``n_structures`` and its mirror, the
    dataset ``/commit`` = [n_structures, n_atoms_total], which SWMR readers can refresh."""
    n_atoms = h5[f"{STRUCTURES}/n_atoms"]
    if COMMIT_DATASET in h5:
        marker = h5[COMMIT_DATASET]
        if h5.swmr_mode:
            marker.refresh()
            n_atoms.refresh()
        s = int(marker[0])
    else:
        s = int(h5.attrs.get(N_STRUCTURES_ATTR, n_atoms.shape[0]))
    s = min(s, n_atoms.shape[0])
    total = int(np.asarray(n_atoms[:s], dtype=np.int64).sum()) if s else 0
    return s, total


# --------------------------------------------------------------------------- validator


def validate(path: str | Path, check_values: bool = True) -> dict:
    """Check that ``path`` is a well-formed mlff_distiller dataset and return a summary
    ``{"n_structures", "n_atoms", "n_molecules", "fields"}``.

    Raises DatasetError naming the group/dataset that is wrong: not HDF5 or truncated, wrong
    ``format``, missing group or dataset, shape mismatch, ``sum(n_atoms) != N_total``, more
    rows than committed (an interrupted writer), bad atomic numbers or molecule ids, NaN/inf
    (checked chunk by chunk, never loading the whole file).
    """
    path = Path(path)
    with open_h5_for_reading(path) as h5:
        fmt = decode_attr(h5.attrs.get("format", ""))
        if fmt != FORMAT:
            raise DatasetError(
                f"{path}: root attribute 'format' is {fmt!r}, expected {FORMAT!r}; "
                "import foreign data with `mlffd data import`"
            )
        version = int(h5.attrs.get("format_version", -1))
        if version != FORMAT_VERSION:
            raise DatasetError(f"{path}: format_version {version} is not supported")
        if STRUCTURES not in h5:
            raise DatasetError(f"{path}: missing group '{STRUCTURES}'")
        for f in FIELDS.values():
            if f.required and f.path not in h5:
                raise DatasetError(f"{path}: missing dataset '{f.path}'")
        s_marker = int(h5.attrs.get(N_STRUCTURES_ATTR, -1))
        n_atoms_ds = h5[f"{STRUCTURES}/n_atoms"]
        if n_atoms_ds.ndim != 1:
            raise DatasetError(f"{path}: '{STRUCTURES}/n_atoms' must be 1-D, is {n_atoms_ds.shape}")
        s = n_atoms_ds.shape[0] if s_marker < 0 else s_marker
        if s > n_atoms_ds.shape[0]:
            raise DatasetError(
                f"{path}: root attribute n_structures={s} but '{STRUCTURES}/n_atoms' has only "
                f"{n_atoms_ds.shape[0]} rows (truncated file)"
            )
        n_atoms = np.asarray(n_atoms_ds[:s], dtype=np.int64)
        if s and n_atoms.min() < 1:
            bad = int(np.flatnonzero(n_atoms < 1)[0])
            raise DatasetError(
                f"{path}: '{STRUCTURES}/n_atoms' of structure {bad} is {n_atoms[bad]}"
            )
        n_total = int(n_atoms.sum())
        present = []
        for f in FIELDS.values():
            if f.path not in h5:
                continue
            present.append(f.key)
            ds = h5[f.path]
            rows = n_total if f.per_atom else s
            what = "sum(n_atoms)" if f.per_atom else "n_structures"
            if not f.tail_matches(tuple(ds.shape[1:])) or ds.shape[0] != rows:
                hint = ""
                if ds.shape[0] > rows and f.tail_matches(tuple(ds.shape[1:])):
                    hint = (
                        " (rows beyond the commit marker: a writer was interrupted; "
                        "open it with DatasetWriter(path, mode='a') to repair)"
                    )
                want = tuple("r" if t is None else t for t in f.tail)
                raise DatasetError(
                    f"{path}: dataset '{f.path}' has shape {ds.shape}, expected "
                    f"{(rows, *want)} ({what} = {rows}){hint}"
                )
            if check_values:
                _check_values(path, f, ds)
        _check_hessian(path, h5, n_atoms, check_values)
        n_mol = _check_molecules(path, h5, s) if s else len(h5.get(f"{MOLECULES}/names", []))
        for name, group in h5[SPLITS].items() if SPLITS in h5 else []:
            for part, idx in group.items():
                values = np.asarray(idx[:])
                if values.size and (values.min() < 0 or values.max() >= s):
                    raise DatasetError(
                        f"{path}: dataset '{SPLITS}/{name}/{part}' holds index "
                        f"{int(values.max())} but the file has {s} structures; "
                        "make the split again with `mlffd data split`"
                    )
        return {"n_structures": s, "n_atoms": n_total, "n_molecules": n_mol, "fields": present}


def _check_values(path: Path, f: Field, ds, chunk_rows: int = 1 << 18) -> None:
    for start in range(0, ds.shape[0], chunk_rows):
        block = ds[start : start + chunk_rows]
        if f.key == keys.ATOMIC_NUMBERS:
            bad = np.flatnonzero((block < 1) | (block > 118))
            if bad.size:
                raise DatasetError(
                    f"{path}: dataset '{f.path}' row {start + int(bad[0])} holds atomic number "
                    f"{int(block[bad[0]])}"
                )
        elif block.dtype.kind == "f" and not np.isfinite(block).all():
            row = start + int(np.flatnonzero(~np.isfinite(block.reshape(len(block), -1)).all(1))[0])
            raise DatasetError(f"{path}: dataset '{f.path}' holds NaN/inf (first at row {row})")


def _check_hessian(path: Path, h5, n_atoms: np.ndarray, check_values: bool) -> None:
    """Hessian rows come as a pair (index, rows) with the same ``r``; indices in [-1, 3N)."""
    index_f, rows_f = FIELDS[keys.HESSIAN_INDEX], FIELDS[keys.HESSIAN_ROWS]
    have = [f.path in h5 for f in (index_f, rows_f)]
    if not any(have):
        return
    if not all(have):
        missing = index_f.path if not have[0] else rows_f.path
        raise DatasetError(f"{path}: Hessian labels without dataset '{missing}'")
    r_index, r_rows = h5[index_f.path].shape[1], h5[rows_f.path].shape[1]
    if r_index != r_rows:
        raise DatasetError(
            f"{path}: '{index_f.path}' has {r_index} rows per structure but "
            f"'{rows_f.path}' {r_rows}"
        )
    if not check_values or not len(n_atoms):
        return
    index = np.asarray(h5[index_f.path][: len(n_atoms)])
    bad = (index < -1) | (index >= 3 * n_atoms[:, None])
    if bad.any():
        s = int(np.flatnonzero(bad.any(1))[0])
        raise DatasetError(
            f"{path}: dataset '{index_f.path}' of structure {s} holds {index[s].tolist()}; "
            f"indices must be -1 (none) or in [0, 3 * n_atoms = {3 * int(n_atoms[s])})"
        )


def _check_molecules(path: Path, h5, s: int) -> int:
    names_path = f"{MOLECULES}/names"
    if names_path not in h5:
        raise DatasetError(f"{path}: missing dataset '{names_path}'")
    n_mol = h5[names_path].shape[0]
    ids = np.asarray(h5[f"{STRUCTURES}/molecule_id"][:s])
    if ids.min() < 0 or ids.max() >= n_mol:
        raise DatasetError(
            f"{path}: dataset '{STRUCTURES}/molecule_id' refers to molecule {int(ids.max())} "
            f"but '{names_path}' has {n_mol} entries"
        )
    return n_mol
