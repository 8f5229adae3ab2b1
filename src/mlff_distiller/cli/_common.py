"""Shared CLI helpers: one rich console and turning library errors into clean messages."""

from __future__ import annotations

from contextlib import contextmanager

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)


@contextmanager
def user_errors():
    """Report ``ValueError``/``FileNotFoundError``/``RuntimeError`` from the library as one red
    line and exit 1, instead of a traceback: these errors already say what was wrong."""
    try:
        yield
    except (ValueError, FileNotFoundError, RuntimeError, KeyError, OSError) as err:
        err_console.print(f"[bold red]error:[/] {err}")
        raise typer.Exit(code=1) from err
