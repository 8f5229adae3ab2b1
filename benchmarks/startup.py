"""Start-up and run time of the student's force path: torch.compile + disk cache vs AOTInductor.

Two ways to ship the compiled analytical energy+forces (``analytic_forces._energy_and_forces``):

- **torch.compile** (the default path, ``analytic_energy_and_forces(..., compiled=True)``): every
  new process re-traces with dynamo; inductor's FX-graph/AOT-autograd caches on disk
  (``TORCHINDUCTOR_CACHE_DIR``) skip the code generation and C++ build after the first time.
- **AOTInductor**: ``torch.export.export`` of a module taking plain tensors (the neighbour list
  stays outside, as in the compiled path), ``torch._inductor.aoti_compile_and_package`` to a
  ``.pt2`` once, then ``torch._inductor.aoti_load_package`` in each new process.

Every measurement runs in a fresh Python process (this script re-invoked with ``--child``), so
"new process to first result" is what a user waits for: interpreter start, imports, loading the
model (or package), the neighbour list and the first energy+forces call (compile included).
Processes: ``eager`` (reference results and eager timings), ``compile_cold`` (empty cache dir),
``compile_warm`` (same cache dir), ``aot_build`` (export + package, its own empty cache dir),
``aot_load`` (another empty cache dir) and ``aot_load_again`` (same dir: ``aoti_load_package``
caches a C++ probe of the CPU's vector ISA there). Steady state: median over ``--calls``
calls, each on positions displaced by ~0.01 Å (neighbour lists built beforehand, outside the
timing), by the process CPU clock (one thread; ``--clock wall`` for wall time). Molecules:
aspirin (21 atoms) and Ac-Ala9-NHMe (102 atoms) from SMILES. AOTInductor results are checked
against the eager analytical forces, including a 3-structure batch (dynamic n_systems); the
export example is a 2 x aspirin batch (42 atoms), so every checked size differs from it.

    OMP_NUM_THREADS=1 python benchmarks/startup.py                 # several minutes (compiles)
    OMP_NUM_THREADS=1 python benchmarks/startup.py --json out.json --calls 100
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIG = {"hidden": 128, "n_interactions": 3, "n_rbf": 20, "cutoff": 5.0}
MOLECULES = {
    "aspirin": "CC(=O)Oc1ccccc1C(=O)O",
    "peptide": "CC(=O)" + "N[C@@H](C)C(=O)" * 9 + "NC",  # Ac-Ala9-NHMe, 102 atoms
}
FIELDS = ("atomic_numbers", "positions", "system_idx", "cell", "pbc")
ROLES = ("eager", "compile_cold", "compile_warm", "aot_build", "aot_load", "aot_load_again")
PACKAGE = "painn_forces.pt2"
WARMUP = 5
RTOL = 1e-4  # forces: |dF| <= RTOL (|F_ref| + max |F_ref|), energy: relative


# --------------------------------------------------------------------------- parent: set-up


def prepare(work: Path, n_calls: int, displacement: float, seed: int) -> dict:
    """Model weights, molecules (single, the export example pair and a 3-structure mix) and the
    per-call displacements, saved to ``work`` for the child processes."""
    import torch

    from mlff_distiller.data.batch import AtomsBatch
    from mlff_distiller.data.structures import from_smiles
    from mlff_distiller.models.painn import PaiNN, PaiNNConfig

    torch.manual_seed(seed)
    model = PaiNN(PaiNNConfig(**CONFIG))
    torch.save(model.state_dict(), work / "model.pt")
    atoms = {name: from_smiles(smiles, seed=0)[0] for name, smiles in MOLECULES.items()}
    groups = {name: [a] for name, a in atoms.items()}
    groups["pair"] = [atoms["aspirin"], atoms["aspirin"]]
    groups["mix"] = [atoms["aspirin"], atoms["peptide"], atoms["aspirin"]]
    batches = {}
    for name, structures in groups.items():
        batch = AtomsBatch.from_atoms(structures, dtype=torch.float32)
        batches[name] = {f: getattr(batch, f) for f in FIELDS}
    gen = torch.Generator().manual_seed(seed)
    noise = {
        name: displacement * torch.randn(n_calls, len(atoms[name]), 3, generator=gen)
        for name in MOLECULES
    }
    torch.save({"batches": batches, "noise": noise}, work / "inputs.pt")
    return {name: len(a) for name, a in atoms.items()}


def run_child(role: str, work: Path, args: argparse.Namespace) -> dict:
    """Run one measurement in a fresh interpreter; its JSON result (or the failure)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["MLFFD_CACHE_DIR"] = str(work / "mlffd")
    cache = {
        "compile_cold": "inductor_compile",
        "compile_warm": "inductor_compile",
        "aot_load_again": "inductor_aot_load",
    }
    env["TORCHINDUCTOR_CACHE_DIR"] = str(work / cache.get(role, f"inductor_{role}"))
    command = [sys.executable, os.path.abspath(__file__), "--child", role, "--workdir", str(work)]
    command += ["--clock", args.clock]
    print(f"[{time.strftime('%H:%M:%S')}] {role} ...", file=sys.stderr, flush=True)
    launch = time.time()
    try:
        proc = subprocess.run(
            [*command, "--launch", repr(launch)],
            env=env,
            capture_output=True,
            text=True,
            timeout=args.timeout,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {args.timeout} s"}
    out = work / f"{role}.json"
    if out.exists():
        result = json.loads(out.read_text())
    else:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        result = {"error": f"exit {proc.returncode}, no result:\n{tail}"}
    result["process_wall_s"] = time.time() - launch
    if args.verbose and proc.stderr.strip():
        print(proc.stderr, file=sys.stderr)
    return result


# --------------------------------------------------------------------------- children


def child(role: str, work: Path, launch: float, clock_name: str) -> None:
    t_script = time.time()
    result: dict = {"role": role, "python_start_s": t_script - launch}
    try:
        CHILDREN[role](work, launch, clock_name, result)
    except Exception as err:  # report, do not lose the timings so far
        import traceback

        result["error"] = f"{type(err).__name__}: {err}"
        result["traceback"] = traceback.format_exc()[-4000:]
    (work / f"{role}.json").write_text(json.dumps(result, indent=1, default=str))


def _common():
    """Import torch and the neighbour list (one thread); the saved inputs."""
    import torch

    torch.set_num_threads(1)
    from mlff_distiller.data.batch import AtomsBatch
    from mlff_distiller.data.neighbors import neighbor_list

    return torch, AtomsBatch, neighbor_list


def _load_inputs(torch, work: Path) -> dict:
    return torch.load(work / "inputs.pt", weights_only=True)


def _tensors(batch_dict: dict, positions=None) -> tuple:
    z, pos, sidx, cell, pbc = (batch_dict[f] for f in FIELDS)
    return z, (pos if positions is None else positions), sidx, cell, pbc


def _with_edges(AtomsBatch, neighbor_list, tensors: tuple) -> tuple:
    """(z, pos, system_idx, cell, pbc, edge_index, shifts): the neighbour list of the student."""
    edge_index, shifts = neighbor_list(AtomsBatch(*tensors), CONFIG["cutoff"], "auto")
    return (*tensors, edge_index, shifts)


def _eager_fn(model, AtomsBatch, compiled: bool):
    from mlff_distiller import keys
    from mlff_distiller.models.analytic_forces import analytic_energy_and_forces

    def call(z, pos, sidx, cell, pbc, edge_index, shifts):
        batch = AtomsBatch(z, pos, sidx, cell, pbc)
        out = analytic_energy_and_forces(model, batch, (edge_index, shifts), compiled=compiled)
        return out[keys.ENERGY], out[keys.FORCES]

    return call


def _load_model(torch, work: Path):
    from mlff_distiller.models.painn import PaiNN, PaiNNConfig

    model = PaiNN(PaiNNConfig(**CONFIG))
    model.load_state_dict(torch.load(work / "model.pt", weights_only=True))
    return model.eval()


def _first_results(fn, inputs: dict, AtomsBatch, neighbor_list, launch: float, result: dict):
    """First call on aspirin (from process start), then the first call on the other size."""
    t = time.time()
    energy, forces = fn(*_with_edges(AtomsBatch, neighbor_list, _tensors(inputs["aspirin"])))
    float(energy.sum())
    now = time.time()
    result["first_call_s"] = now - t
    result["to_first_result_s"] = now - launch
    t = time.time()
    energy, forces = fn(*_with_edges(AtomsBatch, neighbor_list, _tensors(inputs["peptide"])))
    float(energy.sum())
    result["first_call_other_size_s"] = time.time() - t


def _steady(fn, data: dict, AtomsBatch, neighbor_list, clock_name: str, result: dict) -> None:
    """Median ms per call over the displaced inputs of each molecule."""
    clock = time.process_time if clock_name == "cpu" else time.perf_counter
    result["ms_per_call"] = {}
    result["ms_per_call_min"] = {}
    for name, noise in data["noise"].items():
        base = _tensors(data["batches"][name])
        calls = [
            _with_edges(AtomsBatch, neighbor_list, _tensors(data["batches"][name], base[1] + d))
            for d in noise
        ]
        for _ in range(WARMUP):
            fn(*calls[0])
        times = []
        for args in calls:
            start = clock()
            fn(*args)
            times.append((clock() - start) * 1e3)
        result["ms_per_call"][name] = statistics.median(times)
        result["ms_per_call_min"][name] = min(times)
        result.setdefault("n_edges", {})[name] = int(calls[0][5].shape[1])


def _check(torch, fn, data: dict, ref: dict, AtomsBatch, neighbor_list, names, result) -> None:
    """Compare with the eager analytical results saved by the ``eager`` child."""
    checks = {}
    for name in names:
        energy, forces = fn(
            *_with_edges(AtomsBatch, neighbor_list, _tensors(data["batches"][name]))
        )
        e_ref, f_ref = ref[name]
        scale = float(f_ref.abs().max())
        err = (forces - f_ref).abs()
        checks[name] = {
            "n_atoms": int(forces.shape[0]),
            "n_systems": int(energy.shape[0]),
            "max_abs_dforce": float(err.max()),
            "max_abs_force": scale,
            "max_rel_denergy": float(((energy - e_ref).abs() / e_ref.abs().clamp_min(1e-6)).max()),
            "ok": bool(
                energy.shape == e_ref.shape
                and forces.shape == f_ref.shape
                and (err <= RTOL * (f_ref.abs() + scale)).all()
                and torch.allclose(energy, e_ref, rtol=RTOL, atol=RTOL * 1e-2)
            ),
        }
    result["checks"] = checks


def _counters(result: dict) -> None:
    from torch._dynamo.utils import counters

    wanted = ("stats", "inductor", "aot_autograd")
    result["counters"] = {k: dict(counters[k]) for k in wanted if k in counters}


def role_eager(work: Path, launch: float, clock_name: str, result: dict) -> None:
    t = time.time()
    torch, AtomsBatch, neighbor_list = _common()
    from mlff_distiller.models import analytic_forces  # noqa: F401  (import cost, as in use)

    result["imports_s"] = time.time() - t
    t = time.time()
    data = _load_inputs(torch, work)
    model = _load_model(torch, work)
    result["load_s"] = time.time() - t
    fn = _eager_fn(model, AtomsBatch, compiled=False)
    _first_results(fn, data["batches"], AtomsBatch, neighbor_list, launch, result)
    ref = {}
    for name in (*MOLECULES, "mix"):
        ref[name] = fn(*_with_edges(AtomsBatch, neighbor_list, _tensors(data["batches"][name])))
    torch.save(ref, work / "reference.pt")
    _steady(fn, data, AtomsBatch, neighbor_list, clock_name, result)
    result["torch"] = torch.__version__
    result["threads"] = torch.get_num_threads()


def _role_compile(work: Path, launch: float, clock_name: str, result: dict, warm: bool) -> None:
    t = time.time()
    torch, AtomsBatch, neighbor_list = _common()
    from mlff_distiller.models import analytic_forces  # noqa: F401

    result["imports_s"] = time.time() - t
    cache = Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
    result["cache_dir_files_before"] = sum(1 for p in cache.rglob("*") if p.is_file())
    t = time.time()
    data = _load_inputs(torch, work)
    model = _load_model(torch, work)
    result["load_s"] = time.time() - t
    fn = _eager_fn(model, AtomsBatch, compiled=True)
    _first_results(fn, data["batches"], AtomsBatch, neighbor_list, launch, result)
    if warm:
        _steady(fn, data, AtomsBatch, neighbor_list, clock_name, result)
        ref = torch.load(work / "reference.pt", weights_only=True)
        _check(torch, fn, data, ref, AtomsBatch, neighbor_list, MOLECULES, result)
    _counters(result)
    result["cache_dir_files_after"] = sum(1 for p in cache.rglob("*") if p.is_file())
    result["threads"] = torch.get_num_threads()


def role_compile_cold(work: Path, launch: float, clock_name: str, result: dict) -> None:
    _role_compile(work, launch, clock_name, result, warm=False)


def role_compile_warm(work: Path, launch: float, clock_name: str, result: dict) -> None:
    _role_compile(work, launch, clock_name, result, warm=True)


def _forces_module(model):
    """``nn.Module``: plain tensors -> (energy (n_systems,), forces (n_atoms, 3))."""
    import torch

    from mlff_distiller.data.batch import AtomsBatch
    from mlff_distiller.models.analytic_forces import _energy_and_forces

    class PaiNNForces(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, atomic_numbers, positions, system_idx, cell, pbc, edge_index, shifts):
            batch = AtomsBatch(atomic_numbers, positions, system_idx, cell, pbc)
            energy, forces, _ = _energy_and_forces(self.model, batch, (edge_index, shifts))
            return energy, forces

    return PaiNNForces(model).eval()


def role_aot_build(work: Path, launch: float, clock_name: str, result: dict) -> None:
    torch, AtomsBatch, neighbor_list = _common()
    from torch._inductor import aoti_compile_and_package
    from torch.export import Dim

    data = _load_inputs(torch, work)
    model = _load_model(torch, work)
    for p in model.parameters():
        p.requires_grad_(False)
    module = _forces_module(model)
    example = _with_edges(AtomsBatch, neighbor_list, _tensors(data["batches"]["pair"]))
    result["example"] = {"n_atoms": int(example[0].shape[0]), "n_systems": 2}
    atoms, edges, systems = Dim("n_atoms"), Dim("n_edges"), Dim("n_systems")

    def shapes(per_system):
        sys_dims = {0: per_system} if per_system is not None else {}
        return ({0: atoms}, {0: atoms}, {0: atoms}, sys_dims, sys_dims, {1: edges}, {0: edges})

    attempts = [
        ("non-strict (default), dynamic n_atoms, n_edges, n_systems", False, systems),
        ("strict, dynamic n_atoms, n_edges, n_systems", True, systems),
        ("strict, dynamic n_atoms, n_edges; static n_systems", True, None),
    ]
    result["export_attempts"] = []
    program = None
    for label, strict, per_system in attempts:
        t = time.time()
        try:
            with torch.no_grad():
                program = torch.export.export(
                    module, example, dynamic_shapes=shapes(per_system), strict=strict
                )
        except Exception as err:
            lines = str(err).strip().splitlines()
            message = "\n".join(lines[:6])
            result["export_attempts"].append(
                {"mode": label, "ok": False, "s": time.time() - t,
                 "error": f"{type(err).__name__}: {message}"}
            )  # fmt: skip
            continue
        result["export_attempts"].append({"mode": label, "ok": True, "s": time.time() - t})
        result["export_mode"] = label
        result["export_s"] = time.time() - t
        result["dynamic_n_systems"] = per_system is not None
        break
    if program is None:
        raise RuntimeError("every torch.export attempt failed (see export_attempts)")
    result["range_constraints"] = {str(k): str(v) for k, v in program.range_constraints.items()}
    t = time.time()
    path = aoti_compile_and_package(program, package_path=str(work / PACKAGE))
    result["package_s"] = time.time() - t
    result["build_s"] = result["export_s"] + result["package_s"]
    result["package_mb"] = os.path.getsize(path) / 2**20


def role_aot_load(
    work: Path, launch: float, clock_name: str, result: dict, again: bool = False
) -> None:
    t = time.time()
    torch, AtomsBatch, neighbor_list = _common()
    from torch._inductor import aoti_load_package

    result["imports_s"] = time.time() - t
    t = time.time()
    data = _load_inputs(torch, work)
    runner = aoti_load_package(str(work / PACKAGE))
    result["load_s"] = time.time() - t

    def fn(*args):
        energy, forces = runner(*args)
        return energy, forces

    _first_results(fn, data["batches"], AtomsBatch, neighbor_list, launch, result)
    if not again:
        _steady(fn, data, AtomsBatch, neighbor_list, clock_name, result)
        ref = torch.load(work / "reference.pt", weights_only=True)
        _check(torch, fn, data, ref, AtomsBatch, neighbor_list, (*MOLECULES, "mix"), result)
    result["threads"] = torch.get_num_threads()


def role_aot_load_again(work: Path, launch: float, clock_name: str, result: dict) -> None:
    role_aot_load(work, launch, clock_name, result, again=True)


CHILDREN = {
    "eager": role_eager,
    "compile_cold": role_compile_cold,
    "compile_warm": role_compile_warm,
    "aot_build": role_aot_build,
    "aot_load": role_aot_load,
    "aot_load_again": role_aot_load_again,
}


# --------------------------------------------------------------------------- report


def _fmt(value, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _get(result: dict, *path):
    for key in path:
        if not isinstance(result, dict) or key not in result:
            return None
        result = result[key]
    return result


def report(results: dict, sizes: dict, args: argparse.Namespace) -> str:
    eager, cold, warm = results["eager"], results["compile_cold"], results["compile_warm"]
    build, load, again = results["aot_build"], results["aot_load"], results["aot_load_again"]
    lines = [
        f"torch {_get(eager, 'torch')}, {_get(eager, 'threads')} thread(s), CPU, float32, "
        f"PaiNN {CONFIG}; steady state: median of {args.calls} calls, clock {args.clock}",
        "",
        f"| path | build once (s) | new process to first result (s) "
        f"| ms/call aspirin ({sizes['aspirin']} atoms) "
        f"| ms/call Ac-Ala9-NHMe ({sizes['peptide']} atoms) |",
        "|---|---|---|---|---|",
    ]
    rows = [
        ("eager analytical (reference)", None, eager),
        ("torch.compile + disk cache (warm)", _get(cold, "to_first_result_s"), warm),
        ("AOTInductor .pt2, 1st load (empty inductor cache)", _get(build, "build_s"), load),
        ("AOTInductor .pt2, later loads", None, again),
    ]
    for label, build_s, res in rows:
        lines.append(
            f"| {label} | {_fmt(build_s, 1)} | {_fmt(_get(res, 'to_first_result_s'))} "
            f"| {_fmt(_get(res, 'ms_per_call', 'aspirin'))} "
            f"| {_fmt(_get(res, 'ms_per_call', 'peptide'))} |"
        )
    lines += [
        "",
        "build once: torch.compile = a new process with an empty cache to its first result "
        "(compiles on first use); AOTInductor = torch.export + aoti_compile_and_package.",
        "aoti_load_package probes the CPU's vector ISA by compiling test programs with the C++ "
        "compiler (a metadata check, cached in TORCHINDUCTOR_CACHE_DIR): the first load with "
        "an empty cache dir pays it.",
        "",
        "| process | python start | imports | load model/package | first call "
        "| 1st call other size | to first result | whole process |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for role in ROLES:
        res = results[role]
        lines.append(
            f"| {role} | {_fmt(_get(res, 'python_start_s'))} | {_fmt(_get(res, 'imports_s'))} "
            f"| {_fmt(_get(res, 'load_s'))} | {_fmt(_get(res, 'first_call_s'))} "
            f"| {_fmt(_get(res, 'first_call_other_size_s'))} "
            f"| {_fmt(_get(res, 'to_first_result_s'))} | {_fmt(_get(res, 'process_wall_s'))} |"
        )
    lines.append("")
    for attempt in build.get("export_attempts", []):
        state = "ok" if attempt["ok"] else f"FAILED\n    {attempt['error']}"
        lines.append(f"export {attempt['mode']}: {_fmt(attempt['s'])} s, {state}")
    if "package_s" in build:
        lines.append(
            f"aoti_compile_and_package: {build['package_s']:.1f} s, "
            f"{build['package_mb']:.1f} MiB; example {build['example']}"
        )
    for role in ("compile_warm", "aot_load"):
        for name, check in (_get(results[role], "checks") or {}).items():
            lines.append(
                f"check {role} {name} (n_atoms {check['n_atoms']}, n_systems "
                f"{check['n_systems']}): max|dF| {check['max_abs_dforce']:.2e} of max|F| "
                f"{check['max_abs_force']:.2e}, rel dE {check['max_rel_denergy']:.1e} -> "
                f"{'ok' if check['ok'] else 'MISMATCH'}"
            )
    for role in ROLES:
        if "error" in results[role]:
            lines.append(f"{role} FAILED: {results[role]['error']}")
    lines += ["", "verdict: " + verdict(warm, load, again, cold, build)]
    return "\n".join(lines)


def verdict(warm: dict, load: dict, again: dict, cold: dict, build: dict) -> str:
    t_jit, t_aot = _get(warm, "to_first_result_s"), _get(again, "to_first_result_s")
    t_first = _get(load, "to_first_result_s")
    if t_aot is None or t_first is None or "error" in load:
        return "AOTInductor path failed (see above); torch.compile + disk cache stays."
    if t_jit is None:
        return "torch.compile path failed (see above)."
    loads = "AOTInductor" if t_aot < t_jit else "torch.compile (warm cache)"
    speed = {name: warm["ms_per_call"][name] / load["ms_per_call"][name] for name in MOLECULES}
    runs = ", ".join(f"{name} x{ratio:.2f}" for name, ratio in speed.items())
    checks = load.get("checks", {})
    ok = all(c["ok"] for c in checks.values()) and bool(checks)
    t_cold, t_build = _get(cold, "to_first_result_s") or 0.0, _get(build, "build_s") or 0.0
    return (
        f"{loads} loads faster ({t_aot:.1f} s vs {t_jit:.1f} s to first result in a new "
        f"process, both caches warm; AOT first load {t_first:.1f} s; cold compile "
        f"{t_cold:.0f} s vs AOT build {t_build:.0f} s); speed compile/AOT per call: {runs} "
        f"(>1: AOT faster); AOT results {'match' if ok else 'DO NOT match'} eager."
    )


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200, help="steady-state calls per size")
    parser.add_argument("--displacement", type=float, default=0.01, help="Å, per call")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    parser.add_argument("--json", type=Path, help="save the numbers here")
    parser.add_argument("--workdir", type=Path, help="keep the caches and .pt2 here")
    parser.add_argument("--timeout", type=float, default=1800.0, help="s per process")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", action="store_true", help="show the children's stderr")
    parser.add_argument("--child", choices=ROLES, help=argparse.SUPPRESS)
    parser.add_argument("--launch", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.workdir, args.launch, args.clock)
        return

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    keep = args.workdir is not None
    work = args.workdir or Path(tempfile.mkdtemp(prefix="mlffd-startup-"))
    if keep:
        if work.exists() and any(work.iterdir()):
            parser.error(f"--workdir {work} is not empty (the caches must start cold)")
        work.mkdir(parents=True, exist_ok=True)
    try:
        sizes = prepare(work, args.calls, args.displacement, args.seed)
        results = {role: run_child(role, work, args) for role in ROLES}
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    print(report(results, sizes, args))
    if args.json:
        args.json.write_text(
            json.dumps(
                {"config": CONFIG, "sizes": sizes, "calls": args.calls, "clock": args.clock,
                 "results": results},
                indent=1,
                default=str,
            )
        )  # fmt: skip


if __name__ == "__main__":
    main()
