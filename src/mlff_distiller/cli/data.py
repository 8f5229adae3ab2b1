"""``mlffd data import|info|export|split|validate`` and ``mlffd structures``."""

from __future__ import annotations

from pathlib import Path

import typer

from mlff_distiller.cli._common import console, user_errors

data_app = typer.Typer(
    help="Import, inspect, export and split HDF5 datasets.", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
    app.command("structures")(structures)


@data_app.command("import")
def import_(
    src: Path = typer.Argument(..., help="rMD17/sGDML npz, extxyz, ASE db, or any ASE file"),
    out: Path = typer.Option(..., "--out", "-o", help="HDF5 dataset to write"),
    fmt: str = typer.Option(
        None, "--format", "-f", help="rmd17 | sgdml | extxyz | ase-db | ase (default: detect)"
    ),
    energy_unit: str = typer.Option(
        None, help="energy unit of the source (default: kcal/mol for npz, eV otherwise)"
    ),
    energy_key: str = typer.Option("energy", help="extxyz info key of the energy"),
    forces_key: str = typer.Option("forces", help="extxyz per-atom key of the forces"),
    name: str = typer.Option(None, help="molecule name for every frame"),
) -> None:
    """Import labelled structures into an HDF5 dataset (units converted to eV, Å)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from mlff_distiller.data.importers import detect_format, import_file

    with user_errors():
        detected = fmt or detect_format(src)
        with Progress(
            TextColumn("[bold]importing[/] {task.description}"),
            BarColumn(),
            TextColumn("{task.completed} structures"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as progress:
            task = progress.add_task(f"{src.name} ({detected})", total=None)
            n = import_file(
                src,
                out,
                fmt=detected,
                energy_unit=energy_unit,
                energy_key=energy_key,
                forces_key=forces_key,
                name=name,
                progress=lambda k: progress.update(task, completed=k),
            )
        console.print(f"[green]imported[/] {n} structures from {src} ({detected}) -> {out}")


@data_app.command("info")
def info(path: Path = typer.Argument(..., help="HDF5 dataset")) -> None:
    """Summarise a dataset: structures, atoms, elements, molecules, label statistics."""
    from mlff_distiller.data.summary import render_summary, summarize

    with user_errors():
        console.print(render_summary(summarize(path)))


@data_app.command("validate")
def validate_cmd(path: Path = typer.Argument(..., help="HDF5 dataset")) -> None:
    """Check the file against the schema; names the group/dataset that is wrong."""
    from mlff_distiller.data.schema import validate

    with user_errors():
        s = validate(path)
        console.print(
            f"[green]valid[/] {path}: {s['n_structures']} structures, {s['n_atoms']} atoms, "
            f"{s['n_molecules']} molecules; fields: {', '.join(s['fields'])}"
        )


@data_app.command("export")
def export(
    path: Path = typer.Argument(..., help="HDF5 dataset"),
    out: Path = typer.Option(..., "--out", "-o", help="extxyz file to write"),
    split: str = typer.Option(None, help="export only this part, e.g. default:test"),
) -> None:
    """Export structures and labels to extended XYZ (eV, Å; full precision)."""
    from mlff_distiller.data.importers import export_extxyz
    from mlff_distiller.data.splits import load_split

    with user_errors():
        indices = None
        if split:
            name, _, part = split.rpartition(":")
            indices = load_split(path, name or "default")[part]
        n = export_extxyz(path, out, indices)
        console.print(f"[green]exported[/] {n} structures -> {out}")


@data_app.command("split")
def split_cmd(
    path: Path = typer.Argument(..., help="HDF5 dataset"),
    by: str = typer.Option("frame", help="frame | molecule"),
    fractions: str = typer.Option("0.8,0.1,0.1", help="train,val,test fractions or counts"),
    seed: int = typer.Option(0, help="random seed"),
    name: str = typer.Option("default", help="name of the stored split"),
) -> None:
    """Make a seeded train/val/test split and store it (in the file or a JSON sidecar)."""
    import os

    from mlff_distiller.data.splits import sidecar_path, split_dataset

    with user_errors():
        writable = os.access(path, os.W_OK)
        split = split_dataset(path, by=by, fractions=fractions, seed=seed, name=name)
        where = f"{path}:/splits/{name}" if writable else f"JSON sidecar {sidecar_path(path)}"
        sizes = ", ".join(f"{p} {len(v)}" for p, v in split.items())
        console.print(f"[green]split[/] {name!r} by {by} (seed {seed}): {sizes} -> {where}")


def structures(
    inputs: list[str] = typer.Argument(..., help="SMILES strings or structure files"),
    out: Path = typer.Option(..., "--out", "-o", help=".h5 dataset, or any ASE format (.xyz)"),
    conformers: int = typer.Option(1, "--conformers", "-n", help="conformers per SMILES"),
    seed: int = typer.Option(0, help="ETKDG random seed"),
    relax: bool = typer.Option(True, help="MMFF94/UFF relaxation after embedding"),
    names: str = typer.Option(None, help="comma-separated names, one per input"),
) -> None:
    """Build 3D structures from SMILES (RDKit ETKDG + MMFF94) or read them from files."""
    from mlff_distiller.data.structures import from_smiles, read_structures, validate_atoms

    with user_errors():
        labels = names.split(",") if names else [None] * len(inputs)
        if len(labels) != len(inputs):
            raise ValueError(f"--names has {len(labels)} names for {len(inputs)} inputs")
        frames = []
        for item, label in zip(inputs, labels):
            if Path(item).exists():
                got = read_structures(item)
                for a in got:
                    if label:
                        a.info["name"] = label
                    validate_atoms(a)
            else:
                got = from_smiles(item, n_conformers=conformers, seed=seed, name=label, relax=relax)
            frames += got
        _write_structures(frames, out)
        console.print(f"[green]wrote[/] {len(frames)} structures -> {out}")


def _write_structures(frames, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() in (".h5", ".hdf5"):
        from mlff_distiller.data.hdf5_writer import DatasetWriter

        with DatasetWriter(out, attrs={"source": "mlffd structures"}) as w:
            w.append(frames)
        return
    import ase.io

    ase.io.write(str(out), frames)
