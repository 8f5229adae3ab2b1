"""Import labelled data from other formats into mlff_distiller HDF5, and export to extxyz.

Formats (detected from the file, overridable with ``fmt``):

- ``rmd17``: revised MD17 npz (``nuclear_charges``, ``coords`` Å, ``energies`` kcal/mol,
  ``forces`` kcal/mol/Å)
- ``sgdml``: sGDML npz (``z``, ``R``, ``E``, ``F``; units from ``r_unit``/``e_unit`` when
  present, else Å and kcal/mol; ``energy_unit`` overrides)
- ``extxyz``: extended XYZ with ``energy`` (info) and ``forces`` (per atom), eV and eV/Å by
  default; other key names via ``energy_key``/``forces_key``
- ``ase-db``: an ASE database (``.db``, ``.json``) with calculator results
- ``ase``: anything else ASE (or RDKit for sdf/mol) reads; labels when the file carries them

Every importer converts to internal units (Å, eV, eV/Å) with :mod:`mlff_distiller.units`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from ase import Atoms

from mlff_distiller import keys, units
from mlff_distiller.data.hdf5_reader import Dataset
from mlff_distiller.data.hdf5_writer import DatasetWriter
from mlff_distiller.data.structures import StructureError, read_structures

FORMATS = ("rmd17", "sgdml", "extxyz", "ase-db", "ase")

# SMILES of the ten rMD17 molecules, so imported frames carry them
RMD17_SMILES = {
    "aspirin": "CC(=O)Oc1ccccc1C(=O)O",
    "azobenzene": "c1ccc(cc1)N=Nc1ccccc1",
    "benzene": "c1ccccc1",
    "ethanol": "CCO",
    "malonaldehyde": "O=CC=CO",
    "naphthalene": "c1ccc2ccccc2c1",
    "paracetamol": "CC(=O)Nc1ccc(O)cc1",
    "salicylic": "OC(=O)c1ccccc1O",
    "toluene": "Cc1ccccc1",
    "uracil": "O=C1C=CNC(=O)N1",
}


class DataImportError(ValueError):
    """A source file that cannot be imported (unknown format, missing keys, bad shapes)."""


def detect_format(path: str | Path) -> str:
    """Guess the format of ``path`` from its suffix and (for npz) its keys."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"import source not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            names = set(npz.files)
        if {"nuclear_charges", "coords", "energies"} <= names:
            return "rmd17"
        if {"R", "z"} <= names:
            return "sgdml"
        raise DataImportError(
            f"{path}: npz with keys {sorted(names)} is neither rMD17 (nuclear_charges, coords, "
            "energies, forces) nor sGDML (R, E, F, z); give --format"
        )
    if suffix in (".xyz", ".extxyz"):
        return "extxyz"
    if suffix in (".db",):
        return "ase-db"
    return "ase"


def iter_frames(
    path: str | Path,
    fmt: str | None = None,
    energy_unit: str | None = None,
    length_unit: str | None = None,
    energy_key: str = keys.ENERGY,
    forces_key: str = keys.FORCES,
    name: str | None = None,
) -> Iterator[dict]:
    """Frames of ``path`` as ``DatasetWriter.append_frame`` keyword dicts, internal units."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"import source not found: {path}")
    fmt = (fmt or detect_format(path)).lower()
    if fmt == "rmd17":
        yield from _rmd17(path, energy_unit or "kcal/mol", length_unit or "A", name)
    elif fmt == "sgdml":
        yield from _sgdml(path, energy_unit, length_unit, name)
    elif fmt in ("extxyz", "ase"):
        yield from _ase_file(path, energy_unit or "eV", energy_key, forces_key, name)
    elif fmt == "ase-db":
        yield from _ase_db(path, energy_unit or "eV", name)
    else:
        raise DataImportError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def import_file(
    src: str | Path,
    out: str | Path,
    fmt: str | None = None,
    energy_unit: str | None = None,
    length_unit: str | None = None,
    energy_key: str = keys.ENERGY,
    forces_key: str = keys.FORCES,
    name: str | None = None,
    attrs: dict | None = None,
    progress=None,
) -> int:
    """Import ``src`` into a new HDF5 dataset ``out``; returns the number of structures.

    ``progress``: optional callable ``progress(n_done)`` (for a progress bar).
    """
    src = Path(src)
    fmt = (fmt or detect_format(src)).lower()
    meta = {"source": str(src.name), "source_format": fmt, "teacher": _teacher_from(src, fmt)}
    meta.update(attrs or {})
    frames = iter_frames(src, fmt, energy_unit, length_unit, energy_key, forces_key, name)
    with DatasetWriter(out, mode="w", attrs=meta, flush_every=1000) as writer:
        for frame in frames:
            writer.append_frame(**frame)
            if progress is not None and len(writer) % 1000 == 0:
                progress(len(writer))
        n = len(writer)
    if n == 0:
        raise DataImportError(f"{src}: no structures found")
    if progress is not None:
        progress(n)
    return n


def _teacher_from(src: Path, fmt: str) -> str:
    if fmt == "rmd17":
        return "rMD17 reference (PBE/def2-SVP)"
    return f"imported from {src.name}"


# --------------------------------------------------------------------------- npz formats


def _rmd17(path: Path, energy_unit: str, length_unit: str, name: str | None) -> Iterator[dict]:
    with np.load(path, allow_pickle=False) as npz:
        missing = [k for k in ("nuclear_charges", "coords", "energies", "forces") if k not in npz]
        if missing:
            raise DataImportError(f"{path}: rMD17 npz lacks key(s) {missing}")
        z = np.asarray(npz["nuclear_charges"], dtype=np.int32)
        coords, energies, forces = npz["coords"], npz["energies"], npz["forces"]
    molecule = name or _rmd17_name(path)
    smiles = RMD17_SMILES.get(molecule.split("_")[0], "")
    yield from _frames_from_arrays(
        path, z, coords, energies, forces, energy_unit, length_unit, molecule, smiles
    )


def _rmd17_name(path: Path) -> str:
    parts = path.stem.split("_")
    if parts[0].lower() == "rmd17" and len(parts) > 1:
        return parts[1]
    return path.stem


def _sgdml(
    path: Path, energy_unit: str | None, length_unit: str | None, name: str | None
) -> Iterator[dict]:
    with np.load(path, allow_pickle=False) as npz:
        for k in ("z", "R"):
            if k not in npz:
                raise DataImportError(f"{path}: sGDML npz lacks key {k!r}")
        z = np.asarray(npz["z"], dtype=np.int32)
        coords = npz["R"]
        energies = npz["E"].reshape(-1) if "E" in npz else None
        forces = npz["F"] if "F" in npz else None
        e_unit = energy_unit or (str(npz["e_unit"]) if "e_unit" in npz else "kcal/mol")
        r_unit = length_unit or (str(npz["r_unit"]) if "r_unit" in npz else "A")
        file_name = str(npz["name"]) if "name" in npz else None
    molecule = name or file_name or path.stem
    yield from _frames_from_arrays(path, z, coords, energies, forces, e_unit, r_unit, molecule, "")


def _frames_from_arrays(
    path: Path,
    z: np.ndarray,
    coords: np.ndarray,
    energies: np.ndarray | None,
    forces: np.ndarray | None,
    energy_unit: str,
    length_unit: str,
    molecule: str,
    smiles: str,
) -> Iterator[dict]:
    """Per-frame dicts from stacked arrays: coords (n_frames, n_atoms, 3) etc."""
    n_atoms = len(z)
    if coords.ndim != 3 or coords.shape[1:] != (n_atoms, 3):
        raise DataImportError(
            f"{path}: coordinates have shape {coords.shape}, expected (n_frames, {n_atoms}, 3)"
        )
    if energies is not None and len(energies) != len(coords):
        raise DataImportError(f"{path}: {len(energies)} energies for {len(coords)} frames")
    if forces is not None and forces.shape != coords.shape:
        raise DataImportError(f"{path}: forces shape {forces.shape} != coordinates {coords.shape}")
    e_factor = _energy_factor(energy_unit, path)
    r_factor = _length_factor(length_unit, path)
    positions = coords * r_factor
    energies_ev = None if energies is None else energies * e_factor
    forces_ev = None if forces is None else forces * (e_factor / r_factor)
    for i in range(len(coords)):
        yield {
            "atomic_numbers": z,
            "positions": positions[i],
            "energy": None if energies_ev is None else float(energies_ev[i]),
            "forces": None if forces_ev is None else forces_ev[i],
            "molecule": molecule,
            "smiles": smiles or None,
        }


def _energy_factor(unit: str, path: Path) -> float:
    try:
        return float(units.energy_to_ev(1.0, unit))
    except KeyError:
        raise DataImportError(
            f"{path}: unknown energy unit {unit!r}; use eV, meV, kcal/mol, kJ/mol or Hartree"
        ) from None


def _length_factor(unit: str, path: Path) -> float:
    u = unit.strip().lower()
    if u in ("ang", "angstrom", "a", "å"):
        return 1.0
    try:
        return float(units.length_to_angstrom(1.0, unit))
    except KeyError:
        raise DataImportError(
            f"{path}: unknown length unit {unit!r}; use Ang, nm or Bohr"
        ) from None


# --------------------------------------------------------------------------- ASE formats


def _ase_file(
    path: Path, energy_unit: str, energy_key: str, forces_key: str, name: str | None
) -> Iterator[dict]:
    try:
        frames = read_structures(path, index=":")
    except StructureError as err:
        raise DataImportError(str(err)) from None
    factor = _energy_factor(energy_unit, path)
    stem = path.stem
    for i, atoms in enumerate(frames):
        energy, forces = _labels_of(atoms, energy_key, forces_key)
        label = atoms.info.get(keys.NAME)
        if label in (stem, f"{stem}_{i}"):
            label = None  # a default from the file name: group by formula instead
        yield _frame_from_atoms(atoms, energy, forces, factor, name or label)


def _ase_db(path: Path, energy_unit: str, name: str | None) -> Iterator[dict]:
    import ase.db

    factor = _energy_factor(energy_unit, path)
    try:
        db = ase.db.connect(str(path))
        rows = list(db.select())
    except Exception as err:  # ASE raises several types for unreadable databases
        raise DataImportError(f"{path}: cannot read as an ASE database: {err}") from None
    for row in rows:
        atoms = row.toatoms()
        energy, forces = _labels_of(atoms, keys.ENERGY, keys.FORCES)
        label = name or row.get("name") or None
        yield _frame_from_atoms(atoms, energy, forces, factor, label)


def _labels_of(atoms: Atoms, energy_key: str, forces_key: str):
    results = getattr(atoms.calc, "results", {}) if atoms.calc is not None else {}
    energy = results.get(energy_key, atoms.info.get(energy_key))
    forces = results.get(forces_key, atoms.arrays.get(forces_key))
    return energy, forces


def _frame_from_atoms(atoms: Atoms, energy, forces, factor: float, name: str | None) -> dict:
    charge = atoms.info.get("charge")
    return {
        "atomic_numbers": atoms.numbers,
        "positions": atoms.positions,
        "cell": np.asarray(atoms.cell[:], dtype=float),
        "pbc": np.asarray(atoms.pbc, dtype=bool),
        "energy": None if energy is None else float(energy) * factor,
        "forces": None if forces is None else np.asarray(forces, dtype=float) * factor,
        "molecule": name or atoms.get_chemical_formula(),
        "smiles": atoms.info.get(keys.SMILES) or None,
        "charge": None if charge is None else int(charge),
    }


# --------------------------------------------------------------------------- export


def export_extxyz(src: str | Path, out: str | Path, indices=None) -> int:
    """Write structures of the HDF5 dataset ``src`` to extended XYZ ``out`` with full float
    precision (positions Å, ``energy`` eV, ``forces`` eV/Å, plus name/smiles/time); ASE and
    other extxyz readers read it back. Returns the number of frames written."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with Dataset(src) as ds, open(out, "w") as fh:
        idx = range(len(ds)) if indices is None else indices
        n = 0
        for i in idx:
            fh.write(_extxyz_frame(ds.get_arrays(int(i))))
            n += 1
    return n


def _fmt(x) -> str:
    return repr(float(x))


def _extxyz_frame(arr: dict) -> str:
    from ase.data import chemical_symbols

    z = arr[keys.ATOMIC_NUMBERS]
    cols = ["species:S:1", "pos:R:3"]
    per_atom = [arr[keys.POSITIONS]]
    if keys.FORCES in arr:
        cols.append("forces:R:3")
        per_atom.append(arr[keys.FORCES])
    if keys.VELOCITIES in arr:
        cols.append("velocities_a_per_fs:R:3")
        per_atom.append(arr[keys.VELOCITIES])
    header = []
    cell = np.asarray(arr[keys.CELL])
    if np.any(cell):
        header.append('Lattice="' + " ".join(_fmt(v) for v in cell.reshape(-1)) + '"')
    header.append("Properties=" + ":".join(cols))
    if keys.ENERGY in arr:
        header.append(f"energy={_fmt(arr[keys.ENERGY])}")
    if keys.STRESS in arr:
        header.append('stress="' + " ".join(_fmt(v) for v in arr[keys.STRESS].reshape(-1)) + '"')
    for key in (keys.TIME, keys.KINETIC_ENERGY, keys.POTENTIAL_ENERGY):
        if key in arr:
            header.append(f"{key}={_fmt(arr[key])}")
    for key in (keys.NAME, keys.SMILES):
        if arr.get(key):
            header.append(f'{key}="{arr[key]}"')
    header.append('pbc="' + " ".join("T" if p else "F" for p in arr[keys.PBC]) + '"')
    block = np.concatenate(per_atom, axis=1)
    lines = [str(len(z)), " ".join(header)]
    for zi, row in zip(z, block):
        lines.append(f"{chemical_symbols[int(zi)]:<2s} " + " ".join(_fmt(v) for v in row))
    return "\n".join(lines) + "\n"
