"""Our PaiNN student's speed side by side with the peers users would pick instead.

One process, one CPU thread (``OMP/MKL/OPENBLAS_NUM_THREADS=1`` before torch is imported, then
``torch.set_num_threads(1)``), every case measured interleaved in round-robin order (the
direction alternates each round) so that machine-load drift hits all cases alike; wall time by
``time.perf_counter``, medians in ms. Both PaiNNs (ours and SchNetPack's) have random weights,
128 features, 3 interactions, 20 radial functions, a 5 Å cosine cutoff, float32, and their
energies are scaled by 0.01 (ours: ``set_scale_shift(0.01, 0)``; SchNetPack: the last readout
layer) so that the random forces are gentle and the short MD runs stay bound. Timings do not
depend on the weights.

1. Energy + forces per call, aspirin (21 atoms) and Ala10 (103 atoms): our model called directly
   (compiled analytical forces = the default path, eager analytical, energy only), our ASE
   ``StudentCalculator`` (default = compiled, and ``compile=False``), SchNetPack's
   ``SpkCalculator`` (autograd forces, matscipy neighbour list), GFN2-xTB and SevenNet-0 (the
   ``xtb`` / ``sevennet`` teachers). ASE calculators get a 1e-4 Å displacement every call so
   nothing is cached.
2. Batched Langevin MD (NVT, 300 K, 0.5 fs, friction 1/ps) of 1/8/32/64 aspirin copies: our
   batched engine (``run_md``, default compiled, and eager), torch-sim's ``nvt_langevin`` driving
   our ``StudentModel`` (compiled forces) and driving SchNetPack's PaiNN (an adapter below with
   torch-sim's own per-system vesin neighbour list, as its MACE wrapper does). ms per step and
   atom-steps per second.
3. Checks that both PaiNNs do the same work (neighbour pairs within 5 Å, parameter counts) and
   that the molecules stay bound in every MD run (largest bonded distance < 2 Å at the end).
   A random model has no bonds: with gentle (scaled) forces the atoms drift almost freely at
   thermal speeds, so the timed runs are short (30 steps = 15 fs: bonds grow from 1.50 to about
   1.8 Å); much longer ``--md-steps`` trip this check by design, not by an engine fault.

GFN2-xTB (tblite) restarts each SCF from the previous call's wavefunction, as in MD (one
calculator per molecule keeps that). Our compiled forces specialise on one structure per batch
and recompile once for the first multi-structure batch (in the section 2 warm-up).

The first compile of our forces takes about a minute on a CPU (cached on disk afterwards); it is
done in warm-up calls and reported separately (first-call times), never in the medians.

Install the peers (SchNetPack 2.2.0 declares Python >= 3.12 but runs on 3.11, so pip refuses it
as a dependency there; install it without its dependency check, then its run-time needs)::

    pip install -e ".[bench]"       # torch-sim-atomistic, matscipy and SchNetPack's needs
    pip install --no-deps --ignore-requires-python schnetpack==2.2.0   # Python 3.11 only

Run (one thread by design; on a quiet machine; the default takes roughly 5-10 minutes)::

    python benchmarks/peers.py                         # everything
    python benchmarks/peers.py --quick                 # smoke run (tiny repeats)
    python benchmarks/peers.py --repeats 20 --md-repeats 5 --batches 1,8,32,64 --json peers.json
    python benchmarks/peers.py --skip-teachers         # without GFN2-xTB and SevenNet-0
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"  # before torch (and tblite's OpenMP) is loaded

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from importlib import metadata  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from ase import Atoms  # noqa: E402

from mlff_distiller import units  # noqa: E402
from mlff_distiller.data.batch import AtomsBatch  # noqa: E402
from mlff_distiller.data.structures import from_smiles  # noqa: E402
from mlff_distiller.md.calculator import StudentCalculator  # noqa: E402
from mlff_distiller.md.runner import MDConfig, initial_state, run_md  # noqa: E402
from mlff_distiller.models.fast_path import resolve_compile  # noqa: E402
from mlff_distiller.models.painn import PaiNN, PaiNNConfig  # noqa: E402

INSTALL_HINT = (
    'pip install -e ".[bench]" (and on Python 3.11: pip install --no-deps '
    "--ignore-requires-python schnetpack==2.2.0)"
)
try:
    import schnetpack as spk
except ImportError as _err:  # pragma: no cover - depends on the environment
    raise ImportError(f"benchmarks/peers.py needs SchNetPack: {INSTALL_HINT} ({_err})") from _err
try:
    import torch_sim as ts
    from torch_sim.integrators import MDState as TSMDState
    from torch_sim.models.interface import ModelInterface
    from torch_sim.neighbors import vesin_nl_ts
except ImportError as _err:  # pragma: no cover - depends on the environment
    raise ImportError(f"benchmarks/peers.py needs torch-sim: {INSTALL_HINT} ({_err})") from _err

ASPIRIN = "CC(=O)Oc1ccccc1C(=O)O"  # C9H8O4, 21 atoms
ALA10 = "C[C@@H](N)C(=O)" + "N[C@@H](C)C(=O)" * 9 + "O"  # deca-alanine C30H52N10O11, 103 atoms
CUTOFF = 5.0
ENERGY_SCALE = 0.01
DT_FS = 0.5
TEMPERATURE_K = 300.0
FRICTION_PER_PS = 1.0
BOND_LIMIT_A = 2.0
DISPLACEMENT_A = 1e-4
DTYPE = torch.float32


# ------------------------------------------------------------------------------ models
def our_painn() -> PaiNN:
    torch.manual_seed(0)
    model = PaiNN(PaiNNConfig(hidden=128, n_interactions=3, n_rbf=20, cutoff=CUTOFF))
    model.set_scale_shift(ENERGY_SCALE, 0.0)
    return model.to(DTYPE).eval()


def spk_painn() -> torch.nn.Module:
    """SchNetPack's PaiNN potential: pairwise distances -> PaiNN -> atomwise energy (sum) ->
    autograd forces, the set-up of SchNetPack's own force-field configs."""
    torch.manual_seed(0)
    representation = spk.representation.PaiNN(
        n_atom_basis=128,
        n_interactions=3,
        radial_basis=spk.nn.GaussianRBF(n_rbf=20, cutoff=CUTOFF),
        cutoff_fn=spk.nn.CosineCutoff(CUTOFF),
    )
    energy = spk.atomistic.Atomwise(n_in=128, output_key="energy")  # 128 -> 64 -> 1, like ours
    with torch.no_grad():
        last = energy.outnet[-1]
        last.weight.mul_(ENERGY_SCALE)
        last.bias.mul_(ENERGY_SCALE)
    model = spk.model.NeuralNetworkPotential(
        representation=representation,
        input_modules=[spk.atomistic.PairwiseDistances()],
        output_modules=[energy, spk.atomistic.Forces(energy_key="energy", force_key="forces")],
    )
    return model.to(DTYPE).eval()


def spk_calculator(model: torch.nn.Module) -> spk.interfaces.SpkCalculator:
    return spk.interfaces.SpkCalculator(
        model=model,
        neighbor_list=spk.transform.MatScipyNeighborList(cutoff=CUTOFF),
        energy_unit="eV",
        position_unit="Angstrom",
        dtype=DTYPE,
    )


class SchNetPackTorchSim(ModelInterface):
    """A SchNetPack potential as a torch-sim ``ModelInterface`` (energy and autograd forces).

    Neighbour lists per system with torch-sim's ``vesin_nl_ts`` (like torch-sim's MACE wrapper),
    offsets from the row-vector cell; inputs in SchNetPack's flat batch format.
    """

    def __init__(self, model: torch.nn.Module, cutoff: float, dtype: torch.dtype = DTYPE):
        super().__init__()
        self.model = model.to(dtype).eval()
        self._device = torch.device("cpu")
        self._dtype = dtype
        self._compute_forces = True
        self._compute_stress = False
        self._memory_scales_with = "n_atoms_x_density"
        self.cutoff = torch.tensor(cutoff, dtype=torch.float64)
        self.last_pairs = 0

    def forward(self, state, **kwargs) -> dict[str, torch.Tensor]:
        props = spk.properties
        positions = state.positions
        system_idx = state.system_idx
        cell = state.row_vector_cell
        n_sys = int(cell.shape[0])
        counts = torch.bincount(system_idx, minlength=n_sys)
        idx_i, idx_j, offsets = [], [], []
        start = 0
        for b, n in enumerate(counts.tolist()):
            mapping, shifts = vesin_nl_ts(
                positions[start : start + n], cell[b], state.pbc, self.cutoff
            )
            idx_i.append(mapping[0] + start)
            idx_j.append(mapping[1] + start)
            offsets.append(shifts.to(positions.dtype) @ cell[b])
            start += n
        pbc = torch.as_tensor(state.pbc, dtype=torch.bool).expand(n_sys, 3).clone()
        inputs = {
            props.Z: state.atomic_numbers.long(),
            props.R: positions.detach().clone(),
            props.cell: cell,
            props.pbc: pbc,
            props.n_atoms: counts,
            props.idx_m: system_idx.long(),
            props.idx_i: torch.cat(idx_i),
            props.idx_j: torch.cat(idx_j),
            props.offsets: torch.cat(offsets),
        }
        self.last_pairs = int(inputs[props.idx_i].numel())
        out = self.model(inputs)
        return {"energy": out["energy"].detach(), "forces": out["forces"].detach()}


# ------------------------------------------------------------------------------ timing
@dataclass
class Case:
    """One timed thing; ``fn()`` is one call (section 1) or one MD run returning its own
    seconds and final positions (section 2, ``per`` = steps: samples are ms per step)."""

    name: str
    key: str
    fn: Callable[[], object]
    block: int = 1
    per: int = 1
    md: bool = False
    samples: list[float] = field(default_factory=list)
    first_s: float | None = None
    error: str | None = None
    outputs: list = field(default_factory=list)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples) * 1e3 if self.samples else float("nan")


def _timed(case: Case) -> float:
    t0 = time.perf_counter()
    out = case.fn()
    elapsed = time.perf_counter() - t0
    if case.md:  # the engine's own timing of its step loop, and the final positions
        elapsed, final = out
        case.outputs.append(final)
    return elapsed / case.per


def warm_up(cases: list[Case], calls: int) -> None:
    """First call (compile or cache load included) timed separately, then ``calls - 1`` more."""
    for case in cases:
        try:
            t0 = time.perf_counter()
            case.fn()
            case.first_s = time.perf_counter() - t0
            for _ in range(calls - 1):
                case.fn()
        except Exception as err:  # a peer that fails is reported, the rest still runs
            case.error = f"{type(err).__name__}: {err}".splitlines()[0][:160]
            print(f"  ! {case.name} [{case.key}] failed: {case.error}", file=sys.stderr)
        case.outputs.clear()


def round_robin(cases: list[Case], rounds: int, label: str) -> None:
    live = [c for c in cases if c.error is None]
    for r in range(rounds):
        order = live if r % 2 == 0 else live[::-1]
        for case in order:
            for _ in range(case.block):
                case.samples.append(_timed(case))
        print(f"  {label}: round {r + 1}/{rounds} done", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ helpers
def to_batch(atoms_list: list[Atoms]) -> AtomsBatch:
    return AtomsBatch.from_arrays(
        [a.numbers for a in atoms_list],
        [a.positions for a in atoms_list],
        [np.asarray(a.cell[:]) for a in atoms_list],
        [np.asarray(a.pbc) for a in atoms_list],
        dtype=DTYPE,
    )


def ase_call(calc, atoms: Atoms) -> Callable[[], object]:
    """One energy+forces call of an ASE calculator on a private copy, displaced each call."""
    atoms = atoms.copy()
    atoms.calc = calc
    sign = [1.0]

    def call():
        atoms.positions[0, 0] += sign[0] * DISPLACEMENT_A  # alternate +/-: no drift, no cache
        sign[0] = -sign[0]
        atoms.get_potential_energy()
        return atoms.get_forces()

    return call


def bonds_of(atoms: Atoms) -> np.ndarray:
    """(n_bonds, 2) atom pairs i < j closer than the sum of natural covalent radii."""
    from ase.neighborlist import natural_cutoffs, neighbor_list

    i, j = neighbor_list("ij", atoms, natural_cutoffs(atoms, mult=1.2))
    keep = i < j
    return np.stack([i[keep], j[keep]], axis=1)


def max_bonded_distance(positions: np.ndarray, n_per: int, bonds: np.ndarray) -> float:
    pos = positions.reshape(-1, n_per, 3)
    d = np.linalg.norm(pos[:, bonds[:, 0]] - pos[:, bonds[:, 1]], axis=-1)
    return float(d.max())


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return cpu


def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"


def fmt(x: float, digits: int = 3) -> str:
    if x != x:  # nan
        return "n/a"
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.{digits}g}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ section 1
def section_calls(args, molecules: dict[str, Atoms], ours: PaiNN, spk_model, default_compiled):
    ours_c = copy.deepcopy(ours).compile_forces(default_compiled)
    ours_e = copy.deepcopy(ours).compile_forces(False)
    calc_default = StudentCalculator(ours)
    calc_eager = StudentCalculator(ours, compile=False)
    calc_spk = spk_calculator(spk_model)
    # one teacher instance per molecule: tblite restarts its SCF from the previous call's
    # wavefunction (as in MD), which a calculator alternating between molecules would lose
    teachers: dict[tuple[str, str], object] = {}
    teacher_errors: dict[str, str] = {}
    if not args.skip_teachers:
        from mlff_distiller.teachers import get_teacher

        for label, name in (("GFN2-xTB", "xtb"), ("SevenNet-0", "sevennet")):
            try:
                for key in molecules:
                    teachers[(label, key)] = get_teacher(name)
            except Exception as err:
                teacher_errors[label] = f"{type(err).__name__}: {err}".splitlines()[0][:160]
                print(f"  ! teacher {label} unavailable: {teacher_errors[label]}", file=sys.stderr)
                teachers = {k: v for k, v in teachers.items() if k[0] != label}

    cases: list[Case] = []
    block = args.block
    for key, atoms in molecules.items():
        batch = to_batch([atoms])

        def energy_only(batch=batch):
            with torch.inference_mode():
                return ours_e(batch)

        cases += [
            Case(
                "ours E+F default (direct)", key, lambda b=batch: ours_c.energy_and_forces(b), block
            ),
            Case(
                "ours E+F eager (direct)", key, lambda b=batch: ours_e.energy_and_forces(b), block
            ),
            Case("ours E only eager (direct)", key, energy_only, block),
            Case("StudentCalculator default", key, ase_call(calc_default, atoms), block),
            Case("StudentCalculator eager", key, ase_call(calc_eager, atoms), block),
            Case("SchNetPack SpkCalculator", key, ase_call(calc_spk, atoms), block),
        ]
        for (label, mol), calc in teachers.items():
            if mol == key:
                cases.append(Case(label, key, ase_call(calc, atoms), 1))
    print("section 1: warm-up (the first compiled call compiles)", file=sys.stderr, flush=True)
    warm_up(cases, args.warmup)
    round_robin(cases, args.repeats, "section 1")
    return cases, teacher_errors


def report_calls(cases: list[Case], keys: list[str], default_compiled: bool) -> str:
    def med(name: str, key: str) -> float:
        for c in cases:
            if c.name == name and c.key == key and c.error is None:
                return c.median_ms
        return float("nan")

    names = list(dict.fromkeys(c.name for c in cases))
    out = ["## 1. Energy + forces per call (median ms, lower is better)", ""]
    rows = []
    for name in names:
        row = [name]
        for key in keys:
            case = next(c for c in cases if c.name == name and c.key == key)
            cell = f"{case.median_ms:.2f} (n={len(case.samples)})"
            row.append("failed" if case.error else cell)
        rows.append(row)
    out.append(table(["case"] + keys, rows))
    if not default_compiled:
        out.append("\nNote: the default path ran eager here (no C++ compiler or MLFFD_COMPILE=0).")
    out += ["", "### 1b. Ratios (x > 1: the second is faster)", ""]
    ratio_rows = [
        (
            "ours eager / ours default, E+F direct",
            "ours E+F eager (direct)",
            "ours E+F default (direct)",
        ),
        (
            "ours E+F default / ours E only (cost of forces)",
            "ours E+F default (direct)",
            "ours E only eager (direct)",
        ),
        ("ours E+F eager / ours E only", "ours E+F eager (direct)", "ours E only eager (direct)"),
        (
            "StudentCalculator eager / default",
            "StudentCalculator eager",
            "StudentCalculator default",
        ),
        (
            "StudentCalculator default / direct call (ASE overhead)",
            "StudentCalculator default",
            "ours E+F default (direct)",
        ),
        (
            "SchNetPack calc / ours default calc",
            "SchNetPack SpkCalculator",
            "StudentCalculator default",
        ),
        (
            "SchNetPack calc / ours eager calc",
            "SchNetPack SpkCalculator",
            "StudentCalculator eager",
        ),
        ("GFN2-xTB / ours default calc", "GFN2-xTB", "StudentCalculator default"),
        ("SevenNet-0 / ours default calc", "SevenNet-0", "StudentCalculator default"),
    ]
    rows = []
    for label, num, den in ratio_rows:
        if num not in names:
            continue
        rows.append([label] + [fmt(med(num, k) / med(den, k)) for k in keys])
    out.append(table(["ratio"] + keys, rows))
    out += ["", "### 1c. Warm-up: first call (s; includes compiling or loading the cache)", ""]
    rows = [
        [name]
        + [
            fmt(next(c.first_s or float("nan") for c in cases if c.name == name and c.key == k))
            for k in keys
        ]
        for name in names
    ]
    out.append(table(["case"] + keys, rows))
    return "\n".join(out)


# ------------------------------------------------------------------------------ section 2
def ts_langevin(ts_model, structures: list[Atoms], steps: int, seed: int = 0):
    """torch-sim NVT Langevin (BAOAB) from the same initial velocities as our engine. Returns
    (seconds of the step loop, final positions (n_atoms, 3) numpy)."""
    start = initial_state(structures, TEMPERATURE_K, seed, DTYPE)
    velocities = units.velocities_internal_to_ase(start.velocities)
    state = TSMDState(
        positions=start.positions.clone(),
        masses=start.masses,
        cell=start.cell.transpose(-1, -2).contiguous(),
        pbc=False,
        atomic_numbers=start.atomic_numbers,
        system_idx=start.system_idx,
        momenta=start.masses[:, None] * velocities,
        energy=start.positions.new_zeros(start.n_systems),
        forces=torch.zeros_like(start.positions),
    )
    dt = torch.tensor(DT_FS * units.ASE_TIME_PER_FS, dtype=DTYPE)
    kT = torch.tensor(TEMPERATURE_K * units.BOLTZMANN, dtype=DTYPE)
    gamma = torch.tensor(FRICTION_PER_PS / units.PS / units.ASE_TIME_PER_FS, dtype=DTYPE)
    init_fn, update_fn = ts.integrators.nvt_langevin(ts_model, dt=dt, kT=kT, gamma=gamma, seed=seed)
    torch.manual_seed(seed)
    state = init_fn(state)
    t0 = time.perf_counter()
    for _ in range(steps):
        state = update_fn(state)
    seconds = time.perf_counter() - t0
    return seconds, state.positions.detach().numpy().copy()


def ours_md(model: PaiNN, structures: list[Atoms], steps: int, compile: bool | None):
    config = MDConfig(
        steps=steps,
        ensemble="nvt",
        dt_fs=DT_FS,
        temperature_k=TEMPERATURE_K,
        friction_per_ps=FRICTION_PER_PS,
    )
    result = run_md(model, structures, config, dtype=DTYPE, progress=False, compile=compile)
    return float(result.seconds), result.state.positions.detach().numpy().copy()


def section_md(args, aspirin: Atoms, ours: PaiNN, spk_model, default_compiled: bool):
    engines: dict[str, Callable] = {
        "ours engine default": lambda s, n: ours_md(ours, s, n, None),
        "ours engine eager": lambda s, n: ours_md(ours, s, n, False),
    }
    errors: dict[str, str] = {}
    try:
        from mlff_distiller.md.torchsim import StudentModel

        student = copy.deepcopy(ours).compile_forces(default_compiled)
        ts_ours = StudentModel(student, device="cpu", dtype=DTYPE, compute_stress=False)
        engines["torch-sim + ours"] = lambda s, n: ts_langevin(ts_ours, s, n)
    except ImportError as err:
        errors["torch-sim + ours"] = f"mlff_distiller.md.torchsim unavailable: {err}"
        print(f"  ! {errors['torch-sim + ours']}", file=sys.stderr)
    ts_spk = SchNetPackTorchSim(copy.deepcopy(spk_model), CUTOFF)
    engines["torch-sim + SchNetPack"] = lambda s, n: ts_langevin(ts_spk, s, n)

    cases = []
    for b in args.batches:
        structures = [aspirin.copy() for _ in range(b)]
        for name, run in engines.items():
            cases.append(
                Case(
                    name,
                    str(b),
                    lambda r=run, s=structures: r(s, args.md_steps),
                    per=args.md_steps,
                    md=True,
                )
            )
    # warm-up: a 2-step run of each (engine, batch); compiles on the first compiled one
    warm = []
    for case in cases:
        b = int(case.key)
        run = engines[case.name]
        structures = [aspirin.copy() for _ in range(b)]
        warm.append(Case(case.name, case.key, lambda r=run, s=structures: r(s, 2)))
    print("section 2: warm-up", file=sys.stderr, flush=True)
    warm_up(warm, 1)
    for case, w in zip(cases, warm):
        case.first_s, case.error = w.first_s, w.error
    round_robin(cases, args.md_repeats, "section 2")
    return cases, errors


def report_md(cases: list[Case], batches: list[int], n_atoms: int) -> str:
    names = list(dict.fromkeys(c.name for c in cases))

    def get(name: str, b: int) -> Case:
        return next(c for c in cases if c.name == name and c.key == str(b))

    def ms(name: str, b: int) -> float:
        c = get(name, b)
        return c.median_ms if c.error is None else float("nan")

    def thr(name: str, b: int) -> float:
        return b * n_atoms / (ms(name, b) / 1e3)

    out = [
        f"## 2. Batched Langevin MD (NVT {TEMPERATURE_K:.0f} K, dt {DT_FS} fs) of aspirin "
        f"copies ({n_atoms} atoms each)",
        "",
        "### 2a. ms per step (median)",
        "",
    ]
    rows = [[str(b)] + [fmt(ms(n, b)) for n in names] for b in batches]
    out.append(table(["copies"] + names, rows))
    out += ["", "### 2b. Throughput (atom-steps per second, higher is better)", ""]
    rows = [[str(b)] + [fmt(thr(n, b)) for n in names] for b in batches]
    if len(batches) > 1:
        lo, hi = batches[0], batches[-1]
        rows.append([f"**{hi} / {lo} per-atom**"] + [fmt(thr(n, hi) / thr(n, lo)) for n in names])
    out.append(table(["copies"] + names, rows))
    out += ["", "### 2c. Ratios: peer ms per step / ours (x > 1: our batched engine is faster)", ""]
    base = "ours engine default"
    peers = [n for n in names if n != base]
    rows = [[str(b)] + [fmt(ms(p, b) / ms(base, b)) for p in peers] for b in batches]
    out.append(table(["copies"] + [f"{p} / {base}" for p in peers], rows))
    out += ["", "### 2d. Warm-up: first 2-step run (s; includes compiling or cache loading)", ""]
    rows = [[str(b)] + [fmt(get(n, b).first_s or float("nan")) for n in names] for b in batches]
    out.append(table(["copies"] + names, rows))
    return "\n".join(out)


# ------------------------------------------------------------------------------ section 3
def section_checks(molecules, ours, spk_model, md_cases, aspirin, args) -> tuple[str, dict]:
    calc = spk_calculator(spk_model)
    ts_spk = SchNetPackTorchSim(copy.deepcopy(spk_model), CUTOFF)
    data: dict = {"pairs": {}, "params": {}, "md_bonds": {}}
    rows = []
    for key, atoms in molecules.items():
        ours_pairs = int(ours.neighbors(to_batch([atoms]))[0].shape[1])
        spk_pairs = int(calc.converter(atoms)[spk.properties.idx_i].numel())
        start = initial_state([atoms], TEMPERATURE_K, 0, DTYPE)
        ts_state = ts.SimState(
            positions=start.positions,
            masses=start.masses,
            cell=start.cell.transpose(-1, -2).contiguous(),
            pbc=False,
            atomic_numbers=start.atomic_numbers,
            system_idx=start.system_idx,
        )
        ts_spk(ts_state)
        ts_pairs = ts_spk.last_pairs
        same = "yes" if ours_pairs == spk_pairs == ts_pairs else "**NO**"
        rows.append([key, str(ours_pairs), str(spk_pairs), str(ts_pairs), same])
        data["pairs"][key] = {
            "ours": ours_pairs,
            "spk_matscipy": spk_pairs,
            "spk_torchsim_vesin": ts_pairs,
        }
    out = ["## 3. Checks", "", f"### 3a. Directed neighbour pairs within {CUTOFF} Å", ""]
    out.append(
        table(
            [
                "molecule",
                "ours model.neighbors",
                "SchNetPack matscipy (calc)",
                "SchNetPack vesin (torch-sim)",
                "same",
            ],
            rows,
        )
    )
    n_ours = sum(p.numel() for p in ours.parameters())
    n_spk = sum(p.numel() for p in spk_model.parameters())
    data["params"] = {"ours": n_ours, "spk": n_spk}
    out += [
        "",
        f"Parameters: ours {n_ours:,}, SchNetPack {n_spk:,} (ours: 119-element embedding "
        "and sinc radial basis; SchNetPack: 100-element embedding and Gaussian basis; same "
        "layer shapes otherwise).",
        "",
    ]
    if not md_cases:
        return "\n".join(out), data
    bonds = bonds_of(aspirin)
    n = len(aspirin)
    out += [
        f"### 3b. Molecules stay bound: largest bonded distance (Å) over all timed runs "
        f"({len(bonds)} bonds per copy, limit {BOND_LIMIT_A} Å; start "
        f"{max_bonded_distance(aspirin.positions, n, bonds):.3f} Å)",
        "",
    ]
    names = list(dict.fromkeys(c.name for c in md_cases))
    rows = []
    for b in args.batches:
        row = [str(b)]
        for name in names:
            case = next(c for c in md_cases if c.name == name and c.key == str(b))
            if case.error or not case.outputs:
                row.append("n/a")
                continue
            worst = max(max_bonded_distance(p, n, bonds) for p in case.outputs)
            finite = all(np.isfinite(p).all() for p in case.outputs)
            ok = finite and worst < BOND_LIMIT_A
            row.append(f"{worst:.3f}" + ("" if ok else " **BROKEN**"))
            data["md_bonds"][f"{name}|{b}"] = worst
        rows.append(row)
    out.append(table(["copies"] + names, rows))
    return "\n".join(out), data


# ------------------------------------------------------------------------------ main
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny repeats")
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="round-robin rounds of section 1 (default 10; quick 2)",
    )
    parser.add_argument(
        "--block",
        type=int,
        default=None,
        help="consecutive calls per case per round in section 1 (default 5; "
        "quick 1; teachers always 1)",
    )
    parser.add_argument("--warmup", type=int, default=3, help="warm-up calls per case")
    parser.add_argument("--batches", default="1,8,32,64", help="MD copies, comma separated")
    parser.add_argument(
        "--md-steps", type=int, default=None, help="steps per timed MD run (default 30; quick 5)"
    )
    parser.add_argument(
        "--md-repeats",
        type=int,
        default=None,
        help="round-robin rounds of section 2 (default 3; quick 1)",
    )
    parser.add_argument("--skip-teachers", action="store_true", help="no GFN2-xTB, SevenNet-0")
    parser.add_argument("--skip-md", action="store_true", help="section 1 only")
    parser.add_argument("--json", default=None, help="save the raw numbers here")
    args = parser.parse_args()
    quick = args.quick
    args.repeats = args.repeats or (2 if quick else 10)
    args.block = args.block or (1 if quick else 5)
    args.md_steps = args.md_steps or (5 if quick else 30)
    args.md_repeats = args.md_repeats or (1 if quick else 3)
    if quick:
        args.warmup = min(args.warmup, 2)
    args.batches = [int(b) for b in str(args.batches).split(",") if b.strip()]
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    load0 = os.getloadavg()
    default_compiled = resolve_compile(None, "analytical", "cpu")
    molecules = {}
    for label, smiles in (("aspirin", ASPIRIN), ("Ala10", ALA10)):
        atoms = from_smiles(smiles, seed=0)[0]
        molecules[f"{label} ({len(atoms)} atoms)"] = atoms
    aspirin = next(iter(molecules.values()))
    ours = our_painn()
    spk_model = spk_painn()

    header = [
        "# Student vs peers (speed, one process, interleaved)",
        "",
        f"- machine: {machine()}, {os.cpu_count()} logical CPUs, {platform.platform()}",
        f"- threads: torch {torch.get_num_threads()} (OMP/MKL/OPENBLAS_NUM_THREADS=1)",
        f"- torch {torch.__version__}, Python {platform.python_version()}, schnetpack "
        f"{version('schnetpack')}, torch-sim-atomistic {version('torch-sim-atomistic')}, "
        f"tblite {version('tblite')}, sevenn {version('sevenn')}",
        f"- both PaiNNs: 128 features, 3 interactions, 20 rbf, cutoff {CUTOFF} Å, float32, random "
        f"weights, energy x{ENERGY_SCALE}; our default force path: "
        f"{'compiled analytical' if default_compiled else 'eager analytical (no compile)'}",
        f"- section 1: {args.repeats} rounds x {args.block} calls (teachers 1) after "
        f"{args.warmup} warm-up calls; section 2: {args.md_repeats} rounds of {args.md_steps}-step "
        f"runs after a 2-step warm-up run",
    ]
    print("\n".join(header), flush=True)

    raw: dict = {
        "meta": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "machine": machine(),
            "args": vars(args),
            "default_compiled": default_compiled,
        }
    }
    calls, teacher_errors = section_calls(args, molecules, ours, spk_model, default_compiled)
    print("\n" + report_calls(calls, list(molecules), default_compiled), flush=True)
    for label, err in teacher_errors.items():
        print(f"\n{label} unavailable: {err}")
    raw["calls"] = [
        {
            "case": c.name,
            "molecule": c.key,
            "samples_ms": [s * 1e3 for s in c.samples],
            "median_ms": c.median_ms,
            "first_call_s": c.first_s,
            "error": c.error,
        }
        for c in calls
    ]
    md_cases: list[Case] = []
    if not args.skip_md:
        md_cases, md_errors = section_md(args, aspirin, ours, spk_model, default_compiled)
        print("\n" + report_md(md_cases, args.batches, len(aspirin)), flush=True)
        for label, err in md_errors.items():
            print(f"\n{label}: {err}")
        raw["md"] = [
            {
                "engine": c.name,
                "copies": int(c.key),
                "steps": args.md_steps,
                "samples_ms_per_step": [s * 1e3 for s in c.samples],
                "median_ms": c.median_ms,
                "first_run_s": c.first_s,
                "error": c.error,
            }
            for c in md_cases
        ]
    checks, check_data = section_checks(molecules, ours, spk_model, md_cases, aspirin, args)
    print("\n" + checks)
    raw["checks"] = check_data
    load1 = os.getloadavg()
    total = time.perf_counter() - t_start
    print(
        f"\nTotal {total:.0f} s; load average (1 min) {load0[0]:.2f} at start, "
        f"{load1[0]:.2f} at the end."
    )
    raw["meta"].update({"total_s": total, "loadavg_start": load0, "loadavg_end": load1})
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(raw, fh, indent=1)
        print(f"raw numbers: {args.json}")


if __name__ == "__main__":
    main()
