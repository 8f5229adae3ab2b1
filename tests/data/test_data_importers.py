"""Importers on excerpts of real public data (tests/fixtures), and the extxyz exporter."""

from __future__ import annotations

from pathlib import Path

import ase.db
import ase.io
import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator

from mlff_distiller.data.hdf5 import Dataset, validate
from mlff_distiller.data.importers import (
    DataImportError,
    detect_format,
    export_extxyz,
    import_file,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
RMD17 = FIXTURES / "rmd17_ethanol_train_01_first300.npz"
ACAC = FIXTURES / "botnet_acac_train_300K_first100.xyz"
KCAL_PER_MOL_IN_EV = 0.0433641


def test_detect_format(tmp_path):
    assert detect_format(RMD17) == "rmd17"
    assert detect_format(ACAC) == "extxyz"
    np.savez(tmp_path / "s.npz", R=np.zeros((1, 2, 3)), z=[1, 1], E=[0.0], F=np.zeros((1, 2, 3)))
    assert detect_format(tmp_path / "s.npz") == "sgdml"
    np.savez(tmp_path / "other.npz", x=[1])
    with pytest.raises(DataImportError, match="neither rMD17"):
        detect_format(tmp_path / "other.npz")


def test_rmd17_round_trip_through_extxyz(tmp_path):
    ref = np.load(RMD17)
    out = tmp_path / "ethanol.h5"
    assert import_file(RMD17, out) == 300
    assert validate(out)["n_structures"] == 300
    export_extxyz(out, tmp_path / "ethanol.extxyz")
    frames = ase.io.read(tmp_path / "ethanol.extxyz", ":")
    assert len(frames) == 300
    energies = np.array([a.get_potential_energy() for a in frames])
    forces = np.array([a.get_forces() for a in frames])
    positions = np.array([a.positions for a in frames])
    # exact after unit conversion (float64 repr round trip)
    from mlff_distiller import units

    np.testing.assert_array_equal(positions, ref["coords"])
    np.testing.assert_array_equal(energies, ref["energies"] * units.KCAL_PER_MOL)
    np.testing.assert_array_equal(forces, ref["forces"] * units.KCAL_PER_MOL)
    np.testing.assert_allclose(energies / ref["energies"], KCAL_PER_MOL_IN_EV, rtol=1e-6)
    assert all(a.numbers.tolist() == ref["nuclear_charges"].tolist() for a in frames[:5])
    assert frames[0].info["name"] == "ethanol" and frames[0].info["smiles"] == "CCO"
    with Dataset(out) as ds:
        assert ds.molecule_names == ["ethanol"]
        assert "rMD17" in ds.attrs["teacher"]


def test_botnet_extxyz_keeps_ev_labels(tmp_path):
    ref = ase.io.read(ACAC, ":")
    out = tmp_path / "acac.h5"
    assert import_file(ACAC, out) == len(ref) == 100
    with Dataset(out) as ds:
        for i in (0, 57, 99):
            got = ds[i]
            assert got.get_potential_energy() == ref[i].get_potential_energy()
            np.testing.assert_array_equal(got.get_forces(), ref[i].get_forces())
            np.testing.assert_array_equal(got.positions, ref[i].positions)
            assert not got.pbc.any() and got.cell.lengths()[0] == 50.0
        assert ds.molecule_names == ["C5H8O2"]


def test_extxyz_custom_keys_and_units(tmp_path):
    frames = ase.io.read(ACAC, ":3")
    for a in frames:
        a.info["REF_energy"] = a.get_potential_energy() / 0.0433641  # kcal/mol
        a.arrays["REF_forces"] = a.get_forces() / 0.0433641
        a.calc = None
    src = tmp_path / "custom.xyz"
    ase.io.write(src, frames)
    out = tmp_path / "custom.h5"
    import_file(src, out, energy_key="REF_energy", forces_key="REF_forces", energy_unit="kcal/mol")
    ref = ase.io.read(ACAC, ":3")
    with Dataset(out) as ds:
        np.testing.assert_allclose(ds[2].get_potential_energy(), ref[2].get_potential_energy())
        np.testing.assert_allclose(ds[2].get_forces(), ref[2].get_forces(), atol=1e-7)


def test_sgdml_npz_units(tmp_path):
    ref = np.load(RMD17)
    src = tmp_path / "ethanol_sgdml.npz"
    np.savez(
        src,
        R=ref["coords"][:10],
        z=ref["nuclear_charges"],
        E=ref["energies"][:10, None],
        F=ref["forces"][:10],
        e_unit="kcal/mol",
        r_unit="Ang",
        name="ethanol",
    )
    out = tmp_path / "sgdml.h5"
    assert import_file(src, out) == 10
    with Dataset(out) as ds:
        assert ds.molecule_names == ["ethanol"]
        np.testing.assert_allclose(ds[4].get_potential_energy(), ref["energies"][4] * 0.0433641)
    out_ev = tmp_path / "sgdml_ev.h5"
    import_file(src, out_ev, energy_unit="eV")  # the option overrides the file's unit
    with Dataset(out_ev) as ds:
        assert ds[4].get_potential_energy() == ref["energies"][4]
    with pytest.raises(DataImportError, match="unknown energy unit"):
        import_file(src, tmp_path / "bad.h5", energy_unit="furlongs")


def test_ase_database(tmp_path):
    frames = ase.io.read(ACAC, ":4")
    db_path = tmp_path / "acac.db"
    with ase.db.connect(db_path) as db:
        for a in frames:
            db.write(a, name="acac")
    out = tmp_path / "db.h5"
    assert import_file(db_path, out) == 4
    with Dataset(out) as ds:
        assert ds.molecule_names == ["acac"]
        assert ds[3].get_potential_energy() == frames[3].get_potential_energy()
        np.testing.assert_array_equal(ds[3].get_forces(), frames[3].get_forces())


def test_bad_sources(tmp_path):
    with pytest.raises(FileNotFoundError):
        import_file(tmp_path / "nope.npz", tmp_path / "x.h5")
    np.savez(
        tmp_path / "short.npz",
        nuclear_charges=[1, 1],
        coords=np.zeros((2, 3, 3)),
        energies=[0.0, 1.0],
        forces=np.zeros((2, 3, 3)),
    )
    with pytest.raises(DataImportError, match=r"expected \(n_frames, 2, 3\)"):
        import_file(tmp_path / "short.npz", tmp_path / "x.h5")
    with pytest.raises(DataImportError, match="unknown format"):
        import_file(RMD17, tmp_path / "x.h5", fmt="pdf")


def test_export_stress_and_unlabelled(tmp_path):
    from ase import Atoms

    from mlff_distiller.data.hdf5 import DatasetWriter

    a = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]], cell=[3, 3, 3], pbc=True)
    a.calc = SinglePointCalculator(
        a, energy=-1.5, forces=[[0, 0, 1], [0, 0, -1]], stress=[1, 2, 3, 0, 0, 0]
    )
    with DatasetWriter(tmp_path / "s.h5") as w:
        w.append(a)
    export_extxyz(tmp_path / "s.h5", tmp_path / "s.extxyz")
    (back,) = ase.io.read(tmp_path / "s.extxyz", ":")
    assert back.pbc.all() and back.get_potential_energy() == -1.5
    np.testing.assert_allclose(back.get_stress(), [1, 2, 3, 0, 0, 0])
