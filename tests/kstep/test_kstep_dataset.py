"""k-step windows match the trajectory frames; splits by molecule; rotation augmentation."""

import numpy as np
import pytest
import torch

from mlff_distiller.data.hdf5 import Dataset
from mlff_distiller.kstep.dataset import (
    KStepWindows,
    build_windows,
    read_windows,
    split_molecules,
)


def test_windows_match_trajectory_frames(gaff2_trajectories, tmp_path):
    path = gaff2_trajectories["methanol"]
    mols = build_windows([path], tmp_path / "w.h5", ks=(4, 8), stride=3)
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
