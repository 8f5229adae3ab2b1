"""Lazy HDF5 data for training: the split, the batches, and the statistics fitted before training.

Batches are read straight from the HDF5 file by index (:meth:`Dataset.get_batch`), so a dataset
is never loaded whole. Per-element reference energies and the energy scale/shift are fitted on
the training split only (at most ``MAX_STAT_STRUCTURES`` of it, seeded) before the first step.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from mlff_distiller import keys
from mlff_distiller.data.batch import AtomsBatch
from mlff_distiller.data.hdf5 import Dataset
from mlff_distiller.data.splits import make_split
from mlff_distiller.models.reference import (
    fit_reference_energies,
    fit_scale_shift,
    present_elements,
)
from mlff_distiller.training.config import TrainConfig

MAX_STAT_STRUCTURES = 20_000
READ_CHUNK = 512
LABELS = (keys.ENERGY, keys.FORCES)
HESSIAN_LABELS = (keys.HESSIAN_INDEX, keys.HESSIAN_ROWS)


class _Indices(torch.utils.data.Dataset):
    """A map-style dataset of structure indices; the collate function reads the HDF5 file."""

    def __init__(self, indices: np.ndarray):
        self.indices = np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> int:
        return int(self.indices[item])


class _ReadBatch:
    """Collate function: a list of structure indices -> one ``AtomsBatch`` read from the file."""

    def __init__(self, datamodule: HDF5DataModule):
        self.datamodule = datamodule

    def __call__(self, indices: list[int]) -> AtomsBatch:
        return self.datamodule.read_batch(indices)


class HDF5DataModule(L.LightningDataModule):
    """Train/validation loaders over one HDF5 dataset, split by frame or by molecule."""

    def __init__(self, config: TrainConfig, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.config = config
        self.dtype = dtype
        path = Path(config.data)
        if not config.data or not path.is_file():
            raise FileNotFoundError(
                f"training data '{config.data}' not found; give an HDF5 dataset "
                "(e.g. from 'mlffd data import' or 'mlffd sample') with --data"
            )
        self.dataset = Dataset(path)
        if len(self.dataset) < 2:
            raise ValueError(f"dataset '{path}' holds {len(self.dataset)} structure(s); need >= 2")
        for key in (keys.ENERGY, keys.FORCES):
            if not self.dataset.has(key):
                raise ValueError(f"dataset '{path}' has no '{key}' labels; label it with a teacher")
        self.labels = LABELS
        if config.hessian_weight > 0:
            if not all(self.dataset.has(k) for k in HESSIAN_LABELS):
                raise ValueError(
                    f"hessian_weight={config.hessian_weight} but dataset '{path}' has no Hessian "
                    "rows; label it with Hessian rows (mlffd label --hessian-rows R) or set "
                    "hessian_weight 0"
                )
            self.labels = LABELS + HESSIAN_LABELS
        self.train_indices, self.val_indices = split_indices(self.dataset, config)
        if config.bootstrap_seed >= 0:  # a committee member: its own resample of the training
            rng = np.random.default_rng(config.bootstrap_seed)
            drawn = rng.choice(self.train_indices, size=len(self.train_indices), replace=True)
            self.train_indices = np.sort(drawn)

    def read_batch(self, indices: list[int] | np.ndarray) -> AtomsBatch:
        """Structures ``indices`` as an ``AtomsBatch`` on the CPU with energy and force labels
        (and the Hessian rows when ``hessian_weight > 0``)."""
        return self.dataset.get_batch(
            np.sort(np.asarray(indices)), dtype=self.dtype, labels=self.labels
        )

    def fit_statistics(self, model: torch.nn.Module) -> dict[str, float]:
        """Fit reference energies and scale/shift of ``model`` on the training split.

        Returns the fitted ``scale`` and ``shift`` (eV) for logging.
        """
        rng = np.random.default_rng(self.config.seed)
        idx = self.train_indices
        if len(idx) > MAX_STAT_STRUCTURES:
            idx = rng.choice(idx, MAX_STAT_STRUCTURES, replace=False)
        idx = np.sort(idx)
        numbers, energies, forces = [], [], []
        for start in range(0, len(idx), READ_CHUNK):
            batch = self.dataset.get_batch(
                idx[start : start + READ_CHUNK], dtype=torch.float64, labels=LABELS
            )
            counts = batch.atoms_per_system.tolist()
            numbers += list(torch.split(batch.atomic_numbers, counts))
            forces += list(torch.split(batch.labels[keys.FORCES], counts))
            energies.append(batch.labels[keys.ENERGY])
        numbers = [z.numpy() for z in numbers]
        energy = torch.cat(energies).numpy()
        ref = fit_reference_energies(numbers, energy)
        scale, shift = fit_scale_shift(numbers, energy, ref, [f.numpy() for f in forces])
        model.set_reference_energies(ref, elements=present_elements(numbers))
        model.set_scale_shift(scale, shift)
        return {"scale": scale, "shift": shift}

    def transfer_batch_to_device(self, batch: AtomsBatch, device, dataloader_idx: int):
        return batch.to(device)

    def _loader(self, indices: np.ndarray, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(
            _Indices(indices),
            batch_size=batch_size,
            shuffle=shuffle,
            collate_fn=_ReadBatch(self),
            num_workers=0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_indices, self.config.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_indices, self.config.val_batch_size, shuffle=False)


def split_indices(dataset: Dataset, config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) structure indices of ``dataset`` by frame or by molecule, seeded.

    Sizes below 1 are fractions, from 1 up counts (of structures, or of molecules when
    splitting by molecule).
    """
    fractions = (config.train_size, config.val_size, 0.0)
    if max(fractions) >= 1 and min(config.train_size, config.val_size) < 1:
        raise ValueError(
            f"train_size={config.train_size} and val_size={config.val_size}: give both as "
            "fractions (< 1) or both as counts (>= 1)"
        )
    seed = config.seed if config.split_seed < 0 else config.split_seed
    split = make_split(dataset, by=config.split, fractions=fractions, seed=seed)
    if len(split["train"]) == 0 or len(split["val"]) == 0:
        raise ValueError(
            f"split of '{dataset.path}' by {config.split} gives {len(split['train'])} training "
            f"and {len(split['val'])} validation structures; both must be non-empty"
        )
    return split["train"], split["val"]
