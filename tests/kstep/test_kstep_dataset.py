"""k-step windows match the trajectory frames; splits by molecule; rotation augmentation."""

import numpy as np
import pytest
import torch

from mlff_distiller import units
from mlff_distiller.data.hdf5 import Dataset
from mlff_distiller.kstep.dataset import (
    KStepWindows,
    build_windows,
    read_windows,
    split_molecules,
)


def test_windows_match_trajectory_frames(gaff2_trajectories, tmp_path):
    path = gaff2_trajectories["methanol"]
    mols = build_windows([path], tmp_path / "w.h5", ks=(4, 8), stride=3, on_step_velocities=False)
    mol = mols["methanol"]
    with Dataset(path) as ds:
        n = len(ds)
        frames = [ds.get_arrays(i) for i in range(n)]
    # starts 0, 3, 6, ... with a partner k frames later (every step saved, dt 0.5 fs)
    expected = sum(len(range(0, n - k, 3)) for k in (4, 8))
    assert mol.n_windows == expected
    w = int(np.nonzero(mol.k == 8)[0][2])  # third k=8 window starts at frame 6
    np.testing.assert_array_equal(mol.x_t[w], frames[6]["positions"])
    np.testing.assert_array_equal(mol.v_t[w], frames[6]["velocities"])
    np.testing.assert_array_equal(mol.x_tk[w], frames[14]["positions"])
    np.testing.assert_array_equal(mol.v_tk[w], frames[14]["velocities"])
    np.testing.assert_array_equal(mol.f_tk[w], frames[14]["forces"])
    assert mol.dt[w] == 0.5 and len(mol.bonds) == 5  # C-O, O-H, 3 C-H
    back = read_windows(tmp_path / "w.h5")[0]
    np.testing.assert_array_equal(back.x_tk, mol.x_tk)
    # by default OpenMM's half-step velocities are moved on step: v(t) = v(t - dt/2) + dt/2 F/m
    on_step = build_windows([path], tmp_path / "w2.h5", ks=(4, 8), stride=3)["methanol"]
    kick = 0.5 * 0.5 * frames[6]["forces"] * units.ASE_TIME_PER_FS**2 / mol.masses[:, None]
    np.testing.assert_allclose(on_step.v_t[w], frames[6]["velocities"] + kick, rtol=1e-12)
    np.testing.assert_array_equal(on_step.x_t[w], mol.x_t[w])


def test_batches_are_centred_and_rotations_are_consistent(gaff2_trajectories, tmp_path):
    build_windows([gaff2_trajectories["ethane"]], tmp_path / "w.h5", ks=(4,), fractions=(1, 0, 0))
    plain = KStepWindows.from_file(tmp_path / "w.h5", "train")
    rotated = KStepWindows.from_file(tmp_path / "w.h5", "train", augment_rotations=True)
    (inp, tgt), (rinp, rtgt) = next(plain.batches(4)), next(rotated.batches(4, seed=5))
    m = inp.masses[:, None]
    for s in range(4):
        sel = inp.system_idx == s
        com = (m[sel] * inp.positions[sel]).sum(0) / m[sel].sum()
        torch.testing.assert_close(com, torch.zeros(3), atol=1e-5, rtol=0)
    # rotation: same lengths of every vector, same invariant dot products
    for a, b in ((inp.velocities, rinp.velocities), (tgt.delta_positions, rtgt.delta_positions)):
        torch.testing.assert_close(a.norm(dim=-1), b.norm(dim=-1))
    dots = (inp.positions * tgt.delta_positions).sum(-1)
    torch.testing.assert_close(dots, (rinp.positions * rtgt.delta_positions).sum(-1))
    assert not torch.allclose(inp.positions, rinp.positions)
    assert inp.forces is not None and tgt.forces is not None
    assert int(tgt.bonds.max()) < len(inp.atomic_numbers) and len(tgt.bonds) == 4 * 7


def test_split_by_molecule():
    names = [f"m{i}" for i in range(10)]
    split = split_molecules(names, seed=3)
    assert sorted(split.values()).count("train") == 7
    assert list(split.values()).count("val") + list(split.values()).count("test") == 3
    assert split == split_molecules(list(reversed(names)), seed=3)  # order-independent
    forced = split_molecules(names, seed=3, test=["m0"])
    assert forced["m0"] == "test"
    small = split_molecules(["a", "b", "c"])
    assert sorted(small.values()) == ["test", "train", "val"]
    with pytest.raises(ValueError, match="not among"):
        split_molecules(names, test=["nope"])


def _harmonic_h2(n_steps: int = 40, dt: float = 0.5):
    """Velocity-Verlet of a harmonic H2 bond: positions, on-step and half-step velocities,
    forces (eV/Å), in the trajectory-dict layout of :func:`read_trajectory`."""
    from mlff_distiller import units as mu

    k_bond, r0 = 30.0, 0.74  # eV/Å², Å
    masses = np.array([1.008, 1.008])[:, None]
    to_acc = mu.ASE_TIME_PER_FS**2 / masses

    def forces(x):
        d = x[1] - x[0]
        r = np.linalg.norm(d)
        f1 = -k_bond * (r - r0) * d / r
        return np.stack([-f1, f1])

    x = np.array([[0.0, 0, 0], [0.8, 0.05, 0]])
    v = np.array([[0.002, 0.001, 0], [-0.003, 0, 0.001]])
    f = forces(x)
    xs, vs, halfs, fs = [], [], [], []
    v_half_prev = v - 0.5 * dt * f * to_acc  # v(t - dt/2)
    for _ in range(n_steps):
        xs.append(x), vs.append(v), halfs.append(v_half_prev), fs.append(f)
        v_half = v + 0.5 * dt * f * to_acc
        x = x + dt * v_half
        f = forces(x)
        v = v_half + 0.5 * dt * f * to_acc
        v_half_prev = v_half
    traj = {
        "positions": np.array(xs),
        "forces": np.array(fs),
        "time": dt * np.arange(n_steps),
        "atomic_numbers": np.array([1, 1]),
    }
    return traj, np.array(vs), np.array(halfs)


def _write_h2(path, velocities, convention):
    """The harmonic H2 trajectory as an HDF5 file (dt 0.5 fs in its ``sampling`` attribute);
    ``convention`` None writes no velocity-convention attribute (an older file)."""
    import json

    from mlff_distiller import keys
    from mlff_distiller.data.hdf5 import DatasetWriter

    traj, _, _ = _harmonic_h2()
    attrs = {"sampling": json.dumps({"dt_fs": 0.5})}
    if convention is not None:
        attrs[keys.VELOCITY_CONVENTION] = convention
    with DatasetWriter(path, attrs=attrs) as w:
        for i in range(len(traj["time"])):
            w.append_frame(
                traj["atomic_numbers"], traj["positions"][i], energy=0.0,
                forces=traj["forces"][i], velocities=velocities[i], time=traj["time"][i],
                molecule="h2",
            )  # fmt: skip
    return path


def test_half_step_file_is_moved_on_step_exactly_as_before(tmp_path):
    """A file that records half-step velocities gets v(t) = v(t - dt/2) + dt/2 F/m, the same
    conversion as before the attribute existed, which for velocity Verlet is the exact on-step
    velocity; an on-step file is used as stored."""
    from mlff_distiller import keys
    from mlff_distiller.kstep.dataset import to_on_step_velocities

    traj, on_step, half_step = _harmonic_h2()
    half = build_windows(
        [_write_h2(tmp_path / "half.h5", half_step, keys.HALF_STEP)], tmp_path / "wh.h5", ks=(4,)
    )["h2"]
    masses = np.array([1.008, 1.008])[None, :, None]
    previous = half_step + 0.5 * 0.5 * traj["forces"] * units.ACCEL_PER_FORCE_OVER_MASS / masses
    starts = np.arange(0, 40 - 4)
    np.testing.assert_allclose(half.v_t, previous[starts], rtol=0, atol=1e-15)
    np.testing.assert_allclose(half.v_tk, previous[starts + 4], rtol=0, atol=1e-15)
    np.testing.assert_allclose(half.v_t, on_step[starts], rtol=0, atol=1e-12)
    fixed = to_on_step_velocities({**traj, "velocities": half_step}, 0.5)
    np.testing.assert_allclose(fixed["velocities"], on_step, rtol=0, atol=1e-12)
    on = build_windows(
        [_write_h2(tmp_path / "on.h5", on_step, keys.ON_STEP)], tmp_path / "wo.h5", ks=(4,)
    )["h2"]
    np.testing.assert_array_equal(on.v_t, on_step[starts])


def test_missing_velocity_convention_is_a_clear_error_and_can_be_given(tmp_path):
    from typer.testing import CliRunner

    from mlff_distiller import keys
    from mlff_distiller.cli.main import app

    traj, on_step, half_step = _harmonic_h2()
    old = _write_h2(tmp_path / "old_file.h5", half_step, None)
    with pytest.raises(ValueError, match="old_file.h5 does not record") as err:
        build_windows([old], tmp_path / "w.h5", ks=(4,))
    assert "mlffd sample" in str(err.value) and "--velocity-convention" in str(err.value)
    # override: the caller says what the file stores
    given = build_windows([old], tmp_path / "w.h5", ks=(4,), velocity_convention="half-step")
    np.testing.assert_allclose(given["h2"].v_t, on_step[: 40 - 4], rtol=0, atol=1e-12)
    # the override wins over the attribute too; kept as stored needs no convention at all
    marked = _write_h2(tmp_path / "marked.h5", half_step, keys.HALF_STEP)
    kept = build_windows([marked], tmp_path / "w.h5", ks=(4,), velocity_convention="on-step")
    np.testing.assert_array_equal(kept["h2"].v_t, half_step[: 40 - 4])
    stored = build_windows([old], tmp_path / "w.h5", ks=(4,), on_step_velocities=False)
    np.testing.assert_array_equal(stored["h2"].v_t, half_step[: 40 - 4])
    with pytest.raises(ValueError, match="must be auto"):
        build_windows([old], tmp_path / "w.h5", ks=(4,), velocity_convention="leapfrog")

    runner = CliRunner()
    args = ["kstep", "dataset", str(old), "--out", str(tmp_path / "cli.h5"), "--k", "4"]
    bad = runner.invoke(app, args)
    assert bad.exit_code == 1 and "old_file.h5" in " ".join(bad.output.split())
    ok = runner.invoke(app, [*args, "--velocity-convention", "half-step"])
    assert ok.exit_code == 0, ok.output
    stored_cli = runner.invoke(app, [*args, "--as-stored"])
    assert stored_cli.exit_code == 0, stored_cli.output


def test_reversed_windows_run_the_trajectory_backwards():
    """A reversed window starts at (x_{t+k}, -v_{t+k}) and ends at (x_t, -v_t)."""
    import numpy as np
    import torch

    from mlff_distiller.kstep.dataset import KStepWindows, MoleculeWindows

    rng = np.random.default_rng(0)
    n = 3
    arrays = {name: rng.normal(size=(1, n, 3)) for name in ("x_t", "v_t", "f_t", "x_tk", "v_tk",
                                                           "f_tk")}  # fmt: skip
    mol = MoleculeWindows(
        name="m", smiles="O", split="train", atomic_numbers=np.array([8, 1, 1]),
        masses=np.array([16.0, 1.0, 1.0]), bonds=np.zeros((0, 2), int),
        angles=np.zeros((0, 3), int), dihedrals=np.zeros((0, 4), int),
        k=np.array([4]), dt=np.array([0.5]), **arrays,
    )  # fmt: skip
    forward = KStepWindows([mol], centre=False)
    backward = KStepWindows([mol], centre=False, reverse_time=1.0)
    (fi, _), (bi, bt) = next(forward.batches(1)), next(backward.batches(1))
    t = torch.float32
    torch.testing.assert_close(bi.positions, torch.as_tensor(arrays["x_tk"][0], dtype=t))
    torch.testing.assert_close(bi.velocities, -torch.as_tensor(arrays["v_tk"][0], dtype=t))
    torch.testing.assert_close(bi.positions + bt.delta_positions, fi.positions)
    torch.testing.assert_close(bi.velocities + bt.delta_velocities, -fi.velocities)
    torch.testing.assert_close(bt.forces, fi.forces)
