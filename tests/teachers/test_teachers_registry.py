"""Registry, the element check before compute, option errors, the generic teacher."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from teachers_testlib import molecule

from mlff_distiller.teachers import (
    TeacherError,
    UnsupportedElementError,
    get_teacher,
    list_teachers,
)


def test_registry_lists_the_issue_teachers():
    names = {s.name for s in list_teachers()}
    for name in (
        "xtb",
        "openmm-gaff2",
        "openmm-amber14",
        "sevennet",
        "ani1x",
        "chgnet",
        "orb-v2",
        "pyscf",
    ):
        assert name in names


def test_unknown_teacher_and_bad_options_are_value_errors():
    with pytest.raises(ValueError, match="unknown teacher 'nope'"):
        get_teacher("nope")
    with pytest.raises(ValueError, match="GFN2-xTB or GFN1-xTB"):
        get_teacher("xtb", method="GFN3")
    with pytest.raises(ValueError, match="bad options"):
        get_teacher("xtb", not_an_option=1)


def test_unsupported_element_fails_before_compute():
    from ase.calculators.emt import EMT

    calls = []

    class CountingEMT(EMT):
        def calculate(self, *args, **kwargs):
            calls.append(1)
            super().calculate(*args, **kwargs)

    import mlff_distiller.teachers.generic as generic

    generic_module = type(generic)("counting_emt_for_test")
    generic_module.CountingEMT = CountingEMT
    import sys

    sys.modules["counting_emt_for_test"] = generic_module
    try:
        teacher = get_teacher("counting_emt_for_test:CountingEMT", elements=[1, 6, 7, 8, 29])
        ok = Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 2.5]])
        ok.calc = teacher
        ok.get_potential_energy()
        assert len(calls) == 1
        bad = Atoms("CuS", positions=[[0, 0, 0], [0, 0, 2.5]])
        bad.calc = teacher
        with pytest.raises(UnsupportedElementError, match="does not support element"):
            bad.get_potential_energy()
        assert len(calls) == 1  # the engine never saw the sulfur structure
    finally:
        del sys.modules["counting_emt_for_test"]


def test_ani1x_rejects_sulfur_with_a_clear_message():
    teacher = get_teacher("ani1x", ensemble_size=1)
    atoms = molecule("CS", name="methanethiol")
    atoms.calc = teacher
    with pytest.raises(UnsupportedElementError) as err:
        atoms.get_potential_energy()
    msg = str(err.value)
    assert "'ani1x'" in msg and "element(s) S" in msg and "methanethiol" in msg
    assert "H, C, N, O" in msg


def test_generic_teacher_matches_the_wrapped_calculator():
    from ase.calculators.emt import EMT

    atoms = Atoms("Cu3", positions=[[0, 0, 0], [2.5, 0, 0], [0, 2.4, 0.3]])
    teacher = get_teacher("ase.calculators.emt:EMT")
    a = atoms.copy()
    a.calc = teacher
    b = atoms.copy()
    b.calc = EMT()
    assert a.get_potential_energy() == pytest.approx(b.get_potential_energy(), abs=1e-12)
    np.testing.assert_allclose(a.get_forces(), b.get_forces(), atol=1e-12)
    assert teacher.info.settings["calculator"] == "ase.calculators.emt:EMT"


def test_generic_teacher_bad_path():
    with pytest.raises(ValueError, match="cannot import module"):
        get_teacher("no_such_pkg.mod:Calc")
    with pytest.raises(ValueError, match="has no 'Nope'"):
        get_teacher("ase.calculators.emt:Nope")


def test_teacher_error_is_runtime_error():
    assert issubclass(TeacherError, RuntimeError)
    assert issubclass(UnsupportedElementError, ValueError)
