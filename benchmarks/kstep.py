"""k-step hybrid MD benchmark: a small EGNN trained on MM (OpenMM GAFF2) trajectories of 33 small
molecules, run on held-out molecules under MM and (after MM -> QM fine-tuning on 10 molecules)
under xTB, with k = 4, 8, 12, next to plain velocity-Verlet MD from the same start with the same
corrector. First prints the total-energy error of single jumps from held-out trajectory frames
(the per-cycle bias behind a hybrid's drift).

Prints per (molecule, corrector, k): force-call ratio (reference calls / hybrid calls for the
same simulated time) and that ratio over k, wall-clock speed-up (network time included), NVE
energy drift of hybrid and reference (kJ/mol/ps), bond-length RMSE of the time-averaged bond
lengths (Å), distance-RDF difference (total variation, 0..1), mean temperatures, retries and
fallbacks, and how many jumps the total-energy check rejected. Modes: ``2call`` real forces at
both ends of the corrector step (two calls per cycle); ``1call`` the force head's forces for the
first half-kick (one call per cycle); both raw, without the total-energy check. ``2c+etol`` and
``2c+etS``: two calls with the integrator's total-energy check (``energy_tol_per_atom``, default
0.003 eV/atom) against the cycle start (``etol``) or the run start (``etS``, which also bounds
slow heating); a rejected jump is retried smaller, then replaced by plain MD (force calls).
``1c+resc``: one call plus the NVE energy rescale (total energy conserved by construction, so
its drift is not a measurement of the network).

Models: an EGNN trained on the MM windows (``mm_model``), then fine-tuned for rollout robustness
(``mm_robust``: noise on ``x_t, v_t`` with the true targets, plus the kinetic-energy loss); the
xTB model is fine-tuned from ``mm_robust`` on QM windows (``qm_robust``). Rows ``MM-0``: the
model before the robustness fine-tuning, for comparison.

    python benchmarks/kstep.py            # ~45 min on 1 CPU thread; reruns reuse the cache
    python benchmarks/kstep.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from ase.data import atomic_masses

from mlff_distiller.data.hdf5 import Dataset
from mlff_distiller.data.structures import from_smiles
from mlff_distiller.evaluation.kstep_eval import compare_hybrid_to_reference, jump_energy_error
from mlff_distiller.kstep.correctors import make_corrector
from mlff_distiller.kstep.dataset import (
    KStepWindows,
    build_windows,
    read_trajectory,
    to_on_step_velocities,
    velocities_are_half_step,
)
from mlff_distiller.kstep.integrator import HybridConfig
from mlff_distiller.kstep.topology import molecule_topology
from mlff_distiller.models.io import load_model
from mlff_distiller.teachers import get_teacher
from mlff_distiller.teachers.sampling import SamplingConfig, sample
from mlff_distiller.training.kstep_trainer import KStepTrainConfig, train_kstep

MM_TRAIN_SMALL = {
    "ethanol": "CCO",
    "propane": "CCC",
    "acetone": "CC(=O)C",
    "methylamine": "CN",
    "acetic_acid": "CC(=O)O",
    "dimethyl_ether": "COC",
    "propanal": "CCC=O",
}
MM_TRAIN = {  # H, C, N, O chemistry of small organics: alkanes to amides, none of MM_TEST
    **MM_TRAIN_SMALL,
    "methanol": "CO",
    "ethane": "CC",
    "butane": "CCCC",
    "isobutane": "CC(C)C",
    "propene": "C=CC",
    "propan_1_ol": "CCCO",
    "butan_2_ol": "CCC(C)O",
    "tert_butanol": "CC(C)(C)O",
    "ethylamine": "CCN",
    "dimethylamine": "CNC",
    "trimethylamine": "CN(C)C",
    "acetamide": "CC(N)=O",
    "n_methylacetamide": "CC(=O)NC",
    "methyl_acetate": "CC(=O)OC",
    "ethyl_formate": "CCOC=O",
    "formic_acid": "OC=O",
    "acetonitrile": "CC#N",
    "butanone": "CCC(C)=O",
    "ethylene_glycol": "OCCO",
    "methoxyethane": "CCOC",
    "diethyl_ether": "CCOCC",
    "cyclopropane": "C1CC1",
    "cyclobutane": "C1CCC1",
    "oxirane": "C1CO1",
    "propanoic_acid": "CCC(=O)O",
    "urea": "NC(N)=O",
    "hydroxyacetone": "CC(=O)CO",
    "acrolein": "C=CC=O",
}
MM_TEST = {"isopropanol": "CC(C)O", "acetaldehyde": "CC=O"}
QM_TRAIN = {  # xTB MD is ~50x dearer than GAFF2: a smaller set for the MM -> QM fine-tuning
    "ethanol": "CCO",
    "methylamine": "CN",
    "propane": "CCC",
    "acetone": "CC(=O)C",
    "acetic_acid": "CC(=O)O",
    "dimethyl_ether": "COC",
    "propanal": "CCC=O",
    "butan_2_ol": "CCC(C)O",
    "ethylamine": "CCN",
    "methyl_acetate": "CC(=O)OC",
}
QM_TEST = {"isopropanol_qm": "CC(C)O"}  # held out of MM and QM training
KS = (4, 8, 12)
DT = 0.5  # fs, no constraints: the hybrid's velocity-Verlet corrector is unconstrained


def sample_all(molecules, teacher_name, out_dir, cfg) -> dict[str, Path]:
    paths = {}
    for name, smiles in molecules.items():
        path = out_dir / f"{teacher_name}_{name}.h5"
        if not path.exists():
            atoms = from_smiles(smiles, name=name)[0]
            options = {"smiles": smiles} if teacher_name.startswith("openmm") else {}
            sample(get_teacher(teacher_name, **options), atoms, path, cfg)
        paths[name] = path
    return paths


def start_state(path: Path):
    with Dataset(path) as ds:
        arrays = ds.get_arrays(len(ds) - 1)
        atoms = ds[len(ds) - 1]
    return atoms, np.asarray(arrays["velocities"], dtype=float)


MODES = {  # label -> HybridConfig options
    "2call": {"predicted_forces": False, "energy_tol_per_atom": None},
    "1call": {"predicted_forces": True, "energy_tol_per_atom": None},
    "2c+etol": {"predicted_forces": False},
    "2c+etS": {"predicted_forces": False, "energy_anchor": "start"},
    "1c+resc": {"predicted_forces": True, "energy_rescale": True, "energy_tol_per_atom": None},
}
ROBUST = {"noise_positions": 0.01, "noise_velocities": 0.002}  # Å, Å/fs (hydrogen)


def evaluate(model, teacher, molecules, paths, cycles_fs, rows, label, modes=tuple(MODES)):
    for name, smiles in molecules.items():
        atoms, velocities = start_state(paths[name])
        topo = molecule_topology(f"bench-{name}", atoms.numbers, atoms.positions, smiles)
        masses = atomic_masses[atoms.numbers]
        options = {"smiles": smiles} if teacher.startswith("openmm") else {}
        for k, mode in ((k, mode) for k in KS for mode in modes):
            n_cycles = max(int(cycles_fs / ((k + 1) * DT)), 2)
            t0 = time.perf_counter()
            cmp = compare_hybrid_to_reference(
                model,
                lambda: make_corrector(teacher, atoms, **options),  # noqa: B023
                atoms.numbers,
                masses,
                atoms.positions,
                velocities,
                topo,
                HybridConfig(k=k, dt=DT, **MODES[mode]),
                n_cycles,
                molecule=name,
            )
            rows.append((label, mode, cmp))
            print(f"  {name} {label} k={k} {mode}: {time.perf_counter() - t0:.1f} s", flush=True)


def jump_errors(models, teacher, molecules, paths, every) -> None:
    """Per-jump total-energy error (eV/atom) of each model on each held-out trajectory."""
    print("| molecule | model | k | jumps | mean dE/atom | rms dE/atom | trajectory rms |")
    print("|---|---|---|---|---|---|---|")
    for name, smiles in molecules.items():
        traj = read_trajectory(paths[name])
        if velocities_are_half_step(traj, DT):
            traj = to_on_step_velocities(traj, DT)
        atoms = from_smiles(smiles, name=name)[0]
        atoms.positions = traj["positions"][0]
        options = {"smiles": smiles} if teacher.startswith("openmm") else {}
        masses = atomic_masses[traj["atomic_numbers"]]
        for label, model in models.items():
            for k in KS:
                corrector = make_corrector(teacher, atoms, **options)
                e = jump_energy_error(model, corrector, traj, masses, k, DT, every, name)
                print(f"| {name} | {label} | {k} | {e.n_jumps} | {e.network_mean:+.2e} | "
                      f"{e.network_rms:.2e} | {e.trajectory_rms:.2e} |", flush=True)


def print_table(rows) -> None:
    head = (
        f"| {'molecule':17s} | corr. | {'mode':7s} | {'k':>2s} | calls ref/hyb | ratio/k | "
        f"speed-up | drift hyb | drift ref | bond RMSE | RDF diff | T hyb | T ref | retry/fallb | "
        "E-rej |"
    )
    print(head)
    print("|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|")
    for label, mode, c in rows:
        print(
            f"| {c.molecule:17s} | {label:5s} | {mode:7s} | {c.k:2d} | "
            f"{c.force_call_ratio:13.2f} | {c.force_call_ratio / c.k:7.2f} | {c.speedup:8.2f} | "
            f"{c.hybrid_drift:9.3f} | "
            f"{c.reference_drift:9.3f} | {c.bond_rmse:9.4f} | {c.rdf_difference:8.3f} | "
            f"{c.hybrid_temperature:5.0f} | {c.reference_temperature:5.0f} | "
            f"{c.retries:4d}/{c.fallbacks:<6d} | {c.failures.get('energy', 0):5d} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--work",
        type=Path,
        default=Path("/tmp/mlffd_kstep_bench"),
        help="trajectories, windows and models are kept here; a rerun resumes/reuses them",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke run)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--robust-epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--train-set",
        choices=("large", "small"),
        default="large",
        help=f"MM training molecules: {len(MM_TRAIN)} (large) or {len(MM_TRAIN_SMALL)} (small)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    quick = args.quick
    mm_cfg = SamplingConfig(
        dt_fs=DT,
        friction_per_ps=0.1,
        equilibration_fs=200.0 if quick else 1000.0,
        production_fs=400.0 if quick else 3000.0,
        save_every=1,
        constraints="none",
    )
    qm_cfg = SamplingConfig(
        dt_fs=DT,
        friction_per_ps=0.1,
        equilibration_fs=50.0 if quick else 200.0,
        production_fs=100.0 if quick else 600.0,
        save_every=1,
        constraints="none",
    )
    t0 = time.perf_counter()
    print("sampling MM (OpenMM GAFF2) and QM (GFN2-xTB) reference trajectories ...", flush=True)
    mm_train = MM_TRAIN if args.train_set == "large" else MM_TRAIN_SMALL
    mm_paths = sample_all({**mm_train, **MM_TEST}, "openmm-gaff2", work, mm_cfg)
    qm_paths = sample_all({**QM_TRAIN, **QM_TEST}, "xtb", work, qm_cfg)
    print(f"  {time.perf_counter() - t0:.0f} s", flush=True)

    mm_windows = work / "mm_windows.h5"
    fractions = (0.85, 0.1, 0.05) if args.train_set == "large" else (0.8, 0.1, 0.1)
    build_windows(
        list(mm_paths.values()), mm_windows, ks=KS, stride=8 if not quick else 20,
        fractions=fractions, test_molecules=list(MM_TEST),
    )  # fmt: skip
    train = KStepWindows.from_file(mm_windows, "train", augment_rotations=True)
    val = KStepWindows.from_file(mm_windows, "val")
    model_cfg = {
        "hidden": 48,
        "n_layers": 3,
        "n_vectors": 8,
        "cutoff": 7.0,
        "max_delta_x": 2.5,
        "force_head": True,
    }
    loss = {"force": 0.01}
    epochs = 1 if quick else args.epochs
    t0 = time.perf_counter()
    print(f"training EGNN on {len(train)} MM windows ({len(val)} val), {epochs} epochs ...")
    mm = train_kstep(
        KStepTrainConfig(
            out_dir=str(work / "mm_model"), model=model_cfg, epochs=epochs, batch_size=32,
            lr=2e-3, warmup_steps=50, loss=loss,
        ),
        train, val, resume=True, progress=True,
    )  # fmt: skip
    print(f"  {time.perf_counter() - t0:.0f} s; last epoch {mm.history[-1]}", flush=True)
    robust_loss = {**loss, "kinetic": 0.1}
    robust_epochs = 1 if quick else args.robust_epochs
    t0 = time.perf_counter()
    print(f"robustness fine-tuning ({ROBUST}, kinetic-energy loss), {robust_epochs} epochs ...")
    mm_robust = train_kstep(
        KStepTrainConfig(
            out_dir=str(work / "mm_robust"), model=model_cfg, epochs=robust_epochs,
            batch_size=32, lr=5e-4, warmup_steps=20, init_from=str(mm.best_model),
            loss=robust_loss, **ROBUST,
        ),
        train, val, resume=True, progress=True,
    )  # fmt: skip
    print(f"  {time.perf_counter() - t0:.0f} s; last epoch {mm_robust.history[-1]}", flush=True)

    qm_windows = work / "qm_windows.h5"
    build_windows(
        list(qm_paths.values()), qm_windows, ks=KS, stride=4, fractions=(1.0, 0.0, 0.0),
        test_molecules=list(QM_TEST),
    )  # fmt: skip
    qm_train = KStepWindows.from_file(qm_windows, "train", augment_rotations=True)
    t0 = time.perf_counter()
    print(f"fine-tuning MM -> QM on {len(qm_train)} xTB windows (first layer frozen) ...")
    qm = train_kstep(
        KStepTrainConfig(
            out_dir=str(work / "qm_robust"), model=model_cfg, epochs=max(epochs // 2, 1),
            batch_size=32, lr=5e-4, warmup_steps=10, init_from=str(mm_robust.best_model),
            freeze_layers=1, loss=robust_loss, **ROBUST,
        ),
        qm_train, resume=True, progress=True,
    )  # fmt: skip
    print(f"  {time.perf_counter() - t0:.0f} s; last epoch {qm.history[-1]}", flush=True)

    print("\nenergy error of single jumps from held-out trajectory frames (eV/atom):")
    mm_models = {"MM-0": load_model(mm.best_model), "MM": load_model(mm_robust.best_model)}
    jump_errors(mm_models, "openmm-gaff2", MM_TEST, mm_paths, 200 if quick else 50)
    jump_errors({"xTB": load_model(qm.best_model)}, "xtb", QM_TEST, qm_paths, 20 if quick else 25)
    print()

    rows: list = []
    print("hybrid vs reference ...", flush=True)
    mm_fs = 100 if quick else 1000
    evaluate(load_model(mm.best_model), "openmm-gaff2", MM_TEST, mm_paths, mm_fs, rows, "MM-0",
             modes=("2call", "2c+etol"))  # fmt: skip
    evaluate(load_model(mm_robust.best_model), "openmm-gaff2", MM_TEST, mm_paths, mm_fs, rows, "MM")
    evaluate(load_model(qm.best_model), "xtb", QM_TEST, qm_paths, 30 if quick else 300, rows, "xTB")
    print()
    print_table(rows)


if __name__ == "__main__":
    main()
