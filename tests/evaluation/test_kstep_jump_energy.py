"""The per-jump total-energy error of k-step networks, with a real corrector (GFN2-xTB, water)
on a real velocity-Verlet trajectory: zero for a zero jump, the hand-computed free-flight value
for a jump x + v tau, and the trajectory's own k-step energy change next to it."""

import numpy as np
import pytest
import torch
from ase.build import molecule

from mlff_distiller.evaluation.kstep_eval import jump_energy_error
from mlff_distiller.kstep.correctors import CalculatorCorrector
from mlff_distiller.kstep.integrator import kinetic_energy, velocity_verlet_trajectory
from mlff_distiller.models.kstep_common import DELTA_POSITIONS, DELTA_VELOCITIES
from mlff_distiller.teachers import get_teacher


class FreeFlight(torch.nn.Module):
    """dx = scale * v * k * dt, dv = 0 (scale 0: the zero jump)."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, inp):
        tau = (inp.k * inp.dt)[inp.system_idx][:, None]
        dx = self.scale * inp.velocities * tau
        return {DELTA_POSITIONS: dx, DELTA_VELOCITIES: torch.zeros_like(inp.velocities)}


@pytest.fixture(scope="module")
def water_trajectory():
    atoms = molecule("H2O")
    masses = atoms.get_masses()
    rng = np.random.default_rng(1)
    v = rng.normal(scale=0.01, size=(3, 3))
    v -= (masses[:, None] * v).sum(0) / masses.sum()
    corrector = CalculatorCorrector(atoms, get_teacher("xtb"), "xtb")
    frames, _ = velocity_verlet_trajectory(corrector, atoms.positions, v, masses, 0.5, 40)
    frames["atomic_numbers"] = atoms.numbers
    return atoms, masses, frames


def test_zero_jump_has_zero_error_and_trajectory_conserves_energy(water_trajectory):
    atoms, masses, frames = water_trajectory
    corrector = CalculatorCorrector(atoms, get_teacher("xtb"), "xtb")
    err = jump_energy_error(FreeFlight(0.0), corrector, frames, masses, k=4, dt=0.5, every=10)
    assert err.n_jumps == 4  # frames 0, 10, 20, 30 (frame i + 4 must exist)
    assert abs(err.network_mean) < 1e-9 and err.network_rms < 1e-9
    # velocity Verlet at 0.5 fs: the trajectory's own energy change is tiny
    assert err.trajectory_rms < 1e-4


def test_free_flight_jump_error_matches_hand_computation(water_trajectory):
    atoms, masses, frames = water_trajectory
    corrector = CalculatorCorrector(atoms, get_teacher("xtb"), "xtb")
    k, dt = 8, 0.5
    err = jump_energy_error(FreeFlight(1.0), corrector, frames, masses, k=k, dt=dt, every=16)
    expected = []
    for i in (0, 16, 32):
        x, v = frames["positions"][i], frames["velocities"][i]
        # keep_momentum (default): the centre of mass moves with v_com, here zero
        e0, _ = corrector.forces(x)
        e1, _ = corrector.forces(x + v * k * dt)
        expected.append((e1 - e0) / len(masses))
        assert kinetic_energy(v, masses) > 0
    assert err.n_jumps == 3
    np.testing.assert_allclose(err.network_mean, np.mean(expected), rtol=1e-6, atol=1e-10)
    assert err.network_rms > 1e-5  # a real energy error, not zero by accident
