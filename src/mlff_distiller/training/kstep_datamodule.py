"""Lightning data of the k-step jump networks: loaders over k-step windows, noise augmentation.

A window source is any object with ``len()`` and
``batches(batch_size, shuffle, seed) -> Iterator[(KStepInput, KStepTargets)]``, e.g.
:class:`mlff_distiller.kstep.dataset.KStepWindows` (which centres each window and, for training,
rotates it at random). Epoch ``e`` of the training loader is exactly
``source.batches(batch_size, shuffle=True, seed=seed + e)``, so a resumed run sees the same
batches (and rotations) as an uninterrupted one; validation is ``batches(batch_size)`` in file
order, the same every epoch.

Noise augmentation (``noise_positions`` Å, ``noise_velocities`` Å/fs for a hydrogen atom,
scaled by ``sqrt(m_H / m)`` for heavier atoms so that every atom gets the same kinetic-energy
noise): each training batch's ``x_t, v_t`` are perturbed by fresh Gaussian noise (centre-of-mass
and momentum free, seeded per epoch) while the targets stay the true ``x_{t+k}, v_{t+k}``, so the
network learns to pull a state that left the data manifold back onto it, as the hybrid MD needs
after a slightly wrong jump (:func:`perturb_windows`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import replace
from typing import Protocol

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from mlff_distiller.models.kstep_common import KStepInput
from mlff_distiller.training.kstep_losses import KStepTargets

HYDROGEN_MASS = 1.008  # amu
NOISE_SEED_STRIDE = 100_003  # epoch e of seed s draws its noise from seed s * stride + e


class WindowSource(Protocol):
    def __len__(self) -> int: ...

    def batches(
        self, batch_size: int, shuffle: bool = False, seed: int = 0
    ) -> Iterator[tuple[KStepInput, KStepTargets]]: ...


def _momentum_free(noise: torch.Tensor, masses: torch.Tensor, inp: KStepInput) -> torch.Tensor:
    """Remove each molecule's mass-weighted mean from ``noise`` (n_atoms, 3)."""
    n = inp.n_systems
    m = masses[:, None]
    total_m = torch.zeros(n, 1, dtype=m.dtype, device=m.device).index_add(0, inp.system_idx, m)
    mean = torch.zeros(n, 3, dtype=m.dtype, device=m.device).index_add(0, inp.system_idx, m * noise)
    return noise - (mean / total_m)[inp.system_idx]


def perturb_windows(
    inp: KStepInput,
    tgt: KStepTargets,
    noise_positions: float,
    noise_velocities: float,
    generator: torch.Generator | None = None,
    noise: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[KStepInput, KStepTargets]:
    """Noisy starts, unchanged ends: ``x_t + e_x``, ``v_t + e_v`` and targets
    ``delta - e`` so that ``x_t + delta_x`` and ``v_t + delta_v`` are still the true
    ``x_{t+k}``, ``v_{t+k}``. ``e`` is Gaussian (or the unit ``noise`` pair given, (n_atoms, 3)
    each, scaled here), without centre-of-mass shift or momentum; velocity noise per atom is
    ``noise_velocities * sqrt(m_H / m)``. The forces at ``x_t`` are kept (a first-order error
    of ``F'(x) e_x``, small for noise well below bond-length fluctuations)."""
    x, v = inp.positions, inp.velocities
    if noise is None:
        noise = (
            torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device),
            torch.randn(v.shape, generator=generator, dtype=v.dtype).to(v.device),
        )
    masses = inp.masses.to(x.dtype)
    e_x = _momentum_free(noise_positions * noise[0], masses, inp)
    e_v = _momentum_free(
        noise_velocities * torch.sqrt(HYDROGEN_MASS / masses)[:, None] * noise[1], masses, inp
    )
    new_inp = inp.replace(positions=x + e_x, velocities=v + e_v)
    shifted = {"delta_positions": tgt.delta_positions - e_x,
               "delta_velocities": tgt.delta_velocities - e_v}  # fmt: skip
    if tgt.has_rollout:  # the next cycle's end is relative to the start too
        shifted.update(delta_positions_2=tgt.delta_positions_2 - e_x,
                       delta_velocities_2=tgt.delta_velocities_2 - e_v)  # fmt: skip
    new_tgt = replace(tgt, **shifted)
    return new_inp, new_tgt


class EpochBatches(Dataset):
    """Batch ``i`` of epoch ``e`` (key ``(e, i)``) of a window source.

    The batches of an epoch come from one ``source.batches(...)`` generator (shuffled and rotated
    with seed ``seed + e`` when ``shuffle``), read in order and perturbed by the epoch's noise;
    asking for an earlier batch or another epoch restarts the generator."""

    def __init__(
        self,
        source: WindowSource,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        noise_positions: float = 0.0,
        noise_velocities: float = 0.0,
    ):
        self.source, self.batch_size, self.shuffle, self.seed = source, batch_size, shuffle, seed
        self.noise_positions, self.noise_velocities = noise_positions, noise_velocities
        self._epoch: int | None = None
        self._batches: Iterator | None = None
        self._next = 0
        self._noise: torch.Generator | None = None

    def __len__(self) -> int:
        return math.ceil(len(self.source) / self.batch_size)

    def _start(self, epoch: int) -> None:
        seed = self.seed + epoch if self.shuffle else self.seed
        self._batches = iter(self.source.batches(self.batch_size, shuffle=self.shuffle, seed=seed))
        self._epoch, self._next = epoch, 0
        self._noise = torch.Generator().manual_seed(self.seed * NOISE_SEED_STRIDE + epoch)

    def __getitem__(self, key: tuple[int, int]) -> tuple[KStepInput, KStepTargets]:
        epoch, index = key
        if epoch != self._epoch or index < self._next:
            self._start(epoch)
        while True:
            inp, tgt = next(self._batches)
            if self.noise_positions > 0 or self.noise_velocities > 0:
                inp, tgt = perturb_windows(
                    inp, tgt, self.noise_positions, self.noise_velocities, self._noise
                )
            self._next += 1
            if self._next > index:
                return inp, tgt


class EpochSampler(Sampler):
    """Yields the keys ``(epoch, 0..n-1)`` of :class:`EpochBatches`; Lightning sets the epoch
    (``set_epoch``) before each training epoch, also after a resume. ``follow_epochs=False``
    keeps epoch 0 (validation: the same batches every time)."""

    def __init__(self, n_batches: int, follow_epochs: bool = True):
        self.n_batches, self.follow_epochs, self.epoch = n_batches, follow_epochs, 0

    def set_epoch(self, epoch: int) -> None:
        if self.follow_epochs:
            self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n_batches

    def __iter__(self):
        return ((self.epoch, i) for i in range(self.n_batches))


def _as_is(batch):
    return batch


class KStepDataModule(L.LightningDataModule):
    """Training and validation loaders over window sources (validation optional)."""

    def __init__(
        self,
        train: WindowSource,
        val: WindowSource | None = None,
        batch_size: int = 16,
        seed: int = 0,
        noise_positions: float = 0.0,
        noise_velocities: float = 0.0,
    ):
        super().__init__()
        if len(train) == 0:
            raise ValueError(
                "no training windows: check the window file's train split and k values"
            )
        self.train = EpochBatches(train, batch_size, True, seed, noise_positions, noise_velocities)
        self.val = EpochBatches(val, batch_size, False) if val is not None and len(val) else None

    @property
    def has_validation(self) -> bool:
        return self.val is not None

    @staticmethod
    def _loader(batches: EpochBatches, follow_epochs: bool) -> DataLoader:
        sampler = EpochSampler(len(batches), follow_epochs)
        return DataLoader(batches, sampler=sampler, batch_size=None, collate_fn=_as_is)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train, follow_epochs=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.val, follow_epochs=False) if self.val is not None else []

    def transfer_batch_to_device(self, batch, device, dataloader_idx: int):
        inp, tgt = batch
        return inp.to(device), tgt.to(device)
