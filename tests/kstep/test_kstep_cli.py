"""`mlffd kstep dataset | train | run` end to end on tiny real trajectories (OpenMM GAFF2)."""

import json

import torch
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
         "--k", "4", "--cycles", "3", "--replicas", "2"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "mean temperature" in r.output and "bath 300 K" in r.output
    assert "equilibrated with plain openmm-gaff2 MD" in " ".join(r.output.split())
    with Dataset(out) as ds:
        assert len(ds) == 2 * 4  # two replicas: start + 3 cycles
        assert float(ds.get_arrays(7)["time"]) == 3 * 5 * 0.5
        settings = ds.attrs["kstep"]
        settings = json.loads(settings) if isinstance(settings, str) else settings
        assert ds.attrs["velocity_convention"] == "on-step"
    assert settings["ensemble"] == "nvt" and settings["friction_per_ps"] == 1.0  # the default
    r = runner.invoke(app, ["kstep", "run", "--out", str(out), "--smiles", "CO"])
    assert r.exit_code == 1 and "exists" in r.output  # an earlier run is never overwritten
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["cycles"] == 3 and summary["md_steps_per_structure"] == 15
    assert summary["structures"] == 2 and set(summary["rejections"]) >= {"energy", "bond"}
    # the start was equilibrated by the sampling check: at least its 1000 fs floor at 10/ps
    assert summary["equilibration"]["time_fs"] >= 1000.0
    assert summary["equilibration"]["friction_per_ps"] == 10.0
    assert set(summary["element_temperatures_k"]) == {"H", "C", "O"}


def test_kstep_train_fine_tunes_the_shipped_network(gaff2_trajectories, tmp_path):
    """``--init-from pretrained:openmm-gaff2``: the run starts from the shipped weights (its
    architecture, whatever --hidden says), the frozen embedding and first layer keep them
    exactly, and the trained layers move."""
    from safetensors.torch import load_file

    from mlff_distiller.kstep.pretrained import pretrained_path

    runner = CliRunner()
    windows = tmp_path / "w.h5"
    trajs = [str(p) for p in gaff2_trajectories.values()]
    r = runner.invoke(app, ["kstep", "dataset", *trajs, "--out", str(windows), "--k", "8",
                            "--stride", "4"])  # fmt: skip
    assert r.exit_code == 0, r.output
    r = runner.invoke(
        app,
        ["kstep", "train", str(windows), "--out", str(tmp_path / "ft"), "--init-from",
         "pretrained:openmm-gaff2", "--freeze-layers", "1", "--epochs", "1", "--batch-size", "8",
         "--lr", "1e-3", "--warmup-steps", "1"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    shipped = load_file(pretrained_path("openmm-gaff2") / "model.safetensors")
    tuned = load_file(tmp_path / "ft" / "best" / "model.safetensors")
    assert tuned.keys() == shipped.keys()
    frozen = [k for k in shipped if k.startswith(("embed.", "layers.0."))]
    trained = [k for k in shipped if k.startswith("layers.2.")]
    assert frozen and trained
    assert all(torch.equal(tuned[k], shipped[k]) for k in frozen)
    assert any(not torch.equal(tuned[k], shipped[k]) for k in trained)
    r = runner.invoke(app, ["kstep", "train", str(windows), "--out", str(tmp_path / "bad"),
                            "--init-from", "pretrained:nothing-ships-this"])  # fmt: skip
    assert r.exit_code != 0


def test_the_default_run_mode_is_one_the_benchmark_measures():
    """``mlffd kstep run``'s defaults (HybridConfig's) are a row of benchmarks/kstep.py: NVT,
    k = 8, the benchmark's time step, friction and torch threads."""
    import importlib.util
    import inspect
    from pathlib import Path

    from mlff_distiller.cli.kstep import run_command
    from mlff_distiller.md.hybrid import HybridConfig

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "kstep.py"
    spec = importlib.util.spec_from_file_location("bench_kstep", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    params = inspect.signature(run_command).parameters.values()
    defaults = {p.name: p.default.default for p in params if hasattr(p.default, "default")}
    config = HybridConfig()
    assert (defaults["ensemble"], defaults["k"]) == (config.ensemble, config.k) == ("nvt", 8)
    assert defaults["dt"] == config.dt_fs == bench.DT
    assert defaults["friction"] == config.friction_per_ps == bench.FRICTION
    assert defaults["energy_tol"] == config.energy_tol_per_atom
    assert defaults["threads"] == bench.THREADS  # the wall clock it reports is the CLI's
    assert config.k in bench.KS


def test_kstep_cli_bad_input_is_one_clear_line(tmp_path):
    r = CliRunner().invoke(app, ["kstep", "train", str(tmp_path / "missing.h5")])
    assert r.exit_code == 1
    assert "does not exist" in " ".join(r.output.split())  # rich wraps lines


def test_kstep_dataset_fractions_that_add_up_to_one_in_floating_point(gaff2_trajectories, tmp_path):
    """--train-fraction 0.9 --val-fraction 0.1 leaves a test fraction of -3e-17 in floating
    point: no test split, not an error; fractions above 1 are an error that names both."""
    runner = CliRunner()
    trajs = [str(p) for p in gaff2_trajectories.values()]
    base = ["kstep", "dataset", *trajs, "--k", "4", "--stride", "4"]
    r = runner.invoke(app, [*base, "--out", str(tmp_path / "a.h5"), "--train-fraction", "0.9",
                            "--val-fraction", "0.1"])  # fmt: skip
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, [*base, "--out", str(tmp_path / "b.h5"), "--train-fraction", "0.9",
                            "--val-fraction", "0.2"])  # fmt: skip
    assert r.exit_code != 0
    assert "--train-fraction 0.9 and --val-fraction 0.2" in " ".join(r.output.split())
