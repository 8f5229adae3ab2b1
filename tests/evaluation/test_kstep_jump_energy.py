"""The per-jump total-energy error of k-step networks, with a real corrector (GFN2-xTB, water)
on a real velocity-Verlet trajectory of the engine: zero for a zero jump, the hand-computed
free-flight value for a jump x + v tau, and the trajectory's own k-step energy change."""

import numpy as np
import pytest
import torch
from ase.build import molecule

from mlff_distiller.evaluation.kstep_eval import jump_energy_error
from mlff_distiller.md.forces import make_force_provider
from mlff_distiller.md.hybrid import HybridConfig, NoJump, run_hybrid
from mlff_distiller.models.kstep_common import DELTA_POSITIONS, DELTA_VELOCITIES


class FreeFlight(torch.nn.Module):
    """dx = scale * v * k * dt, dv = 0 (scale 0: the zero jump)."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale
        self.dummy = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))

    def forward(self, inp):
        tau = (inp.k * inp.dt)[inp.system_idx][:, None]
        dx = self.scale * inp.velocities * tau
        return {DELTA_POSITIONS: dx, DELTA_VELOCITIES: torch.zeros_like(inp.velocities)}


@pytest.fixture(scope="module")
def water_trajectory():
    atoms = molecule("H2O")
    config = HybridConfig(k=0, ensemble="nve", rescale=False, temperature_k=600.0, seed=1)
    result = run_hybrid(NoJump(), make_force_provider("xtb", [atoms]), [atoms], config, 40,
                        progress=False, keep_frames=True)  # fmt: skip
    frames = result.frame_arrays()
    frames["atomic_numbers"] = atoms.numbers
    return atoms, frames


def _xtb(atoms, n):
    return make_force_provider("xtb", [atoms] * n)


def test_zero_jump_has_zero_error_and_trajectory_conserves_energy(water_trajectory):
    atoms, frames = water_trajectory
    err = jump_energy_error(FreeFlight(0.0), _xtb(atoms, 4), frames, k=4, dt_fs=0.5, every=10)
    assert err.n_jumps == 4  # frames 0, 10, 20, 30 (frame i + 4 must exist)
    assert abs(err.network_mean) < 1e-9 and err.network_rms < 1e-9
    assert err.trajectory_rms < 1e-4  # velocity Verlet at 0.5 fs: tiny


def test_free_flight_jump_error_matches_hand_computation(water_trajectory):
    atoms, frames = water_trajectory
    k, dt = 8, 0.5
    err = jump_energy_error(FreeFlight(1.0), _xtb(atoms, 3), frames, k=k, dt_fs=dt, every=16)
    calc = atoms.copy()
    calc.calc = make_force_provider("xtb", [atoms]).structures[0].calc
    expected = []
    for i in (0, 16, 32):
        x, v = frames["positions"][i], frames["velocities"][i]
        calc.positions = x
        e0 = calc.get_potential_energy()
        calc.positions = x + v * k * dt  # no net momentum: the centre of mass stays
        expected.append((calc.get_potential_energy() - e0) / len(atoms))
    assert err.n_jumps == 3
    np.testing.assert_allclose(err.network_mean, np.mean(expected), rtol=1e-6, atol=1e-10)
    assert err.network_rms > 1e-5  # a real energy error, not zero by accident
