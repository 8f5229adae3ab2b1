"""``mlffd teachers`` (what is registered and runs here), ``mlffd sample`` (reference MD with a
teacher) and ``mlffd label`` (label a dataset, serially or on Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from mlff_distiller.cli._common import console, user_errors


def parse_options(pairs: list[str] | None) -> dict:
    """``["method=GFN1-xTB", "charge=1"]`` -> ``{"method": "GFN1-xTB", "charge": 1}`` (JSON
    values where they parse, strings otherwise)."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"teacher option {pair!r}: expected KEY=VALUE, e.g. method=GFN1-xTB")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def teachers_table() -> None:
    """Print every registered teacher with its elements and whether it runs here."""
    from rich.table import Table

    from mlff_distiller.teachers import list_teachers
    from mlff_distiller.teachers.base import format_elements

    table = Table(title="teachers (get_teacher(name) / --teacher NAME)")
    for col in ("name", "kind", "elements", "available", "what"):
        table.add_column(col)
    for spec in list_teachers():
        ok, why = spec.availability()
        table.add_row(
            spec.name,
            spec.kind,
            format_elements(spec.elements),
            "[green]yes[/]" if ok else f"[red]no[/] ({why})",
            spec.description,
        )
    table.add_row("package.module:Class", "-", "any", "-", "any ASE calculator, options as kwargs")
    console.print(table)


def _molecules(smiles: list[str] | None, structures: list[Path] | None, names: list[str] | None):
    from mlff_distiller.data.structures import from_smiles, read_structures

    mols = []
    names = list(names or [])
    for k, smi in enumerate(smiles or []):
        name = names[k] if k < len(names) else None
        mols.append(from_smiles(smi, n_conformers=1, seed=0, name=name)[0])
    for path in structures or []:
        if Path(path).suffix.lower() in (".h5", ".hdf5"):
            from mlff_distiller.teachers.openmm_amber import read_mdtraj_h5

            mols.append(read_mdtraj_h5(path)[1][0])
        else:
            mols.append(read_structures(path, index=0)[0])
    if not mols:
        raise ValueError("give at least one molecule: --smiles CCO or --structure FILE")
    return mols


def _kelvin(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def temperature_table(results) -> None:
    """Print target and measured (production mean, NVE mean) temperature of every run, and
    how its equilibration went (time used, whether its check passed: the mean temperature of
    the last window reached the target; FAILED: the data are kept, see the file's
    ``equilibration`` attribute)."""
    from rich.table import Table

    table = Table(title="temperatures (K): target and measured mean (mlff_distiller.thermo)")
    for col in ("molecule", "replica", "frames", "target", "measured", "NVE", "equilibration"):
        table.add_column(col)
    for r in results:
        if not r.ok:
            table.add_row(r.name, str(r.replica), "-", "-", "-", "-", "[red]failed[/]")
            continue
        check = {True: "passed", False: "[red]FAILED[/]"}.get(r.equilibration_passed, "unchecked")
        eq = f"{r.equilibration_fs:g} fs, {check}" if r.equilibration_fs is not None else check
        table.add_row(
            r.name,
            str(r.replica),
            str(r.n_frames),
            _kelvin(r.target_temperature_k),
            _kelvin(r.measured_temperature_k),
            _kelvin(r.measured_temperature_nve_k),
            eq,
        )
    console.print(table)


def register(app: typer.Typer) -> None:
    @app.command("teachers")
    def teachers_cmd() -> None:
        """List the teachers, the elements they support and whether they run here."""
        teachers_table()

    @app.command("sample")
    def sample_cmd(
        teacher: str = typer.Option(..., "--teacher", "-t", help="teacher name (mlffd teachers)"),
        smiles: list[str] = typer.Option(None, "--smiles", "-s", help="a molecule (repeat)"),
        structure: list[Path] = typer.Option(None, "--structure", help="a structure file"),
        name: list[str] = typer.Option(None, "--name", help="names for the --smiles, in order"),
        out_dir: Path = typer.Option(Path("runs/sample"), "--out-dir", "-o"),
        replicas: int = typer.Option(1, help="independent runs per molecule (seeds seed+k)"),
        temperature_k: float = typer.Option(300.0, "--temperature", help="K"),
        dt_fs: float = typer.Option(None, "--dt", help="fs (default: MM 2, QM/ML 0.5)"),
        friction_per_ps: float = typer.Option(
            1.0, "--friction", help="Langevin friction of production, 1/ps"
        ),
        equilibration_fs: float = typer.Option(
            1000.0, "--equilibration", help="fs, not saved: the minimum (0: none)"
        ),
        equilibration_friction: float = typer.Option(
            None, "--equilibration-friction", help="1/ps (default: max(--friction, 10))"
        ),
        equilibration_window: float = typer.Option(
            200.0, "--equilibration-window", help="fs over which the mean T is checked"
        ),
        temperature_tolerance: float = typer.Option(
            0.05, "--temperature-tolerance", help="relative; or 2 sigma of the window mean"
        ),
        max_equilibration: float = typer.Option(
            None, "--max-equilibration", help="fs cap (default: minimum + 10 windows)"
        ),
        initial_temperature: float = typer.Option(
            None, "--initial-temperature", help="K, starting velocities (default: --temperature)"
        ),
        production_fs: float = typer.Option(10000.0, "--production", help="fs, NVT, saved"),
        nve_fs: float = typer.Option(0.0, "--nve", help="fs of NVE after production"),
        nve_dt_fs: float = typer.Option(None, "--nve-dt", help="fs (default: --dt)"),
        save_every: int = typer.Option(10, "--save-every", help="steps between frames"),
        seed: int = typer.Option(0),
        constraints: str = typer.Option("auto", help="auto | hbonds | none (OpenMM only)"),
        resume: bool = typer.Option(False, "--resume", help="continue runs from last frames"),
        teacher_option: list[str] = typer.Option(
            None, "--teacher-option", "-O", help="KEY=VALUE for the teacher (repeat)"
        ),
    ) -> None:
        """Reference MD (NVT Langevin, then optional NVE) with a teacher; one HDF5 trajectory
        per molecule and replica, flushed per frame, resumable. Equilibration runs at a strong
        friction until the mean temperature reaches the target; the table at the end gives the
        measured temperature of every run next to the target."""
        from rich.progress import BarColumn, Progress, TimeRemainingColumn

        from mlff_distiller.teachers.registry import get_teacher, teacher_spec
        from mlff_distiller.teachers.sampling import SamplingConfig, sample_many, total_steps

        with user_errors():
            options = parse_options(teacher_option)
            cfg = SamplingConfig(
                temperature_k=temperature_k,
                dt_fs=dt_fs,
                friction_per_ps=friction_per_ps,
                equilibration_fs=equilibration_fs,
                production_fs=production_fs,
                nve_fs=nve_fs,
                nve_dt_fs=nve_dt_fs,
                save_every=save_every,
                seed=seed,
                constraints=constraints,
                equilibration_friction_per_ps=equilibration_friction,
                equilibration_window_fs=equilibration_window,
                temperature_tolerance=temperature_tolerance,
                max_equilibration_fs=max_equilibration,
                initial_temperature_k=initial_temperature,
            )
            kind = teacher_spec(teacher).kind if ":" not in teacher else "ml"
            cfg.resolved(kind)
            mols = _molecules(smiles, structure, name)
            steps = total_steps(cfg, kind) * replicas * len(mols)
            with Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                "{task.completed}/{task.total} steps",
                TimeRemainingColumn(),
                console=console,
            ) as bar:
                task = bar.add_task(f"sampling with {teacher}", total=steps)

                def report(res) -> None:
                    if res.ok:
                        bar.console.print(
                            f"[green]ok[/] {res.name} r{res.replica}: "
                            f"{res.n_frames} frames -> {res.path}"
                        )
                    else:
                        bar.console.print(f"[red]failed[/] {res.name}: {res.error}")

                results = sample_many(
                    lambda atoms: get_teacher(teacher, **options),
                    mols,
                    out_dir,
                    cfg,
                    replicas=replicas,
                    resume=resume,
                    on_steps=lambda n: bar.advance(task, n),
                    on_result=report,
                )
            temperature_table(results)
            failed = [r for r in results if not r.ok]
            if failed and len(failed) == len(results):
                raise typer.Exit(code=1)

    @app.command("label")
    def label_cmd(
        dataset: Path = typer.Argument(..., help="input HDF5 dataset"),
        teacher: str = typer.Option(..., "--teacher", "-t"),
        out: Path = typer.Option(..., "--out", "-o", help="output HDF5 (resumed if it exists)"),
        workers: int = typer.Option(0, help="Ray workers; 0 = serial in this process"),
        address: str = typer.Option(None, help="an existing Ray cluster (ray://... or auto)"),
        chunk_size: int = typer.Option(8, help="structures per Ray task"),
        teacher_option: list[str] = typer.Option(
            None, "--teacher-option", "-O", help="KEY=VALUE for the teacher (repeat)"
        ),
        hessian_rows: int = typer.Option(
            0,
            "--hessian-rows",
            help="random Hessian rows per structure (Hessian-informed distillation; 0: none)",
        ),
        hessian_method: str = typer.Option(
            "auto",
            "--hessian-method",
            help="'auto' (autograd for torch teachers, else finite differences), 'fd', 'autograd'",
        ),
        hessian_delta: float = typer.Option(
            1e-3, "--hessian-delta", help="finite-difference displacement, Å"
        ),
        hessian_seed: int = typer.Option(0, "--hessian-seed", help="seed of the rows chosen"),
    ) -> None:
        """Label every structure of DATASET with a teacher (energy, forces, optionally a few
        Hessian rows); failures are recorded with their reason; a killed run resumes without
        relabelling."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        from mlff_distiller.data.hdf5 import Dataset
        from mlff_distiller.teachers.labelling import HessianOptions, label_dataset

        with user_errors():
            options = parse_options(teacher_option)
            hessian = HessianOptions(hessian_rows, hessian_delta, hessian_seed, hessian_method)
            with Dataset(dataset) as ds:
                n = len(ds)
            with Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=console,
            ) as bar:
                task = bar.add_task(f"labelling with {teacher}", total=n)
                summary = label_dataset(
                    dataset,
                    teacher,
                    out,
                    options,
                    workers=workers,
                    address=address,
                    chunk_size=chunk_size,
                    on_progress=lambda k: bar.advance(task, k),
                    hessian=hessian,
                )
            console.print(
                f"{summary.n_labelled} labelled now, {summary.n_skipped} already done, "
                f"{len(summary.failures)} failed, {summary.teacher_calls} teacher calls -> {out}"
            )
            for f in summary.failures[:10]:
                console.print(f"[red]failed[/] #{f['index']} {f['name']}: {f['reason']}")
