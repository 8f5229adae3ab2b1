"""HDF5 dataset I/O speed: write, sequential and random-batch reads of a 100k-structure file.

Run: ``python benchmarks/data_io.py [--structures 100000] [--batch 64]``. Prints structures/s,
ms per random batch and peak memory (resident set size, and Python-heap peak by tracemalloc).
The target is a random batch of 64 molecules in < 5 ms, so data loading never limits training.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from mlff_distiller.data.hdf5 import Dataset, DatasetWriter


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def build(path: Path, n_structures: int, seed: int = 0) -> float:
    """Write ``n_structures`` random molecules of 9-21 atoms with energy and forces; returns s."""
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    with DatasetWriter(path, attrs={"teacher": "random"}, flush_every=2000) as w:
        for i in range(n_structures):
            n = int(rng.integers(9, 22))
            w.append_frame(
                rng.integers(1, 9, n),
                rng.normal(size=(n, 3)) * 2.0,
                energy=float(rng.normal()),
                forces=rng.normal(size=(n, 3)),
                molecule=f"mol{i % 50}",
            )
    return time.perf_counter() - t0


def timed(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--structures", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    console = Console()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.h5"
        rss0 = _rss_mib()
        t_write = build(path, args.structures)
        size_mib = path.stat().st_size / 2**20
        rows.append(("write (append_frame, flush every 2000)", args.structures / t_write, None))
        tracemalloc.start()
        with Dataset(path) as ds:
            n_total = ds.n_atoms_total
            rng = np.random.default_rng(1)
            b = args.batch
            starts = iter(rng.integers(0, len(ds) - b, args.repeats + 1))
            t = (
                timed(lambda: ds.get_batch(np.arange(next(starts), 0) + 0 or range(0)), 1)
                if 0
                else 0
            )
            seq_start = iter(range(0, len(ds) - b, b))
            t = timed(lambda: ds.get_batch(np.arange((s := next(seq_start)), s + b)), args.repeats)
            rows.append((f"sequential get_batch({b})", b / t, t * 1e3))
            t = timed(lambda: ds.get_batch(rng.choice(len(ds), b, replace=False)), args.repeats)
            rows.append((f"random get_batch({b})", b / t, t * 1e3))
            seq = iter(range(len(ds)))
            t = timed(lambda: ds[next(seq)], min(args.repeats * 5, len(ds) - 2))
            rows.append(("sequential ds[i] -> ase.Atoms", 1 / t, t * 1e3))
            t = timed(lambda: ds[int(rng.integers(len(ds)))], args.repeats * 5)
            rows.append(("random ds[i] -> ase.Atoms", 1 / t, t * 1e3))
            t_full = timed(
                lambda: [
                    ds.get_batch(np.arange(s, min(s + 1024, len(ds))))
                    for s in range(0, len(ds), 1024)
                ],
                1,
            )
            rows.append(("full sequential pass, get_batch(1024)", len(ds) / t_full, None))
        _, py_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    table = Table(
        title=f"HDF5 I/O: {args.structures} structures, {n_total} atoms, {size_mib:.0f} MiB file"
    )
    table.add_column("operation")
    table.add_column("structures/s", justify="right")
    table.add_column("ms per call", justify="right")
    for name, rate, ms in rows:
        table.add_row(name, f"{rate:,.0f}", "" if ms is None else f"{ms:.3f}")
    console.print(table)
    console.print(
        f"peak RSS {_rss_mib():.0f} MiB (before building {rss0:.0f} MiB); "
        f"Python-heap peak while reading {py_peak / 2**20:.1f} MiB; "
        f"file size {size_mib:.0f} MiB"
    )


if __name__ == "__main__":
    main()
