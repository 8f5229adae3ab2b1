"""``mlffd distill``: on-the-fly distillation with a committee and a teacher (active learning)."""

from __future__ import annotations

from pathlib import Path

import typer

from mlff_distiller.cli._common import console, user_errors
from mlff_distiller.distill.config import DistillConfig as D


def register(app: typer.Typer) -> None:
    app.command("distill")(distill)


def distill(
    smiles: list[str] = typer.Option(None, "--smiles", "-s", help="a molecule (repeat)"),
    structure: list[Path] = typer.Option(None, "--structure", help="a structure file (repeat)"),
    teacher: str = typer.Option("xtb", "--teacher", "-t", help="teacher name (mlffd teachers)"),
    out: Path = typer.Option(Path("mlffd_distill"), "--out", "-o", help="run directory"),
    budget: int = typer.Option(D.budget, help="teacher calls for training labels"),
    seed_frames: int = typer.Option(D.seed_frames, help="first labelled frames, per molecule"),
    temperatures: str = typer.Option("300,400,500,600", help="student MD ladder, K"),
    replicas: int = typer.Option(
        D.replicas, help="student MD replicas per molecule and temperature"
    ),
    md_fs: float = typer.Option(D.md_fs, help="student MD per replica and iteration, fs"),
    max_uncertainty: float = typer.Option(
        D.max_uncertainty,
        help="eV/Å: frames whose largest per-atom committee force deviation passes it "
        "are labelled; the run converges when the MD stays under it",
    ),
    explore_bias_kt: float = typer.Option(
        D.explore_bias_kt,
        help="kT: one more student MD at the top temperature, biased towards where the "
        "committee disagrees, finds rare failures sooner (0: off)",
    ),
    frames_per_iteration: int = typer.Option(
        D.frames_per_iteration,
        help="frames labelled per molecule and round (at least; more when the budget would "
        "otherwise go unspent by the last round)",
    ),
    max_iterations: int = typer.Option(D.max_iterations),
    members: int = typer.Option(D.members, help="committee members"),
    size: str = typer.Option(D.size, help="student size (fast, balanced, accurate)"),
    train_minutes: float = typer.Option(
        D.train_minutes, help="training per member and round (warm start), min"
    ),
    first_train_minutes: float = typer.Option(
        D.first_train_minutes, help="training per member, first round, min"
    ),
    holdout_fs: float = typer.Option(
        D.holdout_fs, help="held-out teacher MD for scoring, fs (0: none)"
    ),
    workers: int = typer.Option(
        D.workers, help="Ray actors for the teacher labels (0: in process)"
    ),
    seed: int = typer.Option(0),
) -> None:
    """Distil a committee of students on the fly: teacher labels only where it is unsure.

    Rerun the same command to continue a stopped or killed run.
    """
    from mlff_distiller.distill.loop import run_distill

    with user_errors():
        config = D(
            smiles=list(smiles or []),
            structures=[str(p) for p in structure or []],
            teacher=teacher,
            out=str(out),
            budget=budget,
            seed_frames=seed_frames,
            temperatures_k=[float(t) for t in temperatures.split(",") if t.strip()],
            replicas=replicas,
            md_fs=md_fs,
            max_uncertainty=max_uncertainty,
            explore_bias_kt=explore_bias_kt,
            frames_per_iteration=frames_per_iteration,
            max_iterations=max_iterations,
            members=members,
            size=size,
            train_minutes=train_minutes,
            first_train_minutes=first_train_minutes,
            holdout_fs=holdout_fs,
            workers=workers,
            seed=seed,
        )
        summary = run_distill(config, say=console.print)
    last = summary["iterations"][-1]
    mae = last.get("holdout_force_mae_mev")
    score = f"; held-out force MAE {mae:.1f} meV/Å" if mae is not None else ""
    console.print(
        f"[green]done[/] ({summary['status']}): {summary['teacher_calls']} teacher calls, "
        f"{len(summary['iterations'])} rounds{score}; committee -> {summary['model_path']}; "
        f"report -> {out / 'report.md'}"
    )
