"""``mlffd demo``: the whole pipeline on two small drug molecules in under 10 minutes (2 cores)."""

from __future__ import annotations

from pathlib import Path

import typer

from mlff_distiller.cli._common import console, user_errors


def demo(
    out: Path = typer.Option(Path("mlffd_demo"), "--out", "-o", help="output directory"),
    teacher: str = typer.Option("xtb", "--teacher", "-t", help="teacher (mlffd teachers lists)"),
    smiles: list[str] | None = typer.Option(
        None, "--smiles", help="molecule SMILES (repeat; default aspirin and paracetamol)"
    ),
    sample_fs: float = typer.Option(800.0, help="teacher MD production per molecule, fs"),
    train_minutes: float = typer.Option(4.0, help="training wall-clock budget, minutes"),
    md_fs: float = typer.Option(1000.0, help="student MD length, fs"),
    seed: int = typer.Option(0, help="random seed"),
    threads: int = typer.Option(1, help="torch threads (1 is fastest for small molecules)"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show progress bars"),
) -> None:
    """SMILES -> teacher MD -> distilled student -> held-out accuracy -> student MD -> report."""
    with user_errors():
        from mlff_distiller.evaluation.demo import DemoConfig, run_demo

        options = {}
        if smiles:
            options = {"smiles": list(smiles), "names": list(smiles)}
        cfg = DemoConfig(
            teacher=teacher,
            sample_fs=sample_fs,
            train_minutes=train_minutes,
            md_fs=md_fs,
            seed=seed,
            threads=threads,
            out=str(out),
            progress_bar=progress,
            **options,
        )
        report = run_demo(cfg, say=console.print)
        overall = report["evaluation"]["student_vs_labels"]["overall"]
        timing = report["evaluation"]["timing"]
        console.print(
            f"[green]done[/] in {report['wall_clock']['total_s']:.0f} s: held-out force MAE "
            f"{overall['force_mae_mev_per_a']:.1f} meV/Å, energy MAE "
            f"{overall['energy_mae_mev_per_atom']:.2f} meV/atom; student "
            f"{timing['student_ms_per_call']:.2f} ms/call vs {teacher} "
            f"{timing.get('teacher_ms_per_call', float('nan')):.2f} ms/call"
        )
        console.print(f"report: {out / 'report.md'}")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
