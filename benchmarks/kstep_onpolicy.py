"""On-policy windows for the jump network (DAgger): does training on the hybrid's own states fix
its per-element temperatures?

The hybrid's states drift off the reference distribution (cold O, hot H, bonds stretched by the
jumps' position errors) and the network was only ever trained on reference-MD states, so its
errors there are the ones that compound (exposure bias; Ross, Gordon and Bagnell 2011: train on
the states the learned policy visits, labelled by the expert). Here:

1. each training molecule (a subset of :data:`~mlff_distiller.kstep.molecules.GAFF2_TRAIN`) is
   equilibrated with plain MD, then run R replicas of plain NVT MD and R replicas of the hybrid
   with the starting network (shipped, or ``--init``);
2. states are taken every ``--every`` cycles/steps from both, and each is labelled with the
   exact flow: ``max(k)`` velocity-Verlet steps of the engine with real forces, NVE (the jump
   replaces the Hamiltonian part of the cycle; the thermostat acts around it), windows k = 4, 8,
   12 written as a window file (:func:`~mlff_distiller.kstep.dataset.write_windows`);
3. two fine-tunes from the same start, same schedule and seed: ``control`` on reference states
   only (both halves' worth), ``onpolicy`` on half reference, half hybrid states.

Then ``python benchmarks/kstep.py --mm-network WORK/onpolicy/best`` (and ``.../control/best``)
measures both on the held-out molecules.

    python benchmarks/kstep_onpolicy.py --work /tmp/onpol              # GAFF2, ~12 min
    python benchmarks/kstep_onpolicy.py --corrector xtb --molecule-stride 1 --no-control

The library behind it is :mod:`mlff_distiller.kstep.onpolicy` (``mlffd kstep refine``); this
script adds the control fine-tune.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from mlff_distiller.kstep.dataset import KStepWindows, read_windows, write_windows
from mlff_distiller.kstep.molecules import GAFF2_TRAIN, XTB_TRAIN
from mlff_distiller.kstep.onpolicy import (
    RefineConfig,
    exact_flow_windows,
    molecule_states,
    molecule_windows,
)
from mlff_distiller.kstep.pretrained import pretrained_path
from mlff_distiller.models.io import load_model
from mlff_distiller.training.kstep_trainer import KStepTrainConfig, train_kstep


def build(work: Path, molecules: dict, network, config: RefineConfig) -> tuple[Path, Path]:
    """Window files ``control`` (2h reference states per molecule) and ``onpolicy`` (h
    reference + h hybrid states), h = min(reference states / 2, hybrid states)."""
    ref_path, mix_path = work / "control_windows.h5", work / "onpolicy_windows.h5"
    if ref_path.exists() and mix_path.exists():
        return ref_path, mix_path
    control, mixed = [], []
    for i, (name, smiles) in enumerate(molecules.items()):
        start, topo, make_provider, ref, hyb = molecule_states(network, name, smiles, config, i)
        half = min(len(ref) // 2, len(hyb))
        ref_pick = np.random.default_rng(i).permutation(len(ref))
        hyb_pick = np.random.default_rng(i + 1000).permutation(len(hyb))[:half]
        provider = make_provider(2 * half)
        for states, out in ((ref.take(ref_pick[: 2 * half]), control),
                            (ref.take(ref_pick[:half]) + hyb.take(hyb_pick), mixed)):  # fmt: skip
            windows = exact_flow_windows(states, start, provider, config.dt_fs)
            out.append(molecule_windows(name, smiles, start, topo, windows, config.dt_fs))
        print(f"  {name}: {len(ref)} reference, {len(hyb)} hybrid states", flush=True)
    write_windows(ref_path, control)
    write_windows(mix_path, mixed)
    return ref_path, mix_path


def fine_tune(windows: Path, out: Path, init: str, args, aggregate=()):
    molecules = [m for path in (windows, *aggregate) for m in read_windows(path, "train")]
    train = KStepWindows(molecules, augment_rotations=True)
    print(f"fine-tuning {out.name} on {len(train)} windows, {args.epochs} epochs", flush=True)
    t0 = time.perf_counter()
    result = train_kstep(
        KStepTrainConfig(out_dir=str(out), epochs=args.epochs, batch_size=32, lr=args.lr,
                         warmup_steps=10, init_from=init, loss={"force": 0.01, "kinetic": 0.1},
                         seed=0, noise_positions=0.01, noise_velocities=0.002),
        train, resume=True, progress=True,
    )  # fmt: skip
    print(f"  {time.perf_counter() - t0:.0f} s; last epoch {result.history[-1]}", flush=True)
    return result.best_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/mlffd_kstep_onpolicy"))
    parser.add_argument("--corrector", default="openmm-gaff2", choices=("openmm-gaff2", "xtb"))
    parser.add_argument("--init", default=None, help="network folder (default: the shipped one)")
    parser.add_argument("--molecule-stride", type=int, default=3,
                        help="every n-th training molecule")
    parser.add_argument("--replicas", type=int, default=8)
    parser.add_argument("--cycles", type=int, default=240, help="hybrid cycles per molecule")
    parser.add_argument("--every", type=int, default=5, help="cycles between labelled states")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--charges", default="gas",
                        help="GAFF2 charges of the training data (the shipped network: gas)")
    parser.add_argument("--aggregate", type=Path, action="append", default=[],
                        help="earlier rounds' on-policy window files, added to this round's "
                        "training set (DAgger aggregates its datasets)")
    parser.add_argument("--no-control", dest="control", action="store_false",
                        help="skip the control fine-tune (reference states only)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.work.mkdir(parents=True, exist_ok=True)
    train = GAFF2_TRAIN if args.corrector == "openmm-gaff2" else XTB_TRAIN
    molecules = dict(list(train.items())[:: args.molecule_stride])
    init = args.init or str(pretrained_path(args.corrector))
    network = load_model(Path(init)).float().eval()
    options = {"charge_method": args.charges} if args.corrector == "openmm-gaff2" else {}
    config = RefineConfig(corrector=args.corrector, replicas=args.replicas, cycles=args.cycles,
                          every=args.every, corrector_options=options)  # fmt: skip
    t0 = time.perf_counter()
    print(f"{len(molecules)} molecules, states from plain MD and from the hybrid", flush=True)
    ref_path, mix_path = build(args.work, molecules, network, config)
    print(f"  windows in {time.perf_counter() - t0:.0f} s", flush=True)
    if args.control:
        fine_tune(ref_path, args.work / "control", init, args)
    fine_tune(mix_path, args.work / "onpolicy", init, args, args.aggregate)


if __name__ == "__main__":
    main()
