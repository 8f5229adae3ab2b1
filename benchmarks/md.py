"""Batched student MD vs one molecule at a time through ASE, measured side by side.

For n copies of a molecule (different velocities), time `--steps` velocity-Verlet steps:
(a) the batched engine advancing all n at once, (b) ASE VelocityVerlet + StudentCalculator run
n times one after another. Prints molecule-steps per second and the ratio.

    python benchmarks/md.py --smiles "CC(=O)OC1=CC=CC=C1C(=O)O" --copies 1 8 32 --steps 50
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from ase import units as ase_units
from ase.md.velocitydistribution import Stationary, thermalize_momenta
from ase.md.verlet import VelocityVerlet

from mlff_distiller.data.state import MDState
from mlff_distiller.data.structures import from_smiles
from mlff_distiller.md.calculator import StudentCalculator
from mlff_distiller.md.integrators import velocity_verlet_step, with_forces
from mlff_distiller.models.painn import PaiNN, PaiNNConfig


def copies(atoms, n: int, seed: int = 0):
    out = []
    for k in range(n):
        a = atoms.copy()
        thermalize_momenta(a, temperature_K=300, rng=np.random.default_rng(seed + k))
        Stationary(a, preserve_temperature=False)
        out.append(a)
    return out


def time_batched(model, structures, steps: int, dt: float, dtype) -> float:
    state = with_forces(MDState.from_atoms(structures, dtype=dtype), model)
    t0 = time.perf_counter()
    for _ in range(steps):
        state = velocity_verlet_step(state, model, dt)
    return time.perf_counter() - t0


def time_ase(model, structures, steps: int, dt: float, dtype) -> float:
    calc = StudentCalculator(model, dtype=dtype)
    total = 0.0
    for atoms in structures:
        atoms = atoms.copy()
        atoms.calc = calc
        dyn = VelocityVerlet(atoms, timestep=dt * ase_units.fs)
        atoms.get_forces()
        t0 = time.perf_counter()
        dyn.run(steps)
        total += time.perf_counter() - t0
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smiles", default="CC(=O)OC1=CC=CC=C1C(=O)O")
    parser.add_argument("--copies", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--dt", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--float64", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = torch.float64 if args.float64 else torch.float32
    torch.manual_seed(0)
    model = PaiNN(PaiNNConfig()).to(dtype).eval()
    atoms = from_smiles(args.smiles)[0]
    print(
        f"{atoms.get_chemical_formula()} ({len(atoms)} atoms), PaiNN default config, "
        f"{args.steps} velocity-Verlet steps, {dtype}, {args.threads} thread(s)"
    )
    print("| copies | batched s | ASE one-by-one s | batched mol-steps/s | ASE mol-steps/s "
          "| speed-up |")
    print("|---|---|---|---|---|---|")
    for n in args.copies:
        structures = copies(atoms, n)
        time_batched(model, structures[:1], 2, args.dt, dtype)  # warm-up
        t_b = time_batched(model, structures, args.steps, args.dt, dtype)
        t_a = time_ase(model, structures, args.steps, args.dt, dtype)
        rate_b, rate_a = n * args.steps / t_b, n * args.steps / t_a
        print(f"| {n} | {t_b:.2f} | {t_a:.2f} | {rate_b:.0f} | {rate_a:.0f} | {t_a / t_b:.2f}x |")


if __name__ == "__main__":
    main()
