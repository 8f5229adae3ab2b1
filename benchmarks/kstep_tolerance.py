"""What the hybrid's energy check costs and buys: force calls against fidelity, per tolerance.

Every cycle whose integration error (total-energy change minus the heat of the thermostat) is
above ``energy_tol_per_atom`` is rejected and retried with a smaller jump and a real force
call at ``x'``; the energy restoring then fixes the energy balance of whatever cycle is kept.
This runs the held-out molecules of ``benchmarks/kstep.py`` (its work folder: trajectories and
trained networks) at one k, NVT, with each tolerance (``none``: no energy check) against one
shared reference run (2R replicas), and prints force-call reduction, rejections and fallbacks,
per-element temperatures and the distribution distances (hybrid vs reference, reference vs
reference in brackets), as in ``benchmarks/kstep.py``.

    python benchmarks/kstep_tolerance.py --work /tmp/mlffd_kstep_bench --k 8 \\
        --tolerances 0.01 0.02 0.05 none
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kstep import DT, FRICTION, start_structure  # noqa: E402
from mlff_distiller.evaluation.distributions import compare_ensembles  # noqa: E402
from mlff_distiller.evaluation.kstep_eval import replica_frames  # noqa: E402
from mlff_distiller.kstep.molecules import GAFF2_HELD_OUT, XTB_HELD_OUT  # noqa: E402
from mlff_distiller.kstep.topology import molecule_topology  # noqa: E402
from mlff_distiller.md.forces import make_force_provider  # noqa: E402
from mlff_distiller.md.hybrid import HybridConfig, NoJump, run_hybrid  # noqa: E402
from mlff_distiller.models.io import load_model  # noqa: E402


def _tolerance(text: str) -> float | None:
    return None if text == "none" else float(text)


def compare_variants(teacher, name, smiles, path, variants, k: int, args) -> list[dict]:
    """Hybrid runs of the held-out molecule ``name`` at ``k``, NVT, one per variant ``(label,
    network, HybridConfig options)``, against one shared reference run (2R replicas)."""
    atoms = start_structure(path, name, smiles)
    topo = molecule_topology(f"bench-{name}", atoms.numbers, atoms.positions, smiles)
    masses, numbers = atoms.get_masses(), atoms.numbers
    r = args.replicas

    def run(net, k, n, seed, steps, **options):
        cfg = HybridConfig(k=k, dt_fs=DT, ensemble="nvt", friction_per_ps=FRICTION, seed=seed,
                           save_every=1, **options)  # fmt: skip
        structures = [atoms.copy() for _ in range(n)]
        provider = make_force_provider(teacher, structures)
        return run_hybrid(net, provider, structures, cfg, steps, [topo] * n, progress=False,
                          keep_frames=True)  # fmt: skip

    ref = run(NoJump(), 0, 2 * r, 1000, int(args.fs / DT), rescale=False,
              energy_tol_per_atom=None)  # fmt: skip
    r_pos, r_vel, _, _ = replica_frames(ref, 2 * r, args.discard_fs)
    ref_calls = ref.force_calls / (2 * r)
    rows = []
    for label, network, options in variants:
        t0 = time.perf_counter()
        hyb = run(network, k, r, 0, int(args.fs / ((k + 1) * DT)), **options)
        h_pos, h_vel, _, _ = replica_frames(hyb, r, args.discard_fs)
        cmp = compare_ensembles((h_pos, h_vel), (r_pos, r_vel), masses, numbers, topo).to_dict()
        rows.append({
            "molecule": name, "corrector": teacher, "k": k, "variant": label,
            "call_reduction": ref_calls / (hyb.force_calls / r), "hybrid": hyb.summary(),
            "distributions": cmp,
        })  # fmt: skip
        print(f"  {teacher} {name} {label}: {time.perf_counter() - t0:.0f} s", flush=True)
    return rows


def print_table(rows) -> None:
    print("\n| molecule | corr. | variant | calls ref/hyb | rejections | fallbacks | "
          "T hyb (K) | T ref (K) | per-element dT % | bond d (ref-ref) | angle d (ref-ref) | "
          "dihedral d (ref-ref) | RDF max % (ref-ref) |")  # fmt: skip
    print("|---" * 13 + "|")
    for row in rows:
        d = row["distributions"]
        temps = d["temperatures"]
        mol = temps["molecule"]
        elements = ", ".join(f"{s} {t['relative_difference_percent']:+.0f}"
                             for s, t in temps.items() if s != "molecule")  # fmt: skip
        coords = [f"{d['coordinates'][c]['test_vs_ref']:.2f} "
                  f"({d['coordinates'][c]['ref_vs_ref']:.2f})"
                  for c in ("bond", "angle", "dihedral")]  # fmt: skip
        rej = sum(row["hybrid"]["rejections"].values())
        print(f"| {row['molecule']} | {row['corrector']} | {row['variant']} | "
              f"{row['call_reduction']:.2f} | "
              f"{rej} | {row['hybrid']['fallbacks']} | "
              f"{mol['test_mean']:.0f} ± {mol['test_stderr']:.0f} | "
              f"{mol['ref_mean']:.0f} ± {mol['ref_stderr']:.0f} | {elements} | "
              f"{' | '.join(coords)} | "
              f"{d['rdf_max_test_vs_ref']:.0f} ({d['rdf_max_ref_vs_ref']:.0f}) |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/mlffd_kstep_bench"))
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--tolerances", type=_tolerance, nargs="+",
                        default=[0.01, 0.02, 0.05, None])  # fmt: skip
    parser.add_argument("--replicas", type=int, default=8)
    parser.add_argument("--fs", type=float, default=2000.0, help="simulated time per run")
    parser.add_argument("--discard-fs", type=float, default=300.0)
    parser.add_argument("--only", choices=("mm", "xtb", "both"), default="mm")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="rows as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    held = []
    if args.only in ("mm", "both"):
        net = load_model(args.work / "mm_model" / "best").float()
        held += [(net, "openmm-gaff2", n, s) for n, s in GAFF2_HELD_OUT.items()]
    if args.only in ("xtb", "both"):
        net = load_model(args.work / "qm_model" / "best").float()
        held += [(net, "xtb", n, s) for n, s in XTB_HELD_OUT.items()]
    rows = []
    for net, teacher, name, smiles in held:
        prefix = "openmm-gaff2" if teacher != "xtb" else "xtb"
        variants = [(f"tol {'none' if t is None else f'{t:g}'}", net, {"energy_tol_per_atom": t})
                    for t in args.tolerances]  # fmt: skip
        rows += compare_variants(teacher, name, smiles, args.work / f"{prefix}_{name}.h5",
                                 variants, args.k, args)  # fmt: skip
        if args.out:
            args.out.write_text(json.dumps(rows, indent=1, default=float))
    print_table(rows)


if __name__ == "__main__":
    main()
