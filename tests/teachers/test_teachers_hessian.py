"""Hessian rows of teachers: finite differences against an analytic Lennard-Jones Hessian, the
symmetry of xTB's rows, autograd rows (PaiNN, ANI-1x, SevenNet-0) against finite differences of
their own forces; the HDF5 layout of the rows and the labelling option end to end."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.lj import LennardJones
from teachers_testlib import molecule

from mlff_distiller import keys
from mlff_distiller.data.hdf5 import Dataset, DatasetError, DatasetWriter, validate
from mlff_distiller.teachers.hessian import (
    choose_rows,
    frame_rows,
    hessian_rows,
    hessian_rows_fd,
    resolve_method,
)
from mlff_distiller.teachers.labelling import HESSIAN_ATTR, HessianOptions, label_dataset

HAS_TBLITE = importlib.util.find_spec("tblite") is not None
HAS_ANI = importlib.util.find_spec("torchani") is not None
HAS_SEVENN = importlib.util.find_spec("sevenn") is not None


def lj_cluster() -> Atoms:
    """Five atoms at 0.95-2.2 sigma from each other (inside ASE's default cutoff 3 sigma)."""
    pos = np.array(
        [[0.0, 0.0, 0.0], [1.1, 0.05, 0.0], [0.5, 1.0, 0.1], [0.4, 0.3, 1.05], [1.3, 1.1, 0.9]]
    )
    return Atoms("Ar5", positions=pos)


def lj_hessian(pos: np.ndarray, sigma: float = 1.0, eps: float = 1.0) -> np.ndarray:
    """Analytic (3N, 3N) Hessian of sum over pairs of 4 eps ((s/r)^12 - (s/r)^6)."""
    n = len(pos)
    h = np.zeros((3 * n, 3 * n))
    for i in range(n):
        for j in range(i + 1, n):
            d = pos[j] - pos[i]
            r = np.linalg.norm(d)
            u = d / r
            d1 = 4 * eps * (-12 * sigma**12 / r**13 + 6 * sigma**6 / r**7)
            d2 = 4 * eps * (156 * sigma**12 / r**14 - 42 * sigma**6 / r**8)
            k = d2 * np.outer(u, u) + d1 / r * (np.eye(3) - np.outer(u, u))
            a, b = slice(3 * i, 3 * i + 3), slice(3 * j, 3 * j + 3)
            h[a, a] += k
            h[b, b] += k
            h[a, b] -= k
            h[b, a] -= k
    return h


def test_fd_rows_equal_analytic_lennard_jones_hessian():
    atoms = lj_cluster()
    exact = lj_hessian(atoms.positions)
    assert np.abs(exact - exact.T).max() < 1e-12
    rows = np.array([0, 4, 8, 14, -1])
    fd = hessian_rows_fd(atoms, LennardJones(), rows, delta=1e-4)
    assert fd.shape == (5, 15)
    np.testing.assert_allclose(fd[:4], exact[rows[:4]], rtol=0, atol=1e-5 * np.abs(exact).max())
    assert not fd[4].any()  # a padding row is zeros
    # O(delta^2): a 10x larger step is ~100x less accurate but still close
    coarse = hessian_rows_fd(atoms, LennardJones(), rows[:4], delta=1e-2)
    assert np.abs(coarse - exact[rows[:4]]).max() < 2e-2 * np.abs(exact).max()
    # and hessian_rows picks finite differences for a plain ASE calculator
    assert resolve_method(LennardJones()) == "fd"
    np.testing.assert_array_equal(hessian_rows(atoms, LennardJones(), rows, delta=1e-4), fd)


def test_fd_rows_are_symmetric_and_sum_to_zero():
    atoms = lj_cluster()
    every = np.arange(15)
    h = hessian_rows_fd(atoms, LennardJones(), every, delta=1e-4)
    assert np.abs(h - h.T).max() < 1e-6 * np.abs(h).max()
    # translation invariance: every row sums to zero over each Cartesian axis
    assert np.abs(h.reshape(15, 5, 3).sum(1)).max() < 1e-6 * np.abs(h).max()


def test_choose_rows_distinct_sorted_padded_and_seeded():
    rng = np.random.default_rng(0)
    rows = choose_rows(4, 5, rng)
    assert len(set(rows.tolist())) == 5 and np.all(np.diff(rows) > 0) and rows.max() < 12
    np.testing.assert_array_equal(choose_rows(1, 5, rng)[3:], [-1, -1])  # 3 coordinates only
    assert np.array_equal(frame_rows(9, 3, seed=1, index=7), frame_rows(9, 3, seed=1, index=7))
    assert not np.array_equal(frame_rows(9, 3, 1, 7), frame_rows(9, 3, 1, 8))
    with pytest.raises(ValueError, match="out of range"):
        hessian_rows_fd(lj_cluster(), LennardJones(), [15])


@pytest.mark.skipif(not HAS_TBLITE, reason="tblite is not installed")
def test_xtb_fd_rows_symmetric():
    from mlff_distiller.teachers import get_teacher

    xtb = get_teacher("xtb")
    atoms = molecule("CO", name="methanol", jitter=0.03)
    assert resolve_method(xtb) == "fd"
    with pytest.raises(ValueError, match="no autograd Hessian"):
        resolve_method(xtb, "autograd")
    rows = np.array([0, 4, 10, 17])
    h = hessian_rows(atoms, xtb, rows)  # delta 1e-3 Å
    block = h[:, rows]  # H[i, j] for i, j both in rows
    scale = np.abs(h).max()
    assert scale > 1.0  # eV/Å^2: bonds are stiff
    assert np.abs(block - block.T).max() < 5e-3 * scale  # O(delta^2) and SCF noise
    assert np.abs(h.reshape(4, -1, 3).sum(1)).max() < 2e-3 * scale


def _painn(seed: int = 0):
    from mlff_distiller.models.painn import PaiNN, PaiNNConfig

    torch.manual_seed(seed)
    return PaiNN(PaiNNConfig(hidden=16, n_interactions=2, n_rbf=8, cutoff=4.0)).double()


def test_painn_autograd_rows_equal_fd_of_its_forces():
    from mlff_distiller.md.calculator import StudentCalculator

    model = _painn()
    atoms = molecule("CCO", name="ethanol", jitter=0.05)
    calc = StudentCalculator(model, dtype=torch.float64, forces="autograd", compile=False)
    rows = np.array([1, 7, 13, 26])
    assert resolve_method(model) == "autograd" and resolve_method(calc) == "autograd"
    exact = hessian_rows(atoms, model, rows)
    np.testing.assert_array_equal(hessian_rows(atoms, calc, rows), exact)
    fd = hessian_rows(atoms, calc, rows, delta=1e-4, method="fd")
    assert np.abs(exact).max() > 1e-2
    np.testing.assert_allclose(exact, fd, rtol=0, atol=1e-6 * max(1.0, np.abs(exact).max()))


@pytest.mark.skipif(not HAS_ANI, reason="torchani is not installed")
def test_ani1x_autograd_rows_equal_fd():
    from mlff_distiller.teachers import get_teacher

    ani = get_teacher("ani1x", ensemble_size=1, threads=1)
    atoms = molecule("CCO", name="ethanol", jitter=0.03)
    rows = np.array([0, 11, 20])
    assert resolve_method(ani, atoms=atoms) == "autograd"
    exact = hessian_rows(atoms, ani, rows)
    # ANI's cosine cutoff has a second derivative that jumps at the cutoff (3.5 Å angular): a
    # pair close to it makes central differences converge slowly (7e-4 relative at 1e-3 Å here),
    # so compare at a step that does not straddle it (float64 forces: round-off ~1e-8)
    fd = hessian_rows(atoms, ani, rows, delta=3e-5, method="fd")
    np.testing.assert_allclose(exact, fd, rtol=0, atol=1e-5 * np.abs(exact).max())
    block = exact[:, rows]
    assert np.abs(block - block.T).max() < 1e-8 * np.abs(exact).max()


@pytest.mark.skipif(not HAS_SEVENN, reason="sevenn is not installed")
def test_sevennet_autograd_rows_equal_fd():
    from mlff_distiller.teachers import get_teacher

    seven = get_teacher("sevennet", threads=1)
    atoms = molecule("CO", name="methanol", jitter=0.03)
    rows = np.array([2, 9])
    assert resolve_method(seven, atoms=atoms) == "autograd"
    exact = hessian_rows(atoms, seven, rows)
    # float32 network: h = 1e-2 Å keeps round-off below the O(h^2) error
    fd = hessian_rows(atoms, seven, rows, delta=1e-2, method="fd")
    np.testing.assert_allclose(exact, fd, rtol=0, atol=1e-2 * np.abs(exact).max())


# -- storage ---------------------------------------------------------------------------------
def _frame(atoms: Atoms, index, rows):
    return dict(
        energy=0.0,
        forces=np.zeros((len(atoms), 3)),
        hessian_index=index,
        hessian_rows=rows,
    )


def test_hdf5_layout_roundtrip_batch_and_checks(tmp_path):
    a, b = lj_cluster(), molecule("O", name="water")
    ha = hessian_rows_fd(a, LennardJones(), [3, 7], delta=1e-3)
    hb = hessian_rows_fd(b, LennardJones(), [5, -1], delta=1e-3)
    path = tmp_path / "h.h5"
    with DatasetWriter(path) as w:
        w.append_frame(a.numbers, a.positions, **_frame(a, [3, 7], ha))
        w.append_frame(b.numbers, b.positions, **_frame(b, [5, -1], hb))
        # r is fixed per file; frames must pair index and rows and zero their padding
        with pytest.raises(DatasetError, match="same number of Hessian rows"):
            w.append_frame(b.numbers, b.positions, **_frame(b, [5], hb[:1]))
            w.flush()
    bad = [([3, 7], None, "both"), ([3, 99], ha, "out of range"), ([3, -1], ha, "padded")]
    for index, rows, match in bad:
        with pytest.raises(DatasetError, match=match):
            with DatasetWriter(tmp_path / "bad.h5") as w:
                w.append_frame(a.numbers, a.positions, **_frame(a, index, rows))
    summary = validate(path)
    assert {keys.HESSIAN_INDEX, keys.HESSIAN_ROWS} <= set(summary["fields"])
    with Dataset(path) as ds:
        arr = ds.get_arrays(1)
        assert arr[keys.HESSIAN_ROWS].shape == (3, 2, 3)  # per atom (n, r, 3)
        np.testing.assert_array_equal(ds[0].info[keys.HESSIAN_ROWS], ha)  # (r, 3N) again
        np.testing.assert_array_equal(ds[1].info[keys.HESSIAN_INDEX], [5, -1])
        batch = ds.get_batch([1, 0], dtype=torch.float64)
        assert batch.labels[keys.HESSIAN_INDEX].dtype == torch.int64
        np.testing.assert_array_equal(batch.labels[keys.HESSIAN_INDEX], [[5, -1], [3, 7]])
        rows = batch.labels[keys.HESSIAN_ROWS]  # (3 + 5 atoms, 2, 3)
        np.testing.assert_array_equal(rows[:3].permute(1, 0, 2).reshape(2, 9).numpy(), hb)
        np.testing.assert_array_equal(rows[3:].permute(1, 0, 2).reshape(2, 15).numpy(), ha)
        forces_only = ds.get_batch([0], labels=[keys.ENERGY, keys.FORCES])
        assert keys.HESSIAN_INDEX not in forces_only.labels
        atoms_back = ds[0:2]
    copy = tmp_path / "copy.h5"  # ase.Atoms (info) -> writer -> same file contents
    with DatasetWriter(copy) as w:
        w.append(atoms_back)
    with Dataset(copy) as ds:
        np.testing.assert_array_equal(ds.get_arrays(0)[keys.HESSIAN_ROWS].shape, (5, 2, 3))
        np.testing.assert_array_equal(ds[0].info[keys.HESSIAN_ROWS], ha)


# -- labelling ------------------------------------------------------------------------------
def _input(path, n: int = 4):
    frames = []
    for k in range(n):
        a = lj_cluster()
        a.positions += np.random.default_rng(k).normal(0, 0.02, a.positions.shape)
        frames.append(a)
    with DatasetWriter(path) as w:
        w.append(frames)
    return frames


def test_label_dataset_with_hessian_rows(tmp_path):
    src = tmp_path / "in.h5"
    frames = _input(src)
    out = tmp_path / "out.h5"
    teacher = "ase.calculators.lj:LennardJones"
    options = HessianOptions(rows_per_frame=3, delta=1e-3, seed=5)
    summary = label_dataset(src, teacher, out, hessian=options)
    assert summary.n_labelled == 4
    assert summary.teacher_calls == 4 * (1 + 2 * 3)  # one energy+forces call, 2 per row
    validate(out)
    with Dataset(out) as ds:
        attrs = ds.attrs[HESSIAN_ATTR]
        assert attrs["method"] == "fd" and attrs["rows_per_frame"] == 3
        assert attrs["teacher_calls_per_frame"] == 7
        for i, atoms in enumerate(frames):
            arr = ds.get_arrays(i)
            rows = frame_rows(len(atoms), 3, seed=5, index=i)
            np.testing.assert_array_equal(arr[keys.HESSIAN_INDEX], rows)
            want = lj_hessian(atoms.positions)[rows]
            np.testing.assert_allclose(
                ds[i].info[keys.HESSIAN_ROWS], want, rtol=0, atol=1e-4 * np.abs(want).max()
            )
    # a forces-only file has no Hessian labels and costs one call per frame
    plain = label_dataset(src, teacher, tmp_path / "plain.h5")
    assert plain.teacher_calls == 4
    with Dataset(tmp_path / "plain.h5") as ds:
        assert not ds.has(keys.HESSIAN_INDEX) and HESSIAN_ATTR not in ds.attrs


def test_label_resume_refuses_other_hessian_options(tmp_path):
    src = tmp_path / "in.h5"
    _input(src, 3)
    out = tmp_path / "out.h5"
    teacher = "ase.calculators.lj:LennardJones"
    label_dataset(src, teacher, out, hessian=HessianOptions(rows_per_frame=2))
    with Dataset(out) as ds:  # drop the last frame, as a killed run would leave it
        keep = [ds.get_arrays(i) for i in range(2)]
        attrs = {k: v for k, v in ds.attrs.items() if k not in ("n_structures", "n_atoms_total")}
    with DatasetWriter(out, attrs=attrs) as w:
        for arr in keep:
            w.append_frame(
                arr[keys.ATOMIC_NUMBERS],
                arr[keys.POSITIONS],
                energy=float(arr[keys.ENERGY]),
                forces=arr[keys.FORCES],
                hessian_index=arr[keys.HESSIAN_INDEX],
                hessian_rows=arr[keys.HESSIAN_ROWS],
            )
    with pytest.raises(ValueError, match="Hessian rows"):
        label_dataset(src, teacher, out, hessian=HessianOptions(rows_per_frame=1))
    resumed = label_dataset(src, teacher, out, hessian=HessianOptions(rows_per_frame=2))
    assert resumed.n_labelled == 1 and resumed.n_skipped == 2
    assert resumed.teacher_calls == 1 + 2 * 2
    validate(out)


def test_label_with_painn_teacher_uses_autograd(tmp_path):
    from mlff_distiller.models.io import save_model

    model = _painn(1)
    save_model(model, tmp_path / "teacher")
    src = tmp_path / "in.h5"
    frames = _input(src, 2)
    out = tmp_path / "out.h5"
    summary = label_dataset(
        src,
        "mlff_distiller.md.calculator:StudentCalculator",
        out,
        {"model_or_path": str(tmp_path / "teacher"), "dtype": torch.float64, "compile": False},
        hessian=HessianOptions(rows_per_frame=2, seed=3),
    )
    assert summary.teacher_calls == 2 * (1 + 2)  # autograd: one backward pass per row
    with Dataset(out) as ds:
        assert ds.attrs[HESSIAN_ATTR]["method"] == "autograd"
        for i, atoms in enumerate(frames):
            rows = frame_rows(len(atoms), 2, seed=3, index=i)
            want = hessian_rows(atoms, model, rows)
            np.testing.assert_allclose(ds[i].info[keys.HESSIAN_ROWS], want, rtol=1e-10, atol=1e-12)
