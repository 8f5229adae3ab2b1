"""The default force path: compiled analytical forces where possible, eager as a stated fallback,
the caller's module never changed, the first compile announced once per machine."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import molecule

from mlff_distiller import keys
from mlff_distiller.data.batch import AtomsBatch
from mlff_distiller.md.calculator import StudentCalculator
from mlff_distiller.md.runner import MDConfig, run_md
from mlff_distiller.models import fast_path
from mlff_distiller.models.painn import PaiNN, PaiNNConfig


def _model() -> PaiNN:
    torch.manual_seed(0)
    model = PaiNN(PaiNNConfig(hidden=16, n_interactions=2, n_rbf=8))
    model.set_scale_shift(1.5, 0.0)
    return model


@pytest.fixture
def default_path(monkeypatch, tmp_path):
    """The environment of a user: no MLFFD_COMPILE switch, a fresh cache of our own."""
    monkeypatch.delenv(fast_path.ENV_SWITCH, raising=False)
    monkeypatch.setenv(fast_path.ENV_CACHE, str(tmp_path / "cache"))
    monkeypatch.setattr(fast_path, "_said", set())


def test_engines_never_cast_or_flag_the_callers_module():
    model = _model()  # float32
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calc = StudentCalculator(model, dtype=torch.float64, compile=False)
    run_md(model, [molecule("H2O")], MDConfig(steps=2), progress=False, compile=False)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.compiled_forces is False and calc.model is not model
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_resolve_compile_follows_the_switches(default_path, monkeypatch, capsys):
    assert fast_path.resolve_compile(False, "analytical", "cpu") is False
    assert fast_path.resolve_compile(None, "autograd", "cpu") is False
    with pytest.raises(ValueError, match="forces='analytical'"):
        fast_path.resolve_compile(True, "autograd", "cpu")
    monkeypatch.setenv(fast_path.ENV_SWITCH, "0")
    assert fast_path.resolve_compile(None, "analytical", "cpu") is False
    assert fast_path.resolve_compile(True, "analytical", "cpu") is True  # explicit wins
    monkeypatch.delenv(fast_path.ENV_SWITCH)
    if fast_path.find_cxx_compiler() is not None:
        assert fast_path.resolve_compile(None, "analytical", "cpu") is True


def test_without_a_compiler_the_eager_path_runs_with_one_notice(default_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("CXX", raising=False)
    assert fast_path.find_cxx_compiler() is None
    model = _model().double()
    calc = StudentCalculator(model, dtype=torch.float64)
    calc2 = StudentCalculator(model, dtype=torch.float64)
    assert calc.compiled is False and calc2.compiled is False
    err = capsys.readouterr().err
    assert err.count("no C++ compiler found") == 1 and "eager" in err
    atoms = molecule("CH3CH2OH")
    atoms.calc = calc
    ref = model.energy_and_forces(
        AtomsBatch.from_arrays([atoms.numbers], [atoms.positions], dtype=torch.float64),
        "autograd",
    )
    np.testing.assert_allclose(atoms.get_forces(), ref[keys.FORCES].numpy(), atol=1e-10)


@pytest.mark.slow
def test_default_calculator_and_batched_md_run_compiled_and_agree_with_eager(
    default_path, capsys
):
    """The default (compile=None) compiles, says so once for a new machine, writes its marker,
    and gives the eager numbers: single calls and 20 batched NVE steps of three molecules."""
    if fast_path.find_cxx_compiler() is None:
        pytest.skip("no C++ compiler on this machine")
    model = _model().double()
    atoms = molecule("CH3CH2OH")
    fast = StudentCalculator(model, dtype=torch.float64)
    slow = StudentCalculator(model, dtype=torch.float64, compile=False)
    assert fast.compiled and fast.model.compiled_forces and not slow.compiled
    e_fast = fast.get_potential_energy(atoms)
    f_fast = fast.get_forces(atoms)
    err = capsys.readouterr().err
    assert "compiling the student's forces for this machine" in err
    markers = list((fast_path.cache_dir() / "compiled").iterdir())
    assert len(markers) == 1
    assert e_fast == pytest.approx(slow.get_potential_energy(atoms), abs=1e-10)
    np.testing.assert_allclose(f_fast, slow.get_forces(atoms), atol=1e-10)

    structures = [molecule("CH3CH2OH"), molecule("H2O"), molecule("CH3OH")]
    config = MDConfig(steps=20, ensemble="nve", dt_fs=0.5, seed=3)
    compiled = run_md(model, structures, config, progress=False)
    eager = run_md(model, structures, config, progress=False, compile=False)
    torch.testing.assert_close(
        compiled.state.positions, eager.state.positions, rtol=0, atol=1e-9
    )
    torch.testing.assert_close(compiled.state.energy, eager.state.energy, rtol=0, atol=1e-9)
