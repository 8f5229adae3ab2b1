"""``mlffd eval MODEL DATA.h5 [--teacher NAME] --out DIR``: score a student on a dataset."""

from __future__ import annotations

from pathlib import Path

import typer

from mlff_distiller.cli._common import console, user_errors


def evaluate(
    model: Path = typer.Argument(..., help="saved student (directory with model.safetensors)"),
    data: Path = typer.Argument(..., help="HDF5 dataset with energy and force labels"),
    out: Path = typer.Option(Path("mlffd_eval"), "--out", "-o", help="output directory"),
    teacher: str | None = typer.Option(
        None, "--teacher", "-t", help="also run this teacher live (e.g. xtb, sevennet)"
    ),
    max_teacher_frames: int = typer.Option(50, help="frames the live teacher labels"),
    split: str | None = typer.Option(
        None, help="evaluate on a stored split of DATA (train, val, test) instead of all frames"
    ),
) -> None:
    """Energy/force errors of a student (per element, per molecule), parity plots, ms per call."""
    with user_errors():
        from mlff_distiller.evaluation.report import evaluate_student, format_summary

        result = evaluate_student(
            model,
            data,
            out,
            teacher=teacher,
            max_teacher_frames=max_teacher_frames,
            split=split,
            progress=lambda msg: console.print(f"[dim]{msg}[/]"),
        )
        console.print(format_summary(result))
        console.print(f"[green]wrote[/] {out}/metrics.json and parity plots")


def register(app: typer.Typer) -> None:
    app.command("eval")(evaluate)
