"""Crash-safe append writer for mlff_distiller HDF5 datasets and trajectories.

Frames are buffered and written in one go every ``flush_every`` frames: the datasets grow,
the rows are written and flushed, and only then is the root attribute ``n_structures`` (the
commit marker) raised and flushed again. The file is written in HDF5 SWMR mode, which keeps
it consistent on disk at all times, so after ``kill -9`` it opens (read-only, SWMR) with every
committed frame. Opening such a file with ``mode="a"`` repairs it: the committed frames are
copied into a fresh file that replaces the old one, and writing resumes from there.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.stress import voigt_6_to_full_3x3_stress

from mlff_distiller import keys, units
from mlff_distiller.data.schema import (
    COMMIT_DATASET,
    FIELDS,
    MOLECULE_NAME_BYTES,
    MOLECULE_SMILES_BYTES,
    MOLECULES,
    N_ATOMS_TOTAL_ATTR,
    N_STRUCTURES_ATTR,
    DatasetError,
    UncommittedFileError,
    committed_counts,
    decode_attr,
    default_root_attrs,
    encode_attr,
    open_h5_for_reading,
)

ATOM_CHUNK_ROWS = 1024
STRUCTURE_CHUNK_ROWS = 1024
MAX_PENDING_ATOMS = 1_000_000


class DatasetWriter:
    """Append structures (and labels, trajectory data) to an HDF5 file.

    ``mode="w"`` creates/overwrites, ``mode="a"`` appends (repairing a file left by a killed
    writer; one killed before its first commit holds no frames and is started afresh).
    ``attrs`` are root attributes (``teacher``, ``teacher_settings``, ...; dicts are stored as
    JSON). Every ``flush_every`` frames are committed together; ``close()`` (or leaving the
    ``with`` block) commits the rest.

    The first committed frame fixes which optional datasets (energy, forces, stress,
    velocities, time, ...) the file has; later frames must carry the same fields.
    """

    def __init__(
        self,
        path: str | Path,
        mode: str = "w",
        attrs: dict | None = None,
        flush_every: int = 1,
    ) -> None:
        import h5py

        if mode not in ("w", "a"):
            raise ValueError(f"DatasetWriter mode must be 'w' or 'a', got {mode!r}")
        if flush_every < 1:
            raise ValueError(f"flush_every must be >= 1, got {flush_every}")
        self.path = Path(path)
        self.flush_every = int(flush_every)
        self._pending: list[dict] = []
        self._pending_atoms = 0
        self._molecules: dict[str, int] = {}
        self._fields: set[str] | None = None  # optional fields, fixed at the first frame
        self._swmr = False
        self._h5 = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if mode == "a" and self.path.exists():
            self._h5 = _open_for_append(self.path)
        if self._h5 is not None:
            self._load_state()
        else:
            self._h5 = h5py.File(self.path, "w", libver="latest")
            for key, value in default_root_attrs().items():
                self._h5.attrs[key] = value
        for key, value in (attrs or {}).items():
            self._h5.attrs[key] = encode_attr(value)
        self._n_structures, self._n_atoms_total = committed_counts_or_zero(self._h5)
        self._h5.flush()
        if self._fields is not None:
            self._start_swmr()

    # ------------------------------------------------------------------ public API

    def __len__(self) -> int:
        return self._n_structures + len(self._pending)

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def n_committed(self) -> int:
        """Frames already on disk behind the commit marker."""
        return self._n_structures

    def set_attrs(self, attrs: dict) -> None:
        """Set root attributes; new attributes only before the first frame is committed."""
        for key, value in attrs.items():
            if self._swmr and key not in self._h5.attrs:
                raise DatasetError(
                    f"{self.path}: cannot add attribute {key!r} after frames were written; "
                    "pass it as DatasetWriter(attrs=...)"
                )
            self._h5.attrs[key] = encode_attr(value)

    def append(
        self,
        atoms: Atoms | Iterable[Atoms],
        molecule: str | None = None,
        with_velocities: bool | None = None,
    ) -> None:
        """Append one ``Atoms`` or a list of them.

        Labels come from ``atoms.calc.results`` (``energy``, ``forces``, ``stress``);
        velocities (converted to Å/fs) when ``with_velocities`` (default: when the atoms carry
        momenta); ``info["time"]`` (fs), ``info["kinetic_energy"]``,
        ``info["potential_energy"]`` (eV), ``info["charge"]``, ``info["hessian_index"]`` and
        ``info["hessian_rows"]`` (see :meth:`append_frame`). The molecule name is
        ``molecule``, else ``info["name"]``, else the chemical formula.
        """
        frames = [atoms] if isinstance(atoms, Atoms) else list(atoms)
        for a in frames:
            self._add(_frame_from_atoms(a, molecule, with_velocities), commit=False)
        self._maybe_commit()

    def append_frame(
        self,
        atomic_numbers,
        positions,
        *,
        cell=None,
        pbc=None,
        energy: float | None = None,
        forces=None,
        stress=None,
        velocities=None,
        time: float | None = None,
        kinetic_energy: float | None = None,
        potential_energy: float | None = None,
        molecule: str | None = None,
        smiles: str | None = None,
        charge: int | None = None,
        hessian_index=None,
        hessian_rows=None,
    ) -> None:
        """Append one frame from raw arrays in internal units.

        ``atomic_numbers``: (n,), ``positions``/``forces``/``velocities`` (Å/fs): (n, 3),
        ``cell``: (3, 3) (zeros when None), ``pbc``: (3,), ``stress``: (3, 3) or Voigt (6,).
        ``hessian_index`` (r,) and ``hessian_rows`` (r, 3n) eV/Å^2 (or per atom (n, r, 3)):
        rows ``i`` of the Hessian d2E/dx_i dx (index -1 with a zero row: no row).
        """
        z = np.asarray(atomic_numbers, dtype=np.int32).reshape(-1)
        frame = {
            keys.ATOMIC_NUMBERS: z,
            keys.POSITIONS: positions,
            keys.CELL: np.zeros((3, 3)) if cell is None else cell,
            keys.PBC: np.zeros(3, dtype=bool) if pbc is None else pbc,
            keys.ENERGY: energy,
            keys.FORCES: forces,
            keys.STRESS: stress,
            keys.VELOCITIES: velocities,
            keys.TIME: time,
            keys.KINETIC_ENERGY: kinetic_energy,
            keys.POTENTIAL_ENERGY: potential_energy,
            "charge": charge,
            keys.HESSIAN_INDEX: hessian_index,
            keys.HESSIAN_ROWS: hessian_rows,
            keys.NAME: molecule or _formula(z),
            keys.SMILES: smiles or "",
        }
        self._add(frame, commit=True)

    def flush(self) -> None:
        """Commit every pending frame to disk now."""
        self._commit()

    def close(self) -> None:
        """Commit pending frames and close the file (idempotent)."""
        if getattr(self, "_h5", None) is None:
            return
        try:
            self._commit()
        finally:
            self._h5.close()
            self._h5 = None

    # ------------------------------------------------------------------ internals

    def _add(self, frame: dict, commit: bool) -> None:
        if self._h5 is None:
            raise DatasetError(f"{self.path}: writer is closed")
        frame = _normalise(frame, len(self))
        self._pending.append(frame)
        self._pending_atoms += len(frame[keys.ATOMIC_NUMBERS])
        if self._pending_atoms >= MAX_PENDING_ATOMS:
            self._commit()
        elif commit:
            self._maybe_commit()

    def _maybe_commit(self) -> None:
        if len(self._pending) >= self.flush_every:
            self._commit()

    def _commit(self) -> None:
        if not self._pending or self._h5 is None:
            return
        frames, self._pending, self._pending_atoms = self._pending, [], 0
        present = {k for k in _OPTIONAL if frames[0][k] is not None}
        if self._fields is None:
            self._create_datasets(present, frames[0])
        for i, fr in enumerate(frames):
            have = {k for k in _OPTIONAL if fr[k] is not None}
            if have != self._fields:
                n = self._n_structures + i
                missing = sorted(self._fields - have)
                extra = sorted(have - self._fields)
                raise DatasetError(
                    f"{self.path}: frame {n} "
                    + (f"lacks {missing} " if missing else "")
                    + (f"has {extra} " if extra else "")
                    + f"but this file stores {sorted(self._fields)}; every frame must carry "
                    "the same labels"
                )
            for key in _VARIABLE_TAIL & have:
                ds = self._h5[FIELDS[key].path]
                tail = fr[key].shape[1:] if FIELDS[key].per_atom else fr[key].shape
                if tail != ds.shape[1:]:
                    raise DatasetError(
                        f"{self.path}: frame {self._n_structures + i} has {key} of shape "
                        f"{fr[key].shape} but this file stores {ds.shape[1:]} per row; every "
                        "frame must carry the same number of Hessian rows (pad with index -1)"
                    )
        mol_ids = np.array([self._molecule_id(fr) for fr in frames], dtype=np.int32)
        h5 = self._h5
        n_new_atoms = sum(len(fr[keys.ATOMIC_NUMBERS]) for fr in frames)
        s0, a0 = self._n_structures, self._n_atoms_total
        for key in (*_REQUIRED_DATA, *sorted(self._fields)):
            f = FIELDS[key]
            data = np.concatenate if f.per_atom else np.stack
            block = data([fr[key] for fr in frames]).astype(f.dtype, copy=False)
            start = a0 if f.per_atom else s0
            _write_rows(h5[f.path], start, block)
        _write_rows(h5[FIELDS[keys.MOLECULE_ID].path], s0, mol_ids)
        counts = np.array([len(fr[keys.ATOMIC_NUMBERS]) for fr in frames], dtype=np.int32)
        _write_rows(h5[FIELDS[keys.N_ATOMS].path], s0, counts)
        h5.flush()  # data first ...
        self._n_structures = s0 + len(frames)
        self._n_atoms_total = a0 + n_new_atoms
        h5.attrs[N_STRUCTURES_ATTR] = self._n_structures  # ... then the commit marker
        h5.attrs[N_ATOMS_TOTAL_ATTR] = self._n_atoms_total
        h5[COMMIT_DATASET][:] = [self._n_structures, self._n_atoms_total]
        h5.flush()

    def _molecule_id(self, frame: dict) -> int:
        name = frame[keys.NAME]
        if name in self._molecules:
            return self._molecules[name]
        mid = len(self._molecules)
        self._molecules[name] = mid
        _write_rows(self._h5[f"{MOLECULES}/names"], mid, np.array([_encode(name, "name")]))
        smiles = _encode(frame[keys.SMILES] or "", "smiles")
        _write_rows(self._h5[f"{MOLECULES}/smiles"], mid, np.array([smiles]))
        return mid

    def _create_datasets(self, optional: set[str], first: dict) -> None:
        """Create the datasets; a variable tail (Hessian rows) takes the first frame's size."""
        h5 = self._h5
        for key in (*_REQUIRED_DATA, keys.N_ATOMS, keys.MOLECULE_ID, *sorted(optional)):
            f = FIELDS[key]
            rows = ATOM_CHUNK_ROWS if f.per_atom else STRUCTURE_CHUNK_ROWS
            if f.path in h5:
                continue
            tail = f.tail
            if key in _VARIABLE_TAIL:
                tail = first[key].shape[1:] if f.per_atom else first[key].shape
            h5.require_group(f.group).create_dataset(
                f.name,
                shape=(0, *tail),
                maxshape=(None, *tail),
                dtype=f.dtype,
                chunks=(rows, *tail),
            )
        mol = h5.require_group(MOLECULES)
        for name, width in (("names", MOLECULE_NAME_BYTES), ("smiles", MOLECULE_SMILES_BYTES)):
            if name not in mol:
                mol.create_dataset(
                    name, shape=(0,), maxshape=(None,), dtype=f"S{width}", chunks=(256,)
                )
        if COMMIT_DATASET not in h5:
            h5.create_dataset(COMMIT_DATASET, data=np.zeros(2, dtype=np.int64))
        self._fields = set(optional)
        h5.flush()
        self._start_swmr()

    def _start_swmr(self) -> None:
        try:
            self._h5.swmr_mode = True
            self._swmr = True
        except (ValueError, RuntimeError, OSError):  # an old-format file: flush-only safety
            self._swmr = False

    def _load_state(self) -> None:
        h5 = self._h5
        if FIELDS[keys.N_ATOMS].path not in h5:
            return  # created but nothing written yet
        self._fields = {k for k in _OPTIONAL if FIELDS[k].path in h5}
        if COMMIT_DATASET not in h5:  # a file written before the mirror existed
            s, total = committed_counts(h5)
            h5.create_dataset(COMMIT_DATASET, data=np.array([s, total], dtype=np.int64))
        names = h5[f"{MOLECULES}/names"][:] if f"{MOLECULES}/names" in h5 else []
        self._molecules = {n.decode(): i for i, n in enumerate(names)}


_REQUIRED_DATA = (keys.ATOMIC_NUMBERS, keys.POSITIONS, keys.CELL, keys.PBC)
_OPTIONAL = (
    "charge",
    keys.ENERGY,
    keys.FORCES,
    keys.STRESS,
    keys.VELOCITIES,
    keys.TIME,
    keys.KINETIC_ENERGY,
    keys.POTENTIAL_ENERGY,
    keys.HESSIAN_INDEX,
    keys.HESSIAN_ROWS,
)
_VARIABLE_TAIL = frozenset(k for k, f in FIELDS.items() if None in f.tail)


def committed_counts_or_zero(h5) -> tuple[int, int]:
    if FIELDS[keys.N_ATOMS].path not in h5:
        return 0, 0
    return committed_counts(h5)


def _write_rows(ds, start: int, block: np.ndarray) -> None:
    end = start + len(block)
    if ds.shape[0] < end:
        ds.resize(end, axis=0)
    ds[start:end] = block


def _encode(text: str, what: str) -> bytes:
    raw = text.encode("utf-8")
    limit = MOLECULE_NAME_BYTES if what == "name" else MOLECULE_SMILES_BYTES
    if len(raw) > limit:
        raise DatasetError(f"molecule {what} {text[:40]!r}... is longer than {limit} bytes")
    return raw


def _formula(z: np.ndarray) -> str:
    return Atoms(numbers=z).get_chemical_formula()


def _normalise(frame: dict, index: int) -> dict:
    """Check shapes/finite values of one frame and convert to arrays; raise naming the frame."""
    z = np.asarray(frame[keys.ATOMIC_NUMBERS], dtype=np.int32).reshape(-1)
    n = len(z)
    label = f"frame {index} ({frame.get(keys.NAME) or _formula(z)})"
    if n == 0:
        raise DatasetError(f"{label}: no atoms")
    out = dict(frame)
    out[keys.ATOMIC_NUMBERS] = z
    for key, f in FIELDS.items():
        if key not in frame or key == keys.ATOMIC_NUMBERS or frame[key] is None:
            continue
        arr = np.asarray(frame[key], dtype=f.dtype)
        if key == keys.STRESS and arr.shape == (6,):
            arr = voigt_6_to_full_3x3_stress(arr)
        if key == keys.HESSIAN_ROWS and arr.ndim == 2:  # (r, 3n) rows -> per atom (n, r, 3)
            arr = rows_per_atom(arr, n, label)
        got = arr.shape[1:] if f.per_atom else arr.shape
        if (f.per_atom and arr.shape[:1] != (n,)) or not f.tail_matches(got):
            want = tuple("r" if t is None else t for t in f.tail)
            expected = ((n,) if f.per_atom else ()) + want
            raise DatasetError(f"{label}: {key} has shape {arr.shape}, expected {expected}")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise DatasetError(f"{label}: {key} holds NaN/inf")
        out[key] = arr
    _check_hessian_pair(out, n, label)
    return out


def rows_per_atom(rows: np.ndarray, n_atoms: int, label: str = "frame") -> np.ndarray:
    """Hessian rows (r, 3n) -> the per-atom layout of the file (n, r, 3)."""
    rows = np.asarray(rows)
    if rows.ndim != 2 or rows.shape[1] != 3 * n_atoms:
        raise DatasetError(
            f"{label}: hessian_rows has shape {rows.shape}, expected (r, {3 * n_atoms}) "
            f"(3 * n_atoms columns)"
        )
    return np.ascontiguousarray(rows.reshape(len(rows), n_atoms, 3).transpose(1, 0, 2))


def rows_matrix(per_atom: np.ndarray) -> np.ndarray:
    """The per-atom layout (n, r, 3) -> Hessian rows (r, 3n) (inverse of :func:`rows_per_atom`)."""
    per_atom = np.asarray(per_atom)
    n, r = per_atom.shape[:2]
    return np.ascontiguousarray(per_atom.transpose(1, 0, 2).reshape(r, 3 * n))


def _check_hessian_pair(frame: dict, n: int, label: str) -> None:
    index, rows = frame.get(keys.HESSIAN_INDEX), frame.get(keys.HESSIAN_ROWS)
    if index is None and rows is None:
        return
    if index is None or rows is None:
        raise DatasetError(f"{label}: give both hessian_index and hessian_rows, or neither")
    if rows.shape[1] != len(index):
        raise DatasetError(
            f"{label}: hessian_index names {len(index)} rows but hessian_rows holds {rows.shape[1]}"
        )
    if len(index) and (index.min() < -1 or index.max() >= 3 * n):
        raise DatasetError(
            f"{label}: hessian_index {index.tolist()} out of range: -1 (none) or 0..{3 * n - 1}"
        )
    if np.any(rows[:, index < 0] != 0.0):
        raise DatasetError(f"{label}: a padded Hessian row (index -1) must be all zeros")


def _frame_from_atoms(atoms: Atoms, molecule: str | None, with_velocities: bool | None) -> dict:
    results = getattr(atoms.calc, "results", {}) if atoms.calc is not None else {}
    info = atoms.info
    if with_velocities is None:
        with_velocities = "momenta" in atoms.arrays
    velocities = None
    if with_velocities:
        velocities = units.velocities_ase_to_internal(atoms.get_velocities())
    charge = info.get("charge")
    return {
        keys.ATOMIC_NUMBERS: atoms.numbers,
        keys.POSITIONS: atoms.positions,
        keys.CELL: np.asarray(atoms.cell[:], dtype=float),
        keys.PBC: np.asarray(atoms.pbc, dtype=bool),
        keys.ENERGY: results.get(keys.ENERGY),
        keys.FORCES: results.get(keys.FORCES),
        keys.STRESS: results.get(keys.STRESS),
        keys.VELOCITIES: velocities,
        keys.TIME: info.get(keys.TIME),
        keys.KINETIC_ENERGY: info.get(keys.KINETIC_ENERGY),
        keys.POTENTIAL_ENERGY: info.get(keys.POTENTIAL_ENERGY),
        "charge": None if charge is None else int(charge),
        keys.HESSIAN_INDEX: info.get(keys.HESSIAN_INDEX),
        keys.HESSIAN_ROWS: info.get(keys.HESSIAN_ROWS),
        keys.NAME: molecule or info.get(keys.NAME) or atoms.get_chemical_formula(),
        keys.SMILES: info.get(keys.SMILES) or "",
    }


# ---------------------------------------------------------------------- repair / append


def _open_for_append(path: Path):
    """Open ``path`` for appending. A file left open by a killed writer (HDF5 refuses to
    open it for writing) or holding rows beyond its commit marker is repaired first."""
    import h5py

    try:
        h5 = h5py.File(path, "a", libver="latest")
    except OSError:
        try:
            repair(path)
        except UncommittedFileError:  # killed before its first frame: nothing to keep
            path.unlink()
            return None
        return h5py.File(path, "a", libver="latest")
    if _has_uncommitted_tail(h5):
        h5.close()
        repair(path)
        return h5py.File(path, "a", libver="latest")
    return h5


def _has_uncommitted_tail(h5) -> bool:
    if FIELDS[keys.N_ATOMS].path not in h5:
        return False
    s, total = committed_counts(h5)
    for f in FIELDS.values():
        if f.path in h5 and h5[f.path].shape[0] != (total if f.per_atom else s):
            return True
    return False


def repair(path: str | Path) -> int:
    """Rewrite ``path`` keeping only its committed frames (and molecules, splits, attributes);
    returns the number of frames kept. Used by ``DatasetWriter(mode="a")`` after a crash."""
    import h5py

    path = Path(path)
    tmp = path.with_name(path.name + ".repair.tmp")
    with open_h5_for_reading(path) as src:
        if N_STRUCTURES_ATTR not in src.attrs:
            raise DatasetError(
                f"{path}: no commit marker (root attribute {N_STRUCTURES_ATTR!r}); "
                "it was not written by mlff_distiller and cannot be repaired"
            )
        has_data = FIELDS[keys.N_ATOMS].path in src
        s, total = committed_counts(src) if has_data else (0, 0)
        with h5py.File(tmp, "w", libver="latest") as dst:
            for key, value in src.attrs.items():
                dst.attrs[key] = value
            _copy_group(src, dst, s, total)
            dst.attrs[N_STRUCTURES_ATTR] = s
            dst.attrs[N_ATOMS_TOTAL_ATTR] = total
            if COMMIT_DATASET in dst:
                dst[COMMIT_DATASET][:] = [s, total]
    os.replace(tmp, path)
    return s


def _copy_group(src, dst, s: int, total: int, block_rows: int = 1 << 20) -> None:
    by_path = {f.path: f for f in FIELDS.values()}
    for name, item in src.items():
        if hasattr(item, "keys"):  # a group
            group = dst.create_group(name)
            for key, value in item.attrs.items():
                group.attrs[key] = value
            _copy_group(item, group, s, total, block_rows)
            continue
        path = item.name.lstrip("/")
        field = by_path.get(path)
        rows = item.shape[0] if field is None else (total if field.per_atom else s)
        rows = min(rows, item.shape[0]) if item.shape else 0
        if not item.shape:
            dst.create_dataset(name, data=item[()])
            continue
        out = dst.create_dataset(
            name,
            shape=(rows, *item.shape[1:]),
            maxshape=(None, *item.shape[1:]),
            dtype=item.dtype,
            chunks=item.chunks or True,
        )
        for start in range(0, rows, block_rows):
            stop = min(rows, start + block_rows)
            out[start:stop] = item[start:stop]
        for key, value in item.attrs.items():
            out.attrs[key] = value


def read_root_attrs(path: str | Path) -> dict:
    """Decoded root attributes of a dataset file."""
    with open_h5_for_reading(path) as h5:
        return {k: decode_attr(v) for k, v in h5.attrs.items()}
