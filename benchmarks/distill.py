"""Distil PaiNN students from SevenNet-0 and from xTB on aspirin teacher MD; score them on
held-out teacher frames (the last 20% of each trajectory) and time them against SevenNet-0.

Bars (design documents): force MAE against the teacher <= 50 meV/Å; student energy+forces at
least 5x faster than SevenNet-0 per call on the CPU. Both are measured side by side on the same
structure with the same ASE-calculator call. Usage::

    python benchmarks/distill.py [--teachers xtb sevennet] [--train-minutes 8] [--out runs/distill]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from mlff_distiller.evaluation.demo import DemoConfig, run_demo
from mlff_distiller.evaluation.report import ms_per_call

ASPIRIN = "CC(=O)Oc1ccccc1C(=O)O"
FORCE_BAR = 50.0  # meV/Å
SPEED_BAR = 5.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teachers", nargs="+", default=["xtb", "sevennet"])
    parser.add_argument("--train-minutes", type=float, default=12.0)
    parser.add_argument("--sample-fs", type=float, default=3000.0)
    parser.add_argument("--temperature", type=float, default=300.0)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--out", default="runs/distill")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from rich.console import Console

    from mlff_distiller.data.hdf5 import Dataset
    from mlff_distiller.md.calculator import StudentCalculator
    from mlff_distiller.teachers import get_teacher

    console = Console()
    sevennet = get_teacher("sevennet")
    rows = []
    for teacher in args.teachers:
        out = Path(args.out) / teacher
        cfg = DemoConfig(
            smiles=[ASPIRIN], names=["aspirin"], teacher=teacher, temperature_k=args.temperature,
            sample_fs=args.sample_fs, save_every=4, train_minutes=args.train_minutes,
            max_epochs=100_000, hidden=args.hidden, n_interactions=3, md_fs=200.0,
            threads=args.threads,
            out=str(out), progress_bar=False,
        )
        report = run_demo(cfg, say=console.print)
        ev = report["evaluation"]
        held_out = ev["student_vs_labels"]["overall"]
        with Dataset(out / "test.h5") as ds:
            atoms = ds[0]
        student = StudentCalculator(report["training"]["model_path"], forces="analytical")
        # side by side, same structure, interleaved so that machine load hits both alike
        t_student, t_7net = [], []
        for _ in range(3):
            t_student.append(ms_per_call(student, atoms, repeats=30))
            t_7net.append(ms_per_call(sevennet, atoms, repeats=10))
        s_ms, n_ms = min(t_student), min(t_7net)
        rows.append({
            "teacher": teacher,
            "n_train": report["training"]["n_train"],
            "n_test": held_out["n_structures"],
            "epochs": report["training"]["epochs"],
            "force_mae": held_out["force_mae_mev_per_a"],
            "force_rmse": held_out["force_rmse_mev_per_a"],
            "force_std": held_out["force_std_mev_per_a"],
            "energy_mae": held_out["energy_mae_mev_per_atom"],
            "cosine": held_out["force_cosine"],
            "teacher_ms": ev["timing"]["teacher_ms_per_call"],
            "student_ms": s_ms,
            "sevennet_ms": n_ms,
            "md_teacher_check": report["student_md"]["aspirin"][
                "teacher_force_mae_on_student_md_mev_per_a"],
        })
    print()
    print(f"aspirin (21 atoms), teacher NVT MD at {args.temperature:g} K, {args.sample_fs:g} fs, "
          f"last 20% held out; PaiNN hidden {args.hidden}, 3 interactions, "
          f"{args.train_minutes:g} min CPU training each ({torch.get_num_threads()} threads)")
    print()
    print("| teacher | train frames | test frames | epochs | force MAE vs teacher (meV/Å) "
          f"| bar <= {FORCE_BAR:g} | force RMSE | teacher force std | energy MAE (meV/atom) "
          "| force cosine | teacher force MAE on 200 fs student MD (meV/Å) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ok = "yes" if r["force_mae"] <= FORCE_BAR else "no"
        print(f"| {r['teacher']} | {r['n_train']} | {r['n_test']} | {r['epochs']} "
              f"| {r['force_mae']:.1f} | {ok} | {r['force_rmse']:.1f} | {r['force_std']:.0f} "
              f"| {r['energy_mae']:.2f} | {r['cosine']:.4f} | {r['md_teacher_check']:.1f} |")
    print()
    print("| student of | student ms/call | teacher ms/call | SevenNet-0 ms/call "
          f"| speed-up vs SevenNet-0 | bar >= {SPEED_BAR:g}x |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        ratio = r["sevennet_ms"] / r["student_ms"]
        ok = "yes" if ratio >= SPEED_BAR else "no"
        print(f"| {r['teacher']} | {r['student_ms']:.2f} | {r['teacher_ms']:.2f} "
              f"| {r['sevennet_ms']:.2f} | {ratio:.1f}x | {ok} |")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "distill_result.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
