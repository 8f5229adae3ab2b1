"""Summary statistics of an HDF5 dataset (streamed chunk by chunk) and their rich rendering."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mlff_distiller import keys
from mlff_distiller.data.hdf5_reader import Dataset
from mlff_distiller.data.schema import FIELDS, SPLITS, UNITS

CHUNK_ROWS = 1 << 20


class _Running:
    """Streaming count/mean/std/min/max/mean-abs over chunks of values."""

    def __init__(self) -> None:
        self.n = 0
        self.total = 0.0
        self.total_sq = 0.0
        self.total_abs = 0.0
        self.lo = np.inf
        self.hi = -np.inf

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        if x.size == 0:
            return
        self.n += x.size
        self.total += float(x.sum())
        self.total_sq += float((x * x).sum())
        self.total_abs += float(np.abs(x).sum())
        self.lo = min(self.lo, float(x.min()))
        self.hi = max(self.hi, float(x.max()))

    def result(self) -> dict:
        if self.n == 0:
            return {}
        mean = self.total / self.n
        var = max(self.total_sq / self.n - mean * mean, 0.0)
        return {
            "mean": mean,
            "std": var**0.5,
            "min": self.lo,
            "max": self.hi,
            "mean_abs": self.total_abs / self.n,
            "rms": (self.total_sq / self.n) ** 0.5,
        }


def summarize(path: str | Path) -> dict:
    """Counts and label statistics of a dataset, without loading it whole."""
    from ase.data import chemical_symbols

    with Dataset(path) as ds:
        s = len(ds)
        out: dict = {
            "path": str(path),
            "n_structures": s,
            "n_atoms": ds.n_atoms_total,
            "atoms_per_structure": (
                (int(ds.n_atoms.min()), float(ds.n_atoms.mean()), int(ds.n_atoms.max()))
                if s
                else (0, 0.0, 0)
            ),
            "attrs": ds.attrs,
            "fields": ds.fields,
        }
        z_counts = np.zeros(119, dtype=np.int64)
        stats = {k: _Running() for k in ds.fields if k in UNITS and k != keys.CELL}
        force_norm = _Running()
        energy_per_atom = _Running()
        h5 = ds._h5
        n_total = ds.n_atoms_total
        for start in range(0, n_total, CHUNK_ROWS):
            stop = min(n_total, start + CHUNK_ROWS)
            z = h5[FIELDS[keys.ATOMIC_NUMBERS].path][start:stop]
            z_counts += np.bincount(z, minlength=119)[:119]
            for key in stats:
                if FIELDS[key].per_atom:
                    block = h5[FIELDS[key].path][start:stop]
                    if key != keys.POSITIONS:
                        stats[key].add(block)
                    if key == keys.FORCES:
                        force_norm.add(np.linalg.norm(block, axis=1))
        for start in range(0, s, CHUNK_ROWS):
            stop = min(s, start + CHUNK_ROWS)
            for key in stats:
                if not FIELDS[key].per_atom:
                    block = h5[FIELDS[key].path][start:stop]
                    stats[key].add(block)
                    if key == keys.ENERGY:
                        energy_per_atom.add(block / ds.n_atoms[start:stop])
        out["elements"] = {chemical_symbols[z]: int(c) for z, c in enumerate(z_counts) if c}
        mol_counts = np.bincount(ds.molecule_ids, minlength=len(ds.molecule_names))
        out["molecules"] = [
            (name, smiles, int(c))
            for name, smiles, c in zip(ds.molecule_names, ds.molecule_smiles, mol_counts)
        ]
        labels = {k: r.result() for k, r in stats.items() if k != keys.POSITIONS and r.n}
        if force_norm.n:
            labels["|forces|"] = force_norm.result()
        if energy_per_atom.n:
            labels["energy / atom"] = energy_per_atom.result()
        out["labels"] = labels
        out["splits"] = {
            name: {part: int(h5[f"{SPLITS}/{name}/{part}"].shape[0]) for part in h5[SPLITS][name]}
            for name in (h5[SPLITS] if SPLITS in h5 else [])
        }
    return out


def render_summary(summary: dict):
    """A rich renderable (tables) of :func:`summarize` output."""
    from rich.console import Group
    from rich.table import Table

    attrs = summary["attrs"]
    lo, mean, hi = summary["atoms_per_structure"]
    overview = Table(title=f"dataset {summary['path']}", show_header=False, title_justify="left")
    overview.add_column("", style="bold")
    overview.add_column("")
    overview.add_row("structures", f"{summary['n_structures']:,}")
    overview.add_row("atoms", f"{summary['n_atoms']:,} ({lo}-{hi} per structure, mean {mean:.1f})")
    overview.add_row("elements", "  ".join(f"{el} {n:,}" for el, n in summary["elements"].items()))
    overview.add_row("molecules", str(len(summary["molecules"])))
    for key in ("teacher", "source", "source_format"):
        if attrs.get(key):
            overview.add_row(key.replace("_", " "), str(attrs[key]))
    if attrs.get("teacher_settings"):
        overview.add_row("teacher settings", str(attrs["teacher_settings"]))
    overview.add_row("format", f"{attrs.get('format', '?')} v{attrs.get('format_version', '?')}")
    overview.add_row("fields", ", ".join(summary["fields"]))
    for name, parts in summary["splits"].items():
        overview.add_row(f"split {name!r}", ", ".join(f"{p} {n}" for p, n in parts.items()))
    parts = [overview]

    mols = Table(title="molecules", title_justify="left")
    mols.add_column("id", justify="right")
    mols.add_column("name")
    mols.add_column("SMILES")
    mols.add_column("structures", justify="right")
    for i, (name, smiles, count) in enumerate(summary["molecules"][:20]):
        mols.add_row(str(i), name, smiles or "-", f"{count:,}")
    if len(summary["molecules"]) > 20:
        mols.add_row("...", f"{len(summary['molecules']) - 20} more", "", "")
    parts.append(mols)

    if summary["labels"]:
        stats = Table(title="labels", title_justify="left")
        for col in ("label", "unit", "mean", "std", "min", "max", "mean |x|"):
            stats.add_column(col, justify="left" if col in ("label", "unit") else "right")
        for key, r in summary["labels"].items():
            base = "energy" if key == "energy / atom" else key.strip("|")
            unit = UNITS.get(base, "")
            if key.startswith("|") or base != key:
                unit = unit + ("/atom" if base == "energy" else "")
            stats.add_row(
                key,
                unit,
                *(_num(r[c], base) for c in ("mean", "std", "min", "max", "mean_abs")),
            )
        parts.append(stats)
    return Group(*parts)


def _num(x: float, key: str) -> str:
    """Energies keep enough digits to show their spread; other labels 4 significant."""
    if key in (keys.ENERGY, keys.POTENTIAL_ENERGY) and abs(x) >= 1:
        return f"{x:.3f}"
    return f"{x:.4g}"
