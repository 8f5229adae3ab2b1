"""Does the two-cycle rollout loss (through the corrector step) make better hybrid MD?

Two fine-tunes of the same jump network (``--init``, e.g. the MM network of
``benchmarks/kstep.py``) on the same rollout windows, same epochs, same seed: ``control`` with
the one-jump loss only, ``rollout`` with the two-cycle rollout loss added
(:mod:`mlff_distiller.training.kstep_rollout`). The windows come from every-step GAFF2 reference
MD of the first ``--molecules`` training molecules (sampled here; rollout windows need the frames
``k + 1`` and ``2k + 1`` steps after each start). Scored on the validation windows (one-jump
and two-cycle errors of both networks) and by hybrid MD of the held-out GAFF2 molecules of
``benchmarks/kstep.py`` (its work folder) at one k, NVT, against one shared reference run per
molecule (the table of ``benchmarks/kstep_tolerance.py``).

    python benchmarks/kstep_rollout.py --work /tmp/mlffd_kstep_bench --out /tmp/kstep_rollout \\
        --molecules 30 --epochs 3 --rollout-weight 1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kstep import DT, FRICTION, KS, sample_all  # noqa: E402
from kstep_tolerance import compare_variants, print_table  # noqa: E402
from mlff_distiller.kstep.dataset import KStepWindows, build_windows  # noqa: E402
from mlff_distiller.kstep.molecules import GAFF2_HELD_OUT, GAFF2_TRAIN  # noqa: E402
from mlff_distiller.models.io import load_model  # noqa: E402
from mlff_distiller.teachers.sampling import SamplingConfig  # noqa: E402
from mlff_distiller.training.kstep_losses import KStepLossWeights, kstep_loss  # noqa: E402
from mlff_distiller.training.kstep_rollout import rollout_loss  # noqa: E402
from mlff_distiller.training.kstep_trainer import KStepTrainConfig, train_kstep  # noqa: E402


def validation_errors(network, windows: KStepWindows) -> dict[str, float]:
    """Mean one-jump position error and two-cycle rollout loss (Å²) over ``windows``."""
    sums = {"delta_x": 0.0, "delta_v": 0.0, "rollout": 0.0}
    count = 0
    network = network.float().eval()
    with torch.no_grad():
        for inp, tgt in windows.batches(64):
            out = network(inp)
            _, parts = kstep_loss(out, inp.positions, tgt, KStepLossWeights(), inp)
            n = inp.n_systems
            sums["delta_x"] += float(parts["delta_x"]) * n
            sums["delta_v"] += float(parts["delta_v"]) * n
            sums["rollout"] += float(rollout_loss(network, out, inp, tgt)) * n
            count += n
    return {key: value / max(count, 1) for key, value in sums.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/mlffd_kstep_bench"),
                        help="benchmarks/kstep.py's work folder (held-out trajectories)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/kstep_rollout"))
    parser.add_argument("--init", type=Path, default=None, help="default: WORK/mm_model/best")
    parser.add_argument("--molecules", type=int, default=30)
    parser.add_argument("--production-fs", type=float, default=500.0)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--rollout-weight", type=float, default=1.0)
    parser.add_argument("--energy-weight", type=float, default=0.0)
    parser.add_argument("--k", type=int, default=8, help="k of the hybrid MD comparison")
    parser.add_argument("--replicas", type=int, default=8)
    parser.add_argument("--fs", type=float, default=2000.0)
    parser.add_argument("--discard-fs", type=float, default=300.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    init = args.init or args.work / "mm_model" / "best"
    names = dict(list(GAFF2_TRAIN.items())[: args.molecules])
    cfg = SamplingConfig(dt_fs=DT, friction_per_ps=FRICTION, save_every=1, constraints="none",
                         production_fs=args.production_fs)  # fmt: skip
    t0 = time.perf_counter()
    print(f"every-step GAFF2 MD of {len(names)} training molecules ...", flush=True)
    paths = sample_all(names, "openmm-gaff2", args.out, cfg)
    windows = args.out / "rollout_windows.h5"
    if not windows.exists():
        build_windows(list(paths.values()), windows, ks=KS, stride=12, rollout=True,
                      fractions=(0.9, 0.1, 0.0))  # fmt: skip
    train = KStepWindows.from_file(windows, "train", augment_rotations=True, rollout=True)
    val = KStepWindows.from_file(windows, "val", rollout=True)
    print(f"  {time.perf_counter() - t0:.0f} s; {len(train)} train, {len(val)} val windows")
    model_cfg = {"hidden": 48, "n_layers": 3, "n_vectors": 8, "cutoff": 7.0,
                 "max_delta_x": 2.5, "force_head": True}  # fmt: skip
    networks, errors = {}, {}
    for arm, weight in (("control", 0.0), ("rollout", args.rollout_weight)):
        t0 = time.perf_counter()
        loss = {"force": 0.01, "kinetic": 0.1, "energy": args.energy_weight, "rollout": weight}
        result = train_kstep(
            KStepTrainConfig(out_dir=str(args.out / arm), model=model_cfg, epochs=args.epochs,
                             batch_size=32, lr=args.lr, warmup_steps=10, init_from=str(init),
                             loss=loss, noise_positions=0.01, noise_velocities=0.002),
            train, val, resume=True, progress=False,
        )  # fmt: skip
        networks[arm] = load_model(result.best_model)
        errors[arm] = validation_errors(networks[arm], val)
        print(f"  {arm}: {time.perf_counter() - t0:.0f} s, validation {errors[arm]}", flush=True)
    errors["init"] = validation_errors(load_model(init), val)
    print("\n| network | one-jump dx MSE (Å²) | one-jump dv tau MSE (Å²) | two-cycle MSE (Å²) |")
    print("|---|---|---|---|")
    for arm in ("init", "control", "rollout"):
        e = errors[arm]
        print(f"| {arm} | {e['delta_x']:.3e} | {e['delta_v']:.3e} | {e['rollout']:.3e} |")
    rows = []
    for name, smiles in GAFF2_HELD_OUT.items():
        variants = [(arm, networks[arm].float(), {}) for arm in ("control", "rollout")]
        path = args.work / f"openmm-gaff2_{name}.h5"
        rows += compare_variants("openmm-gaff2", name, smiles, path, variants, args.k, args)
        (args.out / "rows.json").write_text(json.dumps(
            {"validation": errors, "rows": rows}, indent=1, default=float))  # fmt: skip
    print_table(rows)
    worst = {arm: np.mean([max(abs(t["relative_difference_percent"])
                               for s, t in r["distributions"]["temperatures"].items()
                               if s != "molecule") for r in rows if r["variant"] == arm])
             for arm in ("control", "rollout")}  # fmt: skip
    print(f"\nmean over molecules of the worst per-element |dT| %: {worst}")


if __name__ == "__main__":
    main()
