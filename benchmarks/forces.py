"""Energy-only vs energy+forces (autograd) vs energy+forces (analytical) for the PaiNN student.

Prints, per device, molecule size and batch size: median ms of each (measured interleaved,
side by side, same inputs) and the ratios autograd/analytical and analytical/energy-only, also
from the minima. On a shared CPU the default clock is the process CPU time (``--clock cpu``,
with one thread; time spent descheduled by other users' jobs is not counted); ``--clock wall``
measures wall time (always used with more than one thread and on CUDA).
The neighbour list is built once outside the timed calls (same for all three); its own time is
shown in the ``nl ms`` column. Molecules are seeded random H/C/N/O clusters at the atom density
of organic matter (0.1 atoms/Å^3), so with a 5 Å cutoff a 500-atom blob has ~50 neighbours/atom.
Each table cell is repeated ``--repeats`` times or until ``--cell-seconds`` are spent (at least 3).

    OMP_NUM_THREADS=1 python benchmarks/forces.py      # full table (CPU, plus CUDA if present)
    python benchmarks/forces.py --quick                # 9/21/50 atoms, batches 1/16
    python benchmarks/forces.py --compile              # + torch.compile columns (opt-in path)
    python benchmarks/forces.py --threads 2            # intra-op threads
    python benchmarks/forces.py --retain-memory        # malloc keeps freed memory (no re-faults)
    python benchmarks/forces.py --profile 21           # torch.profiler table of each path
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import numpy as np
import torch

from mlff_distiller.data.batch import AtomsBatch
from mlff_distiller.models.painn import PaiNN, PaiNNConfig, forces_autograd


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
    fns: dict, repeats: int, device: torch.device, clock=time.perf_counter, budget_s: float = 1e9
) -> tuple[dict[str, float], dict[str, float]]:
    """(median ms, min ms) of each callable, called in turn up to ``repeats`` times.

    Stops early (after at least 3 rounds) once ``budget_s`` seconds of wall time are spent.
    """
    for fn in fns.values():
        for _ in range(2):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    start_all = time.perf_counter()
    for round_ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            start = clock()
            fn()
            sync(device)
            times[name].append((clock() - start) * 1e3)
        if round_ >= 2 and time.perf_counter() - start_all > budget_s:
            break
    median = {name: statistics.median(t) for name, t in times.items()}
    return median, {name: min(t) for name, t in times.items()}


def callables(model: PaiNN, batch: AtomsBatch, compiled: dict | None = None) -> dict:
    """The timed calls on one batch; ``compiled`` adds the torch.compile variants."""
    edges = model.neighbors(batch)

    def energy_only():
        with torch.inference_mode():
            return model(batch, edges=edges)

    fns = {
        "energy": energy_only,
        "autograd": lambda: model.energy_and_forces(batch, "autograd", edges=edges),
        "analytical": lambda: model.energy_and_forces(batch, "analytical", edges=edges),
        "nl": lambda: model.neighbors(batch),
    }
    if compiled:
        fns["compiled analytical"] = lambda: compiled["analytical"].energy_and_forces(
            batch, "analytical", edges=edges
        )
        fns["compiled autograd"] = lambda: forces_autograd(compiled["autograd"], batch, edges=edges)
    return fns


def compiled_models(model: PaiNN) -> dict:
    """The same weights with torch.compile: analytical (opt-in path) and autograd of the
    compiled forward (parameters frozen so that only position gradients are compiled)."""
    frozen = copy.deepcopy(model)
    for p in frozen.parameters():
        p.requires_grad_(False)
    return {
        "analytical": copy.deepcopy(model).compile_forces(),
        "autograd": torch.compile(frozen, dynamic=True),
    }


def run_table(args, device: torch.device) -> None:
    dtype = torch.float64 if args.float64 else torch.float32
    torch.manual_seed(0)
    model = PaiNN(PaiNNConfig()).to(device=device, dtype=dtype).eval()
    compiled = compiled_models(model) if args.compile else None
    use_cpu_clock = args.clock == "cpu" and device.type == "cpu" and torch.get_num_threads() == 1
    clock = time.process_time if use_cpu_clock else time.perf_counter
    clock_name = "process CPU time" if use_cpu_clock else "wall time"
    print(
        f"\n## {device.type.upper()} ({torch.get_num_threads()} threads), {dtype}, PaiNN default "
        f"(hidden 128, 3 blocks, 20 rbf, 5 Å); median ms of {clock_name}"
    )
    cols = ["atoms", "batch", "edges", "nl ms", "energy ms", "autograd E+F ms", "analytical E+F ms"]
    if compiled:
        cols += ["compiled autograd ms", "compiled analytical ms"]
    cols += ["autograd/analytical", "analytical/energy", "same ratios from minima"]
    if compiled:
        cols += ["compiled: autograd/analytical, analytical/energy"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for n_atoms in args.sizes:
        for n_mol in args.batches:
            if n_atoms * n_mol > args.max_atoms:
                continue
            batch = make_batch(n_atoms, n_mol, dtype, device)
            fns = callables(model, batch, compiled)
            n_edges = model.neighbors(batch)[0].shape[1]
            if compiled:  # compile outside the timed loop; report how long it took
                for name in ("compiled analytical", "compiled autograd"):
                    start = time.perf_counter()
                    fns[name]()
                    took = time.perf_counter() - start
                    if took > 1.0:
                        print(f"<!-- {name}: first call {took:.0f} s (compiling) -->", flush=True)
            ms, lo = time_interleaved(fns, args.repeats, device, clock, args.cell_seconds)
            row = [
                f"{n_atoms}", f"{n_mol}", f"{n_edges}", f"{ms['nl']:.2f}", f"{ms['energy']:.2f}",
                f"{ms['autograd']:.2f}", f"{ms['analytical']:.2f}",
            ]  # fmt: skip
            if compiled:
                row += [f"{ms['compiled autograd']:.2f}", f"{ms['compiled analytical']:.2f}"]
            row += [
                f"{ms['autograd'] / ms['analytical']:.2f}",
                f"{ms['analytical'] / ms['energy']:.2f}",
                f"{lo['autograd'] / lo['analytical']:.2f}, {lo['analytical'] / lo['energy']:.2f}",
            ]
            if compiled:
                c_an, c_ag = ms["compiled analytical"], ms["compiled autograd"]
                row += [f"{c_ag / c_an:.2f}, {c_an / ms['energy']:.2f}"]
            print("| " + " | ".join(row) + " |", flush=True)


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
        averages = prof.key_averages()
        calls = sum(e.count for e in averages) / 20
        top_level = sum(1 for e in prof.events() if e.cpu_parent is None) / 20
        print(f"\n### profile {name}, {n_atoms} atoms x {args.batches[0]}")
        print(f"ATen calls per call: {calls:.0f} ({top_level:.0f} top-level)")
        print(averages.table(sort_by="self_cpu_time_total", row_limit=15))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[9, 21, 50, 100, 500])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--cell-seconds", type=float, default=8.0, help="time budget per row")
    parser.add_argument(
        "--max-atoms", type=int, default=3200, help="skip larger batches (time and memory)"
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    parser.add_argument("--float64", action="store_true")
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--quick", action="store_true", help="9/21/50 atoms, batches 1/16")
    parser.add_argument(
        "--retain-memory",
        action="store_true",
        help="glibc malloc keeps freed memory (models.cpu_memory); affects all columns alike",
    )
    parser.add_argument("--profile", type=int, default=None, metavar="N_ATOMS")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.batches, args.repeats = [9, 21, 50], [1, 16], min(args.repeats, 10)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.retain_memory:
        from mlff_distiller.models.cpu_memory import retain_freed_cpu_memory

        print(f"retain freed CPU memory (glibc mallopt): {retain_freed_cpu_memory()}")
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


if __name__ == "__main__":
    main()
