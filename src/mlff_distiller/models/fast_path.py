"""The default force path (compiled analytical forces), its on-disk cache and its fallbacks.

Measured (``benchmarks/peers.py``, ``benchmarks/forces.py``): the analytical forces run through
``torch.compile`` are the fastest path on a CPU (2-2.5x eager autograd; energy+forces about 1.2x
the energy-only time), so :class:`~mlff_distiller.md.calculator.StudentCalculator`, the batched
engine and ``mlffd md`` use it unless told otherwise.

- **Cache.** Inductor keeps its compiled kernels and graphs on disk. We point it at a persistent
  directory (``$MLFFD_CACHE_DIR`` or ``~/.cache/mlff_distiller``, unless the user set
  ``TORCHINDUCTOR_CACHE_DIR``): the first use of a model size on a machine compiles (about a
  minute on a CPU, said once on stderr), later processes load in seconds.
- **Opt out.** ``compile=False`` in the Python API, ``--no-compile`` on the command line, or
  ``MLFFD_COMPILE=0`` in the environment (the test suite does this; its compiled tests opt in).
- **Fallback.** Without a C++ compiler, or when compiling fails, the eager analytical path runs
  and a one-line notice says why.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import torch

ENV_SWITCH = "MLFFD_COMPILE"
ENV_CACHE = "MLFFD_CACHE_DIR"
_OFF = {"0", "false", "no", "off"}
_said: set[str] = set()


def notice(message: str) -> None:
    """Print ``message`` once per process on stderr (one line, no traceback)."""
    if message not in _said:
        _said.add(message)
        print(f"mlff_distiller: {message}", file=sys.stderr, flush=True)


def cache_dir() -> Path:
    """Our persistent cache directory (``$MLFFD_CACHE_DIR``, else ``$XDG_CACHE_HOME`` or
    ``~/.cache``, then ``mlff_distiller``)."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "mlff_distiller"


def configure_compile_cache() -> Path:
    """Point inductor's on-disk caches into :func:`cache_dir` (unless the user chose a directory
    with ``TORCHINDUCTOR_CACHE_DIR``). Call before the first compile. Returns the directory."""
    if not os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir() / "inductor")
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])


def find_cxx_compiler() -> str | None:
    """The C++ compiler inductor would use (``$CXX``, else g++, c++ or clang++), or None."""
    candidates = [os.environ.get("CXX"), "g++", "c++", "clang++"]
    for name in candidates:
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def compile_disabled_by_env() -> bool:
    return os.environ.get(ENV_SWITCH, "").strip().lower() in _OFF


def resolve_compile(requested: bool | None, method: str, device: torch.device | str) -> bool:
    """Whether to compile the forces. ``requested``: True, False or None (the default path).

    None means: compile the analytical forces unless ``MLFFD_COMPILE=0`` or no C++ compiler is
    found (then eager, with a notice). True with ``method="autograd"`` is an error.
    """
    if requested is False:
        return False
    if method != "analytical":
        if requested:
            raise ValueError(f"compiled forces need forces='analytical', got {method!r}")
        return False
    return compiler_usable(requested, device, "the eager analytical forces, about 2x slower")


def compiler_usable(requested: bool | None, device: torch.device | str, eager: str) -> bool:
    """``torch.compile`` for a ``requested`` (True) or default (None) compile: not with
    ``MLFFD_COMPILE=0`` for the default, nor on a CPU without a C++ compiler (then a notice that
    ``eager`` runs instead)."""
    if requested is None and compile_disabled_by_env():
        return False
    if torch.device(device).type == "cpu" and find_cxx_compiler() is None:
        notice(f"no C++ compiler found (set CXX or install g++): running {eager}")
        return False
    return True


def _marker(model: torch.nn.Module, variant: tuple) -> Path:
    config = getattr(model, "config", None)
    fields = config.to_dict() if hasattr(config, "to_dict") else repr(config)
    key = json.dumps(
        [torch.__version__, type(model).__name__, fields, [str(v) for v in variant]],
        sort_keys=True,
        default=str,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir() / "compiled" / f"{type(model).__name__.lower()}-{digest}"


def announce_first_compile(
    model: torch.nn.Module, dtype: torch.dtype, device: torch.device, variant: tuple = ()
) -> Path:
    """Say so on stderr when this model size, dtype and device (and ``variant``: what else
    makes a separate compiled graph) were never compiled on this machine. Returns the marker
    to create with :func:`mark_compiled` once it worked."""
    marker = _marker(model, (dtype, device.type, *variant))
    if not marker.exists():
        notice(
            f"compiling the student's forces for this machine ({dtype}, {device.type}; once "
            f"per model size, about a minute on a CPU; cached in {configure_compile_cache()})"
        )
    return marker


def mark_compiled(marker: Path) -> None:
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    except OSError:  # a read-only cache only costs the notice next time
        pass


def private_copy(
    model: torch.nn.Module, device: torch.device | str | None, dtype: torch.dtype | None
) -> torch.nn.Module:
    """A copy of ``model`` on ``device`` in ``dtype``, in eval mode: engines set their own
    flags (compiled forces) and casts on it and never modify the caller's module
    (``nn.Module.to`` works in place)."""
    import copy

    return copy.deepcopy(model).to(device=device, dtype=dtype).eval()
