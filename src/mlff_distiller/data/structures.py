"""Structures in: 3D molecules from SMILES (RDKit) or from files (ASE, RDKit for sdf/mol).

Every structure comes out as an :class:`ase.Atoms` with ``info["name"]`` (and ``info["smiles"]``
when known). :func:`validate_atoms` checks a structure before it is handed to an engine and
raises :class:`StructureError` (a ``ValueError``) that names the structure and the problem.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers as _SYMBOL_TO_Z
from ase.data import chemical_symbols

from mlff_distiller import keys

MIN_DISTANCE = 0.5
"""Default smallest allowed interatomic distance, Å."""


class StructureError(ValueError):
    """A structure (SMILES, file or Atoms) that cannot be used, with the reason."""


# --------------------------------------------------------------------------- SMILES


def _rdkit_log_message(fn, *args):
    """Run an RDKit call and return (result, the text RDKit logged while doing it)."""
    from rdkit import rdBase

    rdBase.LogToPythonStderr()
    buf = io.StringIO()
    with contextlib.redirect_stderr(buf):
        result = fn(*args)
    lines = [line.split("] ", 1)[-1].strip() for line in buf.getvalue().splitlines()]
    return result, "; ".join(line for line in lines if line)


def parse_smiles(smiles: str):
    """Parse ``smiles`` into a sanitized RDKit ``Mol`` (implicit H), or raise StructureError
    with RDKit's reason, e.g. ``invalid SMILES 'C1CC' (unclosed ring)``."""
    from rdkit import Chem, rdBase

    if not isinstance(smiles, str) or not smiles.strip():
        raise StructureError(f"invalid SMILES {smiles!r} (empty); give e.g. 'CCO' for ethanol")
    mol, log = _rdkit_log_message(Chem.MolFromSmiles, smiles.strip(), False)
    if mol is None:
        reason = _short_reason(log) or "RDKit could not parse it"
        raise StructureError(f"invalid SMILES {smiles!r} ({reason})")
    try:
        with rdBase.BlockLogs():
            Chem.SanitizeMol(mol)
    except Exception as err:  # RDKit raises its own exception types (valence, kekulize)
        raise StructureError(f"invalid SMILES {smiles!r} ({_short_reason(str(err))})") from None
    return mol


def _short_reason(text: str) -> str:
    text = text.replace("SMILES Parse Error: ", "").strip()
    for tail in (" for input:", "; check for mistakes"):
        if tail in text:
            text = text.split(tail)[0]
    return text.strip().rstrip(".;:")


def rdkit_mol_from_smiles(
    smiles: str,
    seed: int = 0,
    n_conformers: int = 1,
    relax: bool = True,
    name: str | None = None,
):
    """Embed ``smiles`` in 3D: explicit hydrogens, ETKDGv3 with ``seed``, then MMFF94
    relaxation (UFF when MMFF has no parameters). Returns the RDKit ``Mol`` with
    ``n_conformers`` conformers (ids ``0..n-1``), useful where bonds are needed (GAFF2).

    Raises StructureError for invalid SMILES or when no conformer can be embedded.
    """
    from rdkit import Chem, rdBase
    from rdkit.Chem import AllChem

    if n_conformers < 1:
        raise StructureError(f"n_conformers must be >= 1, got {n_conformers}")
    mol = Chem.AddHs(parse_smiles(smiles))
    label = f"SMILES {smiles!r}" + (f" ({name})" if name and name != smiles else "")
    params = AllChem.ETKDGv3()
    params.randomSeed = int(seed)
    params.pruneRmsThresh = -1.0
    with rdBase.BlockLogs():
        conf_ids = list(AllChem.EmbedMultipleConfs(mol, n_conformers, params))
        if len(conf_ids) < n_conformers:  # second try from random coordinates
            params.useRandomCoords = True
            mol.RemoveAllConformers()
            conf_ids = list(AllChem.EmbedMultipleConfs(mol, n_conformers, params))
    if not conf_ids:
        raise StructureError(
            f"embedding failed for {label}: RDKit ETKDG found no 3D geometry "
            f"(seed {seed}); check the SMILES (strained rings, impossible stereo) or give a file"
        )
    if len(conf_ids) < n_conformers:
        raise StructureError(
            f"embedding failed for {label}: only {len(conf_ids)} of {n_conformers} conformers"
        )
    if relax:
        _relax(mol)
    return mol


def _relax(mol) -> None:
    """Relax every conformer in place with MMFF94, falling back to UFF, else leave as embedded."""
    from rdkit.Chem import AllChem

    if AllChem.MMFFHasAllMoleculeParams(mol):
        AllChem.MMFFOptimizeMoleculeConfs(mol, numThreads=1, maxIters=2000)
    elif AllChem.UFFHasAllMoleculeParams(mol):
        AllChem.UFFOptimizeMoleculeConfs(mol, numThreads=1, maxIters=2000)


def atoms_from_rdkit(mol, conf_id: int = 0) -> Atoms:
    """ASE ``Atoms`` (no cell, no pbc) from conformer ``conf_id`` of an RDKit ``Mol`` with H.

    ``info["charge"]`` is the total formal charge.
    """
    numbers = [a.GetAtomicNum() for a in mol.GetAtoms()]
    positions = np.asarray(mol.GetConformer(int(conf_id)).GetPositions(), dtype=float)
    atoms = Atoms(numbers=numbers, positions=positions)
    atoms.info["charge"] = int(sum(a.GetFormalCharge() for a in mol.GetAtoms()))
    return atoms


def from_smiles(
    smiles: str,
    n_conformers: int = 1,
    seed: int = 0,
    name: str | None = None,
    relax: bool = True,
) -> list[Atoms]:
    """3D structures of ``smiles``: one ``Atoms`` per conformer (explicit H, ETKDGv3 with
    ``seed``, MMFF94/UFF relaxation when ``relax``).

    ``info``: ``name`` (``name`` or the SMILES), ``smiles``, ``conformer`` (index), ``charge``.
    """
    mol = rdkit_mol_from_smiles(
        smiles, seed=seed, n_conformers=n_conformers, relax=relax, name=name
    )
    out = []
    for i, conf in enumerate(mol.GetConformers()):
        atoms = atoms_from_rdkit(mol, conf.GetId())
        atoms.info[keys.NAME] = name or smiles
        atoms.info[keys.SMILES] = smiles
        atoms.info["conformer"] = i
        validate_atoms(atoms, name=f"conformer {i} of {name or smiles!r}")
        out.append(atoms)
    return out


# --------------------------------------------------------------------------- files

_RDKIT_SUFFIXES = {".sdf", ".mol", ".sd"}


def read_structures(path: str | Path, index: str | int | slice = ":") -> list[Atoms]:
    """Read structures from any file ASE reads (xyz, extxyz, pdb, cif, ...), or sdf/mol via
    RDKit (hydrogens kept). ``info["name"]`` defaults to the file stem (plus ``_<i>`` for
    several frames without a name); calculator results in the file (extxyz energies/forces)
    are kept on ``atoms.calc``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"structure file not found: {path}")
    if path.suffix.lower() in _RDKIT_SUFFIXES:
        frames = _read_sdf(path)
        frames = _select(frames, index)
    else:
        import ase.io

        try:
            frames = ase.io.read(str(path), index=index)
        except Exception as err:  # ASE raises many types for unreadable files
            raise StructureError(
                f"cannot read structures from {path}: {type(err).__name__}: {err}; "
                "give a file ASE reads (xyz, extxyz, pdb, sdf, mol, cif)"
            ) from None
        if isinstance(frames, Atoms):
            frames = [frames]
    if not frames:
        raise StructureError(f"no structures in {path} (index {index!r})")
    for i, atoms in enumerate(frames):
        if not atoms.info.get(keys.NAME):
            atoms.info[keys.NAME] = path.stem if len(frames) == 1 else f"{path.stem}_{i}"
    return list(frames)


def _select(frames: list[Atoms], index) -> list[Atoms]:
    if isinstance(index, int):
        return [frames[index]]
    if isinstance(index, slice):
        return frames[index]
    if isinstance(index, str) and index.strip() not in ("", ":"):
        parts = [int(p) if p else None for p in index.split(":")]
        if len(parts) == 1:
            return [frames[parts[0]]]
        return frames[slice(*parts)]
    return frames


def _read_sdf(path: Path) -> list[Atoms]:
    from rdkit import Chem, rdBase

    with rdBase.BlockLogs():
        supplier = Chem.SDMolSupplier(str(path), removeHs=False, sanitize=False)
        mols = list(supplier)
    out = []
    for i, mol in enumerate(mols):
        if mol is None or mol.GetNumConformers() == 0:
            raise StructureError(f"record {i} of {path} could not be read by RDKit")
        atoms = atoms_from_rdkit(mol, 0)
        name = mol.GetProp("_Name").strip() if mol.HasProp("_Name") else ""
        if name:
            atoms.info[keys.NAME] = name
        with contextlib.suppress(Exception):
            atoms.info[keys.SMILES] = Chem.MolToSmiles(Chem.RemoveHs(mol, sanitize=False))
        out.append(atoms)
    return out


# --------------------------------------------------------------------------- validation


def _as_numbers(elements: Iterable[int | str]) -> set[int]:
    out = set()
    for e in elements:
        if isinstance(e, str):
            if e not in _SYMBOL_TO_Z:
                raise ValueError(f"unknown element symbol {e!r}")
            out.add(_SYMBOL_TO_Z[e])
        else:
            out.add(int(e))
    return out


def validate_atoms(
    atoms: Atoms,
    supported_elements: Iterable[int | str] | None = None,
    min_distance: float = MIN_DISTANCE,
    engine: str | None = None,
    name: str | None = None,
) -> Atoms:
    """Check a structure and return it unchanged, or raise StructureError naming it.

    Checks: at least one atom; atomic numbers are real elements; every element is in
    ``supported_elements`` (symbols or numbers; the message names ``engine``); positions
    (n_atoms, 3) and cell are finite; no two atoms closer than ``min_distance`` Å
    (minimum image for periodic cells).
    """
    label = name or atoms.info.get(keys.NAME) or "structure"
    if len(atoms) == 0:
        raise StructureError(f"{label}: structure has no atoms")
    numbers = np.asarray(atoms.numbers)
    bad_z = sorted({int(z) for z in numbers if z < 1 or z >= len(chemical_symbols)})
    if bad_z:
        raise StructureError(f"{label}: unknown atomic number(s) {bad_z}")
    if label == "structure":
        label = atoms.get_chemical_formula()
    if supported_elements is not None:
        allowed = _as_numbers(supported_elements)
        missing = sorted({int(z) for z in numbers} - allowed)
        if missing:
            symbols = ", ".join(chemical_symbols[z] for z in missing)
            ok = ", ".join(chemical_symbols[z] for z in sorted(allowed))
            who = f"engine {engine!r}" if engine else "the chosen engine"
            raise StructureError(
                f"{label}: element(s) {symbols} not supported by {who} (supports {ok}); "
                "choose another engine or remove these atoms"
            )
    positions = np.asarray(atoms.positions, dtype=float)
    finite = np.isfinite(positions).all(axis=1)
    if not finite.all():
        first = int(np.flatnonzero(~finite)[0])
        raise StructureError(
            f"{label}: non-finite (NaN/inf) coordinates for {int((~finite).sum())} atom(s), "
            f"first atom {first} ({atoms.get_chemical_symbols()[first]}): {positions[first]}"
        )
    if not np.isfinite(np.asarray(atoms.cell[:], dtype=float)).all():
        raise StructureError(f"{label}: non-finite (NaN/inf) cell")
    if min_distance > 0 and len(atoms) > 1:
        i, j, d = _closest_pair(atoms)
        if d < min_distance:
            sym = atoms.get_chemical_symbols()
            raise StructureError(
                f"{label}: atoms {i} ({sym[i]}) and {j} ({sym[j]}) are {d:.3f} Å apart, "
                f"closer than {min_distance} Å; fix the geometry (overlapping or duplicated atoms)"
            )
    return atoms


def _closest_pair(atoms: Atoms) -> tuple[int, int, float]:
    """Indices and distance (Å) of the closest pair of atoms."""
    if atoms.pbc.any():
        d = atoms.get_all_distances(mic=True)
    else:
        pos = np.asarray(atoms.positions, dtype=float)
        if len(pos) > 3000:  # avoid an O(N^2) matrix for big systems
            return _closest_pair_tree(pos)
        diff = pos[:, None, :] - pos[None, :, :]
        d = np.sqrt((diff**2).sum(-1))
    np.fill_diagonal(d, math.inf)
    flat = int(np.argmin(d))
    i, j = divmod(flat, d.shape[1])
    return min(i, j), max(i, j), float(d[i, j])


def _closest_pair_tree(pos: np.ndarray) -> tuple[int, int, float]:
    from scipy.spatial import cKDTree

    dist, idx = cKDTree(pos).query(pos, k=2)
    i = int(np.argmin(dist[:, 1]))
    j = int(idx[i, 1])
    return min(i, j), max(i, j), float(dist[i, 1])
