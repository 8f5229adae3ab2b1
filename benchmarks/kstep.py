"""k-step hybrid MD against reference MD of the same engine, as distributions.

Jump networks (EGNN with a force head) are trained on GAFF2 (OpenMM) reference MD of the
training molecules of :mod:`mlff_distiller.kstep.molecules` (138), then fine-tuned on GFN2-xTB
MD of 24; every held-out molecule (4 under GAFF2, 2 under xTB, never trained on) is run as

- reference: plain engine MD (BAOAB NVT / velocity-Verlet NVE), 2R replicas in one batch;
- hybrid: R replicas in one batch, k = 4, 8, 12, NVT (the default of ``mlffd kstep run``), and
  at k = 8 NVE with and without the energy-restoring rescale;

all from the same equilibrated structures (2R frames spread over the molecule's reference
sampling: replica i of the hybrid and of the reference starts from frame i) with independent
Maxwell-Boltzmann velocities. Printed per (molecule, corrector, k, ensemble),
with error bars across replicas: per-element temperature (hybrid and reference), the
bond/angle/dihedral distribution distances hybrid-vs-reference next to reference-vs-reference
(normalised Wasserstein-1, :mod:`mlff_distiller.evaluation.distributions`), the largest
element-pair RDF difference (%), NVE drift, force-call reduction, network and corrector ms per
call, wall-clock speed-up (network included), fallbacks and rejections by reason.

    python benchmarks/kstep.py                   # the shipped networks, ~1 h on 2 cores
    python benchmarks/kstep.py --networks train  # retrain them first (+1-2 h); reruns reuse --work
    python benchmarks/kstep.py --quick           # a smoke run of every stage
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from mlff_distiller.data.hdf5 import Dataset
from mlff_distiller.data.structures import from_smiles
from mlff_distiller.evaluation.distributions import compare_ensembles
from mlff_distiller.evaluation.kstep_eval import replica_frames
from mlff_distiller.evaluation.observables import energy_drift
from mlff_distiller.kstep.dataset import KStepWindows, build_windows
from mlff_distiller.kstep.molecules import GAFF2_HELD_OUT, GAFF2_TRAIN, XTB_HELD_OUT, XTB_TRAIN
from mlff_distiller.kstep.pretrained import pretrained_path
from mlff_distiller.kstep.topology import molecule_topology
from mlff_distiller.md.forces import make_force_provider
from mlff_distiller.md.hybrid import HybridConfig, NoJump, run_hybrid
from mlff_distiller.models.io import load_model
from mlff_distiller.teachers import get_teacher
from mlff_distiller.teachers.sampling import SamplingConfig, sample
from mlff_distiller.training.kstep_trainer import KStepTrainConfig, train_kstep

KS = (4, 8, 12)
DT = 0.5  # fs, no constraints (the corrector step is unconstrained)
FRICTION = 1.0  # ps^-1, the same in the reference sampling, the reference runs and the hybrid
THREADS = 1  # torch threads, as `mlffd kstep run` (more make the xTB pool wait on spinning ones)


def sample_all(molecules: dict, teacher: str, out_dir: Path, cfg: SamplingConfig) -> dict:
    paths = {}
    for i, (name, smiles) in enumerate(molecules.items()):
        path = out_dir / f"{teacher}_{name}.h5"
        if not path.exists():
            t0 = time.perf_counter()
            atoms = from_smiles(smiles, name=name)[0]
            options = {"smiles": smiles} if teacher.startswith("openmm") else {}
            sample(get_teacher(teacher, **options), atoms, path, cfg)
            with Dataset(path) as ds:
                measured = ds.attrs.get("measured_temperature_k")
            print(f"  [{i + 1}/{len(molecules)}] {teacher} {name}: "
                  f"{time.perf_counter() - t0:.0f} s, {measured} K", flush=True)  # fmt: skip
        paths[name] = path
    return paths


def start_structure(path: Path, name: str, smiles: str):
    """The last frame of the molecule's reference sampling, velocities zeroed."""
    return start_structures(path, name, smiles, 1)[0]


def start_structures(path: Path, name: str, smiles: str, n: int) -> list:
    """``n`` frames spread evenly over the last two thirds of the molecule's reference
    sampling, velocities zeroed (each replica gets fresh Maxwell-Boltzmann velocities). One
    frame for every replica started them all with one potential energy, a single draw from the
    ensemble: the four GAFF2 molecules' last frames lay 0.5-1.6 standard deviations below the
    mean potential energy, and their NVE reference runs sat at 250-260 K for a 300 K start."""
    with Dataset(path) as ds:
        first = len(ds) // 3
        picks = np.linspace(len(ds) - 1, first, n).round().astype(int)
        frames = [ds[int(i)] for i in picks]
    for atoms in frames:
        atoms.set_momenta(np.zeros((len(atoms), 3)))
        atoms.info.update(name=name, smiles=smiles)
    return frames


def train_networks(
    work: Path, mm_paths, qm_paths, quick: bool, epochs: int, energy: float, frame_steps: int
):
    model_cfg = {"hidden": 48, "n_layers": 3, "n_vectors": 8, "cutoff": 7.0,
                 "max_delta_x": 2.5, "force_head": True}  # fmt: skip
    loss = {"force": 0.01, "kinetic": 0.1, "energy": energy}
    robust = {"noise_positions": 0.01, "noise_velocities": 0.002}  # Å, Å/fs (H)
    mm_windows = work / "mm_windows.h5"
    if not mm_windows.exists():
        # one start frame every 12 MD steps (6 frames of 4 steps), whatever the frame spacing
        stride = (5 if quick else 6) * 4 // frame_steps
        build_windows(list(mm_paths.values()), mm_windows, ks=KS, stride=stride,
                      fractions=(0.9, 0.1, 0.0))  # fmt: skip
    train = KStepWindows.from_file(mm_windows, "train", augment_rotations=True)
    val = KStepWindows.from_file(mm_windows, "val")
    t0 = time.perf_counter()
    print(f"training the MM network on {len(train)} windows ({len(val)} val), {epochs} epochs")
    mm = train_kstep(
        KStepTrainConfig(out_dir=str(work / "mm_model"), model=model_cfg, epochs=epochs,
                         batch_size=32, lr=2e-3, warmup_steps=50, loss=loss, **robust),
        train, val, resume=True, progress=True,
    )  # fmt: skip
    print(f"  {time.perf_counter() - t0:.0f} s; last epoch {mm.history[-1]}", flush=True)
    qm_windows = work / "qm_windows.h5"
    if not qm_windows.exists():
        build_windows(list(qm_paths.values()), qm_windows, ks=KS, stride=1,
                      fractions=(1.0, 0.0, 0.0))  # fmt: skip
    qm_train = KStepWindows.from_file(qm_windows, "train", augment_rotations=True)
    t0 = time.perf_counter()
    print(f"fine-tuning MM -> QM on {len(qm_train)} xTB windows (first layer frozen)")
    qm = train_kstep(
        KStepTrainConfig(out_dir=str(work / "qm_model"), model=model_cfg,
                         epochs=max(epochs // 2, 1), batch_size=32, lr=5e-4, warmup_steps=10,
                         init_from=str(mm.best_model), freeze_layers=1, loss=loss, **robust),
        qm_train, resume=True, progress=True,
    )  # fmt: skip
    print(f"  {time.perf_counter() - t0:.0f} s; last epoch {qm.history[-1]}", flush=True)
    return load_model(mm.best_model), load_model(qm.best_model)


def evaluate_molecule(network, teacher, name, smiles, path, args, rows) -> None:
    replicas = args.replicas
    starts = start_structures(path, name, smiles, 2 * replicas)  # replica i starts from starts[i]
    atoms = starts[0]
    topo = molecule_topology(f"bench-{name}", atoms.numbers, atoms.positions, smiles)
    fs = args.xtb_fs if teacher == "xtb" else args.mm_fs
    cycles_of = {k: int(fs / ((k + 1) * DT)) for k in KS}
    masses, numbers = atoms.get_masses(), atoms.numbers

    def provider(n):
        return make_force_provider(teacher, [atoms] * n)

    def run(net, k, ensemble, n, seed, **options):
        cfg = HybridConfig(k=k, dt_fs=DT, ensemble=ensemble, friction_per_ps=args.friction,
                           seed=seed, save_every=1, **options)  # fmt: skip
        structures = [a.copy() for a in starts[:n]]
        steps = cycles_of.get(k, int(fs / DT)) if k else int(fs / DT)
        return run_hybrid(net, provider(n), structures, cfg, steps, [topo] * n, progress=False,
                          keep_frames=True)  # fmt: skip

    refs = {}
    for ensemble in ("nvt", "nve") if args.nve else ("nvt",):
        t0 = time.perf_counter()
        refs[ensemble] = run(NoJump(), 0, ensemble, 2 * replicas, 1000, rescale=False,
                             energy_tol_per_atom=None)  # fmt: skip
        print(f"  {teacher} {name} reference {ensemble}: {time.perf_counter() - t0:.0f} s",
              flush=True)  # fmt: skip
    plans = [(k, "nvt", True) for k in args.k or KS]
    plans += [(8, "nve", True), (8, "nve", False)] if args.nve else []
    for k, ensemble, rescale in plans:
        t0 = time.perf_counter()
        hyb = run(network, k, ensemble, replicas, 0, rescale=rescale)
        ref = refs[ensemble]
        h_pos, h_vel, h_tot, h_t = replica_frames(hyb, replicas, args.discard_fs)
        r_pos, r_vel, r_tot, r_t = replica_frames(ref, 2 * replicas, args.discard_fs)
        cmp = compare_ensembles((h_pos, h_vel), (r_pos, r_vel), masses, numbers, topo)
        ref_calls = ref.force_calls / (2 * replicas)
        hyb_calls = hyb.force_calls / replicas
        row = {
            "molecule": name, "corrector": teacher, "k": k, "ensemble": ensemble,
            "rescale": rescale if ensemble == "nve" else None, "replicas": replicas,
            "simulated_fs": fs, "call_reduction": ref_calls / max(hyb_calls, 1e-9),
            "speedup": (ref.wall_seconds / 2) / max(hyb.wall_seconds, 1e-9),
            "hybrid": hyb.summary(), "reference": ref.summary(), "distributions": cmp.to_dict(),
        }  # fmt: skip
        if ensemble == "nve":
            row["drift_hybrid"] = _drift(h_tot, h_t)
            row["drift_reference"] = _drift(r_tot, r_t)
        rows.append(row)
        print(f"  {teacher} {name} k={k} {ensemble}{'' if rescale else ' raw'}: "
              f"{time.perf_counter() - t0:.0f} s", flush=True)  # fmt: skip


def _drift(total: np.ndarray, time_fs: np.ndarray) -> tuple[float, float]:
    d = np.array([energy_drift(time_fs, e) for e in total])
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))


def _pair(c: dict) -> str:
    return f"{c['test_vs_ref']:.3f} ({c['ref_vs_ref']:.3f})"


def print_tables(rows) -> None:
    print("\n| molecule | corr. | k | ens. | calls ref/hyb | speed-up | T hyb (K) | T ref (K) | "
          "worst element dT % | bond d (ref-ref) | angle d (ref-ref) | dihedral d (ref-ref) | "
          "RDF max % (ref-ref) | fallbacks | rejections |")  # fmt: skip
    print("|---" * 15 + "|")
    for r in rows:
        d = r["distributions"]
        temps = d["temperatures"]
        mol_t = temps.get("molecule", {})
        worst = max((abs(t["relative_difference_percent"]), s) for s, t in temps.items()
                    if s != "molecule")  # fmt: skip
        bond, angle, dihedral = (_pair(d["coordinates"][kind]) for kind in
                                 ("bond", "angle", "dihedral"))  # fmt: skip
        rdf = f"{d['rdf_max_test_vs_ref']:.2f} ({d['rdf_max_ref_vs_ref']:.2f})"

        ens = r["ensemble"] + ("" if r["rescale"] in (None, True) else " raw")
        rej = {k: v for k, v in r["hybrid"]["rejections"].items() if v}
        print(
            f"| {r['molecule']} | {r['corrector']} | {r['k']} | {ens} | "
            f"{r['call_reduction']:.2f} | {r['speedup']:.2f} | "
            f"{mol_t.get('test_mean', float('nan')):.1f} ± {mol_t.get('test_stderr', 0):.1f} | "
            f"{mol_t.get('ref_mean', float('nan')):.1f} ± {mol_t.get('ref_stderr', 0):.1f} | "
            f"{worst[0]:.1f} ({worst[1]}) | {bond} | {angle} | {dihedral} | {rdf} | "
            f"{r['hybrid']['fallbacks']} | {rej or '-'} |"
        )
    nve = [r for r in rows if r["ensemble"] == "nve"]
    if nve:
        print("\n| molecule | corr. | rescale | drift hybrid (kJ/mol/ps) | drift reference | "
              "raw jump energy error rms (eV/atom) | network ms | corrector ms |")  # fmt: skip
        print("|---" * 8 + "|")
        for r in nve:
            h, ref = r["drift_hybrid"], r["drift_reference"]
            print(f"| {r['molecule']} | {r['corrector']} | {r['rescale']} | "
                  f"{h[0]:+.3f} ± {h[1]:.3f} | {ref[0]:+.3f} ± {ref[1]:.3f} | "
                  f"{r['hybrid']['raw_energy_error_ev_per_atom']['rms']:.2e} | "
                  f"{r['hybrid']['network_ms_per_call']:.2f} | "
                  f"{r['hybrid']['corrector_ms_per_call']:.2f} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/mlffd_kstep_bench"))
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke run)")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--energy-weight", type=float, default=0.0,
                        help="weight of the first-order total-energy loss of the jump (eV^-2)")
    parser.add_argument("--frame-steps", type=int, choices=(1, 2, 4), default=4,
                        help="MD steps between saved frames of the GAFF2 reference MD")
    parser.add_argument("--replicas", type=int, default=8)
    parser.add_argument("--mm-fs", type=float, default=2000.0, help="simulated time per run")
    parser.add_argument("--xtb-fs", type=float, default=1000.0)
    parser.add_argument("--discard-fs", type=float, default=300.0)
    parser.add_argument("--threads", type=int, default=THREADS,
                        help="torch threads (1: the default of `mlffd kstep run`; with 2 the "
                        "network's idle OpenMP threads spin and slow the xTB pool 1.3x)")
    parser.add_argument("--friction", type=float, default=FRICTION,
                        help="of the reference and hybrid runs, 1/ps (the sampling keeps 1)")
    parser.add_argument("--k", type=int, action="append", default=[],
                        help="only these k (repeat; default: 4, 8, 12)")
    parser.add_argument("--no-nve", dest="nve", action="store_false",
                        help="skip the NVE runs (reference and hybrid)")
    parser.add_argument("--only", choices=("mm", "xtb", "both"), default="both")
    parser.add_argument("--molecule", action="append", default=[],
                        help="only these held-out molecules (repeat; default: all)")
    parser.add_argument("--networks", choices=("pretrained", "train"), default="pretrained",
                        help="the networks shipped in the package (samples only the held-out "
                        "molecules), or train them as they were trained (samples all)")
    parser.add_argument("--mm-network", type=Path, default=None,
                        help="a jump network folder to measure instead of the GAFF2 one")
    parser.add_argument("--xtb-network", type=Path, default=None,
                        help="a jump network folder to measure instead of the xTB one")
    parser.add_argument("--network-dtype", choices=("float32", "float64"), default="float32",
                        help="of the jump network (the CLI's default: float32)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    quick = args.quick
    mm_train = dict(list(GAFF2_TRAIN.items())[:6]) if quick else GAFF2_TRAIN
    xtb_train = dict(list(XTB_TRAIN.items())[:2]) if quick else XTB_TRAIN
    pretrained = args.networks == "pretrained" and not quick
    if pretrained:  # the training molecules' MD is not needed
        mm_train, xtb_train = {}, {}
    if quick:
        args.replicas, args.mm_fs, args.xtb_fs, args.discard_fs = 2, 120.0, 60.0, 0.0
    # frames every 4th step (every k of KS is a multiple of 4) or every step (--frame-steps 1)
    base = {"dt_fs": DT, "friction_per_ps": FRICTION, "save_every": args.frame_steps,
            "constraints": "none"}  # fmt: skip
    mm_cfg = SamplingConfig(production_fs=300.0 if quick else 1500.0, **base)
    qm_cfg = SamplingConfig(production_fs=100.0 if quick else 500.0, equilibration_fs=500.0,
                            **{**base, "save_every": 4})  # fmt: skip
    t0 = time.perf_counter()
    print("sampling GAFF2 and GFN2-xTB reference MD (until each reaches 300 K) ...", flush=True)
    mm_paths = sample_all({**mm_train, **GAFF2_HELD_OUT}, "openmm-gaff2", work, mm_cfg)
    qm_paths = sample_all({**xtb_train, **XTB_HELD_OUT}, "xtb", work, qm_cfg)
    print(f"  {time.perf_counter() - t0:.0f} s", flush=True)
    train_mm = {k: mm_paths[k] for k in mm_train}
    train_qm = {k: qm_paths[k] for k in xtb_train}
    if pretrained:
        mm_net = load_model(pretrained_path("openmm-gaff2"))
        qm_net = load_model(pretrained_path("xtb"))
        print(f"networks: shipped ({pretrained_path('openmm-gaff2').parent})", flush=True)
    else:
        mm_net, qm_net = train_networks(work, train_mm, train_qm, quick,
                                        1 if quick else args.epochs, args.energy_weight,
                                        args.frame_steps)  # fmt: skip
    if args.mm_network is not None:
        mm_net = load_model(args.mm_network)
    if args.xtb_network is not None:
        qm_net = load_model(args.xtb_network)
    # float32 networks are what `mlffd kstep run` loads; the MD state stays float64
    net_dtype = {"float32": torch.float32, "float64": torch.float64}[args.network_dtype]
    mm_net, qm_net = mm_net.to(net_dtype), qm_net.to(net_dtype)
    rows: list = []
    held = []
    if args.only in ("mm", "both"):
        held += [(mm_net, "openmm-gaff2", n, s, mm_paths[n]) for n, s in GAFF2_HELD_OUT.items()]
    if args.only in ("xtb", "both"):
        held += [(qm_net, "xtb", n, s, qm_paths[n]) for n, s in XTB_HELD_OUT.items()]
    if quick:
        held = held[:1] + held[-1:]
    if args.molecule:
        held = [h for h in held if h[2] in args.molecule]
    for net, teacher, name, smiles, path in held:
        evaluate_molecule(net, teacher, name, smiles, path, args, rows)
        (work / "kstep_rows.json").write_text(json.dumps(rows, indent=1, default=float))
    print_tables(rows)


if __name__ == "__main__":
    main()
