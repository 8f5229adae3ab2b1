"""Evaluate a student on a dataset (and optionally against a teacher run live): numbers, parity
plots, timings.

:func:`evaluate_student` writes into ``out``::

    metrics.json           every number below
    parity_energy.png      energy per atom, student vs reference
    parity_forces.png      force components, student vs reference (and vs the teacher if run)

Numbers: energy MAE (meV/atom and meV), force MAE and RMSE (meV/Å), force cosine similarity,
each overall, per element and per molecule; ms per energy+forces call of the student (ASE
calculator, analytical forces) and of the teacher on the same structure, side by side.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from ase import Atoms

from mlff_distiller import keys
from mlff_distiller.evaluation.metrics import (
    error_summary,
    per_element_force_errors,
    per_group_errors,
)


@dataclass
class Predictions:
    """Flat predictions against references. Per structure: (S,); per atom: (N, ...)."""

    energy_pred: np.ndarray
    energy_ref: np.ndarray
    forces_pred: np.ndarray  # (N, 3) eV/Å
    forces_ref: np.ndarray
    n_atoms: np.ndarray  # (S,)
    atomic_numbers: np.ndarray  # (N,)
    molecules: np.ndarray  # (S,) a name per structure

    def summary(self) -> dict:
        """Overall, per element and per molecule errors."""
        args = (self.energy_pred, self.energy_ref, self.forces_pred, self.forces_ref)
        return {
            "overall": error_summary(*args, self.n_atoms),
            "per_element": per_element_force_errors(
                self.forces_pred, self.forces_ref, self.atomic_numbers
            ),
            "per_molecule": per_group_errors(*args, self.n_atoms, self.molecules),
        }


def molecule_names(dataset, indices: np.ndarray) -> np.ndarray:
    """A molecule name per structure of ``indices`` (the dataset's names, else its ids)."""
    ids = np.asarray(dataset.molecule_ids)[indices]
    names = list(getattr(dataset, "molecule_names", []) or [])
    if names:
        return np.array([names[i] if 0 <= i < len(names) else str(i) for i in ids])
    return ids.astype(str)


def predict_dataset(
    model: torch.nn.Module,
    dataset,
    indices: np.ndarray | None = None,
    batch_size: int = 64,
    method: str = "analytical",
) -> Predictions:
    """Student energies and forces on the structures ``indices`` of ``dataset`` (all if None)."""
    indices = np.arange(len(dataset)) if indices is None else np.sort(np.asarray(indices))
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    e_pred, e_ref, f_pred, f_ref, counts, numbers = [], [], [], [], [], []
    for start in range(0, len(indices), batch_size):
        batch = dataset.get_batch(indices[start : start + batch_size], dtype=dtype, device=device)
        out = model.energy_and_forces(batch, method=method)
        e_pred.append(out[keys.ENERGY].detach().double().cpu().numpy())
        f_pred.append(out[keys.FORCES].detach().double().cpu().numpy())
        e_ref.append(batch.labels[keys.ENERGY].double().cpu().numpy())
        f_ref.append(batch.labels[keys.FORCES].double().cpu().numpy())
        counts.append(batch.atoms_per_system.cpu().numpy())
        numbers.append(batch.atomic_numbers.cpu().numpy())
    return Predictions(
        np.concatenate(e_pred),
        np.concatenate(e_ref),
        np.concatenate(f_pred),
        np.concatenate(f_ref),
        np.concatenate(counts),
        np.concatenate(numbers),
        molecule_names(dataset, indices),
    )


def teacher_labels(calculator, structures: list[Atoms]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Energies (S,) and forces [(n_i, 3)] of ``calculator`` (an ASE calculator) run live."""
    energies, forces = [], []
    for atoms in structures:
        atoms = atoms.copy()
        atoms.calc = calculator
        energies.append(atoms.get_potential_energy())
        forces.append(atoms.get_forces())
    return np.array(energies), forces


def ms_per_call(
    calculator, atoms: Atoms, repeats: int = 20, warmup: int = 3, budget_s: float = 20.0
) -> float:
    """Median wall time (ms) of one energy+forces call of ``calculator`` on ``atoms``.

    Each call moves the atoms a little so that no calculator can serve a cached result.
    ``budget_s`` caps the total time (slow teachers get fewer repeats).
    """
    atoms = atoms.copy()
    atoms.calc = calculator
    rng = np.random.default_rng(0)
    base = atoms.get_positions()

    def call() -> float:
        atoms.set_positions(base + rng.normal(scale=1e-3, size=base.shape))
        t0 = time.perf_counter()
        atoms.get_potential_energy()
        atoms.get_forces()
        return time.perf_counter() - t0

    for _ in range(warmup):
        call()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats and (time.perf_counter() - start < budget_s or len(times) < 3):
        times.append(call())
    return float(np.median(times) * 1000.0)


def parity_plot(
    series: list[tuple[str, np.ndarray, np.ndarray]], xlabel: str, ylabel: str, path: Path
) -> Path:
    """Scatter of (reference, prediction) pairs per series with the y = x line; PNG at path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    lo, hi = np.inf, -np.inf
    for label, ref, pred in series:
        ax.scatter(ref, pred, s=3, alpha=0.4, label=label, rasterized=True)
        lo, hi = min(lo, ref.min(), pred.min()), max(hi, ref.max(), pred.max())
    ax.plot([lo, hi], [lo, hi], color="k", lw=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_aspect("equal")
    if len(series) > 1:
        ax.legend(markerscale=4, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _sample(values: np.ndarray, limit: int = 20_000, seed: int = 0) -> np.ndarray:
    if len(values) <= limit:
        return np.arange(len(values))
    return np.sort(np.random.default_rng(seed).choice(len(values), limit, replace=False))


def write_parity_plots(pred: Predictions, out: Path, name: str = "student") -> list[Path]:
    """parity_energy.png (eV/atom, shifted by the reference mean) and parity_forces.png."""
    e_ref = pred.energy_ref / pred.n_atoms
    e_pred = pred.energy_pred / pred.n_atoms
    offset = e_ref.mean()
    paths = [
        parity_plot(
            [(name, e_ref - offset, e_pred - offset)],
            f"reference energy - {offset:.3f} (eV/atom)",
            f"{name} energy - {offset:.3f} (eV/atom)",
            out / "parity_energy.png",
        )
    ]
    f_ref, f_pred = pred.forces_ref.ravel(), pred.forces_pred.ravel()
    keep = _sample(f_ref)
    paths.append(
        parity_plot(
            [(name, f_ref[keep], f_pred[keep])],
            "reference force component (eV/Å)",
            f"{name} force component (eV/Å)",
            out / "parity_forces.png",
        )
    )
    return paths


def evaluate_student(
    model_path: str | Path,
    data_path: str | Path,
    out: str | Path,
    teacher: str | None = None,
    max_teacher_frames: int = 50,
    split: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Evaluate the saved student at ``model_path`` on the dataset ``data_path``.

    ``split``: a stored split part to evaluate on (``"test"`` or ``"NAME:PART"``), else all frames.
    ``teacher``: a registry name; the teacher then labels up to ``max_teacher_frames`` frames
    live, the student is scored against it too, and both are timed on the first structure.
    Returns the dict written to ``out/metrics.json``.
    """
    from mlff_distiller.data.hdf5 import Dataset
    from mlff_distiller.md.calculator import StudentCalculator
    from mlff_distiller.models.io import load_model

    say = progress or (lambda msg: None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = load_model(model_path)
    dataset = Dataset(data_path)
    indices = stored_split(dataset, split) if split else np.arange(len(dataset))
    say(f"student on {len(indices)} structures of {data_path}")
    pred = predict_dataset(model, dataset, indices)
    result: dict = {
        "model": str(model_path),
        "data": str(data_path),
        "split": split or "all",
        "student_vs_labels": pred.summary(),
    }
    plots = write_parity_plots(pred, out)

    first = dataset[int(indices[0])]
    student_calc = StudentCalculator(model, forces="analytical")
    timing = {"structure": first.get_chemical_formula(), "n_atoms": len(first)}
    say("timing the student")
    timing["student_ms_per_call"] = ms_per_call(student_calc, first)

    if teacher is not None:
        from mlff_distiller.teachers import get_teacher

        calc = get_teacher(teacher)
        pick = indices[
            np.linspace(0, len(indices) - 1, min(max_teacher_frames, len(indices))).astype(int)
        ]
        say(f"teacher {teacher} on {len(pick)} structures")
        structures = [dataset[int(i)] for i in pick]
        t_energy, t_forces = teacher_labels(calc, structures)
        sub = predict_dataset(model, dataset, pick)
        vs_teacher = Predictions(
            sub.energy_pred,
            t_energy,
            sub.forces_pred,
            np.concatenate(t_forces),
            sub.n_atoms,
            sub.atomic_numbers,
            sub.molecules,
        )
        result["teacher"] = teacher
        result["student_vs_teacher"] = vs_teacher.summary()
        plots.append(
            parity_plot(
                [(f"vs {teacher}", vs_teacher.forces_ref.ravel(), vs_teacher.forces_pred.ravel())],
                f"{teacher} force component (eV/Å)",
                "student force component (eV/Å)",
                out / "parity_forces_teacher.png",
            )
        )
        say(f"timing the teacher {teacher}")
        timing["teacher"] = teacher
        timing["teacher_ms_per_call"] = ms_per_call(calc, first, repeats=10)
        timing["speedup"] = timing["teacher_ms_per_call"] / timing["student_ms_per_call"]
    result["timing"] = timing
    result["plots"] = [p.name for p in plots]
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    return result


def stored_split(dataset, split: str) -> np.ndarray:
    """Indices of a stored split part: ``"test"`` (of the split named ``default``) or
    ``"NAME:PART"``."""
    from mlff_distiller.data.splits import load_split

    name, _, part = split.rpartition(":")
    parts = load_split(dataset.path, name or "default")
    if part not in parts:
        raise ValueError(f"split part {part!r} unknown: choose one of {sorted(parts)}")
    return np.asarray(parts[part])


def format_summary(result: dict) -> str:
    """A markdown table of the headline numbers of :func:`evaluate_student`'s result."""
    rows = [
        "| comparison | structures | energy MAE (meV/atom) | force MAE (meV/Å) "
        "| force RMSE (meV/Å) | force cosine | reference force std (meV/Å) |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, label in (
        ("student_vs_labels", "student vs labels"),
        ("student_vs_teacher", f"student vs {result.get('teacher')} (live)"),
    ):
        if key not in result:
            continue
        o = result[key]["overall"]
        rows.append(
            f"| {label} | {o['n_structures']} | {o['energy_mae_mev_per_atom']:.2f} "
            f"| {o['force_mae_mev_per_a']:.1f} | {o['force_rmse_mev_per_a']:.1f} "
            f"| {o['force_cosine']:.4f} | {o['force_std_mev_per_a']:.0f} |"
        )
    t = result.get("timing", {})
    if t:
        rows += [
            "",
            "| structure | atoms | student ms/call | teacher | teacher ms/call | speed-up |",
            "|---|---|---|---|---|---|",
        ]
        teacher_ms = t.get("teacher_ms_per_call")
        rows.append(
            f"| {t['structure']} | {t['n_atoms']} | {t['student_ms_per_call']:.2f} "
            f"| {t.get('teacher', '-')} | "
            + (f"{teacher_ms:.2f} | {t['speedup']:.1f}x |" if teacher_ms else "- | - |")
        )
    return "\n".join(rows)
