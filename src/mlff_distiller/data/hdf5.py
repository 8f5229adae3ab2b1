"""HDF5 datasets and trajectories: one import for the schema, writer, reader and validator.

See :mod:`mlff_distiller.data.schema` for the layout. Typical use::

    with DatasetWriter("ethanol.h5", attrs={"teacher": "xtb"}) as w:
        w.append(atoms_list)                    # labels from atoms.calc.results
    with Dataset("ethanol.h5") as ds:
        batch = ds.get_batch([3, 17, 42])       # AtomsBatch with energy/forces labels
"""

from mlff_distiller.data.hdf5_reader import Dataset, TorchDataset, collate, read_runs
from mlff_distiller.data.hdf5_writer import DatasetWriter, read_root_attrs, repair
from mlff_distiller.data.schema import (
    FIELDS,
    FORMAT,
    FORMAT_VERSION,
    DatasetError,
    Field,
    validate,
)

__all__ = [
    "FIELDS",
    "FORMAT",
    "FORMAT_VERSION",
    "Dataset",
    "DatasetError",
    "DatasetWriter",
    "Field",
    "TorchDataset",
    "collate",
    "read_root_attrs",
    "read_runs",
    "repair",
    "validate",
]
