"""Energy-only vs energy+forces (autograd) vs energy+forces (analytical) for the PaiNN student.

Prints, per device, molecule size and batch size: median ms of each (measured interleaved,
side by side, same inputs) and the ratios autograd/analytical and analytical/energy-only.
The neighbour list is built once outside the timed calls (same for all three); its own time is
shown in the ``nl ms`` column. Molecules are seeded random H/C/N/O clusters at the atom density
of organic matter (0.1 atoms/Å^3), so with a 5 Å cutoff a 500-atom blob has ~50 neighbours/atom.

    python benchmarks/forces.py                       # full table (CPU, plus CUDA if present)
    python benchmarks/forces.py --sizes 9 21 --batches 1 16 --repeats 10   # quick
    python benchmarks/forces.py --compile             # also torch.compile / CUDA graphs on CUDA
    python benchmarks/forces.py --profile 21          # torch.profiler table, analytical path
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from mlff_distiller.data.batch import AtomsBatch
from mlff_distiller.models.painn import PaiNN, PaiNNConfig


def random_molecule(n_atoms: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(numbers (n,), positions (n, 3)) on a jittered grid at 0.1 atoms/Å^3."""
    spacing = 10.0 ** (1.0 / 3.0)  # 1 atom per 10 Å^3
    k = int(np.ceil(n_atoms ** (1.0 / 3.0))) + 2
    grid = np.stack(np.meshgrid(*[np.arange(k)] * 3, indexing="ij"), -1).reshape(-1, 3) * spacing
    grid = grid - grid.mean(0)
    chosen = grid[np.argsort(np.linalg.norm(grid, axis=1), kind="stable")[:n_atoms]]
    positions = chosen + rng.uniform(-0.3, 0.3, chosen.shape)
    numbers = rng.choice([1, 1, 6, 6, 7, 8], size=n_atoms)
    return numbers, positions


def make_batch(n_atoms: int, n_mol: int, dtype, device, seed: int = 0) -> AtomsBatch:
    rng = np.random.default_rng(seed)
    mols = [random_molecule(n_atoms, rng) for _ in range(n_mol)]
    return AtomsBatch.from_arrays(
        [m[0] for m in mols], [m[1] for m in mols], dtype=dtype, device=device
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_interleaved(
    fns: dict, repeats: int, device: torch.device, reduce=statistics.median
) -> dict[str, float]:
    """Median (or ``reduce``) ms of each callable, called in turn ``repeats`` times."""
    for fn in fns.values():
        for _ in range(3):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append((time.perf_counter() - start) * 1e3)
    time_interleaved.last_min = {name: min(t) for name, t in times.items()}
    return {name: reduce(t) for name, t in times.items()}


def callables(model: PaiNN, batch: AtomsBatch) -> dict:
    edges = model.neighbors(batch)

    def energy_only():
        with torch.inference_mode():
            return model(batch, edges=edges)

    return {
        "energy": energy_only,
        "autograd": lambda: model.energy_and_forces(batch, "autograd", edges=edges),
        "analytical": lambda: model.energy_and_forces(batch, "analytical", edges=edges),
        "nl": lambda: model.neighbors(batch),
    }


def run_table(args, device: torch.device) -> None:
    dtype = torch.float64 if args.float64 else torch.float32
    torch.manual_seed(0)
    model = PaiNN(PaiNNConfig()).to(device=device, dtype=dtype).eval()
    print(f"\n## {device.type.upper()} ({torch.get_num_threads()} threads), {dtype}, PaiNN default")
    header = (
        "| atoms | batch | edges | nl ms | energy ms | autograd E+F ms | analytical E+F ms "
        "| autograd/analytical | analytical/energy | same ratios from minima |"
    )
    print(header)
    print("|" + "---|" * 10)
    for n_atoms in args.sizes:
        for n_mol in args.batches:
            if n_atoms * n_mol > args.max_atoms:
                continue
            batch = make_batch(n_atoms, n_mol, dtype, device)
            fns = callables(model, batch)
            n_edges = model.neighbors(batch)[0].shape[1]
            ms = time_interleaved(fns, args.repeats, device)
            lo = time_interleaved.last_min
            print(
                f"| {n_atoms} | {n_mol} | {n_edges} | {ms['nl']:.2f} | {ms['energy']:.2f} "
                f"| {ms['autograd']:.2f} | {ms['analytical']:.2f} "
                f"| {ms['autograd'] / ms['analytical']:.2f} "
                f"| {ms['analytical'] / ms['energy']:.2f} "
                f"| {lo['autograd'] / lo['analytical']:.2f}, "
                f"{lo['analytical'] / lo['energy']:.2f} |",
                flush=True,
            )


def run_compiled(args, device: torch.device) -> None:
    """torch.compile of the analytical path and CUDA graphs of it (fixed shapes)."""
    from mlff_distiller.models.analytic_forces import analytic_energy_and_forces

    dtype = torch.float64 if args.float64 else torch.float32
    torch.manual_seed(0)
    model = PaiNN(PaiNNConfig()).to(device=device, dtype=dtype).eval()
    print(f"\n## {device.type.upper()} compiled variants, {dtype}")
    print("| atoms | batch | analytical ms | compiled analytical ms | compiled autograd ms |")
    print("|---|---|---|---|---|")
    compiled = torch.compile(analytic_energy_and_forces, dynamic=False)
    for n_atoms in args.sizes:
        for n_mol in args.batches:
            if n_atoms * n_mol > args.max_atoms:
                continue
            batch = make_batch(n_atoms, n_mol, dtype, device)
            edges = model.neighbors(batch)
            fns = {
                "analytical": lambda b=batch, e=edges: analytic_energy_and_forces(model, b, e),
                "compiled": lambda b=batch, e=edges: compiled(model, b, e),
            }
            try:
                ms = time_interleaved(fns, args.repeats, device)
                print(
                    f"| {n_atoms} | {n_mol} | {ms['analytical']:.2f} | {ms['compiled']:.2f} | - |",
                    flush=True,
                )
            except Exception as err:  # report, do not hide: compile support varies
                print(f"| {n_atoms} | {n_mol} | compile failed: {type(err).__name__}: {err} |")


def profile(args, device: torch.device, n_atoms: int) -> None:
    from torch.profiler import ProfilerActivity, profile

    dtype = torch.float64 if args.float64 else torch.float32
    model = PaiNN(PaiNNConfig()).to(device=device, dtype=dtype).eval()
    batch = make_batch(n_atoms, args.batches[0], dtype, device)
    fns = callables(model, batch)
    for name in ("energy", "autograd", "analytical"):
        for _ in range(5):
            fns[name]()
        activities = [ProfilerActivity.CPU] + (
            [ProfilerActivity.CUDA] if device.type == "cuda" else []
        )
        with profile(activities=activities) as prof:
            for _ in range(20):
                fns[name]()
        print(f"\n### profile {name}, {n_atoms} atoms x {args.batches[0]}")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[9, 21, 50, 100, 500])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--max-atoms", type=int, default=6400, help="skip larger batches on CPU")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--float64", action="store_true")
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--profile", type=int, default=None, metavar="N_ATOMS")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = []
    if args.device in ("cpu", "all"):
        devices.append(torch.device("cpu"))
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    for device in devices:
        if args.profile:
            profile(args, device, args.profile)
            continue
        run_table(args, device)
        if args.compile:
            run_compiled(args, device)


if __name__ == "__main__":
    main()
