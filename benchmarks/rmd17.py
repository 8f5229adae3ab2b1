"""rMD17 ethanol: train a PaiNN student for a wall-clock budget, score it on the test split.

Train split 01 (1000 frames): 950 training + 50 validation frames (seeded). Test split 01:
1000 frames. Prints energy and force MAE next to the published numbers of
../shared/data/README.md. Usage::

    python benchmarks/rmd17.py --minutes 15 [--molecule ethanol] [--out runs/rmd17]
    python benchmarks/rmd17.py --size fast --epochs 300 --minutes 0   # the size menu's budget
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from mlff_distiller.data.importers import import_file
from mlff_distiller.evaluation.metrics import error_summary
from mlff_distiller.evaluation.report import predict_dataset
from mlff_distiller.models.io import load_model
from mlff_distiller.models.sizes import STUDENT_SIZES, size_fields
from mlff_distiller.training.config import TrainConfig
from mlff_distiller.training.trainer import train

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "rmd17"
# published rMD17 / MD17 numbers (../shared/data/README.md): force MAE meV/Å, energy MAE meV
PUBLISHED = {
    "ethanol": {"MACE (rMD17)": (2.1, 0.4), "PaiNN (original MD17)": (10.0, None)},
    "malonaldehyde": {"MACE (rMD17)": (5.0, 0.8)},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=15.0, help="training wall-clock budget")
    parser.add_argument("--molecule", default="ethanol", choices=sorted(PUBLISHED))
    parser.add_argument("--out", default="runs/rmd17")
    parser.add_argument("--data", type=Path, default=DATA, help="folder of the rMD17 npz files")
    parser.add_argument(
        "--size", default="", choices=["", *STUDENT_SIZES],
        help="a named student size (overrides --hidden and --interactions)",
    )
    parser.add_argument(
        "--epochs", type=int, default=100_000,
        help="epoch budget (the cosine schedule spans it); with --minutes 0 the only budget",
    )
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--energy-weight", type=float, default=10.0)
    parser.add_argument("--forces-weight", type=float, default=100.0)
    parser.add_argument(
        "--force-loss", default="mse", choices=["mse", "l2mae", "huber"],
        help="force term of the loss (see mlff_distiller.training.losses)",
    )
    parser.add_argument(
        "--huber-delta", type=float, default=0.01, help="eV/Å, for --force-loss huber"
    )
    parser.add_argument("--interactions", type=int, default=3, help="PaiNN interaction blocks")
    parser.add_argument(
        "--weight-decay", type=float, default=TrainConfig.weight_decay, help="AdamW weight decay"
    )
    parser.add_argument("--ema", type=float, default=0.995, help="EMA decay of the weights")
    parser.add_argument(
        "--force-method", default="analytical", choices=["analytical", "autograd"],
        help="forces in the training loss (same gradients; analytical is faster)",
    )
    parser.add_argument(
        "--no-compile", dest="compile", action="store_false",
        help="do not torch.compile the training step's energy+forces",
    )
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last checkpoint (a longer --minutes extends it)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train_h5, test_h5 = out / "train.h5", out / "test.h5"
    rank = int(os.environ.get("RANK", "0"))  # under torchrun: rank 0 imports, the others wait
    ready = out / f".imported-{os.environ.get('TORCHELASTIC_RUN_ID', 'single')}"
    if rank == 0 and not (args.resume and train_h5.is_file() and test_h5.is_file()):
        import_file(args.data / f"rmd17_{args.molecule}_train_01.npz", train_h5)
        import_file(args.data / f"rmd17_{args.molecule}_test_01.npz", test_h5)
    if rank == 0:
        ready.touch()
    else:
        deadline = time.monotonic() + 600.0
        while not ready.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"rank {rank}: rank 0 did not import the data into {out}")
            time.sleep(0.5)

    arch = (
        size_fields(args.size) if args.size
        else {"hidden": args.hidden, "n_interactions": args.interactions, "n_rbf": 20,
              "cutoff": 5.0}
    )
    cfg = TrainConfig(
        data=str(train_h5), train_size=950, val_size=50, **arch, energy_weight=args.energy_weight,
        forces_weight=args.forces_weight,
        force_loss=args.force_loss, huber_delta=args.huber_delta, lr=args.lr,
        weight_decay=args.weight_decay, warmup_steps=200, schedule="cosine",
        min_lr_ratio=0.01, ema_decay=args.ema, patience=0,
        max_epochs=args.epochs, max_time_min=args.minutes, batch_size=args.batch_size,
        val_batch_size=50, seed=0, accelerator=args.accelerator,
        force_method=args.force_method, compile=args.compile, out=str(out / "train"),
        progress_bar=False,
    )
    t0 = time.perf_counter()
    result = train(cfg, resume=args.resume)
    wall = time.perf_counter() - t0
    if rank != 0:
        return

    from mlff_distiller.data.hdf5 import Dataset

    model = load_model(result.model_path)
    with Dataset(test_h5) as ds:
        pred = predict_dataset(model, ds, batch_size=100)
    test = error_summary(pred.energy_pred, pred.energy_ref, pred.forces_pred, pred.forces_ref,
                         pred.n_atoms)
    device = "GPU" if torch.cuda.is_available() and args.accelerator != "cpu" else "CPU"
    print()
    size = f"size {args.size!r}: " if args.size else ""
    print(f"rMD17 {args.molecule}: {size}PaiNN hidden {cfg.hidden}, "
          f"{cfg.n_interactions} interactions, {args.force_loss} force loss, 950 train / 50 val,"
          f" budget {args.minutes:g} min / {args.epochs} epochs on {device} "
          f"({torch.get_num_threads()} threads); "
          f"{result.epochs} epochs, {result.global_step} steps, {wall / 60:.1f} min")
    print()
    print("| model | test force MAE (meV/Å) | test energy MAE (meV) | energy MAE (meV/atom) |")
    print("|---|---|---|---|")
    budget = f"{args.minutes:g} min" if args.minutes > 0 else f"{result.epochs} epochs"
    print(f"| mlff_distiller PaiNN ({budget} {device}) "
          f"| {test['force_mae_mev_per_a']:.1f} | {test['energy_mae_mev']:.2f} "
          f"| {test['energy_mae_mev_per_atom']:.3f} |")
    for name, (f_mae, e_mae) in PUBLISHED[args.molecule].items():
        e = f"{e_mae:.1f}" if e_mae is not None else "-"
        print(f"| {name}, published | {f_mae:.1f} | {e} | - |")
    ratio = test["force_mae_mev_per_a"] / 10.0
    print()
    print(f"force MAE / PaiNN-level target (10 meV/Å) = {ratio:.2f}; "
          f"force RMSE {test['force_rmse_mev_per_a']:.1f} meV/Å, best val force MAE "
          f"{result.best_val_force_mae:.1f} meV/Å")
    (out / "rmd17_result.json").write_text(json.dumps(
        {"test": test, "training": result.to_dict(), "minutes": args.minutes, "size": args.size,
         "architecture": arch, "epochs_budget": args.epochs, "wall_min": wall / 60,
         "device": device, "n_test": int(len(pred.energy_ref))}, indent=2))


if __name__ == "__main__":
    main()
