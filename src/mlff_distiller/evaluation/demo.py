"""The end-to-end demo: SMILES -> teacher MD -> distilled PaiNN student -> held-out accuracy ->
1 ps of student MD through its ASE calculator -> a markdown report with plots.

Every stage is a real run (no cached results). The held-out test frames are the last
``test_fraction`` of each molecule's teacher trajectory (later in time than any training frame);
training and validation frames are drawn from the earlier part. Output in ``out``::

    structures/, teacher_md/     teacher trajectories (HDF5), one per molecule
    train.h5, test.h5            the pooled training and held-out frames
    train/                       the training run (checkpoints, logs, model/)
    eval/                        metrics.json, parity plots
    student_md/                  student NVE trajectories (extxyz) and md_energy.png
    report.md, report.json       the summary
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mlff_distiller import thermo, units
from mlff_distiller.models.sizes import RECOMMENDED_SIZE

DEFAULT_MOLECULES = {
    "aspirin": "CC(=O)Oc1ccccc1C(=O)O",
    "paracetamol": "CC(=O)Nc1ccc(O)cc1",
}


@dataclass
class DemoConfig:
    """Options of ``mlffd demo`` (the defaults finish in under 10 minutes on 2 CPU cores).

    ``threads``: torch intra-op threads. One is the safe default for molecules this small:
    several threads on a busy machine make every tiny kernel wait for the slowest core
    (measured here: 13 ms per student call with 1 thread, 400-800 ms with 2 under load).
    """

    smiles: list[str] = field(default_factory=lambda: list(DEFAULT_MOLECULES.values()))
    names: list[str] = field(default_factory=lambda: list(DEFAULT_MOLECULES))
    teacher: str = "xtb"
    temperature_k: float = 400.0
    equilibration_fs: float = 100.0
    sample_fs: float = 800.0
    save_every: int = 4
    test_fraction: float = 0.2
    train_minutes: float = 4.0
    max_epochs: int = 400
    size: str = RECOMMENDED_SIZE  # a named student size (models.sizes), the README's pick
    md_fs: float = 1000.0
    md_dt_fs: float = 0.5
    md_temperature_k: float = 300.0
    kstep_k: int = 8  # k-step stage: the shipped xTB jump network, the student as corrector
    kstep_cycles: int = 100
    kstep_replicas: int = 8
    # epochs fine-tuning the shipped network on k-windows of the demo's own teacher MD (0: the
    # shipped network as is; it was trained on molecules of 2-9 heavy atoms, aspirin has 13)
    kstep_finetune_epochs: int = 3
    seed: int = 0
    threads: int = 1
    out: str = "mlffd_demo"
    progress_bar: bool = True

    def __post_init__(self) -> None:
        if not self.smiles:
            raise ValueError("give at least one SMILES")
        if len(self.names) != len(self.smiles):
            self.names = [f"mol{i}" for i in range(len(self.smiles))]
        if not 0.0 < self.test_fraction < 0.9:
            raise ValueError(f"test_fraction must be in (0, 0.9), got {self.test_fraction}")
        for name in ("sample_fs", "train_minutes", "md_fs", "md_dt_fs"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")


Say = Callable[[str], None]


# ------------------------------------------------------------------ stage 1: teacher MD
def sample_teacher(cfg: DemoConfig, out: Path, say: Say) -> list[Path]:
    """Teacher NVT MD of every molecule; returns the trajectory files (failed ones dropped)."""
    from rich.progress import Progress

    from mlff_distiller.data.structures import from_smiles
    from mlff_distiller.teachers import get_teacher
    from mlff_distiller.teachers.registry import teacher_spec
    from mlff_distiller.teachers.sampling import SamplingConfig, sample_many, total_steps

    molecules = [
        from_smiles(s, seed=cfg.seed, name=n)[0] for s, n in zip(cfg.smiles, cfg.names, strict=True)
    ]
    sampling = SamplingConfig(
        temperature_k=cfg.temperature_k,
        equilibration_fs=cfg.equilibration_fs,
        production_fs=cfg.sample_fs,
        save_every=cfg.save_every,
        seed=cfg.seed,
    )
    kind = teacher_spec(cfg.teacher).kind if ":" not in cfg.teacher else "ml"
    steps = total_steps(sampling, kind) * len(molecules)
    with Progress(disable=not cfg.progress_bar, transient=False) as progress:
        task = progress.add_task(f"teacher MD ({cfg.teacher})", total=steps)
        results = sample_many(
            lambda atoms: get_teacher(cfg.teacher),
            molecules,
            out / "teacher_md",
            sampling,
            on_steps=lambda n: progress.advance(task, n),
        )
    paths = []
    for res in results:
        if res.ok:
            paths.append(res.path)
            say(
                f"teacher MD {res.name}: mean kinetic temperature "
                f"{_kelvin(res.measured_temperature_k)} (requested {cfg.temperature_k:g} K)"
            )
        else:
            say(f"[red]teacher MD of {res.name} failed:[/] {res.error}")
    if not paths:
        raise RuntimeError("teacher MD failed for every molecule; see the messages above")
    return paths


def _kelvin(value) -> str:
    return "n/a" if value is None else f"{value:.0f} K"


def teacher_md_temperatures(paths: list[Path]) -> dict[str, dict]:
    """Per molecule: the requested and the measured (mean over the production frames,
    ``mlff_distiller.thermo.temperature``) temperature of its teacher MD, and how long
    equilibration ran and whether it reached the target (as the trajectory records them)."""
    from mlff_distiller.data.hdf5 import Dataset
    from mlff_distiller.teachers.sampling import trajectory_temperatures

    out = {}
    for path in paths:
        with Dataset(path) as ds:
            name = ds.molecule_names[0] if ds.molecule_names else Path(path).stem
        temps = trajectory_temperatures(path)
        eq = temps["equilibration"]
        out[name] = {
            "target_temperature_k": temps["target_k"],
            "measured_temperature_k": temps["measured_k"],
            "equilibration_fs": eq.get("time_fs"),
            "equilibration_passed": eq.get("passed"),
        }
    return out


def split_trajectories(
    paths: list[Path], test_fraction: float, train_path: Path, test_path: Path
) -> dict[str, dict[str, int]]:
    """Pool the trajectories into ``train_path`` (earlier frames) and ``test_path`` (the last
    ``test_fraction`` of every trajectory). Returns frame counts per molecule."""
    from mlff_distiller.data.hdf5 import Dataset, DatasetWriter

    counts = {}
    with (
        DatasetWriter(train_path, flush_every=1000) as train,
        DatasetWriter(test_path, flush_every=1000) as test,
    ):
        for path in paths:
            with Dataset(path) as ds:
                n = len(ds)
                n_test = max(1, int(round(test_fraction * n)))
                name = ds.molecule_names[0] if ds.molecule_names else path.stem
                for i in range(n):
                    (test if i >= n - n_test else train).append(ds[i], molecule=name)
                counts[name] = {"train_pool": n - n_test, "test": n_test}
    return counts


# ------------------------------------------------------------------ stage 3: student MD
def student_md(
    model_path: Path, test_path: Path, cfg: DemoConfig, out: Path, say: Say
) -> dict[str, dict]:
    """NVE MD of each molecule with the student calculator, started from its first held-out
    frame with fresh Maxwell-Boltzmann velocities; the teacher re-scores 10 frames of it."""
    from ase.io import write
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
    from ase.md.verlet import VelocityVerlet
    from rich.progress import Progress

    from mlff_distiller.data.hdf5 import Dataset
    from mlff_distiller.md.calculator import StudentCalculator
    from mlff_distiller.teachers import get_teacher

    out.mkdir(parents=True, exist_ok=True)
    calc = StudentCalculator(model_path, forces="analytical")
    teacher = get_teacher(cfg.teacher)
    n_steps = int(round(cfg.md_fs / cfg.md_dt_fs))
    record_every = max(n_steps // 200, 1)
    with Dataset(test_path) as ds:
        starts = {}
        for i in range(len(ds)):
            starts.setdefault(int(ds.molecule_ids[i]), (ds.molecule_names, i))
        first_frames = {names[mid]: ds[i] for mid, (names, i) in starts.items()}
    results = {}
    with Progress(disable=not cfg.progress_bar) as progress:
        for name, atoms in first_frames.items():
            task = progress.add_task(f"student NVE {name}", total=n_steps)
            atoms = atoms.copy()
            atoms.calc = calc
            rng = np.random.default_rng(cfg.seed)
            MaxwellBoltzmannDistribution(atoms, temperature_K=cfg.md_temperature_k, rng=rng)
            Stationary(atoms, preserve_temperature=False)
            dyn = VelocityVerlet(atoms, timestep=cfg.md_dt_fs * units.ASE_TIME_PER_FS)
            times, e_tot, e_pot, temps, frames = [], [], [], [], []

            def record(
                atoms=atoms,
                dyn=dyn,
                times=times,
                e_tot=e_tot,
                e_pot=e_pot,
                temps=temps,
                frames=frames,
            ):
                epot = atoms.get_potential_energy()
                v = units.velocities_ase_to_internal(atoms.get_velocities())
                ekin = float(thermo.kinetic_energy(v, atoms.get_masses())[0])
                times.append(dyn.nsteps * cfg.md_dt_fs)
                e_pot.append(epot)
                e_tot.append(epot + ekin)
                temps.append(float(thermo.temperature(v, atoms.get_masses())[0]))
                frames.append(atoms.copy())

            dyn.attach(record, interval=record_every)
            dyn.attach(lambda task=task: progress.advance(task, 1), interval=1)
            t0 = time.perf_counter()
            dyn.run(n_steps)
            wall = time.perf_counter() - t0
            write(out / f"{name}.extxyz", frames)
            # teacher check on 10 frames of the student's own trajectory
            pick = np.linspace(0, len(frames) - 1, min(10, len(frames))).astype(int)
            errs = []
            for k in pick:
                a = frames[k].copy()
                a.calc = teacher
                f_teacher = a.get_forces()
                a.calc = calc
                errs.append(np.abs(a.get_forces() - f_teacher).mean())
            e_tot = np.asarray(e_tot)
            drift = np.polyfit(np.asarray(times) / 1000.0, e_tot, 1)[0] / len(atoms)
            results[name] = {
                "n_atoms": len(atoms),
                "length_fs": n_steps * cfg.md_dt_fs,
                "steps": n_steps,
                "wall_s": wall,
                "ms_per_step": wall / n_steps * 1000.0,
                "mean_temperature_k": float(np.mean(temps)),
                "energy_drift_mev_per_atom_per_ps": float(drift * 1000.0),
                "energy_fluctuation_mev_per_atom": float(np.std(e_tot) / len(atoms) * 1000.0),
                "teacher_force_mae_on_student_md_mev_per_a": float(np.mean(errs) * 1000.0),
                "curve": {"time_fs": times, "total_ev": e_tot.tolist(), "potential_ev": e_pot},
            }
            say(f"student MD {name}: {n_steps} steps in {wall:.1f} s")
    _plot_md(results, out / "md_energy.png")
    return results


def finetune_jump_network(
    shipped: Path, teacher_paths: list[Path], cfg: DemoConfig, out: Path, say: Say
) -> tuple[Path, dict]:
    """The shipped jump network fine-tuned ``kstep_finetune_epochs`` epochs on k-windows of the
    teacher trajectories (what `mlffd kstep dataset` + `mlffd kstep train --init-from
    pretrained:xtb --freeze-layers 1` do); returns its folder and a record."""
    from mlff_distiller.kstep.dataset import KStepWindows, build_windows
    from mlff_distiller.training.kstep_trainer import KStepTrainConfig, train_kstep

    windows = out / "windows.h5"
    build_windows(teacher_paths, windows, ks=(cfg.kstep_k,), stride=1,
                  fractions=(1.0, 0.0, 0.0), seed=cfg.seed)  # fmt: skip
    train = KStepWindows.from_file(windows, "train", augment_rotations=True)
    result = train_kstep(
        KStepTrainConfig(out_dir=str(out / "finetune"), epochs=cfg.kstep_finetune_epochs,
                         batch_size=32, lr=5e-4, warmup_steps=10, init_from=str(shipped),
                         freeze_layers=1, loss={"force": 0.01, "kinetic": 0.1},
                         noise_positions=0.01, noise_velocities=0.002, seed=cfg.seed),
        train,
    )  # fmt: skip
    say(f"fine-tuned the shipped jump network on {len(train)} k = {cfg.kstep_k} windows of the "
        f"teacher MD: {result.epochs_done} epochs in {result.seconds:.0f} s")  # fmt: skip
    record = {"windows": len(train), "epochs": result.epochs_done, "seconds": result.seconds}
    return result.best_model, record


def kstep_stage(
    model_path: Path,
    test_h5: Path,
    cfg: DemoConfig,
    out: Path,
    say: Say,
    teacher_paths: list[Path] | None = None,
) -> dict:
    """Hybrid k-step NVT MD of the first molecule (``kstep_replicas`` replicas, the shipped xTB
    jump network fine-tuned on ``teacher_paths`` (:func:`finetune_jump_network`; as shipped
    without them or with ``kstep_finetune_epochs = 0``), the distilled student as corrector)
    against plain student BAOAB MD of twice as many replicas from the same structure; returns
    the comparison (distributions included) or ``{"skipped": why}``."""
    from mlff_distiller.data.hdf5 import Dataset
    from mlff_distiller.evaluation.kstep_eval import compare_hybrid_to_reference
    from mlff_distiller.kstep.pretrained import pretrained_path
    from mlff_distiller.kstep.topology import molecule_topology
    from mlff_distiller.md.forces import make_force_provider
    from mlff_distiller.md.hybrid import HybridConfig
    from mlff_distiller.models.io import load_model

    try:
        network_path = pretrained_path("xtb")
    except FileNotFoundError as err:
        say(f"k-step stage skipped: {err}")
        return {"skipped": str(err)}
    out.mkdir(parents=True, exist_ok=True)
    finetune = None
    if teacher_paths and cfg.kstep_finetune_epochs > 0:
        network_path, finetune = finetune_jump_network(network_path, teacher_paths, cfg, out, say)
    network = load_model(network_path).double()
    with Dataset(test_h5) as ds:
        atoms = ds[0]
    name, smiles = cfg.names[0], cfg.smiles[0]
    atoms.set_momenta(np.zeros((len(atoms), 3)))
    topo = molecule_topology(f"demo-{name}", atoms.numbers, atoms.positions, smiles)
    config = HybridConfig(k=cfg.kstep_k, dt_fs=cfg.md_dt_fs, temperature_k=cfg.md_temperature_k,
                          seed=cfg.seed)  # fmt: skip

    def provider(structures):
        return make_force_provider("student", structures, model=str(model_path))

    cmp = compare_hybrid_to_reference(
        network, provider, atoms, topo, config, cfg.kstep_cycles, replicas=cfg.kstep_replicas,
        discard_fs=0.2 * cfg.kstep_cycles * config.cycle_fs, molecule=name, corrector="student",
    )  # fmt: skip
    result = cmp.to_dict()
    result["finetune"] = finetune
    (out / "kstep.json").write_text(json.dumps(result, indent=2, default=float))
    if cmp.distributions is not None:
        cmp.distributions.plot(out / "kstep_distributions.png")
        (out / "kstep_table.md").write_text(cmp.distributions.table() + "\n")
    say(f"k-step {name}: {cmp.force_call_ratio:.2f}x fewer force calls, "
        f"{cmp.hybrid['mean_temperature_k']:.0f} K hybrid vs "
        f"{cmp.reference['mean_temperature_k']:.0f} K reference, "
        f"{cmp.hybrid['fallbacks']} fallbacks")  # fmt: skip
    for warning in cmp.hybrid.get("warnings", []):
        say(f"warning: {warning}")
    return result


def _plot_md(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    for name, r in results.items():
        c = r["curve"]
        t = np.asarray(c["time_fs"])
        ax.plot(t, np.asarray(c["total_ev"]) - c["total_ev"][0], label=f"{name} total")
        ax.plot(
            t,
            np.asarray(c["potential_ev"]) - c["total_ev"][0],
            lw=0.6,
            alpha=0.6,
            label=f"{name} potential",
        )
    ax.set_xlabel("time (fs)")
    ax.set_ylabel("energy - E_total(0) (eV)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_training_curve(train_dir: Path, path: Path) -> None:
    """Validation force MAE and energy MAE per epoch from the run's CSV logs."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs, forces, energies = [], [], []
    for log in sorted(train_dir.glob("logs/version_*/metrics.csv")):
        with log.open() as fh:
            for row in csv.DictReader(fh):
                if row.get("val_force_mae"):
                    epochs.append(int(row["epoch"]))
                    forces.append(float(row["val_force_mae"]))
                    energies.append(float(row["val_energy_mae"]))
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.semilogy(epochs, forces, label="val force MAE (meV/Å)")
    ax.semilogy(epochs, energies, label="val energy MAE (meV/atom)")
    ax.set_xlabel("epoch")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ------------------------------------------------------------------ the whole demo
def run_demo(cfg: DemoConfig, say: Say | None = None) -> dict:
    """Run every stage; returns the report dict (also written to ``out/report.json``)."""
    import torch

    from mlff_distiller.evaluation.report import evaluate_student
    from mlff_distiller.training.config import TrainConfig
    from mlff_distiller.training.trainer import train

    say = say or print
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    for stale in ("teacher_md", "train", "eval", "student_md", "kstep"):  # always fresh
        shutil.rmtree(out / stale, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    clock = {}
    t0 = time.perf_counter()

    say(f"[bold]1/5[/] teacher MD with {cfg.teacher} for {len(cfg.smiles)} molecule(s)")
    paths = sample_teacher(cfg, out, say)
    teacher_md = teacher_md_temperatures(paths)
    frames = split_trajectories(paths, cfg.test_fraction, out / "train.h5", out / "test.h5")
    clock["teacher_md_s"] = time.perf_counter() - t0

    say(f"[bold]2/5[/] distilling a PaiNN student ({cfg.train_minutes:g} min budget)")
    t1 = time.perf_counter()
    train_cfg = TrainConfig(
        data=str(out / "train.h5"),
        train_size=0.9,
        val_size=0.1,
        size=cfg.size,
        lr=2e-3,
        warmup_steps=50,
        schedule="plateau",
        plateau_patience=5,
        patience=40,
        ema_decay=0.99,
        batch_size=8,
        max_epochs=cfg.max_epochs,
        max_time_min=cfg.train_minutes,
        seed=cfg.seed,
        out=str(out / "train"),
        progress_bar=cfg.progress_bar,
    )
    result = train(train_cfg)
    clock["training_s"] = time.perf_counter() - t1
    plot_training_curve(out / "train", out / "training_curve.png")

    say("[bold]3/5[/] evaluating on held-out teacher frames")
    t2 = time.perf_counter()
    metrics = evaluate_student(
        result.model_path,
        out / "test.h5",
        out / "eval",
        teacher=cfg.teacher,
        max_teacher_frames=20,
        progress=say,
    )
    clock["evaluation_s"] = time.perf_counter() - t2

    say(f"[bold]4/5[/] {cfg.md_fs:g} fs of student NVE MD through the ASE calculator")
    t3 = time.perf_counter()
    md = student_md(Path(result.model_path), out / "test.h5", cfg, out / "student_md", say)
    clock["student_md_s"] = time.perf_counter() - t3

    say(f"[bold]5/5[/] k-step hybrid MD (k = {cfg.kstep_k}, NVT): the shipped jump network "
        "fine-tuned on the teacher MD, the student as corrector, against plain student MD")
    t4 = time.perf_counter()
    kstep = kstep_stage(Path(result.model_path), out / "test.h5", cfg, out / "kstep", say,
                        teacher_paths=paths)  # fmt: skip
    clock["kstep_s"] = time.perf_counter() - t4
    clock["total_s"] = time.perf_counter() - t0

    report = {
        "config": asdict(cfg),
        "frames": frames,
        "teacher_md": teacher_md,
        "training": {
            **result.to_dict(),
            "architecture": {
                k: getattr(train_cfg, k)
                for k in ("size", "hidden", "n_interactions", "n_rbf", "cutoff", "shared_filters")
            },
        },
        "evaluation": metrics,
        "student_md": {k: {kk: vv for kk, vv in v.items() if kk != "curve"} for k, v in md.items()},
        "kstep": kstep,
        "wall_clock": clock,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(render_report(report))
    return report


def _teacher_temperature_lines(teacher_md: dict, requested: float) -> list[str]:
    """The measured temperature of each teacher MD run next to the requested one."""
    if not teacher_md:
        return []
    lines = [
        "| molecule | requested T (K) | measured T (K), production mean | equilibration |",
        "|---|---|---|---|",
    ]
    for name, t in teacher_md.items():
        target = t.get("target_temperature_k") or requested
        measured = t.get("measured_temperature_k")
        eq_fs, passed = t.get("equilibration_fs"), t.get("equilibration_passed")
        check = {True: "reached target", False: "**did not reach target**"}.get(passed, "unchecked")
        eq = f"{eq_fs:g} fs, {check}" if eq_fs is not None else check
        lines.append(
            f"| {name} | {target:g} | {'n/a' if measured is None else f'{measured:.0f}'} | {eq} |"
        )
    return [*lines, ""]


def _kstep_lines(report: dict) -> list[str]:
    ks = report.get("kstep") or {}
    if not ks or "skipped" in ks:
        return ["## k-step hybrid MD", "", f"Skipped: {ks.get('skipped', 'not run')}", ""]
    h, r = ks["hybrid"], ks["reference"]
    lines = [
        f"## k-step hybrid MD ({ks['molecule']}, k = {ks['k']}, {ks['ensemble'].upper()}, "
        f"{ks['replicas']} replicas, the student as corrector)",
        "",
        f"Force calls {ks['force_call_ratio']:.2f}x fewer than plain student MD for the same "
        f"{ks['simulated_fs']:.0f} fs, wall clock {ks['speedup']:.2f}x (a student call is cheap: "
        "the gain is for expensive correctors such as xTB); mean temperature "
        f"{h['mean_temperature_k']:.0f} K (reference {r['mean_temperature_k']:.0f} K); "
        f"{h['fallbacks']} fallbacks, rejections "
        + (", ".join(f"{k} {v}" for k, v in h["rejections"].items() if v) or "none")
        + ".",
        "",
    ]
    ft = ks.get("finetune")
    lines += [
        f"Jump network: the shipped xTB network fine-tuned {ft['epochs']} epochs "
        f"({ft['seconds']:.0f} s) on {ft['windows']} k-windows of the teacher MD above."
        if ft else "Jump network: the shipped xTB network, as shipped.",
        "",
    ]
    per_element = [(el, t, r.get("element_temperatures_k", {}).get(el))
                   for el, t in h.get("element_temperatures_k", {}).items()]  # fmt: skip
    if per_element:
        lines += [
            "Per element, hybrid (reference): "
            + ", ".join(f"{el} {t:.0f} K" + (f" ({ref:.0f} K)" if ref is not None else "")
                        for el, t, ref in per_element)  # fmt: skip
            + ".",
            "",
        ]
    lines += [f"**Warning:** {w}" for w in h.get("warnings", [])] + (
        [""] if h.get("warnings") else []
    )
    if ks.get("distributions"):
        lines += [
            "Distances against the reference-vs-reference floor: `kstep/kstep_table.md`.",
            "",
            "![k-step distributions](kstep/kstep_distributions.png)",
            "",
        ]
    return lines


def render_report(report: dict) -> str:
    """The markdown report of a demo run."""
    from mlff_distiller.evaluation.report import format_summary

    cfg, tr, ev = report["config"], report["training"], report["evaluation"]
    arch = tr["architecture"]
    lines = [
        "# mlff_distiller demo",
        "",
        f"Teacher **{cfg['teacher']}**, molecules: "
        + ", ".join(f"{n} (`{s}`)" for n, s in zip(cfg["names"], cfg["smiles"], strict=True)),
        f"Teacher NVT MD at {cfg['temperature_k']:g} K requested, {cfg['sample_fs']:g} fs per "
        f"molecule, a frame every {cfg['save_every']} steps; the last "
        f"{cfg['test_fraction']:.0%} of each trajectory is held out for testing.",
        "",
        *_teacher_temperature_lines(report.get("teacher_md") or {}, cfg["temperature_k"]),
        "| molecule | training+validation frames | held-out test frames |",
        "|---|---|---|",
    ]
    for name, c in report["frames"].items():
        lines.append(f"| {name} | {c['train_pool']} | {c['test']} |")
    lines += [
        "",
        "## Training",
        f"PaiNN, size '{arch['size']}' (hidden {arch['hidden']}, {arch['n_interactions']} "
        f"interactions, cutoff {arch['cutoff']:g} Å), "
        f"{tr['n_train']} training / {tr['n_val']} validation frames, {tr['epochs']} epochs "
        f"({tr['global_step']} steps) in {tr['wall_s']:.0f} s, stopped by {tr['stopped_by']}. "
        f"Best validation force MAE {tr['best_val_force_mae']:.1f} meV/Å.",
        "",
        "![training curve](training_curve.png)",
        "",
        "## Accuracy on held-out teacher frames",
        format_summary(ev),
        "",
        "Per molecule (student vs held-out labels):",
        "",
        "| molecule | energy MAE (meV/atom) | force MAE (meV/Å) | force cosine |",
        "|---|---|---|---|",
    ]
    for name, m in ev["student_vs_labels"]["per_molecule"].items():
        lines.append(
            f"| {name} | {m['energy_mae_mev_per_atom']:.2f} | {m['force_mae_mev_per_a']:.1f} "
            f"| {m['force_cosine']:.4f} |"
        )
    lines += [
        "",
        "Per element:",
        "",
        "| element | atoms | force MAE (meV/Å) | force RMSE (meV/Å) |",
        "|---|---|---|---|",
    ]
    for el, m in ev["student_vs_labels"]["per_element"].items():
        lines.append(
            f"| {el} | {m['n_atoms']} | {m['force_mae_mev_per_a']:.1f} "
            f"| {m['force_rmse_mev_per_a']:.1f} |"
        )
    lines += [
        "",
        "![energy parity](eval/parity_energy.png) ![force parity](eval/parity_forces.png)",
        "",
        "## Student MD (NVE, analytical forces, ASE VelocityVerlet)",
        "",
        "| molecule | length (fs) | ms/step | mean T (K) | drift (meV/atom/ps) "
        "| teacher force MAE on student frames (meV/Å) |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in report["student_md"].items():
        lines.append(
            f"| {name} | {m['length_fs']:g} | {m['ms_per_step']:.2f} "
            f"| {m['mean_temperature_k']:.0f} | {m['energy_drift_mev_per_atom_per_ps']:.3f} "
            f"| {m['teacher_force_mae_on_student_md_mev_per_a']:.1f} |"
        )
    clock = report["wall_clock"]
    lines += ["", "![student MD energy](student_md/md_energy.png)", "", *_kstep_lines(report)]
    lines += [
        "## Wall clock",
        "",
        " | ".join(f"{k.removesuffix('_s')}: {v:.0f} s" for k, v in clock.items()),
        "",
    ]
    return "\n".join(lines)
