"""The ``mlffd`` command line. Each command group lives in its own module with a
``register(app)`` function; heavy imports stay inside the commands so ``mlffd --help`` is fast."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="mlffd",
    help="mlff_distiller: distil fast PaiNN students from slow teachers; fast and k-step MD.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def _root() -> None:
    """mlff_distiller: distil fast PaiNN students from slow teachers; fast and k-step MD."""


# command modules, in the order of the data flow
_COMMAND_MODULES = (
    "data",  # mlffd data import|info|export|split, mlffd structures
    "teachers",  # mlffd teachers, mlffd sample, mlffd label
    "train",  # mlffd train
    "evaluate",  # mlffd eval
    "md",  # mlffd md
    "kstep",  # mlffd kstep dataset|train|run
    "distill",  # mlffd distill (active learning)
    "demo",  # mlffd demo
)

for _name in _COMMAND_MODULES:
    try:
        _module = importlib.import_module(f"mlff_distiller.cli.{_name}")
    except ModuleNotFoundError as err:  # a command group not written yet
        if err.name != f"mlff_distiller.cli.{_name}":
            raise
        continue
    _module.register(app)


@app.command()
def version() -> None:
    """Print the installed mlff_distiller version."""
    from mlff_distiller import __version__

    typer.echo(__version__)


if __name__ == "__main__":
    app()
