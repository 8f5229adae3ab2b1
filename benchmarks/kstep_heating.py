"""How much kinetic energy does a jump's velocity error put on each element?

A jump's velocity error ``dv_i`` (predicted minus true ``v(t+k)``) adds ``m_i |dv_i|^2 / 2`` to
atom i on average, whatever its sign: random errors heat, element by element. The hybrid's
energy restoring scales all internal velocities alike, so it removes the mean of this heating,
not its spread over elements; the thermostat relaxes each element's excess only at ``2 gamma``
per unit time. With a per-cycle transfer ``f_e`` (a fraction of the element's kinetic energy)
the element's temperature settles ``f_e / (2 gamma tau_cycle)`` off: at 1/ps and 4.5 fs cycles,
a 3% target allows about 0.03% per cycle.

Printed per element, on the validation windows of a window file (k given) or on windows cut
from trajectories (``--trajectory``, all of them): the mean ``m |dv|^2 / 2`` per atom and jump
as a fraction of ``3/2 kT``, the rms velocity error (Å/fs), the mean position error (Å), the
predicted steady-state temperature offset from the spread ``(f_e - mean f) / (2 gamma tau)``
(an upper estimate: it ignores the coupling between elements through the bonds), and the
systematic part: the element's kinetic energy after the predicted jump against after the true
one, ``<m v_pred^2> / <m v_true^2> - 1`` (a regression towards the mean shrinks it, noise
inflates it).

    python benchmarks/kstep_heating.py --windows /tmp/mlffd_kstep_bench/mm_windows.h5 \\
        --network /tmp/mlffd_kstep_bench/mm_model/best --k 8
    python benchmarks/kstep_heating.py --network pretrained:openmm-gaff2 \\
        --trajectory /tmp/mlffd_kstep_bench/openmm-gaff2_ethyl_acetate.h5
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from ase.data import chemical_symbols

from mlff_distiller import units
from mlff_distiller.kstep.dataset import KStepWindows, build_windows
from mlff_distiller.kstep.pretrained import pretrained_path
from mlff_distiller.models.io import load_model
from mlff_distiller.models.kstep_common import DELTA_POSITIONS, DELTA_VELOCITIES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=Path)
    parser.add_argument("--trajectory", type=Path, action="append",
                        help="cut k-windows from these trajectories instead (every 2nd frame)")
    parser.add_argument("--network", action="append", required=True,
                        help="a jump network folder or pretrained:CORRECTOR; repeat to compare")
    parser.add_argument("--split", default="val")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--dt", type=float, default=0.5)
    parser.add_argument("--temperature", type=float, default=300.0)
    parser.add_argument("--friction-per-ps", type=float, default=1.0)
    parser.add_argument("--batches", type=int, default=40, help="of 64 windows")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.trajectory:
        import tempfile

        path = Path(tempfile.mkdtemp()) / "windows.h5"
        build_windows(args.trajectory, path, ks=(args.k,), stride=2, fractions=(0.0, 1.0, 0.0))
        windows = KStepWindows.from_file(path, "val", ks=[args.k])
    elif args.windows:
        windows = KStepWindows.from_file(args.windows, args.split, ks=[args.k])
    else:
        parser.error("give --windows or --trajectory")
    kt = units.BOLTZMANN * args.temperature
    cycle_fs = (args.k + 1) * args.dt
    relax = 2.0 * args.friction_per_ps * 1e-3 * cycle_fs
    print("| network | element | atoms | jump heating (% of 3/2 kT) | rms dv (Å/fs) | "
          "mean abs dx (Å) | predicted dT % | KE after jump, predicted / true - 1 (%) |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.network:
        if name.startswith("pretrained:"):
            path = pretrained_path(name.split(":", 1)[1])
        else:
            path = Path(name)
        model = load_model(path).float().eval()
        acc: dict[int, np.ndarray] = {}
        with torch.no_grad():
            for i, (inp, tgt) in enumerate(windows.batches(64, shuffle=True, seed=0)):
                if i >= args.batches:
                    break
                out = model(inp)
                dv = (out[DELTA_VELOCITIES] - tgt.delta_velocities).double()
                dx = (out[DELTA_POSITIONS] - tgt.delta_positions).double().norm(dim=-1)
                heat = 0.5 * inp.masses.double() * dv.square().sum(-1)
                heat = heat / units.ACCEL_PER_FORCE_OVER_MASS  # amu Å²/fs² -> eV
                v_true = (inp.velocities + tgt.delta_velocities).double()
                v_pred = (inp.velocities + out[DELTA_VELOCITIES]).double()
                m = inp.masses.double()
                ke_true = m * v_true.square().sum(-1)
                ke_pred = m * v_pred.square().sum(-1)
                for z in inp.atomic_numbers.unique().tolist():
                    sel = inp.atomic_numbers == z
                    row = np.array([sel.sum(), heat[sel].sum(), dv[sel].square().sum(),
                                    dx[sel].sum(), ke_true[sel].sum(), ke_pred[sel].sum()],
                                   dtype=float)  # fmt: skip
                    acc[z] = acc.get(z, 0) + row
        fractions = {z: a[1] / a[0] / (1.5 * kt) for z, a in acc.items()}
        mean = sum(acc[z][1] for z in acc) / sum(acc[z][0] for z in acc) / (1.5 * kt)
        for z, a in sorted(acc.items()):
            n = a[0]
            print(f"| {name} | {chemical_symbols[z]} | "
                  f"{int(n)} | {100 * fractions[z]:.2f} | {np.sqrt(a[2] / n / 3):.2e} | "
                  f"{a[3] / n:.4f} | {100 * (fractions[z] - mean) / relax:+.0f} | "
                  f"{100 * (a[5] / a[4] - 1):+.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
