"""One registry of teachers: ``get_teacher(name, **options)`` and ``list_teachers()``.

Each entry names a factory by ``"module:function"`` so that importing the registry is cheap:
an engine (tblite, OpenMM, torch models) is imported only when its teacher is built.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Any

from mlff_distiller.teachers.base import TeacherCalculator, element_range, elements_of


@dataclass(frozen=True)
class TeacherSpec:
    """A registered teacher: how to build it and what it supports (before building it)."""

    name: str
    factory: str  # "module:function"
    elements: frozenset[int]
    kind: str  # "qm", "mm" or "ml"
    description: str
    requires: tuple[str, ...] = ()  # importable modules needed

    def availability(self) -> tuple[bool, str]:
        """``(True, "")`` if every required module imports, else ``(False, reason)``."""
        missing = [m for m in self.requires if not _importable(m)]
        if missing:
            return False, "not installed: " + ", ".join(missing)
        return True, ""


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package (e.g. "openff") is missing
        return False


_P = "mlff_distiller.teachers"
_SPECS: dict[str, TeacherSpec] = {
    s.name: s
    for s in (
        TeacherSpec(
            "xtb",
            f"{_P}.xtb:make_xtb",
            element_range(1, 86),
            "qm",
            "GFN2-xTB (GFN1 option) via tblite",
            ("tblite",),
        ),
        TeacherSpec(
            "openmm-gaff2",
            f"{_P}.openmm_gaff2:make_gaff2",
            elements_of("H", "C", "N", "O", "F", "P", "S", "Cl", "Br", "I"),
            "mm",
            "GAFF2 (antechamber/parmchk2, ParmEd) in OpenMM, small organics",
            ("openmm", "parmed", "acpype", "rdkit"),
        ),
        TeacherSpec(
            "openmm-amber14",
            f"{_P}.openmm_amber:make_amber14",
            elements_of("H", "C", "N", "O", "S"),
            "mm",
            "Amber ff14SB (OpenMM amber14-all.xml), standard peptides",
            ("openmm",),
        ),
        TeacherSpec(
            "openmm-openff",
            f"{_P}.openmm_openff:make_openff",
            elements_of("H", "C", "N", "O", "F", "P", "S", "Cl", "Br", "I"),
            "mm",
            "OpenFF 2.0.0 (Sage) in OpenMM",
            ("openmm", "openff.toolkit", "openmmforcefields"),
        ),
        TeacherSpec(
            "sevennet",
            f"{_P}.ml_potentials:make_sevennet",
            element_range(1, 89),
            "ml",
            "SevenNet-0 universal potential (weights in the sevenn wheel)",
            ("sevenn",),
        ),
        TeacherSpec(
            "ani1x",
            f"{_P}.ml_potentials:make_ani1x",
            elements_of("H", "C", "N", "O"),
            "ml",
            "ANI-1x 8-model ensemble (torchani 2.2.4 resources, offline)",
            ("torchani",),
        ),
        TeacherSpec(
            "chgnet",
            f"{_P}.ml_potentials:make_chgnet",
            element_range(1, 94),
            "ml",
            "CHGNet 0.3.0 (molecules in a 30 Å box)",
            ("chgnet",),
        ),
        TeacherSpec(
            "orb-v2",
            f"{_P}.ml_potentials:make_orb_v2",
            element_range(1, 118),
            "ml",
            "Orb-v2 (orb-models; needs a local weights file)",
            ("orb_models",),
        ),
        TeacherSpec(
            "pyscf",
            f"{_P}.pyscf_teacher:make_pyscf",
            element_range(1, 36),
            "qm",
            "PySCF HF/DFT (reference checks only; slow)",
            ("pyscf",),
        ),
    )
}


def list_teachers() -> list[TeacherSpec]:
    """Every registered teacher (available or not), in registry order."""
    return list(_SPECS.values())


def teacher_spec(name: str) -> TeacherSpec:
    if name not in _SPECS:
        raise ValueError(
            f"unknown teacher '{name}': choose one of {', '.join(_SPECS)} "
            "or give an ASE calculator as 'package.module:Class'"
        )
    return _SPECS[name]


def get_teacher(name: str, **options: Any) -> TeacherCalculator:
    """Build a teacher: an ASE calculator in eV and eV/Å with ``.info`` (:class:`TeacherInfo`).

    ``name`` is a registered name (``mlffd teachers`` lists them) or ``package.module:Class``
    for any ASE calculator, built with ``options`` as keyword arguments.
    """
    if ":" in name and name not in _SPECS:
        from mlff_distiller.teachers.generic import make_generic

        return make_generic(name, **options)
    spec = teacher_spec(name)
    ok, why = spec.availability()
    if not ok:
        raise ValueError(f"teacher '{name}' is not available here ({why})")
    module_name, func_name = spec.factory.split(":")
    factory = getattr(importlib.import_module(module_name), func_name)
    try:
        return factory(**options)
    except TypeError as err:
        raise ValueError(f"bad options for teacher '{name}': {err}") from err
