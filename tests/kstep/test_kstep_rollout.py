"""The two-cycle rollout loss: rollout windows pick the right frames, an exact jump has zero
loss, the loss reaches the jump through the corrector's kick (autograd = finite differences),
and missing rollout data gives clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.data import atomic_masses
from torch import nn

from mlff_distiller import keys
from mlff_distiller.data.state import MDState
from mlff_distiller.kstep.dataset import (
    KStepWindows,
    MoleculeWindows,
    build_windows,
    read_windows,
    windows_of_trajectory,
    write_windows,
)
from mlff_distiller.md.integrators import velocity_verlet_step, with_forces
from mlff_distiller.models.kstep_common import DELTA_POSITIONS, DELTA_VELOCITIES
from mlff_distiller.training.kstep_rollout import rollout_loss
from mlff_distiller.training.kstep_trainer import KStepTrainConfig, fit_kstep

DT = 0.5  # fs
SPRINGS = ((0, 1, 1.1, 20.0), (1, 2, 1.4, 15.0), (0, 2, 2.2, 5.0))  # i, j, r0 Å, kappa eV/Å²
NUMBERS = np.array([1, 6, 8])


class Springs:
    """Three atoms joined by harmonic springs (translation and rotation invariant), every
    3-atom structure of a batch."""

    def energy_and_forces(self, batch, method="analytical"):
        x = batch.positions.view(-1, 3, 3)
        energy = x.new_zeros(x.shape[0])
        forces = torch.zeros_like(x)
        for i, j, r0, kappa in SPRINGS:
            d = x[:, i] - x[:, j]
            r = d.norm(dim=-1, keepdim=True)
            energy = energy + 0.5 * kappa * (r[:, 0] - r0) ** 2
            f = -kappa * (r - r0) * d / r
            forces[:, i] += f
            forces[:, j] -= f
        return {keys.ENERGY: energy, keys.FORCES: forces.reshape(-1, 3)}


class VerletJump(nn.Module):
    """The exact jump of the springs' own velocity Verlet (the dynamics the data follow), with
    its forces at the end as a force head; ``force_scale`` spoils that head alone."""

    def __init__(self, force_scale: float = 1.0):
        super().__init__()
        self.force_scale = nn.Parameter(torch.tensor(force_scale, dtype=torch.float64))

    def forward(self, inp):
        state = MDState(**{n: getattr(inp, n) for n in MDState.__dataclass_fields__})
        state = with_forces(state.replace(forces=None), Springs())
        for _ in range(int(inp.k[0])):
            state = velocity_verlet_step(state, Springs(), float(inp.dt[0]))
        return {
            DELTA_POSITIONS: state.positions - inp.positions,
            DELTA_VELOCITIES: state.velocities - inp.velocities,
            keys.FORCES: self.force_scale * state.forces,
        }


def _trajectory(n_steps: int = 60, seed: int = 0) -> dict:
    """Every-step velocity-Verlet frames of the springs from a random start."""
    rng = np.random.default_rng(seed)
    atoms = Atoms(numbers=NUMBERS, positions=[[0, 0, 0], [1.15, 0.1, 0], [2.3, -0.3, 0.2]])
    state = MDState.from_atoms([atoms])
    state = state.replace(velocities=torch.as_tensor(rng.normal(scale=0.02, size=(3, 3))))
    state = with_forces(state, Springs())
    frames = {"positions": [], "velocities": [], "forces": []}
    for _ in range(n_steps):
        for key in frames:
            frames[key].append(getattr(state, key).numpy().copy())
        state = velocity_verlet_step(state, Springs(), DT)
    traj = {key: np.stack(v) for key, v in frames.items()}
    traj.update(time=np.arange(n_steps) * DT, atomic_numbers=NUMBERS, name="springs", smiles="",
                dt=DT)  # fmt: skip
    return traj


def _molecule(traj: dict, k: int, rollout: bool = True) -> MoleculeWindows:
    arrays = windows_of_trajectory(traj, [k], stride=1, rollout=rollout)
    masses = atomic_masses[NUMBERS]
    return MoleculeWindows(
        name="springs", smiles="", atomic_numbers=NUMBERS, masses=masses,
        bonds=np.array([[0, 1], [1, 2]]), angles=np.array([[0, 1, 2]]),
        dihedrals=np.zeros((0, 4), dtype=np.int64), **arrays,
    )  # fmt: skip


def test_rollout_windows_take_the_frames_one_and_two_cycles_later():
    traj = _trajectory(40)
    k = 4
    arrays = windows_of_trajectory(traj, [k], stride=1, rollout=True)
    n_starts = 40 - (2 * k + 1)  # the last start with a frame 2k + 1 steps later
    assert len(arrays["k"]) == n_starts
    i = 7
    np.testing.assert_array_equal(arrays["x_tk"][i], traj["positions"][i + k])
    np.testing.assert_array_equal(arrays["f_c"][i], traj["forces"][i + k + 1])
    np.testing.assert_array_equal(arrays["x_2"][i], traj["positions"][i + 2 * k + 1])
    np.testing.assert_array_equal(arrays["v_2"][i], traj["velocities"][i + 2 * k + 1])


def test_an_exact_jump_has_zero_rollout_loss_and_a_wrong_force_head_does_not():
    windows = KStepWindows([_molecule(_trajectory(), 4)], rollout=True, augment_rotations=True)
    inp, tgt = next(windows.batches(16, shuffle=True, dtype=torch.float64))
    exact = VerletJump()
    out = exact(inp)
    # the one-jump targets and the two-cycle ones are both met to rounding
    torch.testing.assert_close(out[DELTA_POSITIONS], tgt.delta_positions, atol=1e-12, rtol=0)
    assert float(rollout_loss(exact, out, inp, tgt).detach()) < 1e-24
    # the same jump with a force head 10% off: one-jump targets unchanged, the corrector's
    # first half-kick differs, and the rollout loss sees it
    off = VerletJump(force_scale=1.1)
    assert float(rollout_loss(off, off(inp), inp, tgt).detach()) > 1e-12


def test_the_rollout_gradient_reaches_the_force_head_through_the_corrector():
    windows = KStepWindows([_molecule(_trajectory(), 8)], rollout=True)
    inp, tgt = next(windows.batches(8, dtype=torch.float64))
    model = VerletJump(force_scale=1.2)
    loss = rollout_loss(model, model(inp), inp, tgt)
    (grad,) = torch.autograd.grad(loss, model.force_scale)
    h = 1e-6

    def at(scale):
        m = VerletJump(force_scale=scale)
        with torch.no_grad():
            return float(rollout_loss(m, m(inp), inp, tgt))

    fd = (at(1.2 + h) - at(1.2 - h)) / (2 * h)
    assert abs(float(grad)) > 1e-10
    assert float(grad) == pytest.approx(fd, rel=1e-5)


def test_rollout_arrays_survive_the_window_file(tmp_path):
    mol = _molecule(_trajectory(30), 4)
    write_windows(tmp_path / "w.h5", [mol])
    (back,) = read_windows(tmp_path / "w.h5")
    assert back.has_rollout
    for key in ("f_c", "x_2", "v_2"):
        np.testing.assert_array_equal(getattr(back, key), getattr(mol, key))


def test_missing_rollout_data_gives_clear_errors(tmp_path):
    plain = _molecule(_trajectory(30), 4, rollout=False)
    with pytest.raises(ValueError, match="--rollout"):
        KStepWindows([plain], rollout=True)
    with pytest.raises(ValueError, match="time-reversed"):
        KStepWindows([_molecule(_trajectory(30), 4)], rollout=True, reverse_time=0.5)
    inp, tgt = next(KStepWindows([plain]).batches(4, dtype=torch.float64))
    model = VerletJump()
    with pytest.raises(ValueError, match="rollout windows"):
        rollout_loss(model, model(inp), inp, tgt)
    config = KStepTrainConfig(out_dir=str(tmp_path / "run"), epochs=1, loss={"rollout": 1.0},
                              model={"hidden": 8, "n_layers": 1})  # fmt: skip
    with pytest.raises(ValueError, match="training windows have none"):
        fit_kstep(config, KStepWindows([plain]))


def test_rollout_windows_need_every_step_frames():
    traj = _trajectory(80)
    every_4th = {**traj, **{key: traj[key][::4] for key in ("positions", "velocities", "forces",
                                                            "time")}}  # fmt: skip
    assert len(windows_of_trajectory(every_4th, [8], rollout=False)["k"]) > 0
    assert len(windows_of_trajectory(every_4th, [8], rollout=True)["k"]) == 0


def test_rollout_training_on_real_gaff2_windows(gaff2_trajectories, tmp_path):
    """Rollout windows from real OpenMM GAFF2 files (every step saved) train an EGNN with a
    force head for an epoch; the rollout term is logged and finite."""
    paths = list(gaff2_trajectories.values())
    build_windows(paths, tmp_path / "w.h5", ks=[4], stride=8, rollout=True,
                  fractions=(0.67, 0.33, 0.0))  # fmt: skip
    train = KStepWindows.from_file(tmp_path / "w.h5", "train", rollout=True)
    val = KStepWindows.from_file(tmp_path / "w.h5", "val", rollout=True)
    config = KStepTrainConfig(out_dir=str(tmp_path / "run"), epochs=1, batch_size=8,
                              loss={"rollout": 1.0, "force": 0.01},
                              model={"hidden": 16, "n_layers": 2, "force_head": True})  # fmt: skip
    result, _ = fit_kstep(config, train, val)
    last = result.history[-1]
    assert np.isfinite(last["train_rollout"]) and last["train_rollout"] > 0
    assert np.isfinite(last["val_rollout"])
