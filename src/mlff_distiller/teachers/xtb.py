"""GFN2-xTB (or GFN1-xTB) through tblite: the quantum-chemical teacher of the design documents."""

from __future__ import annotations

from typing import Any

from mlff_distiller.teachers.base import TeacherInfo, WrappedCalculator, element_range

XTB_METHODS = {
    "gfn2": "GFN2-xTB",
    "gfn2-xtb": "GFN2-xTB",
    "gfn1": "GFN1-xTB",
    "gfn1-xtb": "GFN1-xTB",
}
XTB_ELEMENTS = element_range(1, 86)  # GFN1/GFN2 parametrize H-Rn


class XTBTeacher(WrappedCalculator):
    """tblite's ASE calculator with the engine's output silenced and its failures named."""


def make_xtb(
    method: str = "GFN2-xTB",
    charge: int = 0,
    multiplicity: int = 1,
    accuracy: float = 1.0,
    max_iterations: int = 250,
    electronic_temperature: float = 300.0,
) -> XTBTeacher:
    """Build the ``xtb`` teacher.

    ``method``: ``GFN2-xTB`` (default) or ``GFN1-xTB``; ``charge`` in e; ``multiplicity`` 2S+1;
    ``max_iterations`` SCF cycles before a :class:`TeacherError` (SCF did not converge).
    """
    from tblite.ase import TBLite

    key = method.strip().lower()
    if key not in XTB_METHODS:
        raise ValueError(f"unknown xTB method '{method}': use GFN2-xTB or GFN1-xTB")
    method = XTB_METHODS[key]
    if multiplicity < 1:
        raise ValueError(f"multiplicity must be >= 1 (2S+1), got {multiplicity}")
    settings: dict[str, Any] = {
        "method": method,
        "charge": int(charge),
        "multiplicity": int(multiplicity),
        "accuracy": float(accuracy),
        "max_iterations": int(max_iterations),
        "electronic_temperature": float(electronic_temperature),
        "engine": "tblite",
    }
    inner = TBLite(
        method=method,
        charge=float(charge),
        multiplicity=int(multiplicity),
        accuracy=float(accuracy),
        max_iterations=int(max_iterations),
        electronic_temperature=float(electronic_temperature),
        verbosity=0,
    )
    info = TeacherInfo(name="xtb", elements=XTB_ELEMENTS, settings=settings, kind="qm")
    return XTBTeacher(info, inner)
