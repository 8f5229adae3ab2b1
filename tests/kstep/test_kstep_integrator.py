"""Hybrid integrator with a real corrector (GFN2-xTB via the xtb teacher, water): a zero jump
plus the corrector is exactly one ASE velocity-Verlet step; forced failures take the retry path
(scales 1, 0.8, 0.64), then the physics fallback or an IntegrationError that keeps the file."""

import numpy as np
import pytest
import torch
from ase import units as ase_units
from ase.build import molecule
from ase.md.verlet import VelocityVerlet

from mlff_distiller.data.hdf5 import Dataset, DatasetWriter
from mlff_distiller.kstep.correctors import CalculatorCorrector, make_corrector
from mlff_distiller.kstep.integrator import (
    HybridConfig,
    HybridIntegrator,
    IntegrationError,
    velocity_verlet_trajectory,
)
from mlff_distiller.kstep.topology import build_topology
from mlff_distiller.models.kstep_common import DELTA_POSITIONS, DELTA_VELOCITIES
from mlff_distiller.teachers import get_teacher


class ScriptedJump(torch.nn.Module):
    """A jump 'network' whose outputs are scripted: zero for the first ``n_good`` calls, then
    moving atom 0 by ``bad_dx`` Å along x (which stretches its bond far beyond 2x)."""

    def __init__(self, n_good: int = 10**9, bad_dx: float = 5.0, with_forces: bool = False):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.n_good, self.bad_dx, self.calls = n_good, bad_dx, 0
        self.with_forces = with_forces

    def forward(self, inp):
        self.calls += 1
        dx = torch.zeros_like(inp.positions)
        if self.calls > self.n_good:
            dx[0, 0] = self.bad_dx
        out = {DELTA_POSITIONS: dx, DELTA_VELOCITIES: torch.zeros_like(inp.velocities)}
        if self.with_forces:
            out["forces"] = inp.forces  # a force head that predicts "no change"
        return out


@pytest.fixture(scope="module")
def water():
    atoms = molecule("H2O")
    rng = np.random.default_rng(0)
    v = rng.normal(scale=0.01, size=(3, 3))  # Å/fs
    v -= (atoms.get_masses()[:, None] * v).sum(0) / atoms.get_masses().sum()
    return atoms, v


@pytest.fixture
def xtb():
    """A fresh teacher per test: tblite restarts its SCF from the previous call's solution, so
    results agree to round-off only between calculators with the same call history."""
    return get_teacher("xtb")


def _integrator(atoms, calc, model, **cfg):
    topo = build_topology(atoms.numbers, atoms.positions)
    return HybridIntegrator(
        model,
        CalculatorCorrector(atoms, calc, "xtb"),
        atoms.numbers,
        atoms.get_masses(),
        topo.bonds,
        topo.bond_lengths,
        HybridConfig(**cfg),
    )


def test_zero_jump_plus_corrector_is_one_ase_velocity_verlet_step(water, xtb):
    atoms, v = water
    dt = 0.5
    hybrid = _integrator(atoms, xtb, ScriptedJump(), k=4, dt=dt, keep_momentum=False)
    res = hybrid.run(atoms.positions, v, n_cycles=1)

    ref = atoms.copy()
    ref.calc = get_teacher("xtb")
    ref.set_velocities(v / ase_units.fs)
    VelocityVerlet(ref, timestep=dt * ase_units.fs).run(1)
    np.testing.assert_allclose(res.positions[-1], ref.positions, atol=1e-12)
    np.testing.assert_allclose(res.velocities[-1], ref.get_velocities() * ase_units.fs, atol=1e-12)
    assert res.force_calls == 2  # start + one step: the zero jump reuses F(x)
    assert res.retries == 0 and res.fallbacks == 0


def test_forced_failure_retries_then_falls_back_to_physics(water, xtb):
    atoms, v = water
    k, dt = 3, 0.5
    hybrid = _integrator(atoms, xtb, ScriptedJump(n_good=0), k=k, dt=dt)
    res = hybrid.run(atoms.positions, v, n_cycles=1)
    assert res.attempt_scales == pytest.approx([1.0, 0.8, 0.64])
    assert res.retries == 2 and res.fallbacks == 1 and res.failures == {"bond": 3}
    # the fallback is k + 1 plain velocity-Verlet steps; no force call was wasted on rejects
    frames, stats = velocity_verlet_trajectory(
        CalculatorCorrector(atoms, get_teacher("xtb")),
        atoms.positions,
        v,
        atoms.get_masses(),
        dt,
        k + 1,
    )
    np.testing.assert_allclose(res.positions[-1], frames["positions"][-1], atol=1e-12)
    np.testing.assert_allclose(res.velocities[-1], frames["velocities"][-1], atol=1e-12)
    assert res.force_calls == stats["force_calls"] == k + 2
    assert res.time[-1] == pytest.approx((k + 1) * dt)


def test_failure_with_stop_raises_and_keeps_the_trajectory(water, xtb, tmp_path):
    atoms, v = water
    hybrid = _integrator(atoms, xtb, ScriptedJump(n_good=2), k=2, dt=0.5, fallback="stop")
    path = tmp_path / "hybrid.h5"
    with DatasetWriter(path) as writer:
        with pytest.raises(IntegrationError, match="after 3 jump attempts") as err:
            hybrid.run(atoms.positions, v, n_cycles=5, writer=writer, molecule="water")
    assert err.value.result.cycles == 2
    ds = Dataset(path)
    assert len(ds) == 3  # start + two good cycles
    frame = ds.get_arrays(2)
    np.testing.assert_allclose(frame["positions"], err.value.result.positions[-1])
    np.testing.assert_allclose(frame["velocities"], err.value.result.velocities[-1])
    assert float(frame["time"]) == pytest.approx(2 * 3 * 0.5)


def test_momentum_is_kept_by_the_jump(water, xtb):
    atoms, v = water
    v = v + np.array([0.002, -0.001, 0.0])  # a drifting molecule
    hybrid = _integrator(atoms, xtb, ScriptedJump(n_good=0, bad_dx=0.05), k=4, dt=0.5)
    dx, dv, _ = hybrid.predict(atoms.positions, v, np.zeros((3, 3)))
    m = atoms.get_masses()[:, None]
    np.testing.assert_allclose((m * dv).sum(0), 0.0, atol=1e-12)
    v_com = (m * v).sum(0) / m.sum()
    np.testing.assert_allclose((m * dx).sum(0) / m.sum(), v_com * 4 * 0.5, atol=1e-12)


def test_make_corrector_openmm_native_matches_the_teacher():
    pytest.importorskip("openmm")
    atoms = molecule("CH3OH")
    corrector = make_corrector("openmm-gaff2", atoms, smiles="CO")
    teacher = get_teacher("openmm-gaff2", smiles="CO")
    probe = atoms.copy()
    probe.calc = teacher
    energy, forces = corrector.forces(atoms.positions)
    assert energy == pytest.approx(probe.get_potential_energy(), abs=1e-6)
    np.testing.assert_allclose(forces, probe.get_forces(), atol=1e-5)
    assert corrector.n_calls == 1


def test_comparison_of_an_always_failing_hybrid_equals_the_reference(water):
    """Every jump rejected -> the hybrid is plain velocity Verlet: identical observables."""
    from mlff_distiller.evaluation.kstep_eval import compare_hybrid_to_reference

    atoms, v = water
    topo = build_topology(atoms.numbers, atoms.positions)
    cmp = compare_hybrid_to_reference(
        ScriptedJump(n_good=0),
        lambda: CalculatorCorrector(atoms, get_teacher("xtb")),
        atoms.numbers,
        atoms.get_masses(),
        atoms.positions,
        v,
        topo,
        HybridConfig(k=2, dt=0.5),
        n_cycles=4,
    )
    assert cmp.fallbacks == 4 and cmp.completed
    assert cmp.force_call_ratio == pytest.approx(1.0)
    assert cmp.hybrid_force_calls == cmp.reference_force_calls == 1 + 4 * 3
    assert cmp.bond_rmse < 1e-9  # hybrid frames are every 3rd reference frame
    assert cmp.hybrid_temperature > 0


def test_student_corrector_matches_its_calculator(tmp_path):
    from mlff_distiller.md.calculator import StudentCalculator
    from mlff_distiller.models.io import save_model
    from mlff_distiller.models.painn import PaiNN, PaiNNConfig

    torch.manual_seed(0)
    save_model(PaiNN(PaiNNConfig(hidden=8, n_interactions=1, n_rbf=4)), tmp_path / "student")
    atoms = molecule("H2O")
    corrector = make_corrector("student", atoms, model=str(tmp_path / "student"))
    energy, forces = corrector.forces(atoms.positions + 0.01)
    probe = atoms.copy()
    probe.positions += 0.01
    probe.calc = StudentCalculator(tmp_path / "student")
    assert energy == pytest.approx(probe.get_potential_energy(), rel=1e-6)
    np.testing.assert_allclose(forces, probe.get_forces(), rtol=1e-5, atol=1e-6)
    assert corrector.n_calls == 1


@pytest.mark.parametrize("predicted", [True, False])
def test_force_head_saves_one_call_per_cycle(water, xtb, predicted):
    atoms, v = water
    model = ScriptedJump(n_good=0, bad_dx=0.002, with_forces=True)
    hybrid = _integrator(atoms, xtb, model, k=2, dt=0.5, predicted_forces=predicted)
    res = hybrid.run(atoms.positions, v, n_cycles=3)
    assert res.retries == 0 and res.fallbacks == 0
    assert res.force_calls == 1 + 3 * (1 if predicted else 2)


def test_energy_rescale_conserves_total_energy(water, xtb):
    from mlff_distiller.models.egnn import EGNNConfig, EGNNJump

    atoms, v = water
    torch.manual_seed(0)
    ballistic = EGNNJump(EGNNConfig(hidden=8, n_layers=1, n_vectors=2))  # v tau + a tau^2 / 2
    hybrid = _integrator(atoms, xtb, ballistic, k=2, dt=0.25, energy_rescale=True)
    res = hybrid.run(atoms.positions, v, n_cycles=4)
    total = np.array(res.potential_energy) + np.array(res.kinetic_energy)
    assert res.fallbacks == 0
    np.testing.assert_allclose(total, total[0], rtol=0, atol=1e-9)
    momentum = (atoms.get_masses()[:, None] * res.velocities[-1]).sum(0)
    np.testing.assert_allclose(momentum, 0.0, atol=1e-12)


class HeatingJump(torch.nn.Module):
    """Keeps positions, scales velocities by ``1 + gain``: a jump that heats the molecule."""

    def __init__(self, gain: float):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.gain = gain

    def forward(self, inp):
        return {
            DELTA_POSITIONS: torch.zeros_like(inp.positions),
            DELTA_VELOCITIES: self.gain * inp.velocities,
        }


def test_energy_check_catches_a_heating_jump_then_falls_back(water, xtb):
    atoms, v = water
    k, dt = 2, 0.5
    n = len(atoms)
    heat = _integrator(atoms, xtb, HeatingJump(0.5), k=k, dt=dt, keep_momentum=False)
    res = heat.run(atoms.positions, v, n_cycles=1)
    assert res.failures == {"energy": 3} and res.retries == 2 and res.fallbacks == 1
    total = np.array(res.potential_energy) + np.array(res.kinetic_energy)
    assert abs(total[-1] - total[0]) < 0.003 * n  # the fallback's plain MD conserves energy

    off = _integrator(
        atoms, get_teacher("xtb"), HeatingJump(0.5), k=k, dt=dt, energy_tol_per_atom=None
    )
    hot = off.run(atoms.positions, v, n_cycles=1)
    hot_total = np.array(hot.potential_energy) + np.array(hot.kinetic_energy)
    assert hot.fallbacks == 0 and hot_total[-1] - hot_total[0] > 0.003 * n  # it did heat


def test_energy_check_accepts_a_smaller_retry(water, xtb):
    """Tolerance between the heating of the full jump and that of the 0.8-scaled one: the first
    attempt fails, the retry is accepted (no fallback)."""
    atoms, v = water
    ke0 = 0.5 * np.sum(atoms.get_masses()[:, None] * v**2) / (ase_units.fs**2)  # eV (ASE units)
    gain = 0.1  # heats by ~(1.1² - 1) ke0 = 0.21 ke0; scaled by 0.8: ~0.166 ke0
    tol = 0.19 * ke0 / len(atoms)
    hybrid = _integrator(
        atoms, xtb, HeatingJump(gain), k=2, dt=0.5, keep_momentum=False, energy_tol_per_atom=tol
    )
    res = hybrid.run(atoms.positions, v, n_cycles=1)
    assert res.failures == {"energy": 1} and res.retries == 1 and res.fallbacks == 0
    assert res.attempt_scales == pytest.approx([1.0, 0.8])


def test_energy_anchor_start_is_validated():
    with pytest.raises(ValueError, match="energy_anchor"):
        HybridConfig(energy_anchor="end")
    with pytest.raises(ValueError, match="energy_tol_per_atom"):
        HybridConfig(energy_tol_per_atom=-1.0)
