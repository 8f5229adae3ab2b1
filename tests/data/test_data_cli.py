"""``mlffd data ...`` and ``mlffd structures`` through typer's CliRunner."""

from __future__ import annotations

from pathlib import Path

import ase.io
import numpy as np
from typer.testing import CliRunner

from mlff_distiller.cli.main import app
from mlff_distiller.data.hdf5 import Dataset
from mlff_distiller.data.splits import load_split

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
RMD17 = FIXTURES / "rmd17_ethanol_train_01_first300.npz"
runner = CliRunner()


def test_import_info_split_export(tmp_path):
    out = tmp_path / "ethanol.h5"
    result = runner.invoke(app, ["data", "import", str(RMD17), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "imported 300 structures" in result.output

    result = runner.invoke(app, ["data", "info", str(out)])
    assert result.exit_code == 0, result.output
    for text in ("300", "2,700", "H 1,800", "C 600", "O 300", "ethanol", "eV/Å"):
        assert text in result.output
    # the energy mean printed in eV equals the rMD17 mean (kcal/mol) converted
    mean_ev = np.load(RMD17)["energies"].mean() * 0.0433641
    assert f"{mean_ev:.1f}"[:-2] in result.output

    result = runner.invoke(
        app,
        ["data", "split", str(out), "--by", "frame", "--fractions", "0.8,0.1,0.1", "--seed", "4"],
    )
    assert result.exit_code == 0, result.output
    split = load_split(out)
    assert [len(split[p]) for p in ("train", "val", "test")] == [240, 30, 30]

    xyz = tmp_path / "test.extxyz"
    result = runner.invoke(
        app, ["data", "export", str(out), "--out", str(xyz), "--split", "default:test"]
    )
    assert result.exit_code == 0, result.output
    frames = ase.io.read(xyz, ":")
    with Dataset(out) as ds:
        ref = ds[int(split["test"][7])]
    assert len(frames) == 30
    assert frames[7].get_potential_energy() == ref.get_potential_energy()

    result = runner.invoke(app, ["data", "validate", str(out)])
    assert result.exit_code == 0 and "valid" in result.output


def test_structures_command(tmp_path):
    out = tmp_path / "mols.h5"
    result = runner.invoke(
        app,
        [
            "structures",
            "CCO",
            "c1ccccc1",
            "--conformers",
            "2",
            "--seed",
            "3",
            "--out",
            str(out),
            "--names",
            "ethanol,benzene",
        ],
    )
    assert result.exit_code == 0, result.output
    with Dataset(out) as ds:
        assert len(ds) == 4
        assert ds.molecule_names == ["ethanol", "benzene"]
        assert ds.molecule_smiles == ["CCO", "c1ccccc1"]
    xyz = tmp_path / "eth.xyz"
    result = runner.invoke(app, ["structures", "CCO", "--out", str(xyz)])
    assert result.exit_code == 0 and len(ase.io.read(xyz, ":")) == 1


def test_clear_errors_without_traceback(tmp_path):
    result = runner.invoke(app, ["structures", "C1CC", "--out", str(tmp_path / "x.xyz")])
    assert result.exit_code == 1
    assert "invalid SMILES 'C1CC' (unclosed ring)" in result.output
    assert "Traceback" not in result.output
    bad = tmp_path / "bad.h5"
    bad.write_text("not hdf5")
    result = runner.invoke(app, ["data", "info", str(bad)])
    assert result.exit_code == 1 and "not HDF5" in result.output
    result = runner.invoke(app, ["data", "import", str(tmp_path / "none.npz"), "--out", "x.h5"])
    assert result.exit_code == 1 and "not found" in result.output
