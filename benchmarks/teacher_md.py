"""Plain GFN2-xTB MD of several replicas: the engine's thread pool against its serial loop and
against ASE's Langevin with tblite's own ASE calculator (one replica after another), measured
side by side in rounds (interleaved, medians: shared machines drift).

Each path runs ``--steps`` BAOAB / Langevin steps of ``--replicas`` copies of each molecule
(same start, different velocities) and is timed per structure-step. Prints ms per
structure-step and the ratios.

    python benchmarks/teacher_md.py                        # isopropanol and aspirin, 8 replicas
    python benchmarks/teacher_md.py --smiles CCO --replicas 2 8 --steps 50
    python benchmarks/teacher_md.py --sampling   # `mlffd sample` / the demo: runs at once

``--sampling`` times reference sampling (``sample_many``: checked equilibration, then
production, one trajectory file per run) of the given molecules, one run each, on the teacher
thread pool against one run after another.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from ase.md.langevin import Langevin
from tblite.ase import TBLite

from mlff_distiller import units
from mlff_distiller.data.structures import from_smiles
from mlff_distiller.md.forces import CalculatorForces
from mlff_distiller.md.integrators import langevin_baoab_step, with_forces
from mlff_distiller.md.runner import initial_state
from mlff_distiller.teachers import get_teacher
from mlff_distiller.teachers.parallel import available_cpus

DT, T, FRICTION = 0.5, 300.0, 1.0  # fs, K, 1/ps


def engine(atoms, replicas: int, steps: int, workers: int | None) -> float:
    provider = CalculatorForces([atoms] * replicas, lambda a: get_teacher("xtb"), "xtb", workers)
    state = initial_state([atoms.copy() for _ in range(replicas)], T, 0, torch.float64)
    state = with_forces(state, provider)
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(steps):
        state = langevin_baoab_step(state, provider, DT, T, FRICTION / units.PS, generator)
    return (time.perf_counter() - start) / (steps * replicas)


def ase_langevin(atoms, replicas: int, steps: int) -> float:
    total = 0.0
    for r in range(replicas):
        a = atoms.copy()
        a.calc = TBLite(method="GFN2-xTB", verbosity=0)
        fs = units.ASE_TIME_PER_FS
        dyn = Langevin(a, DT * fs, temperature_K=T, friction=FRICTION / (units.PS * fs),
                       fixcm=False, rng=np.random.default_rng(r))  # fmt: skip
        a.get_forces()
        start = time.perf_counter()
        dyn.run(steps)
        total += time.perf_counter() - start
    return total / (steps * replicas)


def sampling(smiles: list[str], rounds: int) -> None:
    import tempfile

    from mlff_distiller.teachers.sampling import SamplingConfig, sample_many

    mols = [from_smiles(smi, name=f"m{i}")[0] for i, smi in enumerate(smiles)]
    cfg = SamplingConfig(equilibration_fs=100.0, production_fs=200.0, save_every=10,
                         max_equilibration_fs=100.0)  # fmt: skip
    times: dict[str, list[float]] = {"pool": [], "serial": []}
    for _ in range(rounds):
        for label, workers in (("pool", None), ("serial", 1)):
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                sample_many(lambda a: get_teacher("xtb"), mols, tmp, cfg, workers=workers)
                times[label].append(time.perf_counter() - start)
    pool, serial = (float(np.median(times[k])) for k in ("pool", "serial"))
    print(f"sampling {len(mols)} molecules (xTB, 300 fs each): pool {pool:.1f} s, one after "
          f"another {serial:.1f} s, {serial / pool:.2f}x")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smiles", nargs="+", default=["CC(C)O", "CC(=O)Oc1ccccc1C(=O)O"])
    parser.add_argument("--replicas", type=int, nargs="+", default=[8])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sampling", action="store_true",
                        help="time sample_many (runs at once vs one after another) instead")
    args = parser.parse_args()
    if args.sampling:
        sampling(args.smiles, args.rounds)
        return
    print(f"{available_cpus()} CPUs; GFN2-xTB; {args.steps} steps; medians of {args.rounds} "
          "interleaved rounds; ms per structure-step", flush=True)  # fmt: skip
    print("| molecule | atoms | replicas | engine, pool | engine, serial | ASE Langevin + "
          "TBLite | serial / pool | ASE / pool |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for smiles in args.smiles:
        atoms = from_smiles(smiles)[0]
        for n in args.replicas:
            times: dict[str, list[float]] = {"pool": [], "serial": [], "ase": []}
            for _ in range(args.rounds):
                times["pool"].append(engine(atoms, n, args.steps, None))
                times["serial"].append(engine(atoms, n, args.steps, 1))
                times["ase"].append(ase_langevin(atoms, n, args.steps))
            med = {k: 1e3 * float(np.median(v)) for k, v in times.items()}
            print(f"| {smiles} | {len(atoms)} | {n} | {med['pool']:.2f} | {med['serial']:.2f} | "
                  f"{med['ase']:.2f} | {med['serial'] / med['pool']:.2f} | "
                  f"{med['ase'] / med['pool']:.2f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
