"""HDF5 dataset I/O speed: write, sequential and random-batch reads of a 100k-structure file.

Run: ``python benchmarks/data_io.py [--structures 100000] [--batch 64]``. Prints structures/s,
ms per call and the speed-up of ``Dataset.get_batch`` over the naive path (one ``ds[i]``
``ase.Atoms`` per structure, then ``AtomsBatch.from_atoms``), measured side by side, and the
reader's peak memory (the file is built in a child process, so the reader's peak resident set
size is its own). Target: a random batch of 64 molecules in < 5 ms.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import h5py  # noqa: F401  (imported up front so its libraries count before opening)
import numpy as np
import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mlff_distiller.data.batch import AtomsBatch
from mlff_distiller.data.hdf5 import Dataset, DatasetWriter


def _peak_rss_mib() -> float:
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


def timed(fn, repeats: int) -> tuple[float, float]:
    """(median, 10th percentile) seconds of ``fn()`` over ``repeats`` calls after a warm-up.
    On a shared machine the 10th percentile is the uncontended time."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), float(np.percentile(times, 10))


def naive_batch(ds: Dataset, indices) -> AtomsBatch:
    return AtomsBatch.from_atoms([ds[int(i)] for i in indices])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--structures", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--build", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build:  # child process: write the file, print seconds
        print(build(args.build, args.structures))
        return
    torch.set_num_threads(1)
    b, reps = args.batch, args.repeats
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.h5"
        child = [sys.executable, __file__, "--build", str(path), "--structures"]
        t_write = float(subprocess.check_output([*child, str(args.structures)]).split()[-1])
        size_mib = path.stat().st_size / 2**20
        rss_before = _peak_rss_mib()
        rng = np.random.default_rng(1)
        with Dataset(path) as ds:
            rss_open = _peak_rss_mib()
            n, n_total = len(ds), ds.n_atoms_total
            random_idx = [rng.choice(n, b, replace=False) for _ in range(reps + 1)]
            seq_idx = [np.arange(s, s + b) for s in range(0, (reps + 1) * b, b)]
            it = {
                "r": iter(random_idx),
                "s": iter(seq_idx),
                "nr": iter(random_idx),
                "ns": iter(seq_idx),
            }
            rows = []
            t_r = timed(lambda: ds.get_batch(next(it["r"])), reps)
            t_nr = timed(lambda: naive_batch(ds, next(it["nr"])), min(reps, 100))
            rows.append((f"random batch of {b}", t_r, t_nr))
            t_s = timed(lambda: ds.get_batch(next(it["s"])), reps)
            t_ns = timed(lambda: naive_batch(ds, next(it["ns"])), min(reps, 100))
            rows.append((f"sequential batch of {b}", t_s, t_ns))
            t0 = time.perf_counter()
            for s in range(0, n, 1024):
                ds.get_batch(np.arange(s, min(s + 1024, n)))
            t_full = time.perf_counter() - t0
            tracemalloc.start()  # separate pass: tracemalloc slows Python allocations
            for idx in random_idx[:100]:
                ds.get_batch(idx)
            _, py_peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        rss_after = _peak_rss_mib()

    console = Console(width=110)
    table = Table(
        title=f"HDF5 reads: {n:,} structures, {n_total:,} atoms (9-21 per structure), "
        f"{size_mib:.0f} MiB file, 1 thread"
    )
    cols = ("read", "get_batch ms", "p10 ms", "structures/s", "naive ms", "p10 ms", "speed-up")
    for col in cols:
        table.add_column(col, justify="left" if col == "read" else "right")
    for name, (t, t10), (t_naive, t_naive10) in rows:
        table.add_row(
            name,
            f"{t * 1e3:.2f}",
            f"{t10 * 1e3:.2f}",
            f"{b / t:,.0f}",
            f"{t_naive * 1e3:.2f}",
            f"{t_naive10 * 1e3:.2f}",
            f"{t_naive / t:.0f}x",
        )
    console.print(table)
    console.print(
        f"write: {n / t_write:,.0f} structures/s ({t_write:.1f} s, append_frame, flush every "
        f"2000)\nfull sequential pass with get_batch(1024): {n / t_full:,.0f} structures/s "
        f"({t_full:.2f} s)\n"
        + escape(
            f"reader RSS: {rss_before:.0f} MiB before opening, {rss_open:.0f} MiB open "
            f"(cached n_atoms/cells/energies/atomic numbers), peak {rss_after:.0f} MiB after "
            f"all reads; file {size_mib:.0f} MiB; Python-heap peak over 100 random batches "
            f"{py_peak / 2**20:.2f} MiB"
        )
    )
    median = rows[0][1][0]
    verdict = "meets" if median < 5e-3 else "MISSES"
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    console.print(
        f"random batch of {b}: median {median * 1e3:.2f} ms, {verdict} the < 5 ms target "
        f"(load average {load} on {os.cpu_count()} CPUs)"
    )


if __name__ == "__main__":
    main()
