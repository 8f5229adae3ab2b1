"""Teachers: every reference engine (xTB, OpenMM force fields, foundation ML potentials, PySCF)
as an ASE calculator in eV and eV/Å behind one registry; reference MD; labelling at scale."""

from mlff_distiller.teachers.base import (
    TeacherCalculator,
    TeacherError,
    TeacherInfo,
    UnsupportedElementError,
)
from mlff_distiller.teachers.registry import TeacherSpec, get_teacher, list_teachers

__all__ = [
    "TeacherCalculator",
    "TeacherError",
    "TeacherInfo",
    "TeacherSpec",
    "UnsupportedElementError",
    "get_teacher",
    "list_teachers",
]
