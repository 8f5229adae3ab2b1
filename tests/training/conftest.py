"""Shared fixture: a small real dataset (rMD17 ethanol, PBE labels) written as our HDF5."""

import csv
from pathlib import Path

import numpy as np
import pytest

from mlff_distiller import units

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture(scope="session")
def ethanol_h5(tmp_path_factory) -> Path:
    from mlff_distiller.data.hdf5 import DatasetWriter

    raw = np.load(FIXTURES / "rmd17_ethanol_train_01_first300.npz")
    path = tmp_path_factory.mktemp("data") / "ethanol.h5"
    with DatasetWriter(path, flush_every=500) as writer:
        for i in range(300):
            writer.append_frame(
                raw["nuclear_charges"],
                raw["coords"][i],
                energy=float(raw["energies"][i]) * units.KCAL_PER_MOL,
                forces=raw["forces"][i] * units.KCAL_PER_MOL_PER_ANGSTROM,
                molecule="ethanol",
            )
    return path


def read_val_curve(out: Path) -> list[float]:
    """Validation force MAE (meV/Å) per validation, from every CSV log of a run, in order."""
    values = []
    for path in sorted(Path(out).glob("logs/version_*/metrics.csv")):
        with path.open() as fh:
            values += [float(r["val_force_mae"]) for r in csv.DictReader(fh) if r["val_force_mae"]]
    return values


@pytest.fixture(scope="session")
def val_curve():
    return read_val_curve
