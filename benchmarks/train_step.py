"""One force-training step of the PaiNN student: autograd double backward vs the analytical
backward recorded by autograd, eager and compiled.

A step is energy + forces with ``create_graph=True``, an energy + force MSE loss, its backward
and an AdamW update. The three paths give the same gradients (tests/models/
test_models_painn_fast_paths.py); this measures what they cost, interleaved round by round on
the same batch. Default clock: process CPU time with one thread (``--clock wall`` otherwise, and
always on CUDA). Molecules: rMD17 ethanol frames (9 atoms) when ../shared is there, and seeded
random H/C/N/O clusters of 21 atoms (aspirin-sized).

    python benchmarks/train_step.py [--hidden 64 128] [--batch-size 10] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from forces import random_molecule  # benchmarks/ is on sys.path when run as a script
from mlff_distiller import keys, units
from mlff_distiller.data.batch import AtomsBatch
from mlff_distiller.models.painn import PaiNN, PaiNNConfig

RMD17 = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "rmd17"


def ethanol_batch(n: int) -> AtomsBatch | None:
    path = RMD17 / "rmd17_ethanol_train_01.npz"
    if not path.is_file():
        return None
    raw = np.load(path)
    batch = AtomsBatch.from_arrays(
        [raw["nuclear_charges"]] * n, list(raw["coords"][:n]), dtype=torch.float32
    )
    batch.labels[keys.FORCES] = torch.as_tensor(
        raw["forces"][:n].reshape(-1, 3) * units.KCAL_PER_MOL_PER_ANGSTROM, dtype=torch.float32
    )
    return batch


def cluster_batch(n_atoms: int, n: int, seed: int = 0) -> AtomsBatch:
    """``n`` clusters of benchmarks/forces.py (0.1 atoms/Å^3) with random target forces."""
    rng = np.random.default_rng(seed)
    numbers, positions = zip(*(random_molecule(n_atoms, rng) for _ in range(n)))
    batch = AtomsBatch.from_arrays(list(numbers), list(positions), dtype=torch.float32)
    batch.labels[keys.FORCES] = torch.as_tensor(
        rng.normal(0.0, 1.0, (n * n_atoms, 3)), dtype=torch.float32
    )
    return batch


def make_step(model: PaiNN, batch: AtomsBatch, method: str):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    edges = model.neighbors(batch)
    target = batch.labels[keys.FORCES]

    def step() -> None:
        out = model.energy_and_forces(batch, method, create_graph=True, edges=edges)
        loss = (out[keys.FORCES] - target).square().mean() + 1e-3 * out[keys.ENERGY].square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per cell")
    parser.add_argument("--steps", type=int, default=10, help="steps per path per round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    use_cpu_clock = args.clock == "cpu" and device.type == "cpu" and args.threads == 1
    clock = time.process_time if use_cpu_clock else time.perf_counter

    batches = {"ethanol (9 atoms)": ethanol_batch(args.batch_size),
               "cluster (21 atoms)": cluster_batch(21, args.batch_size)}
    print(f"PaiNN training step, batch {args.batch_size}, {device}, "
          f"{'CPU time, 1 thread' if use_cpu_clock else f'wall time, {args.threads} threads'}; "
          f"median ms over {args.rounds} interleaved rounds of {args.steps} steps\n")
    print("| molecule | hidden | autograd ms | analytical ms | compiled ms "
          "| autograd/analytical | autograd/compiled |")
    print("|---|---|---|---|---|---|---|")
    for name, batch in batches.items():
        if batch is None:
            continue
        batch = batch.to(device)
        for hidden in args.hidden:
            torch.manual_seed(0)
            steps = {}
            for path in ("autograd", "analytical", "compiled"):
                model = PaiNN(PaiNNConfig(hidden=hidden)).to(device)
                model.compile_forces(path == "compiled")
                method = "autograd" if path == "autograd" else "analytical"
                steps[path] = make_step(model, batch, method)
                for _ in range(3):  # warm-up (compiles the compiled path)
                    steps[path]()
            times = {path: [] for path in steps}
            for _ in range(args.rounds):
                for path, step in steps.items():
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    t0 = clock()
                    for _ in range(args.steps):
                        step()
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    times[path].append((clock() - t0) / args.steps * 1000.0)
            ms = {path: statistics.median(t) for path, t in times.items()}
            print(f"| {name} | {hidden} | {ms['autograd']:.1f} | {ms['analytical']:.1f} "
                  f"| {ms['compiled']:.1f} | {ms['autograd'] / ms['analytical']:.2f} "
                  f"| {ms['autograd'] / ms['compiled']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
