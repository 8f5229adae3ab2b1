"""``mlffd md``: student MD, many molecules at once (batched engine) or one through ASE."""

from __future__ import annotations

from pathlib import Path

import typer

from mlff_distiller.cli._common import console, user_errors


def register(app: typer.Typer) -> None:
    app.command("md")(md)


def md(
    model: Path = typer.Argument(..., help="saved student (directory with model.safetensors)"),
    smiles: list[str] = typer.Option(None, "--smiles", "-s", help="a molecule (repeat)"),
    structure: list[Path] = typer.Option(None, "--structure", help="a structure file (repeat)"),
    replicas: int = typer.Option(1, help="copies of each molecule (different velocities)"),
    steps: int = typer.Option(2000, help="MD steps"),
    dt: float = typer.Option(0.5, help="time step, fs"),
    ensemble: str = typer.Option("nvt", help="nvt (Langevin) or nve (velocity Verlet)"),
    temperature: float = typer.Option(300.0, help="K (initial velocities and thermostat)"),
    friction: float = typer.Option(1.0, help="Langevin friction, 1/ps"),
    save_every: int = typer.Option(10, help="steps between saved frames"),
    seed: int = typer.Option(0),
    engine: str = typer.Option(
        "batched",
        help="batched (all molecules at once), ase (one molecule), openmm (one molecule, "
        "OpenMM's integrators; velocities saved half a step behind) or torchsim (all at once "
        "with torch-sim's integrators; pip install mlff_distiller[torchsim])",
    ),
    forces: str = typer.Option("analytical", help="analytical or autograd"),
    out: Path = typer.Option(Path("md.h5"), "--out", "-o", help="HDF5 trajectory"),
    resume: bool = typer.Option(False, help="continue from the last saved frame (batched)"),
    threads: int = typer.Option(1, help="torch threads"),
    teacher_fallback: str = typer.Option(
        None,
        help="a teacher (e.g. xtb) that takes over every step of a structure whose committee "
        "force uncertainty exceeds --max-uncertainty (batched engine, committee models)",
    ),
    max_uncertainty: float = typer.Option(
        None, help="eV/Å: the largest per-atom committee force uncertainty trusted"
    ),
    fallback_out: Path = typer.Option(
        None, help="HDF5 file for the teacher-labelled fallback frames (default: <out>.fallback.h5)"
    ),
    check_every: int = typer.Option(
        1,
        help="committees: member 0 drives and the whole committee (uncertainty, fallback) runs "
        "every N steps; per step a committee of M costs ~1 + (M - 1)/N students",
    ),
    compile: bool = typer.Option(
        True,
        "--compile/--no-compile",
        help="compiled analytical forces (default, fastest; the first run of a model size on a "
        "machine compiles for about a minute, later runs load the cache); --no-compile: eager",
    ),
) -> None:
    """Run MD with a distilled student; writes positions, velocities, forces and energies."""
    import torch

    from mlff_distiller.data.structures import from_smiles, read_structures
    from mlff_distiller.md.runner import MDConfig, run_md
    from mlff_distiller.models.cpu_memory import retain_freed_cpu_memory
    from mlff_distiller.models.io import load_model

    torch.set_num_threads(threads)
    retain_freed_cpu_memory()  # MD repeats the same allocations: reuse them (see cpu_memory)
    with user_errors():
        config = MDConfig(
            steps=steps,
            dt_fs=dt,
            ensemble=ensemble,
            temperature_k=temperature,
            friction_per_ps=friction,
            save_every=save_every,
            seed=seed,
            forces=forces,
        )
        structures = [a for s in smiles or [] for a in from_smiles(s, seed=seed)]
        structures += [a for p in structure or [] for a in read_structures(p)]
        if not structures:
            raise ValueError("give at least one --smiles or --structure")
        structures = [a.copy() for a in structures for _ in range(replicas)]
        for k, a in enumerate(structures):
            if replicas > 1:
                a.info["name"] = f"{a.info.get('name') or a.get_chemical_formula()}_r{k % replicas}"
        student = load_model(model)
        use_compile = None if compile else False  # None: where possible (analytical forces)
        if teacher_fallback is not None and engine != "batched":
            raise ValueError("--teacher-fallback runs with --engine batched only")
        if engine == "ase":
            from mlff_distiller.md.ase_runner import run_ase_md
            from mlff_distiller.md.calculator import StudentCalculator

            if len(structures) != 1:
                raise ValueError("--engine ase runs one molecule; use --engine batched for more")
            calc = StudentCalculator(
                student, forces=forces, dtype=torch.float64, compile=use_compile
            )
            _, result = run_ase_md(calc, structures[0], config, out=out)
        elif engine == "batched":
            fallback = {}
            if teacher_fallback is not None:
                from mlff_distiller.teachers import get_teacher

                if max_uncertainty is None:
                    raise ValueError("--teacher-fallback needs --max-uncertainty (eV/Å)")
                fallback = {
                    "teacher_fallback": get_teacher(teacher_fallback),
                    "max_uncertainty": max_uncertainty,
                    "fallback_out": fallback_out or out.with_suffix(".fallback.h5"),
                }
            result = run_md(
                student,
                structures,
                config,
                check_every=check_every,
                out=out,
                resume=resume,
                compile=use_compile,
                **fallback,
            )
        elif engine == "torchsim":
            try:
                from mlff_distiller.md.torchsim import run_torchsim_md  # optional: torch-sim
            except ImportError as err:  # says: pip install mlff_distiller[torchsim]
                raise ValueError(str(err)) from err
            if resume:
                raise ValueError("--resume applies to --engine batched only")
            result = run_torchsim_md(student, structures, config, out=out, compile=use_compile)
        elif engine == "openmm":
            from mlff_distiller.md.openmm_engine import run_openmm_md

            if len(structures) != 1:
                raise ValueError("--engine openmm runs one molecule; use --engine batched for more")
            if resume:
                raise ValueError("--resume applies to --engine batched only")
            _, result = run_openmm_md(student, structures[0], config, out=out, compile=use_compile)
        else:
            raise ValueError(
                f"--engine must be 'batched', 'ase', 'openmm' or 'torchsim', got {engine!r}"
            )
    console.print(
        f"[green]done[/]: {result.steps_done} steps of {len(structures)} structure(s) in "
        f"{result.seconds:.1f} s ({result.steps_per_second:.0f} steps/s), "
        f"{result.frames_written} frames -> {out}"
    )
    if teacher_fallback is not None and engine == "batched":
        console.print(
            f"teacher fallbacks: {result.fallbacks} of {result.steps_done * len(structures)} "
            f"structure-steps above {max_uncertainty:g} eV/Å used {teacher_fallback}'s forces; "
            f"frames -> {fallback['fallback_out']}"
        )
