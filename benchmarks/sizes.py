"""The speed/accuracy menu: each named student size (``mlffd train --size``) against GFN2-xTB.

One process, one CPU thread, cases interleaved round-robin: per size, the default
``StudentCalculator`` (compiled analytical forces) on aspirin (21 atoms) and deca-alanine
(103 atoms), and GFN2-xTB on the same structures (each call displaced by 1e-4 Å so nothing is
cached; xTB restarts its SCF from the previous call, as in MD). Random weights: the speed does
not depend on them. With ``--rmd17 DIR`` the table also shows each size's rMD17 ethanol test
errors from ``DIR/<size>/rmd17_result.json``, written by::

    python benchmarks/rmd17.py --size fast --epochs 300 --minutes 0 --out DIR/fast

(the same fixed budget of 300 epochs for every size). Usage::

    python benchmarks/sizes.py [--rmd17 runs/sizes] [--rounds 10] [--json sizes.json]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"  # before torch and tblite load their thread pools

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from mlff_distiller.data.structures import from_smiles  # noqa: E402
from mlff_distiller.md.calculator import StudentCalculator  # noqa: E402
from mlff_distiller.models.painn import PaiNN, PaiNNConfig  # noqa: E402
from mlff_distiller.models.sizes import RECOMMENDED_SIZE, STUDENT_SIZES  # noqa: E402
from mlff_distiller.teachers import get_teacher  # noqa: E402

MOLECULES = {
    "aspirin": "CC(=O)Oc1ccccc1C(=O)O",  # 21 atoms
    "Ala10": "C[C@@H](N)C(=O)" + "N[C@@H](C)C(=O)" * 9 + "O",  # 103 atoms
}


def timer(calc, atoms):
    """A call that displaces one atom by 1e-4 Å and returns the seconds of get_forces()."""
    atoms = atoms.copy()
    atoms.calc = calc

    def call() -> float:
        atoms.positions[0, 0] += 1e-4
        t0 = time.perf_counter()
        atoms.get_forces()
        return time.perf_counter() - t0

    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rmd17", type=Path, help="folder of benchmarks/rmd17.py --size runs")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--calls", type=int, default=5, help="student calls per round")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)

    molecules = {k: from_smiles(s, seed=0)[0] for k, s in MOLECULES.items()}
    cases: dict[tuple[str, str], object] = {}
    xtb = {k: get_teacher("xtb") for k in molecules}  # one per molecule: its SCF restarts
    for mol, atoms in molecules.items():
        cases[("GFN2-xTB", mol)] = timer(xtb[mol], atoms)
    for size, fields in STUDENT_SIZES.items():
        torch.manual_seed(0)
        calc = StudentCalculator(PaiNN(PaiNNConfig(**fields)))
        for mol, atoms in molecules.items():
            cases[(size, mol)] = timer(calc, atoms)
    first = {key: call() for key, call in cases.items()}  # compiles (once per size)
    samples: dict[tuple[str, str], list[float]] = {key: [] for key in cases}
    for r in range(args.rounds):
        order = list(cases) if r % 2 == 0 else list(cases)[::-1]
        for key in order:
            for _ in range(1 if key[0] == "GFN2-xTB" else args.calls):
                samples[key].append(cases[key]())
    ms = {key: 1000 * statistics.median(v) for key, v in samples.items()}

    accuracy = {}
    if args.rmd17 is not None:
        for size in STUDENT_SIZES:
            path = args.rmd17 / size / "rmd17_result.json"
            if path.is_file():
                result = json.loads(path.read_text())
                accuracy[size] = (
                    result["test"]["force_mae_mev_per_a"],
                    result["test"]["energy_mae_mev"],
                    result["training"]["epochs"],
                    result.get("wall_min", float("nan")),
                )

    print(f"# Student sizes (torch {torch.__version__}, 1 thread, StudentCalculator default "
          f"= compiled analytical forces, float32; median of {args.rounds} interleaved rounds)")
    print()
    print("| size | hidden | blocks | cutoff Å | shared filters | parameters | ms aspirin (21) "
          "| ms Ala10 (103) | xTB / size, aspirin | xTB / size, Ala10 | rMD17 ethanol force MAE "
          "meV/Å | energy MAE meV | training (epochs, min) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for size, f in STUDENT_SIZES.items():
        n_params = sum(p.numel() for p in PaiNN(PaiNNConfig(**f)).parameters())
        a, b = ms[(size, "aspirin")], ms[(size, "Ala10")]
        xa, xb = ms[("GFN2-xTB", "aspirin")] / a, ms[("GFN2-xTB", "Ala10")] / b
        acc = accuracy.get(size)
        acc_cells = (
            f"{acc[0]:.1f} | {acc[1]:.2f} | {acc[2]}, {acc[3]:.0f}" if acc else "- | - | -"
        )
        name = f"**{size}** (recommended)" if size == RECOMMENDED_SIZE else size
        print(f"| {name} | {f['hidden']} | {f['n_interactions']} | {f['cutoff']:g} | "
              f"{'yes' if f['shared_filters'] else 'no'} | {n_params:,} | {a:.2f} | {b:.2f} | "
              f"{xa:.1f}x | {xb:.1f}x | {acc_cells} |")
    print(f"| GFN2-xTB | | | | | | {ms[('GFN2-xTB', 'aspirin')]:.2f} | "
          f"{ms[('GFN2-xTB', 'Ala10')]:.2f} | | | | | |")
    print()
    print("first call (s, includes compiling): "
          + ", ".join(f"{k[0]}/{k[1]} {v:.1f}" for k, v in first.items()))
    if args.json is not None:
        args.json.write_text(json.dumps(
            {"ms": {f"{k[0]}/{k[1]}": v for k, v in ms.items()},
             "first_call_s": {f"{k[0]}/{k[1]}": v for k, v in first.items()},
             "rmd17": accuracy}, indent=2))


if __name__ == "__main__":
    main()
