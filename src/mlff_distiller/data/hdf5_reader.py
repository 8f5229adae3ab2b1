"""Lazy reader for mlff_distiller HDF5 datasets: random access without loading the file.

Only per-structure atom counts, offsets and molecule ids are kept in memory (a few bytes per
structure); coordinates and labels are read on demand. :meth:`Dataset.get_batch` is the
training hot path: it reads the atoms of many structures with one HDF5 read per dataset
(a union of hyperslabs, in file order) and returns an :class:`AtomsBatch`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from mlff_distiller import keys, units
from mlff_distiller.data.batch import AtomsBatch
from mlff_distiller.data.schema import (
    FIELDS,
    LABEL_FIELDS,
    MOLECULES,
    STRUCTURES,
    DatasetError,
    UncommittedFileError,
    committed_counts,
    decode_attr,
    open_h5_for_reading,
)


class Dataset:
    """Read-only, lazy view of an HDF5 dataset file.

    Coordinates, forces and velocities are always read on demand; per-structure fields
    (cell, pbc, energy, ...) and atomic numbers are kept in memory while they take less than
    ``cache_mib`` MiB (about 100 bytes per structure plus 4 per atom).

    ``len(ds)`` structures; ``ds[i]`` -> ``ase.Atoms`` (labels on a SinglePointCalculator);
    ``ds[a:b]`` -> list; ``ds.get_arrays(i)`` -> dict of numpy arrays;
    ``ds.get_batch(indices)`` -> :class:`AtomsBatch` with labels.
    Only committed frames are visible; :meth:`refresh` picks up frames appended since opening.
    """

    def __init__(self, path: str | Path, cache_mib: float = 64.0) -> None:
        self.path = Path(path)
        self.cache_mib = float(cache_mib)
        self._cache: dict[str, np.ndarray] = {}
        try:
            self._h5 = _open_shared(self.path)
        except UncommittedFileError:
            self._empty()
            return
        if f"{STRUCTURES}/n_atoms" not in self._h5:
            fmt = decode_attr(self._h5.attrs.get("format", ""))
            _close_shared(self._h5)
            if fmt != "mlff_distiller":
                raise DatasetError(
                    f"{self.path}: not an mlff_distiller dataset (no '{STRUCTURES}/n_atoms'); "
                    "convert it with `mlffd data import`"
                )
            self._empty()
            return
        self._datasets = {k: self._h5[f.path] for k, f in FIELDS.items() if f.path in self._h5}
        self.refresh()

    def _empty(self) -> None:
        self._h5 = None
        self._datasets = {}
        self._len = 0
        self.n_atoms = np.zeros(0, dtype=np.int64)
        self.offsets = np.zeros(1, dtype=np.int64)
        self.molecule_ids = np.zeros(0, dtype=np.int64)
        self.molecule_names: list[str] = []
        self.molecule_smiles: list[str] = []
        self._attrs: dict = {}

    def refresh(self) -> int:
        """Re-read the commit marker (a file still being written grows); returns ``len``."""
        h5 = self._h5
        for ds in self._datasets.values():
            ds.refresh() if h5.swmr_mode else None
        self._len, _ = committed_counts(h5)
        self.n_atoms = np.asarray(self._datasets[keys.N_ATOMS][: self._len], dtype=np.int64)
        self.offsets = np.zeros(self._len + 1, dtype=np.int64)
        np.cumsum(self.n_atoms, out=self.offsets[1:])
        # A file opened while a writer appends: without SWMR, this process may hold a dataset
        # extent read before the commit marker. Show only frames present in every dataset.
        visible = self._len
        for key, ds in self._datasets.items():
            rows = ds.shape[0]
            if FIELDS[key].per_atom:
                visible = min(visible, int(np.searchsorted(self.offsets, rows, "right")) - 1)
            else:
                visible = min(visible, rows)
        if visible < self._len:
            self._len = visible
            self.n_atoms = self.n_atoms[:visible]
            self.offsets = self.offsets[: visible + 1]
        self.molecule_ids = np.asarray(
            self._datasets[keys.MOLECULE_ID][: self._len], dtype=np.int64
        )
        names = h5[f"{MOLECULES}/names"] if f"{MOLECULES}/names" in h5 else []
        smiles = h5[f"{MOLECULES}/smiles"] if f"{MOLECULES}/smiles" in h5 else []
        for ds in (names, smiles):
            if hasattr(ds, "refresh") and h5.swmr_mode:
                ds.refresh()
        self.molecule_names = [n.decode() for n in names[:]] if len(names) else []
        self.molecule_smiles = [n.decode() for n in smiles[:]] if len(smiles) else []
        self._attrs = {k: decode_attr(v) for k, v in h5.attrs.items()}
        self._fill_cache()
        return self._len

    def _fill_cache(self) -> None:
        """Keep per-structure fields (cell, pbc, energy, ...: ~100 bytes per structure) and
        then the atomic numbers (4 bytes per atom) in memory while together they take less
        than ``cache_mib``; coordinates, forces and velocities always stay on disk."""
        self._cache = {}
        budget = self.cache_mib * 2**20
        per_structure = {k: ds for k, ds in self._datasets.items() if not FIELDS[k].per_atom}
        row_bytes = sum(
            ds.dtype.itemsize * int(np.prod(ds.shape[1:])) for ds in per_structure.values()
        )
        if self._len * row_bytes > budget:
            return
        for key, ds in per_structure.items():
            self._cache[key] = ds[: self._len]
        z = self._datasets[keys.ATOMIC_NUMBERS]
        if self._len * row_bytes + self.n_atoms_total * z.dtype.itemsize <= budget:
            self._cache[keys.ATOMIC_NUMBERS] = z[: self.n_atoms_total]

    # ------------------------------------------------------------------ basics

    def __len__(self) -> int:
        return self._len

    def __enter__(self) -> Dataset:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._h5 is not None:
            _close_shared(self._h5)
            self._h5 = None

    def __repr__(self) -> str:
        return (
            f"Dataset({str(self.path)!r}, n_structures={len(self)}, n_atoms={self.n_atoms_total})"
        )

    @property
    def attrs(self) -> dict:
        """Root attributes, JSON values decoded (``units``, ``teacher_settings``, ...)."""
        return dict(self._attrs)

    @property
    def n_atoms_total(self) -> int:
        return int(self.offsets[-1])

    @property
    def fields(self) -> list[str]:
        """Keys (from :mod:`mlff_distiller.keys`) of the datasets this file holds."""
        return list(self._datasets)

    def has(self, key: str) -> bool:
        """Whether the file stores ``key`` (e.g. ``"forces"``, ``"stress"``, ``"velocities"``)."""
        return key in self._datasets

    def _index(self, i: int) -> int:
        i = int(i)
        if i < 0:
            i += self._len
        if not 0 <= i < self._len:
            raise IndexError(f"structure index {i} out of range for {self.path} ({self._len})")
        return i

    # ------------------------------------------------------------------ one structure

    def get_arrays(self, i: int) -> dict:
        """All stored fields of structure ``i`` as numpy arrays (per-atom ones (n, ...)),
        plus ``name``, ``smiles``, ``molecule_id``."""
        i = self._index(i)
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        out: dict = {}
        for key, ds in self._datasets.items():
            if key in self._cache:
                cached = self._cache[key]
                out[key] = (cached[a:b] if FIELDS[key].per_atom else cached[i]).copy()
                continue
            value = ds[a:b] if FIELDS[key].per_atom else ds[i]
            out[key] = np.asarray(value)
        mid = int(self.molecule_ids[i])
        out[keys.MOLECULE_ID] = mid
        out[keys.NAME] = self.molecule_names[mid] if mid < len(self.molecule_names) else ""
        out[keys.SMILES] = self.molecule_smiles[mid] if mid < len(self.molecule_smiles) else ""
        return out

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._len))]
        if isinstance(index, (list, tuple, np.ndarray)):
            return [self[int(i)] for i in index]
        return self._atoms(self.get_arrays(index))

    def __iter__(self):
        for i in range(self._len):
            yield self[i]

    @staticmethod
    def _atoms(arr: dict) -> Atoms:
        atoms = Atoms(
            numbers=arr[keys.ATOMIC_NUMBERS],
            positions=arr[keys.POSITIONS],
            cell=arr[keys.CELL],
            pbc=arr[keys.PBC],
        )
        if keys.VELOCITIES in arr:
            atoms.set_velocities(units.velocities_internal_to_ase(arr[keys.VELOCITIES]))
        results = {}
        if keys.ENERGY in arr:
            results[keys.ENERGY] = float(arr[keys.ENERGY])
            results[keys.FREE_ENERGY] = float(arr[keys.ENERGY])
        if keys.FORCES in arr:
            results[keys.FORCES] = arr[keys.FORCES]
        if keys.STRESS in arr:
            results[keys.STRESS] = arr[keys.STRESS]
        if results:
            atoms.calc = SinglePointCalculator(atoms, **results)
        if keys.HESSIAN_INDEX in arr:  # as (r,) indices and (r, 3N) rows, as written
            from mlff_distiller.data.hdf5_writer import rows_matrix

            atoms.info[keys.HESSIAN_INDEX] = np.asarray(arr[keys.HESSIAN_INDEX])
            atoms.info[keys.HESSIAN_ROWS] = rows_matrix(arr[keys.HESSIAN_ROWS])
        for key in (keys.NAME, keys.SMILES, keys.MOLECULE_ID):
            if arr.get(key) not in (None, ""):
                atoms.info[key] = arr[key]
        for key in (keys.TIME, keys.KINETIC_ENERGY, keys.POTENTIAL_ENERGY, "charge"):
            if key in arr:
                atoms.info[key] = arr[key].item()
        return atoms

    # ------------------------------------------------------------------ many structures

    def get_batch(
        self,
        indices: Sequence[int] | np.ndarray | torch.Tensor,
        dtype: torch.dtype = torch.float32,
        device=None,
        labels: Sequence[str] | None = None,
    ) -> AtomsBatch:
        """Structures ``indices`` (in the given order) as one :class:`AtomsBatch`.

        ``labels``: keys to include (default: every label the file stores, i.e. energy,
        forces, stress, Hessian rows). Trajectory fields (``velocities``, ``time``, ...) may be
        asked for. Shapes: per-atom labels (n_atoms, ...), per-structure labels
        (n_systems, ...); floating labels in ``dtype``, integer ones (``hessian_index``) int64.
        """
        arrays = self.read_many(indices, labels)
        counts = arrays.pop(keys.N_ATOMS)
        n = len(counts)
        sys_idx = torch.repeat_interleave(
            torch.arange(n, device=device), torch.as_tensor(counts, device=device)
        )

        def f(x):
            return torch.as_tensor(x, dtype=dtype, device=device)

        z = torch.as_tensor(arrays.pop(keys.ATOMIC_NUMBERS).astype(np.int64), device=device)
        pos = f(arrays.pop(keys.POSITIONS))
        cell = f(arrays.pop(keys.CELL))
        pbc = torch.as_tensor(arrays.pop(keys.PBC), dtype=torch.bool, device=device)
        out = {
            k: torch.as_tensor(v.astype(np.int64), device=device) if v.dtype.kind in "iu" else f(v)
            for k, v in arrays.items()
        }
        return AtomsBatch(z, pos, sys_idx, cell, pbc, out)

    def read_many(
        self, indices: Sequence[int] | np.ndarray | torch.Tensor, fields: Sequence[str] | None
    ) -> dict[str, np.ndarray]:
        """Numpy arrays of structures ``indices`` in the given order: ``n_atoms`` (k,),
        ``atomic_numbers`` (n,), ``positions`` (n, 3), ``cell`` (k, 3, 3), ``pbc`` (k, 3)
        and the requested ``fields`` (default: the stored labels), concatenated over atoms."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size == 0:
            raise ValueError("get_batch needs at least one index")
        idx = np.where(idx < 0, idx + self._len, idx)
        if idx.min() < 0 or idx.max() >= self._len:
            raise IndexError(f"structure index out of range for {self.path} ({self._len})")
        if fields is None:
            fields = [k for k in LABEL_FIELDS if k in self._datasets]
        for key in fields:
            if key not in self._datasets:
                raise KeyError(f"{self.path} has no {key!r} (it stores {self.fields})")
        uniq, inverse = np.unique(idx, return_inverse=True)
        starts, stops = self.offsets[uniq], self.offsets[uniq + 1]
        atom_runs = _merge_runs(starts, stops)
        struct_runs = _merge_runs(uniq, uniq + 1)
        wanted = [keys.ATOMIC_NUMBERS, keys.POSITIONS, keys.CELL, keys.PBC, *fields]
        sorted_data = {}
        atom_rows_sorted = None
        for key in dict.fromkeys(wanted):
            if key in self._cache and FIELDS[key].per_atom:
                if atom_rows_sorted is None:
                    atom_rows_sorted = _ranges(*atom_runs)
                sorted_data[key] = self._cache[key][atom_rows_sorted]
                continue
            if key in self._cache:
                sorted_data[key] = self._cache[key][uniq]
                continue
            ds = self._datasets[key]
            runs = atom_runs if FIELDS[key].per_atom else struct_runs
            sorted_data[key] = read_runs(ds, *runs)
        counts_sorted = (stops - starts).astype(np.int64)
        out = {keys.N_ATOMS: counts_sorted[inverse]}
        if np.array_equal(uniq, idx):  # already sorted and unique: no reordering
            out.update(sorted_data)
            return out
        # reorder: per-structure rows by `inverse`, per-atom rows by gathered atom ranges
        local_offsets = np.zeros(len(uniq) + 1, dtype=np.int64)
        np.cumsum(counts_sorted, out=local_offsets[1:])
        atom_rows = _ranges(local_offsets[inverse], local_offsets[inverse + 1])
        for key, value in sorted_data.items():
            out[key] = value[atom_rows] if FIELDS[key].per_atom else value[inverse]
        return out

    def __getstate__(self) -> dict:
        """Pickles as its path: a worker process (DataLoader, Ray) reopens the file."""
        return {"path": self.path, "cache_mib": self.cache_mib}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], cache_mib=state["cache_mib"])


# One h5py handle per file per process, shared by every Dataset on it: HDF5 misreads chunked
# data when one process holds two SWMR-read handles of the same file.
_SHARED: dict[tuple[str, int], list] = {}


def _open_shared(path: Path):
    key = (str(path.resolve()), path.stat().st_ino) if path.exists() else (str(path), -1)
    entry = _SHARED.get(key)
    if entry is not None and entry[0].id.valid:
        entry[1] += 1
        return entry[0]
    h5 = open_h5_for_reading(path)
    _SHARED[key] = [h5, 1]
    return h5


def _close_shared(h5) -> None:
    for key, entry in list(_SHARED.items()):
        if entry[0] is h5:
            entry[1] -= 1
            if entry[1] <= 0:
                del _SHARED[key]
                h5.close()
            return
    h5.close()


def _merge_runs(starts: np.ndarray, stops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge sorted half-open ranges that touch into maximal runs."""
    if len(starts) <= 1:
        return starts, stops
    breaks = np.flatnonzero(starts[1:] != stops[:-1]) + 1
    return starts[np.r_[0, breaks]], stops[np.r_[breaks - 1, len(stops) - 1]]


def _ranges(starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, e)`` for every pair (vectorised)."""
    lengths = stops - starts
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    steps = np.ones(total, dtype=np.int64)
    ends = np.cumsum(lengths)[:-1]
    steps[0] = starts[0]
    if len(ends):
        steps[ends] = starts[1:] - stops[:-1] + 1
    return np.cumsum(steps)


def read_runs(ds, starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """Rows ``[s, e)`` for every run (sorted, disjoint) of an HDF5 dataset, concatenated, with
    one read call (a union of hyperslabs)."""
    import h5py

    tail = ds.shape[1:]
    total = int((stops - starts).sum())
    out = np.empty((total, *tail), dtype=ds.dtype)
    if total == 0:
        return out
    if len(starts) == 1:
        ds.read_direct(out, np.s_[int(starts[0]) : int(stops[0])])
        return out
    fspace = ds.id.get_space()
    fspace.select_none()
    zeros = (0,) * len(tail)
    for s, e in zip(starts.tolist(), stops.tolist()):
        fspace.select_hyperslab((s, *zeros), (e - s, *tail), op=h5py.h5s.SELECT_OR)
    mspace = h5py.h5s.create_simple(out.shape)
    ds.id.read(mspace, fspace, out)
    return out


# ---------------------------------------------------------------------- torch view


class TorchDataset(torch.utils.data.Dataset):
    """``torch.utils.data.Dataset`` over an HDF5 file: item ``i`` is ``Dataset.get_arrays(i)``.

    The file is opened lazily in each worker process. Use :func:`collate` as ``collate_fn``;
    for speed prefer a batch sampler with :meth:`Dataset.get_batch` (one read per batch).
    """

    def __init__(self, path: str | Path, indices: Sequence[int] | None = None) -> None:
        self.path = Path(path)
        self._ds: Dataset | None = None
        with Dataset(self.path) as ds:
            n = len(ds)
        self.indices = np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64)

    def _dataset(self) -> Dataset:
        if self._ds is None:
            self._ds = Dataset(self.path)
        return self._ds

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        return self._dataset().get_arrays(int(self.indices[i]))

    def __getstate__(self):
        return {"path": self.path, "indices": self.indices, "_ds": None}


def collate(items: Sequence[dict], dtype: torch.dtype = torch.float32) -> AtomsBatch:
    """Collate ``get_arrays`` dicts into an :class:`AtomsBatch` (labels: energy, forces,
    stress when every item has them)."""
    labels = {k: [it[k] for it in items] for k in LABEL_FIELDS if all(k in it for it in items)}
    return AtomsBatch.from_arrays(
        [it[keys.ATOMIC_NUMBERS] for it in items],
        [it[keys.POSITIONS] for it in items],
        [it[keys.CELL] for it in items],
        [it[keys.PBC] for it in items],
        labels,
        dtype=dtype,
    )
