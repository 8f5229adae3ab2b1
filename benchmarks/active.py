"""Active (``mlffd distill``) against passive distillation at an equal teacher-call budget.

Both arms end with a committee of students of the same size:

- **active**: ``run_distill`` (seed frames, then labels only where the committee is unsure, over
  a temperature ladder up to ``--top-temperature``), ``--budget`` teacher calls;
- **passive**: teacher NVT MD at ``--temperature`` from the relaxed structure, every one of its
  ``--budget`` steps labelled (each MD step is a teacher call), a committee trained on those
  frames for as long as the active arm trained in total.

Scored on the same held-out teacher NVT MD at ``--temperature`` (not counted in either budget):
committee-mean force MAE and the rank correlation of predicted and true per-structure force RMSE;
and by stability: ``--replicas`` student NVT MD replicas at ``--stability-temperature`` for
``--horizon-ps``, each until its first **failure**: a bond of the starting
structure (atoms closer than 1.2x the sum of covalent radii) stretched past 1.5x its starting
length, two atoms closer than 0.5 Å, or non-finite positions. Frames are checked every
``--check-fs``; a replica that never fails counts as the horizon (censored).

Why 800 K for stability: at 500 K a student distilled passively from 500 teacher calls failed in
only 1 of 8 replicas within 10 ps, so a 500 K test would need nanoseconds to separate the arms;
at 700 K the active arm did not fail within 40 ps. Raising the temperature makes the rare
excursions that end a long run common (the passive arm meets 800 K only by extrapolation from
its 500 K frames; the active ladder, 300, 400, 500 and ``--top-temperature`` 800 K by default,
explores it). Each failure is recorded with what failed (the definition is
:mod:`mlff_distiller.distill.failure`, shared with the loop), and the committee is compared
with the teacher on the last sound frame before it (a large force error there: a hole in the
student, not chemistry of the teacher).

Stability results are cached in ``--out`` per arm, temperature and horizon, not per model:
delete ``stability_*.json`` there after retraining an arm. Usage::

    python benchmarks/active.py --smiles 'CC(=O)Oc1ccccc1C(=O)O' --budget 500 --out runs/active
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from mlff_distiller import keys, thermo, units
from mlff_distiller.data.hdf5 import Dataset
from mlff_distiller.data.structures import from_smiles
from mlff_distiller.distill.config import DistillConfig
from mlff_distiller.distill.failure import failure, reference_bonds
from mlff_distiller.distill.holdout import score_holdout
from mlff_distiller.distill.loop import run_distill, save_committee, train_members
from mlff_distiller.md.runner import MDConfig, MDError, run_md
from mlff_distiller.models.io import load_model
from mlff_distiller.teachers import get_teacher
from mlff_distiller.teachers.sampling import SamplingConfig, sample, trajectory_temperatures
from mlff_distiller.training.config import TrainConfig


def time_to_failure(model_path: Path, atoms, args, out: Path) -> dict:
    """Per replica: ps until the first failure (the horizon when it never failed) and what
    failed (``times``, ``reasons``)."""
    model = load_model(model_path)
    bonds, ref = reference_bonds(atoms.numbers, atoms.positions)
    n_chunks = int(np.ceil(args.horizon_ps * 1000 / args.check_fs))
    alive = list(range(args.replicas))
    current = {r: atoms.copy() for r in alive}
    fail_ps = {r: args.horizon_ps for r in alive}
    reason = {r: "" for r in alive}
    before = {r: None for r in alive}  # positions of the last sound frame before a failure
    save_every = max(1, int(round(args.md_save_fs / args.dt)))
    for c in range(n_chunks):
        if not alive:
            break
        structures = [current[r] for r in alive]
        for r, a in zip(alive, structures, strict=True):
            a.info[keys.NAME] = f"r{r}"
        md = MDConfig(steps=int(round(args.check_fs / args.dt)), dt_fs=args.dt,
                      temperature_k=args.stability_temperature, friction_per_ps=1.0,
                      save_every=save_every, seed=args.seed + 7919 * c)
        path = out / f"chunk_{c:04d}.h5"
        try:
            run_md(model, structures, md, out=path, progress=False, dtype=torch.float32)
        except MDError:
            pass  # the frames saved so far are checked below; the blown-up replica fails
        with Dataset(path) as ds:
            n = len(ds) // len(alive)
            frames = [[ds.get_arrays(k * len(alive) + s) for k in range(n)]
                      for s in range(len(alive))]
        survivors = []
        for s, r in enumerate(alive):
            t0 = c * args.check_fs / 1000
            why = [failure(f[keys.POSITIONS], atoms.numbers, bonds, ref) for f in frames[s]]
            bad = [k for k, w in enumerate(why) if w]
            if bad or n * save_every < md.steps:  # failed, or the batch stopped early
                k = bad[0] if bad else n
                fail_ps[r] = t0 + k * save_every * args.dt / 1000
                reason[r] = why[k] if bad else "MD stopped (non-finite energy or forces)"
                sound = frames[s][k - 1][keys.POSITIONS] if k >= 1 else current[r].positions
                before[r] = np.asarray(sound).tolist()
                continue
            last = frames[s][-1]
            nxt = atoms.copy()
            nxt.positions = last[keys.POSITIONS]
            nxt.set_velocities(units.velocities_internal_to_ase(last[keys.VELOCITIES]))
            current[r] = nxt
            survivors.append(r)
        alive = survivors
        path.unlink()
    return {"times": [fail_ps[r] for r in range(args.replicas)],
            "reasons": [reason[r] for r in range(args.replicas)],
            "before_failure": [before[r] for r in range(args.replicas)]}


def teacher_check(model_path: Path, atoms, before: list, teacher: str) -> list[float]:
    """For each failed replica: the largest per-atom force error (eV/Å) of the committee mean
    against the teacher on the last sound frame before the failure. Above 0.5 eV/Å the student
    was already wrong there (an artefact of the student); well below, the teacher itself drives
    the structure towards what the definition calls a failure."""
    from mlff_distiller.data.batch import AtomsBatch

    model = load_model(model_path).double()
    calc = get_teacher(teacher)
    errors = []
    for positions in before:
        if positions is None:
            continue
        frame = atoms.copy()
        frame.positions = np.asarray(positions)
        frame.calc = calc
        f_teacher = frame.get_forces()
        batch = AtomsBatch.from_arrays([frame.numbers], [frame.positions], dtype=torch.float64)
        f_student = model.energy_and_forces(batch)[keys.FORCES].detach().numpy()
        errors.append(float(np.linalg.norm(f_student - f_teacher, axis=1).max()))
    return errors


def passive_arm(args, atoms, out: Path, train_minutes: float) -> Path:
    """Teacher MD of ``budget`` steps (all labelled), then a committee trained on them."""
    frames = out / "passive_frames.h5"
    if not frames.exists():
        # every step is a teacher call, so no equilibration: velocities drawn at 2T bring the
        # minimised structure to about T by equipartition within the first vibrations
        cfg = SamplingConfig(temperature_k=args.temperature, dt_fs=args.dt, equilibration_fs=0.0,
                             production_fs=(args.budget - 1) * args.dt, save_every=1,
                             seed=args.seed, initial_temperature_k=2 * args.temperature)
        sample(get_teacher(args.teacher), atoms, frames, cfg)
    configs = [
        TrainConfig(data=str(frames), size=args.size, train_size=0.9, val_size=0.1, lr=2e-3,
                    warmup_steps=50, ema_decay=0.99, batch_size=8, patience=0, max_epochs=100_000,
                    max_time_min=train_minutes, seed=args.seed + 101 * k,
                    out=str(out / f"passive_member_{k}"), progress_bar=False)
        for k in range(args.members)
    ]
    train_members(configs, workers=min(args.members, 2))
    save_committee([Path(c.out) / "model" for c in configs], out / "passive_committee")
    return out / "passive_committee"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smiles", default="CC(=O)Oc1ccccc1C(=O)O")
    parser.add_argument("--teacher", default="xtb")
    parser.add_argument("--budget", type=int, default=500)
    parser.add_argument("--temperature", type=float, default=500.0, help="test temperature, K")
    parser.add_argument("--top-temperature", type=float, default=800.0,
                        help="top of the active arm's ladder, K (300, 400, --temperature, top)")
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--size", default="fast")
    parser.add_argument("--replicas", type=int, default=8)
    parser.add_argument("--stability-temperature", type=float, default=800.0, help="K")
    parser.add_argument("--horizon-ps", type=float, default=150.0)
    parser.add_argument("--check-fs", type=float, default=500.0)
    parser.add_argument("--md-save-fs", type=float, default=5.0)
    parser.add_argument("--dt", type=float, default=0.5)
    parser.add_argument("--test-fs", type=float, default=2000.0)
    parser.add_argument("--max-uncertainty", type=float, default=0.15)
    parser.add_argument("--md-fs", type=float, default=2000.0, help="active MD per round")
    parser.add_argument("--max-iterations", type=int, default=8)
    parser.add_argument("--explore-replicas", type=int, default=8,
                        help="active student MD replicas per temperature and round")
    parser.add_argument("--explore-bias-kt", type=float, default=DistillConfig.explore_bias_kt,
                        help="active: uncertainty-biased exploration at the top temperature, kT")
    parser.add_argument("--first-train-minutes", type=float, default=2.0)
    parser.add_argument("--train-minutes", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=Path("runs/active"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    atoms = from_smiles(args.smiles, seed=args.seed)[0]

    test = out / f"test_{args.temperature:g}K.h5"
    if not test.exists():
        cfg = SamplingConfig(temperature_k=args.temperature, dt_fs=args.dt,
                             equilibration_fs=1000.0, production_fs=args.test_fs, save_every=10,
                             seed=args.seed + 5000)
        sample(get_teacher(args.teacher), atoms, test, cfg)

    t0 = time.perf_counter()
    ladder = sorted({300.0, 400.0, args.temperature, args.top_temperature})
    summary = run_distill(DistillConfig(
        smiles=[args.smiles], teacher=args.teacher, out=str(out / "active"), budget=args.budget,
        temperatures_k=ladder, members=args.members, size=args.size, holdout_fs=0.0,
        max_uncertainty=args.max_uncertainty, seed=args.seed, md_fs=args.md_fs,
        max_iterations=args.max_iterations, first_train_minutes=args.first_train_minutes,
        train_minutes=args.train_minutes, replicas=args.explore_replicas,
        explore_bias_kt=args.explore_bias_kt,
    ))
    active_min = (time.perf_counter() - t0) / 60
    member_runs = (out / "active").glob("iter_*/member_0/result.json")
    trained = sum(json.loads(p.read_text())["wall_s"] for p in member_runs) / 60
    passive = passive_arm(args, atoms, out, train_minutes=trained)

    rows, reasons, checks = [], {}, {}
    for name, path, calls in (("passive", passive, args.budget),
                              ("active", Path(summary["model_path"]), summary["teacher_calls"])):
        score = score_holdout(path, test)
        cache = out / f"stability_{name}_{args.stability_temperature:g}K_{args.horizon_ps:g}ps.json"
        if not cache.exists():  # a rerun reuses finished stability runs
            cache.write_text(json.dumps(time_to_failure(path, atoms, args, out)))
        result = json.loads(cache.read_text())
        if isinstance(result, list):  # written before reasons were recorded
            result = {"times": result, "reasons": [""] * len(result)}
        rows.append((name, calls, score, result["times"]))
        reasons[name] = result["reasons"]
        checks[name] = teacher_check(path, atoms, result.get("before_failure", []), args.teacher)
    print()
    print(f"# Active vs passive distillation: {args.smiles}, teacher {args.teacher}, budget "
          f"{args.budget} calls; force errors on teacher MD at {args.temperature:g} K; "
          f"stability at {args.stability_temperature:g} K ({args.replicas} replicas x "
          f"{args.horizon_ps:g} ps); active loop {active_min:.1f} min, "
          f"{trained:.1f} min training per member")
    for label, path in (("passive frames", out / "passive_frames.h5"), ("test frames", test)):
        measured = trajectory_temperatures(path)["measured_k"]
        if measured is None:  # written before the attribute existed
            measured = measured_temperature(path)
        print(f"{label}: measured {measured:.0f} K")
    print()
    print("| arm | teacher calls | test force MAE (meV/Å) | rank corr. RMSE (max) "
          "| failed replicas | median time to failure (ps) | failure times (ps) |")
    print("|---|---|---|---|---|---|---|")
    for name, calls, score, ttf in rows:
        n_fail = sum(t < args.horizon_ps for t in ttf)
        times = ", ".join(f"{t:.2f}" if t < args.horizon_ps else ">" for t in sorted(ttf))
        print(f"| {name} | {calls} | {score['holdout_force_mae_mev']:.1f} | "
              f"{score['holdout_spearman']:.2f} ({score['holdout_spearman_max']:.2f}) | "
              f"{n_fail}/{args.replicas} | {median_text(ttf, args.horizon_ps)} | {times} |")
    print()
    for name, why in reasons.items():
        print(f"{name} failures: " + ("; ".join(w for w in why if w) or "none recorded"))
        if checks[name]:
            errs = ", ".join(f"{e:.2f}" for e in sorted(checks[name]))
            print(f"  {name}: committee-vs-teacher largest atom force error on the last frame "
                  f"before each failure (eV/Å): {errs}")
    (p, a) = rows
    mae_ratio = p[2]["holdout_force_mae_mev"] / a[2]["holdout_force_mae_mev"]
    ttf_ratio = np.median(a[3]) / max(np.median(p[3]), 1e-9)
    bound = ">= " if np.median(a[3]) >= args.horizon_ps else ""
    print()
    print(f"force MAE passive / active: {mae_ratio:.2f}x (target >= 1.5x); time to first "
          f"failure active / passive (medians): {bound}{ttf_ratio:.1f}x (target >= 10x)")
    (out / "active_result.json").write_text(json.dumps(
        {"rows": [{"arm": n, "calls": c, **s, "time_to_failure_ps": t} for n, c, s, t in rows],
         "args": {k: str(v) for k, v in vars(args).items()}}, indent=2))


def measured_temperature(path: Path) -> float:
    """Mean kinetic temperature (K, 3N - 3 degrees of freedom) of the frames of ``path``."""
    from ase.data import atomic_masses

    with Dataset(path) as ds:
        frames = [ds.get_arrays(i) for i in range(len(ds))]
    masses = atomic_masses[frames[0][keys.ATOMIC_NUMBERS]]
    v = np.stack([f[keys.VELOCITIES] for f in frames])
    return float(np.mean(thermo.temperature(v, masses)))


def median_text(ttf: list[float], horizon: float) -> str:
    """The median time to failure; ``> horizon`` when at least half the replicas survived."""
    m = float(np.median(ttf))
    return f"> {horizon:g}" if m >= horizon else f"{m:.2f}"


if __name__ == "__main__":
    main()
