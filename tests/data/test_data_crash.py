"""The append writer survives ``kill -9``: a real writer process is killed mid-run, the file
opens with every frame committed before the kill, and ``mode="a"`` resumes it."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from mlff_distiller.data.hdf5 import Dataset, DatasetError, DatasetWriter, validate

WRITER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from mlff_distiller.data.hdf5 import DatasetWriter

    rng = np.random.default_rng(0)
    with DatasetWriter(sys.argv[1], attrs={"teacher": "test"}, flush_every=int(sys.argv[2])) as w:
        for i in range(100000):
            n = 3 + i % 5
            w.append_frame(
                np.full(n, 6), rng.normal(size=(n, 3)) * 3 + i, energy=float(i),
                forces=np.full((n, 3), float(i)), time=0.5 * i, molecule=f"m{i % 4}",
            )
            print(w.n_committed, flush=True)  # frames on disk behind the commit marker
            time.sleep(0.002)
    """
)


def _check_frames(ds: Dataset, n: int) -> None:
    for i in range(n):
        arr = ds.get_arrays(i)
        assert arr["energy"] == float(i)
        assert len(arr["atomic_numbers"]) == 3 + i % 5
        np.testing.assert_array_equal(arr["forces"], np.full((3 + i % 5, 3), float(i)))
        assert arr["name"] == f"m{i % 4}"


@pytest.mark.parametrize("flush_every", [1, 3])
def test_kill_9_leaves_readable_file_then_resume(tmp_path, flush_every):
    path = tmp_path / "killed.h5"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), str(flush_every)],
        stdout=subprocess.PIPE,
        text=True,
    )
    committed = 0
    try:
        for line in proc.stdout:
            committed = int(line)
            if committed >= 40:
                break
        live = Dataset(path)  # a reader may open the file while it is being written
        n_live = len(live)
        assert n_live >= 40
        _check_frames(live, n_live)
        while committed <= n_live + 5:  # let it run into its next frames, then kill it
            committed = int(proc.stdout.readline())
        assert live.refresh() >= committed > n_live  # the live reader sees new commits
        _check_frames(live, len(live))
        live.close()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    for line in proc.stdout:  # everything the writer reported before it died
        committed = int(line)

    with Dataset(path) as ds:
        n = len(ds)
        # nothing reported as committed is lost; at most one commit happened after the report
        assert committed <= n <= committed + flush_every
        _check_frames(ds, n)
        assert ds.attrs["teacher"] == "test"
    try:  # a tail written after the last commit is reported, never silently trusted
        validate(path)
    except DatasetError as err:
        assert "interrupted" in str(err)

    with DatasetWriter(path, mode="a") as w:  # resume: repairs, then appends
        assert len(w) == n
        w.append_frame(
            np.full(3 + n % 5, 6),
            np.arange(3 * (3 + n % 5)).reshape(-1, 3) * 1.5,
            energy=float(n),
            forces=np.full((3 + n % 5, 3), float(n)),
            time=0.5 * n,
            molecule=f"m{n % 4}",
        )
    summary = validate(path)
    assert summary["n_structures"] == n + 1
    with Dataset(path) as ds:
        _check_frames(ds, n + 1)
        assert ds.molecule_names[:4] == ["m0", "m1", "m2", "m3"]


def test_killed_before_first_frame_is_empty_and_resumable(tmp_path):
    path = tmp_path / "early.h5"
    code = (
        "import os, sys\n"
        "from mlff_distiller.data.hdf5 import DatasetWriter\n"
        "w = DatasetWriter(sys.argv[1], attrs={'teacher': 'x'})\n"
        "os.kill(os.getpid(), 9)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(path)])
    assert proc.returncode == -signal.SIGKILL and path.exists()
    with Dataset(path) as ds:
        assert len(ds) == 0
    with DatasetWriter(path, mode="a", attrs={"teacher": "x"}) as w:
        assert len(w) == 0
        w.append_frame([8, 1, 1], [[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]], energy=-1.0)
    assert validate(path)["n_structures"] == 1
