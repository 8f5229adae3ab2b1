"""Cost of a committee of PaiNN students per MD step, against one student.

Per width (hidden 128 and 64, 3 blocks, 20 rbf, 5 Å), molecule (aspirin, 21 atoms; deca-alanine,
103 atoms) and eager/compiled: median ms per ``energy_and_forces`` call (neighbour list
included, as in an MD step) of one PaiNN, and of a committee of ``--members`` as vmap over
independent members, a loop over them (one neighbour list), and vmap over a readout ensemble
(``shared="representation"``), and the loop committee with ``check_every=4`` (member 0 drives,
the committee runs every 4th call; timed as the mean over blocks of 4 calls, i.e. per MD step);
each committee's ratio to the one student. float32; process CPU time with one thread (time
descheduled by other jobs is not counted). The calls are interleaved.

    OMP_NUM_THREADS=1 python benchmarks/committee.py             # eager and compiled
    OMP_NUM_THREADS=1 python benchmarks/committee.py --modes eager --hidden 64
"""

from __future__ import annotations

import argparse
import copy
import functools
import statistics
import time

import torch

from mlff_distiller.data.batch import AtomsBatch
from mlff_distiller.data.structures import from_smiles
from mlff_distiller.models.committee import Committee, CommitteeConfig
from mlff_distiller.models.painn import PaiNN, PaiNNConfig

MOLECULES = {
    "aspirin": "CC(=O)Oc1ccccc1C(=O)O",
    "deca-alanine": "NC(C)C(=O)" + "NC(C)C(=O)" * 9 + "O",
}


def interleaved_ms(fns: dict, repeats: int, budget_s: float) -> dict[str, float]:
    """Median process-CPU ms of each callable, called in turn (3 warm-up calls each)."""
    for fn in fns.values():
        for _ in range(3):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    start_all = time.perf_counter()
    for round_ in range(repeats):
        for name, fn in fns.items():
            start = time.process_time()
            fn()
            times[name].append((time.process_time() - start) * 1e3)
        if round_ >= 4 and time.perf_counter() - start_all > budget_s:
            break
    return {name: statistics.median(t) for name, t in times.items()}


def models(hidden: int, members: int, compiled: bool) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    painn = dict(hidden=hidden, n_interactions=3, n_rbf=20, cutoff=5.0)
    students = [PaiNN(PaiNNConfig(**painn)) for _ in range(members)]
    vmap = Committee.from_members(students)
    vmap.vectorized = True
    loop = copy.deepcopy(vmap)
    loop.vectorized = False
    readout = Committee(CommitteeConfig(members=members, painn=painn, shared="representation"))
    every4 = copy.deepcopy(loop).set_check_every(4)
    out = {"one student": students[0], "vmap": vmap, "loop": loop, "readout ens.": readout,
           "check every 4": every4}  # fmt: skip
    for model in out.values():
        model.eval().compile_forces(compiled)
    return out


def per_step(model, batch, block: int = 4):
    """One call of a block of ``block`` consecutive MD-step calls, averaged (the cost per step)."""

    def fn():
        for _ in range(block):
            model.energy_and_forces(batch)

    return fn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--hidden", type=int, nargs="+", default=[128, 64])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--cell-seconds", type=float, default=15.0)
    parser.add_argument("--modes", nargs="+", default=["eager", "compiled"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    batches = {}
    for name, smiles in MOLECULES.items():
        atoms = from_smiles(smiles, seed=0)[0]
        batches[name] = AtomsBatch.from_arrays([atoms.numbers], [atoms.positions])
    print(f"committee of {args.members}; median ms per call (process CPU time, 1 thread)")
    cols = ["hidden", "molecule", "atoms", "mode", "one student", "vmap", "loop",
            "readout ens.", "check every 4", "vmap/one", "loop/one", "readout/one",
            "every4/one"]  # fmt: skip
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for compiled in [mode == "compiled" for mode in args.modes]:
        for hidden in args.hidden:
            fns_models = models(hidden, args.members, compiled)
            for name, batch in batches.items():
                fns = {k: functools.partial(m.energy_and_forces, batch)
                       for k, m in fns_models.items()}  # fmt: skip
                fns["check every 4"] = per_step(fns_models["check every 4"], batch)
                ms = interleaved_ms(fns, args.repeats, args.cell_seconds)
                ms["check every 4"] /= 4
                one = ms["one student"]
                row = [hidden, name, batch.n_atoms, "compiled" if compiled else "eager"]
                row += [f"{ms[k]:.2f}" for k in fns]
                row += [f"{ms[k] / one:.2f}"
                        for k in ("vmap", "loop", "readout ens.", "check every 4")]  # fmt: skip
                print("| " + " | ".join(str(v) for v in row) + " |", flush=True)


if __name__ == "__main__":
    main()
