"""Does time-reversal symmetry in training lower the raw energy error of the jumps?

Two EGNN jump networks (hidden 48, 3 layers, force head) with the same windows, epochs and seed:
one on forward windows only, one with half of the windows served time-reversed
(``KStepWindows(reverse_time=0.5)``: ``(x_{t+k}, -v_{t+k}) -> (x_t, -v_t)``). Scored on the
held-out GAFF2 trajectories of ``benchmarks/kstep.py`` (its work folder) by the total-energy change
of single jumps (``evaluation.kstep_eval.jump_energy_error``: mean = the systematic heating or
cooling per cycle, rms) at k = 4, 8, 12, next to the trajectory's own k-step change, and by the
reversibility error itself: the jump applied to its own time-reversed result, ``|x'' - x|``.

    python benchmarks/kstep_reversal.py --work /tmp/mlffd_kstep_bench --epochs 3
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from mlff_distiller.data.state import MDState
from mlff_distiller.evaluation.kstep_eval import jump_energy_error
from mlff_distiller.kstep.dataset import KStepWindows, read_trajectory, to_on_step_velocities
from mlff_distiller.kstep.molecules import GAFF2_HELD_OUT
from mlff_distiller.md.forces import make_force_provider
from mlff_distiller.md.hybrid import HybridConfig, HybridIntegrator
from mlff_distiller.md.integrators import with_forces
from mlff_distiller.models.io import load_model
from mlff_distiller.training.kstep_trainer import KStepTrainConfig, train_kstep

KS = (4, 8, 12)
DT = 0.5


def reversibility_error(network, provider, traj, k: int, every: int, frame_steps: int) -> float:
    """RMS over atoms and start frames of |x'' - x| (Å), x'' = jump(jump(x, v) reversed)."""
    from ase import Atoms
    from ase.data import atomic_masses

    numbers = np.asarray(traj["atomic_numbers"])
    starts = np.arange(0, len(traj["positions"]) - k // frame_steps, every)
    structures = [Atoms(numbers=numbers, positions=traj["positions"][i],
                        masses=atomic_masses[numbers]) for i in starts]  # fmt: skip
    state = MDState.from_atoms(structures)
    vel = torch.as_tensor(np.concatenate([traj["velocities"][i] for i in starts]))
    state = with_forces(state.replace(velocities=vel), provider)
    hybrid = HybridIntegrator(network, provider, HybridConfig(k=k, dt_fs=DT, ensemble="nve"),
                              None)  # fmt: skip
    jumped = with_forces(hybrid.jump(state, 1.0, predicted=False).replace(forces=None), provider)
    back = hybrid.jump(jumped.replace(velocities=-jumped.velocities), 1.0, predicted=False)
    return float((back.positions - state.positions).norm(dim=-1).square().mean().sqrt())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/mlffd_kstep_bench"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max-windows", type=int, default=20000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    windows = args.work / "mm_windows.h5"
    train = KStepWindows.from_file(windows, "train", augment_rotations=True)
    val = KStepWindows.from_file(windows, "val")
    rng = np.random.default_rng(0)
    if len(train.index) > args.max_windows:
        train.index = train.index[np.sort(rng.choice(len(train.index), args.max_windows, False))]
    model_cfg = {"hidden": 48, "n_layers": 3, "n_vectors": 8, "cutoff": 7.0,
                 "max_delta_x": 2.5, "force_head": True}  # fmt: skip
    nets = {}
    for label, reverse in (("forward only", 0.0), ("with reversed windows", 0.5)):
        train.reverse_time = reverse
        t0 = time.perf_counter()
        res = train_kstep(
            KStepTrainConfig(out_dir=str(args.work / f"reversal_{reverse}"), model=model_cfg,
                             epochs=args.epochs, batch_size=32, lr=2e-3, warmup_steps=50,
                             loss={"force": 0.01, "kinetic": 0.1}, seed=0),
            train, val, resume=True, progress=False,
        )  # fmt: skip
        seconds = time.perf_counter() - t0
        print(f"{label}: {len(train)} windows, {args.epochs} epochs, {seconds:.0f} s, "
              f"val loss {res.best_val_loss:.4g}", flush=True)  # fmt: skip
        nets[label] = load_model(res.best_model).double()
    print("\n| molecule | k | network | jump dE mean (eV/atom) | jump dE rms | trajectory rms | "
          "reversibility rms (Å) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for name in GAFF2_HELD_OUT:
        traj = read_trajectory(args.work / f"openmm-gaff2_{name}.h5")
        if traj["velocity_convention"] == "half-step":
            traj = to_on_step_velocities(traj, traj["dt"])
        frame_steps = int(round((traj["time"][1] - traj["time"][0]) / DT))
        every = max(len(traj["positions"]) // 40, 1)
        from ase import Atoms

        atoms = Atoms(numbers=traj["atomic_numbers"], positions=traj["positions"][0])
        atoms.info["smiles"] = GAFF2_HELD_OUT[name]
        for k in KS:
            n_starts = len(range(0, len(traj["positions"]) - k // frame_steps, every))
            provider = make_force_provider("openmm-gaff2", [atoms] * n_starts)
            for label, net in nets.items():
                err = jump_energy_error(net, provider, traj, k, DT, every, name, frame_steps)
                rev = reversibility_error(net, provider, traj, k, every, frame_steps)
                print(f"| {name} | {k} | {label} | {err.network_mean:+.2e} | "
                      f"{err.network_rms:.2e} | {err.trajectory_rms:.2e} | {rev:.4f} |",
                      flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
