"""Any ASE calculator as a teacher: ``get_teacher("package.module:Class", **options)``."""

from __future__ import annotations

import importlib
from typing import Any

from ase.calculators.calculator import Calculator

from mlff_distiller.teachers.base import TeacherInfo, WrappedCalculator, element_range


def make_generic(path: str, elements: list[int] | None = None, **options: Any) -> WrappedCalculator:
    """Import ``Class`` from ``package.module`` and build it with ``options`` as keyword
    arguments. The calculator must return energies in eV and forces in eV/Å (ASE's convention).
    ``elements`` (atomic numbers) restricts what it is trusted with; default: H to Og."""
    module_name, _, class_name = path.partition(":")
    if not module_name or not class_name:
        raise ValueError(f"teacher '{path}': expected 'package.module:Class'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"teacher '{path}': cannot import module '{module_name}' ({err})") from err
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ValueError(f"teacher '{path}': module '{module_name}' has no '{class_name}'")
    inner = cls(**options)
    if not isinstance(inner, Calculator) and not hasattr(inner, "get_forces"):
        raise ValueError(f"teacher '{path}': {class_name} is not an ASE calculator")
    zs = frozenset(int(z) for z in elements) if elements else element_range(1, 118)
    settings = {"calculator": path, **{k: repr(v) for k, v in options.items()}}
    info = TeacherInfo(name=path, elements=zs, settings=settings)
    return WrappedCalculator(info, inner)
