"""Hessian-informed distillation: test force error per teacher call, forces only vs forces plus
a few Hessian rows per frame (Amin, Raja and Krishnapriyan, ICLR 2025: 1-4 random rows).

Setup. Teacher MD of ethanol (GFN2-xTB, Langevin, ``--temperature`` K, frames 20 fs apart):
replica 0 is the training pool, replica 1 gives the validation frames (model selection, the
same for every arm, not counted in the budget) and the held-out test frames. The pool is
labelled once by ``label_dataset`` with ``max(--rows)`` Hessian rows per frame (central
differences of the teacher's forces, 2 calls per row, for xTB; autograd for ANI-1x); an arm
with ``r`` rows uses a random ``r`` of them. For a budget of ``C`` teacher calls and seed ``s``:

- ``forces``: the first ``C`` frames of a seeded permutation of the pool (1 call each);
- ``hessian r``: the first ``C // (1 + c r)`` frames with ``r`` rows each, ``c`` the calls per
  row (2 for finite differences; ``--calls-per-row 1`` prices a row as one Hessian-vector
  product, what an autograd teacher pays);
- ``same frames r``: those frames without their rows (the control that isolates the rows).

Every arm trains the same ``size="fast"`` student for the same number of optimiser steps
(``--steps``; equal epochs would give a 13-frame arm 10x fewer updates than a 120-frame one),
validates on the shared validation frames, exports the best checkpoint and is scored on the
test frames: force MAE (meV/Å). The README table came from (niced, one thread; ~25 min on
2 busy cores; ``--weights 3,10,30,100 --budgets 60 --seeds 0`` was the pilot that chose
``hessian_weight`` 10 on the validation frames)::

    nice -n 19 python benchmarks/hessian.py --out runs/hessian --json runs/hessian/fd.json
    nice -n 19 python benchmarks/hessian.py --out runs/hessian --calls-per-row 1 \\
        --no-controls --seeds 0,1 --json runs/hessian/autograd_priced.json
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"  # before torch and tblite load their thread pools
os.environ.setdefault("MLFFD_COMPILE", "0")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mlff_distiller import keys  # noqa: E402
from mlff_distiller.data.hdf5 import Dataset, DatasetWriter  # noqa: E402
from mlff_distiller.data.splits import make_split  # noqa: E402
from mlff_distiller.data.structures import from_smiles  # noqa: E402
from mlff_distiller.models.io import load_model  # noqa: E402
from mlff_distiller.teachers import get_teacher  # noqa: E402
from mlff_distiller.teachers.hessian import hessian_rows  # noqa: E402
from mlff_distiller.teachers.labelling import HESSIAN_ATTR, HessianOptions, label_dataset  # noqa: E402
from mlff_distiller.teachers.sampling import SamplingConfig, sample  # noqa: E402
from mlff_distiller.training.config import TrainConfig  # noqa: E402
from mlff_distiller.training.trainer import train  # noqa: E402

TRAIN_NAME, VAL_NAME = "ethanol", "ethanol-val"


def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


# -- data ------------------------------------------------------------------------------------
def make_data(out: Path, args) -> dict:
    """Teacher MD (two replicas) and the labelled pool / held-out files (cached in ``out``)."""
    xtb = get_teacher("xtb")
    atoms = from_smiles("CCO", name=TRAIN_NAME, seed=0)[0]
    info = {}
    for replica, n_frames in ((0, args.pool), (1, args.val + args.test)):
        path = out / f"md_replica{replica}.h5"
        if not path.exists():
            cfg = SamplingConfig(
                temperature_k=args.temperature,
                dt_fs=0.5,
                production_fs=20.0 * (n_frames - 1),
                save_every=40,
                seed=replica,
            )
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sample(xtb, atoms, path, cfg)
            info[f"md_replica{replica}_s"] = time.perf_counter() - t0
    teacher_options = {"ensemble_size": 1} if args.teacher == "ani1x" else {}
    pool = out / f"pool_{args.teacher}_rows{max(args.rows)}.h5"
    held = out / f"held_{args.teacher}.h5"
    if not pool.exists():
        t0 = time.perf_counter()
        summary = label_dataset(
            out / "md_replica0.h5",
            args.teacher,
            pool,
            teacher_options,
            hessian=HessianOptions(rows_per_frame=max(args.rows), seed=11),
        )
        info["label_pool_s"] = time.perf_counter() - t0
        info["label_pool_teacher_calls"] = summary.teacher_calls
    if not held.exists():
        label_dataset(out / "md_replica1.h5", args.teacher, held, teacher_options)
    info["costs_ms"] = teacher_costs(args.teacher, teacher_options, pool)
    return {"pool": pool, "held": held, **info}


def teacher_costs(name: str, options: dict, pool: Path, repeats: int = 20) -> dict:
    """Measured ms of one energy+forces call and of one Hessian row (this teacher's method)."""
    teacher = get_teacher(name, **options)
    with Dataset(pool) as ds:
        atoms = ds[0]
        method = ds.attrs[HESSIAN_ATTR]["method"]
    atoms.calc = teacher
    atoms.get_forces()
    t0 = time.perf_counter()
    for _ in range(repeats):
        atoms.positions[0, 0] += 1e-4
        atoms.get_forces()
    force_ms = (time.perf_counter() - t0) / repeats * 1e3
    rows = np.arange(4)
    hessian_rows(atoms, teacher, rows, method=method)
    t0 = time.perf_counter()
    for _ in range(max(repeats // 4, 1)):
        atoms.positions[0, 0] += 1e-4
        hessian_rows(atoms, teacher, rows, method=method)
    row_ms = (time.perf_counter() - t0) / max(repeats // 4, 1) / len(rows) * 1e3
    return {"method": method, "force_call_ms": force_ms, "hessian_row_ms": row_ms}


def write_arm(path: Path, pool: Path, held: Path, frames, r: int, val_idx, seed: int) -> None:
    """The arm's training frames (``r`` of the pool's rows each, or none) and the validation
    frames (no rows: padded with -1 when the file holds rows)."""
    rng = np.random.default_rng([seed, 99])
    with Dataset(pool) as src, Dataset(held) as hv, DatasetWriter(path, flush_every=256) as w:
        r_pool = src.get_arrays(0)[keys.HESSIAN_INDEX].shape[0]
        for i in frames:
            arr = src.get_arrays(int(i))
            extra = {}
            if r:
                pick = np.sort(rng.choice(r_pool, size=r, replace=False))
                extra = {
                    "hessian_index": arr[keys.HESSIAN_INDEX][pick],
                    "hessian_rows": arr[keys.HESSIAN_ROWS][:, pick],
                }
            w.append_frame(
                arr[keys.ATOMIC_NUMBERS],
                arr[keys.POSITIONS],
                energy=float(arr[keys.ENERGY]),
                forces=arr[keys.FORCES],
                molecule=TRAIN_NAME,
                **extra,
            )
        for i in val_idx:
            arr = hv.get_arrays(int(i))
            extra = {}
            if r:
                n = len(arr[keys.ATOMIC_NUMBERS])
                extra = {"hessian_index": np.full(r, -1), "hessian_rows": np.zeros((n, r, 3))}
            w.append_frame(
                arr[keys.ATOMIC_NUMBERS],
                arr[keys.POSITIONS],
                energy=float(arr[keys.ENERGY]),
                forces=arr[keys.FORCES],
                molecule=VAL_NAME,
                **extra,
            )


def molecule_split_seed(path: Path) -> int:
    """A split seed whose by-molecule split puts the training molecule in train, the
    validation molecule in val."""
    with Dataset(path) as ds:
        val_id = ds.molecule_names.index(VAL_NAME)
        want = np.flatnonzero(ds.molecule_ids == val_id)
        for seed in range(100):
            split = make_split(ds, by="molecule", fractions=(0.5, 0.5, 0.0), seed=seed)
            if np.array_equal(split["val"], want):
                return seed
    raise RuntimeError("no split seed separates the validation frames")


def force_mae(model_dir: str, held: Path, test_idx) -> float:
    """Force MAE (meV/Å) of the exported student on the test frames."""
    model = load_model(model_dir).double()
    with Dataset(held) as ds:
        batch = ds.get_batch(np.sort(test_idx), dtype=torch.float64)
    out = model.energy_and_forces(batch, method="autograd")
    return float((out[keys.FORCES] - batch.labels[keys.FORCES]).abs().mean()) * 1000.0


# -- arms ------------------------------------------------------------------------------------
def run_arm(out: Path, data: dict, name: str, frames, r: int, weight: float, seed: int, args):
    arm_dir = out / "arms" / name
    result_path = arm_dir / "score.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    arm_dir.mkdir(parents=True, exist_ok=True)
    path = arm_dir / "data.h5"
    val_idx, test_idx = data["val_idx"], data["test_idx"]
    write_arm(path, data["pool"], data["held"], frames, r, val_idx, seed)
    n = len(frames)
    batch = min(args.batch_size, n)
    epochs = max(1, math.ceil(args.steps / math.ceil(n / batch)))
    cfg = TrainConfig(
        data=str(path),
        out=str(arm_dir / "run"),
        split="molecule",
        train_size=0.5,  # of the two molecules: the training and the validation frames
        val_size=0.5,
        split_seed=molecule_split_seed(path),
        size="fast",
        lr=args.lr,
        warmup_steps=50,
        batch_size=batch,
        val_batch_size=64,
        max_epochs=epochs,
        val_every_n_epochs=max(1, epochs // 10),
        patience=0,
        hessian_weight=weight if r else 0.0,
        seed=seed,
        progress_bar=False,
    )
    t0 = time.perf_counter()
    result = train(cfg)
    wall = time.perf_counter() - t0
    score = {
        "name": name,
        "frames": n,
        "rows": r,
        "hessian_weight": cfg.hessian_weight,
        "seed": seed,
        "steps": result.global_step,
        "train_wall_s": wall,
        "val_force_mae": result.best_val_force_mae,
        "test_force_mae": force_mae(result.model_path, data["held"], test_idx),
    }
    result_path.write_text(json.dumps(score, indent=2))
    return score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/hessian"))
    parser.add_argument("--teacher", default="xtb", choices=("xtb", "ani1x"))
    parser.add_argument("--budgets", type=ints, default=[30, 120])
    parser.add_argument("--rows", type=ints, default=[1, 2, 4])
    parser.add_argument("--seeds", type=ints, default=[0, 1, 2])
    parser.add_argument("--weights", type=floats, default=[10.0], help="hessian_weight(s)")
    parser.add_argument(
        "--calls-per-row",
        type=float,
        default=None,
        help="teacher calls one row costs (default: 2 for fd, 1 for autograd)",
    )
    parser.add_argument("--controls", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--temperature", type=float, default=400.0)
    parser.add_argument("--pool", type=int, default=400, help="frames of the training pool")
    parser.add_argument("--val", type=int, default=20)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    data = make_data(out, args)
    with Dataset(data["held"]) as ds:
        n_held = len(ds)
    data["val_idx"] = np.arange(0, n_held, max(n_held // args.val, 1))[: args.val]
    data["test_idx"] = np.setdiff1d(np.arange(n_held), data["val_idx"])[: args.test]
    method = data["costs_ms"]["method"]
    cpr = args.calls_per_row or (2.0 if method == "fd" else 1.0)
    with Dataset(data["pool"]) as ds:
        n_pool = len(ds)
    rows = []
    for seed in args.seeds:
        perm = np.random.default_rng(seed).permutation(n_pool)
        for budget in args.budgets:
            if budget > n_pool:
                raise SystemExit(f"budget {budget} > pool of {n_pool} frames")
            arms = [("forces", perm[:budget], 0, 0.0)]
            for r in args.rows:
                n = max(int(budget // (1 + cpr * r)), 1)
                for w in args.weights:
                    arms.append((f"hessian r={r} w={w:g}", perm[:n], r, w))
                if args.controls:
                    arms.append((f"same frames r={r}", perm[:n], 0, 0.0))
            for label, frames, r, w in arms:
                tag = f"{args.teacher}_c{cpr:g}_b{budget}_s{seed}_" + label.replace(" ", "_")
                score = run_arm(out, data, tag, frames, r, w, seed, args)
                score.update(budget=budget, arm=label, teacher_calls=len(frames) * (1 + cpr * r))
                rows.append(score)
                print(
                    f"budget {budget:4d} seed {seed} {label:22s} frames {len(frames):4d} "
                    f"calls {score['teacher_calls']:6.0f} test MAE {score['test_force_mae']:7.1f} "
                    f"val {score['val_force_mae']:7.1f} meV/Å  "
                    f"train {score['train_wall_s']:5.0f} s",
                    flush=True,
                )
    print_table(rows, args, data, cpr)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        meta = {k: (str(v) if isinstance(v, Path) else v) for k, v in data.items()
                if k not in ("val_idx", "test_idx")}  # fmt: skip
        args.json.write_text(json.dumps({"meta": meta, "calls_per_row": cpr, "runs": rows},
                                        indent=2, default=str))  # fmt: skip


def print_table(rows, args, data, cpr) -> None:
    costs = data["costs_ms"]
    print(
        f"\nteacher {args.teacher} ({costs['method']}): {costs['force_call_ms']:.2f} ms per "
        f"force call, {costs['hessian_row_ms']:.2f} ms per Hessian row; a row is priced "
        f"{cpr:g} call(s); {args.steps} optimiser steps per arm, student size fast"
    )
    print(f"{'budget':>6} {'arm':22s} {'frames':>6} {'calls':>6} {'test force MAE meV/Å':>22}")
    keys_ = sorted({(r["budget"], r["arm"]) for r in rows}, key=lambda k: (k[0], k[1]))
    for budget, arm in keys_:
        sel = [r for r in rows if r["budget"] == budget and r["arm"] == arm]
        maes = [r["test_force_mae"] for r in sel]
        spread = f" ± {statistics.stdev(maes):.1f}" if len(maes) > 1 else ""
        print(
            f"{budget:6d} {arm:22s} {sel[0]['frames']:6d} {sel[0]['teacher_calls']:6.0f} "
            f"{statistics.mean(maes):15.1f}{spread}  ({', '.join(f'{m:.1f}' for m in maes)})"
        )


if __name__ == "__main__":
    main()
