"""Labelling: Ray gives exactly the serial result, failures are recorded (not fatal), and a
run killed with SIGKILL resumes without losing or relabelling anything. Sampling: a failing
molecule is reported and the others go on; --resume continues from the last frame."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from teachers_testlib import molecule

from mlff_distiller.data.hdf5 import Dataset, DatasetWriter
from mlff_distiller.teachers.labelling import label_dataset, read_failures


def _write_input(
    path,
    n_per_molecule: int,
    smiles=(("O", "water"), ("C", "methane"), ("CCO", "ethanol"), ("CS", "methanethiol")),
):
    frames = []
    for k in range(n_per_molecule):
        for smi, name in smiles:
            frames.append(molecule(smi, name=name, jitter=0.04, seed=k))
    with DatasetWriter(path) as w:
        w.append(frames)
    return frames


ONE_THREAD = {"threads": 1}


def _arrays(path):
    with Dataset(path) as ds:
        return [ds.get_arrays(i) for i in range(len(ds))]


def _assert_same(a_path, b_path, atol: float = 0.0):
    """Same frames in the same order; labels bit-identical (atol 0) or within ``atol``
    (runs in different processes may sum OpenMP reductions in another order)."""
    a, b = _arrays(a_path), _arrays(b_path)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["positions"], y["positions"])
        np.testing.assert_allclose(x["energy"], y["energy"], rtol=0, atol=atol)
        np.testing.assert_allclose(x["forces"], y["forces"], rtol=0, atol=atol)
        assert x["name"] == y["name"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("label") / "in.h5"
    _write_input(path, 3)
    return path


@pytest.fixture(scope="module")
def serial(dataset):
    """Labelled in this process with one torch thread, as Ray's workers run: a reduction split
    over two threads sums in another order (forces differ at 1e-16)."""
    out = dataset.parent / "serial.h5"
    return out, _label_one_thread(dataset, out)


def _label_one_thread(dataset, out, **options):
    import torch

    threads = torch.get_num_threads()
    try:
        return label_dataset(dataset, "ani1x", out, teacher_options=ONE_THREAD, **options)
    finally:
        torch.set_num_threads(threads)


def test_serial_labels_and_records_failures(dataset, serial):
    out, summary = serial
    assert summary.n_input == 12 and summary.n_labelled == 9
    assert [f["index"] for f in summary.failures] == [3, 7, 11]  # the three methanethiols
    assert all("element(s) S" in f["reason"] for f in summary.failures)
    rows = _arrays(out)
    assert [r["name"] for r in rows] == ["water", "methane", "ethanol"] * 3  # input order
    import h5py

    with h5py.File(out, "r") as h5:
        assert list(h5["failures/input_index"][:]) == [3, 7, 11]
        assert h5.attrs["teacher"] == "ani1x"


def test_ray_equals_serial_exactly(dataset, serial):
    pytest.importorskip("ray")
    out = dataset.parent / "ray.h5"
    summary = _label_one_thread(dataset, out, workers=2, chunk_size=2)
    assert summary.n_labelled == 9 and len(summary.failures) == 3
    _assert_same(serial[0], out)
    import ray

    ray.shutdown()


def test_resume_skips_what_is_done(dataset, serial):
    out = dataset.parent / "again.h5"
    _label_one_thread(dataset, out)
    summary = _label_one_thread(dataset, out)
    assert summary.n_labelled == 0 and summary.n_skipped == 12
    _assert_same(serial[0], out)


def test_kill_9_then_resume_loses_nothing(tmp_path):
    """A real `mlffd label` process is SIGKILLed mid-run; resuming completes the file, which
    then equals an uninterrupted run frame for frame."""
    src = tmp_path / "in.h5"
    _write_input(src, 60, smiles=(("CCO", "ethanol"), ("CC(=O)O", "acetic acid")))
    out = tmp_path / "killed.h5"
    env = dict(os.environ)
    cmd = [
        sys.executable,
        "-m",
        "mlff_distiller.cli.main",
        "label",
        str(src),
        "--teacher",
        "ani1x",
        "--out",
        str(out),
        "--workers",
        "0",
        "--teacher-option",
        "threads=1",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    n_seen = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists():
            try:
                with Dataset(out) as ds:
                    n_seen = len(ds)
            except Exception:  # the file is being created
                n_seen = 0
            if n_seen >= 5:
                break
        time.sleep(0.02)
    assert proc.poll() is None, "the labelling run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with Dataset(out) as ds:
        n_before = len(ds)
    assert 5 <= n_before < 120
    summary = label_dataset(src, "ani1x", out, {"threads": 1}, workers=0)
    assert summary.n_skipped == n_before and summary.n_labelled == 120 - n_before
    reference = tmp_path / "reference.h5"
    label_dataset(src, "ani1x", reference, {"threads": 1}, workers=0)
    _assert_same(reference, out, atol=1e-12)
    assert read_failures(out) == []


def test_failing_molecule_is_reported_and_others_go_on(tmp_path):
    from mlff_distiller.teachers import get_teacher
    from mlff_distiller.teachers.sampling import SamplingConfig, sample_many

    cache = str(tmp_path / "cache")
    mols = [
        molecule("O", name="water"),
        molecule("[Xe]", name="xenon"),
        molecule("CCO", name="ethanol"),
    ]
    cfg = SamplingConfig(equilibration_fs=20, production_fs=40, save_every=5)
    results = sample_many(
        lambda a: get_teacher("openmm-gaff2", cache_dir=cache),
        mols,
        tmp_path / "runs",
        cfg,
        replicas=2,
    )
    by_name = {(r.name, r.replica): r for r in results}
    assert by_name[("water", 0)].ok and by_name[("water", 1)].ok
    assert by_name[("ethanol", 1)].ok and by_name[("ethanol", 1)].n_frames == 5
    assert not by_name[("xenon", 0)].ok
    assert "does not support element(s) Xe" in by_name[("xenon", 0)].error


def test_sampling_resume_continues_from_last_frame(tmp_path):
    """Sampling stopped after part of production resumes from the saved positions AND
    velocities: the resumed file has every frame, times on the grid, and its first new frame
    is one save stride after the last old one."""
    from mlff_distiller.teachers import get_teacher
    from mlff_distiller.teachers.sampling import SamplingConfig, sample

    teacher = get_teacher("xtb")
    atoms = molecule("O", name="water")
    short = SamplingConfig(equilibration_fs=5, production_fs=5, save_every=2, dt_fs=0.5)
    sample(teacher, atoms, tmp_path / "w.h5", short)
    old = _arrays(tmp_path / "w.h5")
    full = SamplingConfig(equilibration_fs=5, production_fs=10, save_every=2, dt_fs=0.5)
    n = sample(teacher, atoms, tmp_path / "w.h5", full, resume=True)
    new = _arrays(tmp_path / "w.h5")
    assert n == len(new) == 11
    times = [r["time"] for r in new]
    np.testing.assert_allclose(times, np.arange(11) * 1.0)
    for a, b in zip(old, new):
        np.testing.assert_array_equal(a["positions"], b["positions"])
    # continuity: one stride of motion from the last saved state, not a restart
    step = np.abs(new[len(old)]["positions"] - old[-1]["positions"]).max()
    assert 0 < step < 0.1
    assert np.abs(new[-1]["velocities"]).max() > 0


def test_resume_with_another_teacher_is_refused(dataset, serial):
    import shutil

    partial = serial[0].parent / "partial.h5"
    shutil.copy(serial[0], partial)  # 9 frames, no failure log: looks unfinished
    with pytest.raises(ValueError, match="was labelled by teacher 'ani1x'"):
        label_dataset(dataset, "xtb", partial, workers=0)


def test_xtb_sampling_runs_on_a_thread_pool_like_one_after_another(tmp_path):
    """GFN2-xTB runs (2 molecules x 2 replicas) sampled at once on the teacher thread pool give
    the trajectories of one run after another (each run its own seed and teacher; OpenMP sums
    may differ in the last digits: 3e-8 Å after 50 steps), in (molecule, replica) order, and
    report every run once."""
    from mlff_distiller.teachers import get_teacher
    from mlff_distiller.teachers.sampling import SamplingConfig, sample_many

    mols = [molecule("O", name="water"), molecule("C", name="methane")]
    cfg = SamplingConfig(equilibration_fs=5, production_fs=20, save_every=4, dt_fs=0.5,
                         max_equilibration_fs=5)  # fmt: skip
    reported = []
    pooled = sample_many(lambda a: get_teacher("xtb"), mols, tmp_path / "pool", cfg,
                         replicas=2, on_result=reported.append)  # fmt: skip
    serial = sample_many(lambda a: get_teacher("xtb"), mols, tmp_path / "serial", cfg,
                         replicas=2, workers=1)  # fmt: skip
    assert [(r.name, r.replica) for r in pooled] == [
        ("water", 0), ("water", 1), ("methane", 0), ("methane", 1)
    ]
    assert sorted((r.name, r.replica) for r in reported) == sorted(
        (r.name, r.replica) for r in pooled
    )
    for p, s in zip(pooled, serial):
        assert p.ok and s.ok and p.n_frames == s.n_frames > 1
        for x, y in zip(_arrays(p.path), _arrays(s.path)):
            np.testing.assert_allclose(x["positions"], y["positions"], atol=1e-6)
            np.testing.assert_allclose(x["forces"], y["forces"], atol=1e-5)
    # replicas differ: their own seeds
    a, b = _arrays(pooled[0].path), _arrays(pooled[1].path)
    assert np.abs(a[-1]["positions"] - b[-1]["positions"]).max() > 1e-4
