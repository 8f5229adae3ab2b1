"""`mlffd kstep dataset | train | run` end to end on tiny real trajectories (OpenMM GAFF2)."""

import json

from typer.testing import CliRunner

from mlff_distiller.cli.main import app
from mlff_distiller.data.hdf5 import Dataset


def test_kstep_cli_end_to_end(gaff2_trajectories, tmp_path):
    runner = CliRunner()
    windows = tmp_path / "w.h5"
    trajs = [str(p) for p in gaff2_trajectories.values()]
    r = runner.invoke(
        app, ["kstep", "dataset", *trajs, "--out", str(windows), "--k", "4", "--stride", "4"]
    )
    assert r.exit_code == 0, r.output
    assert "train" in r.output and "test" in r.output

    r = runner.invoke(
        app,
        ["kstep", "train", str(windows), "--out", str(tmp_path / "run"), "--hidden", "16",
         "--layers", "1", "--epochs", "1", "--batch-size", "8"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output

    out = tmp_path / "hybrid.h5"
    r = runner.invoke(
        app,
        ["kstep", "run", str(tmp_path / "run" / "best"), "--out", str(out),
         "--structure", str(gaff2_trajectories["methanol"]), "--corrector", "openmm-gaff2",
         "--k", "4", "--cycles", "3"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    with Dataset(out) as ds:
        assert len(ds) == 4  # start + 3 cycles
        assert float(ds.get_arrays(3)["time"]) == 3 * 5 * 0.5
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["cycles"] == 3 and summary["md_steps"] == 15


def test_kstep_cli_bad_input_is_one_clear_line(tmp_path):
    r = CliRunner().invoke(app, ["kstep", "train", str(tmp_path / "missing.h5")])
    assert r.exit_code == 1
    assert "does not exist" in " ".join(r.output.split())  # rich wraps lines
