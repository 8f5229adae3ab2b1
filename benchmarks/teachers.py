"""Teacher speed: ms per energy+forces call on aspirin (21 atoms) and a ~50-atom molecule,
our xTB teacher (tblite's API) against tblite's own ASE calculator, OpenMM's platforms by system
size (the teachers' default picks the faster one), and Ray labelling throughput against serial
labelling (ratio), measured side by side.

    OMP_NUM_THREADS=1 python benchmarks/teachers.py [--quick] [--workers 2] [--only-xtb]
    python benchmarks/teachers.py --only-openmm
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
warnings.filterwarnings("ignore")

ASPIRIN = "CC(=O)OC1=CC=CC=C1C(=O)O"
# ethyl 4-decanamidobenzoate, C19H29NO3: 52 atoms of H, C, N, O so that every teacher can do it
FIFTY = "CCCCCCCCCC(=O)NC1=CC=C(C=C1)C(=O)OCC"


def _molecule(smiles: str, name: str):
    from mlff_distiller.data.structures import from_smiles

    return from_smiles(smiles, n_conformers=1, seed=0, name=name)[0]


def time_calls(teacher, atoms, repeats: int) -> float:
    """Median ms per energy+forces call on slightly displaced copies (no caching)."""
    rng = np.random.default_rng(0)
    a = atoms.copy()
    a.calc = teacher
    a.get_forces()  # warm-up (parametrization, graph compilation)
    times = []
    for _ in range(repeats):
        a.positions += rng.normal(0, 1e-3, a.positions.shape)
        t0 = time.perf_counter()
        a.get_potential_energy()
        a.get_forces()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def bench_teachers(quick: bool) -> None:
    from mlff_distiller.teachers import get_teacher, list_teachers

    mols = [_molecule(ASPIRIN, "aspirin"), _molecule(FIFTY, "fifty")]
    print(f"{'teacher':<16}{'aspirin (21 at) ms':>20}{f'{len(mols[1])}-atom ms':>16}")
    for spec in list_teachers():
        ok, why = spec.availability()
        if not ok:
            print(f"{spec.name:<16}{'n/a: ' + why:>36}")
            continue
        opts = {}
        if spec.name == "openmm-amber14":
            print(f"{spec.name:<16}{'(peptides only: alanine dipeptide below)':>36}")
            continue
        if spec.name == "pyscf":
            if quick:
                continue
            opts = {"method": "hf", "basis": "sto-3g"}
        try:
            teacher = get_teacher(spec.name, **opts)
        except Exception as err:  # report and go on
            print(f"{spec.name:<16}  failed to load: {err}")
            continue
        repeats = 2 if spec.name == "pyscf" else (5 if quick else 20)
        row = [time_calls(teacher, m, repeats) for m in mols[: 1 if spec.name == "pyscf" else 2]]
        cells = "".join(f"{t:>20.2f}" if i == 0 else f"{t:>16.2f}" for i, t in enumerate(row))
        print(f"{spec.name:<16}{cells}")
    from mlff_distiller.teachers.openmm_amber import read_mdtraj_h5

    h5 = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "mdtraj_ala2.h5"
    if h5.exists():
        _, frames = read_mdtraj_h5(h5)
        t = get_teacher("openmm-amber14", topology=str(h5))
        ms = time_calls(t, frames[0], 20)
        print(f"{'openmm-amber14':<16}  alanine dipeptide (22 atoms): {ms:.3f} ms")


def bench_xtb_paths(repeats: int) -> None:
    """GFN2-xTB per call along a trajectory of small steps (SCF restarted from the previous
    frame in both): the ``xtb`` teacher against ``tblite.ase.TBLite``, interleaved per molecule."""
    from tblite.ase import TBLite

    from mlff_distiller.teachers import get_teacher

    print("\nGFN2-xTB per call: the xtb teacher (tblite API) vs tblite's ASE calculator")
    print(f"{'molecule':<20}{'atoms':>6}{'xtb teacher ms':>16}{'tblite ASE ms':>15}{'ratio':>8}")
    for smiles, name in (("CC(O)C", "isopropanol"), (ASPIRIN, "aspirin"), (FIFTY, "fifty")):
        atoms = _molecule(smiles, name)
        ours, theirs = [], []
        for _ in range(3):  # alternate, so that a busy moment hits both
            ours.append(time_calls(get_teacher("xtb"), atoms, repeats))
            theirs.append(time_calls(TBLite(method="GFN2-xTB", verbosity=0), atoms, repeats))
        a, b = float(np.median(ours)), float(np.median(theirs))
        print(f"{name:<20}{len(atoms):>6}{a:>16.2f}{b:>15.2f}{b / a:>7.2f}x")


def bench_openmm_platforms(repeats: int) -> None:
    """GAFF2 (Gasteiger charges, no cutoff) by system size: ms per energy+forces call (an MD
    loop's single points) and per step of OpenMM's own Langevin integrator, on the CPU platform
    (its default threads, and one), on the Reference platform, and what the teachers' default
    (``platform=None``) picks. Interleaved rounds, medians."""
    import openmm

    from mlff_distiller.teachers import get_teacher
    from mlff_distiller.teachers.openmm_base import REFERENCE_MAX_PARTICLES

    def one(smiles, atoms, platform, threads):
        options = {"threads": threads} if threads else {}
        teacher = get_teacher("openmm-gaff2", smiles=smiles, charge_method="gas",
                              platform=platform, **options)  # fmt: skip
        integrator = openmm.LangevinMiddleIntegrator(300, 1.0, 0.0005)
        context = teacher.create_context(atoms, integrator)[0]
        calls = []
        for i in range(repeats):
            context.setPositions((atoms.positions + 0.001 * (i % 5)) / 10.0)
            t0 = time.perf_counter()
            context.getState(getEnergy=True, getForces=True)
            calls.append(time.perf_counter() - t0)
        context.setVelocitiesToTemperature(300)
        t0 = time.perf_counter()
        integrator.step(repeats)
        return 1e3 * float(np.median(calls)), 1e3 * (time.perf_counter() - t0) / repeats

    paths = (("CPU", None), ("CPU", 1), ("Reference", None))
    print(f"\nOpenMM GAFF2 by size: ms per energy+forces call / per Langevin step "
          f"(default: Reference up to {REFERENCE_MAX_PARTICLES} particles)")
    print(f"{'atoms':>6}{'CPU':>16}{'CPU, 1 thread':>16}{'Reference':>16}{'default':>11}")
    for smiles in ("CC(C)O", ASPIRIN, FIFTY, "C" * 33, "C" * 66, "C" * 130):
        atoms = _molecule(smiles, "m")
        runs = {path: [] for path in paths}
        for _ in range(3):
            for path in paths:
                runs[path].append(one(smiles, atoms, *path))
        cells = [np.median(np.asarray(r), axis=0) for r in runs.values()]
        default = "Reference" if len(atoms) <= REFERENCE_MAX_PARTICLES else "CPU"
        print(f"{len(atoms):>6}" + "".join(f"{c:>8.3f} /{s:>6.3f}" for c, s in cells)
              + f"{default:>11}")


def bench_labelling(workers: int, n: int, teacher: str) -> None:
    from mlff_distiller.data.hdf5 import DatasetWriter
    from mlff_distiller.teachers.labelling import label_dataset

    aspirin = _molecule(ASPIRIN, "aspirin")
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in.h5"
        with DatasetWriter(src) as w:
            for _ in range(n):
                a = aspirin.copy()
                a.positions += rng.normal(0, 0.03, a.positions.shape)
                w.append(a)
        t0 = time.perf_counter()
        label_dataset(src, teacher, Path(tmp) / "serial.h5", workers=0)
        t_serial = time.perf_counter() - t0
        import ray

        from mlff_distiller.teachers.labelling import init_ray

        t0 = time.perf_counter()
        init_ray(workers)
        t_start = time.perf_counter() - t0
        t0 = time.perf_counter()
        label_dataset(src, teacher, Path(tmp) / "ray.h5", workers=workers, chunk_size=16)
        t_ray = time.perf_counter() - t0
        ray.shutdown()
    print(f"\nlabelling {n} aspirin frames with {teacher} (cpus here: {os.cpu_count()})")
    print(f"{'mode':<28}{'s':>8}{'frames/s':>10}{'vs serial':>11}")
    print(f"{'serial (workers 0)':<28}{t_serial:>8.2f}{n / t_serial:>10.1f}{1.0:>11.2f}")
    print(f"{f'ray, {workers} actors':<28}{t_ray:>8.2f}{n / t_ray:>10.1f}{t_serial / t_ray:>11.2f}")
    print(f"(ray cluster start-up {t_start:.1f} s, not included; actor start-up included)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, no PySCF")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--frames", type=int, default=400)
    parser.add_argument("--label-teacher", default="xtb")
    parser.add_argument("--only-xtb", action="store_true", help="only the two xTB paths")
    parser.add_argument("--only-openmm", action="store_true", help="only OpenMM's platforms")
    args = parser.parse_args()
    if args.only_openmm:
        bench_openmm_platforms(50 if args.quick else 200)
        return
    bench_xtb_paths(10 if args.quick else 40)
    if args.only_xtb:
        return
    bench_teachers(args.quick)
    bench_labelling(args.workers, args.frames, args.label_teacher)


if __name__ == "__main__":
    main()
