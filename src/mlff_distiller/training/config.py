"""Typed training configuration. Every field is a YAML key and a ``mlffd train`` option
(``--field-name``), one to one; :func:`load_config` reads YAML and rejects unknown keys.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import yaml

from mlff_distiller.models.painn import ForceMethod
from mlff_distiller.models.sizes import STUDENT_SIZES, size_fields
from mlff_distiller.training.losses import FORCE_LOSSES

SPLITS = ("frame", "molecule")
SCHEDULES = ("cosine", "plateau")
PRECISIONS = ("32-true", "64-true", "bf16-mixed", "16-mixed")
ACCELERATORS = ("auto", "cpu", "gpu")
FORCE_METHODS = get_args(ForceMethod)  # ("analytical", "autograd")


@dataclass
class TrainConfig:
    """Everything one distillation run needs.

    Split sizes: ``train_size``/``val_size`` below 1 are fractions of the dataset (or of the
    molecules when ``split="molecule"``), 1 or more are counts (``950`` and ``50`` for rMD17).
    ``max_time_min`` is a wall-clock budget; training stops cleanly when it is spent.
    """

    # data
    data: str = ""
    split: str = "frame"
    train_size: float = 0.9
    val_size: float = 0.1
    # model (PaiNN); ``size`` names a preset of these fields (models.sizes): the fields left
    # at their defaults here take the preset's values
    size: str = ""
    hidden: int = 128
    n_interactions: int = 3
    n_rbf: int = 20
    cutoff: float = 5.0
    shared_filters: bool = False
    init_from: str = ""  # a saved model (same architecture) whose weights start the training
    # loss
    energy_weight: float = 1.0
    forces_weight: float = 100.0
    force_loss: str = "mse"
    huber_delta: float = 0.01
    force_method: str = "analytical"
    compile: bool = False
    # Hessian-informed distillation: weight of the MSE of the student's Hessian rows against the
    # labels' (eV/Å^2)^2; 0 (default) = off. > 0 needs a dataset with Hessian rows (labelled with
    # ``hessian_rows_per_frame``) and trains through autograd (one more backward per row)
    hessian_weight: float = 0.0
    # optimisation
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup_steps: int = 100
    schedule: str = "cosine"
    min_lr_ratio: float = 0.01
    plateau_factor: float = 0.5
    plateau_patience: int = 10
    grad_clip: float = 10.0
    ema_decay: float = 0.99
    patience: int = 50
    max_epochs: int = 100
    max_time_min: float = 0.0
    batch_size: int = 16
    val_batch_size: int = 64
    val_every_n_epochs: int = 1
    # run
    seed: int = 0
    precision: str = "32-true"
    accelerator: str = "auto"
    out: str = "mlffd_train"
    progress_bar: bool = True
    # committee: 0 trains one student; M >= 2 trains M (training.committee.train_committee,
    # run by ``mlffd train``; trainer.train itself always trains one)
    committee: int = 0
    split_seed: int = -1  # the seed of the train/validation split (-1: ``seed``)
    bootstrap_seed: int = -1  # >= 0: training frames resampled with replacement (committees)

    def __post_init__(self) -> None:
        if self.size:
            _choice("size", self.size, tuple(STUDENT_SIZES))
            defaults = {f.name: f.default for f in dataclasses.fields(self)}
            for name, value in size_fields(self.size).items():
                if getattr(self, name) == defaults[name]:
                    setattr(self, name, value)
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field when a value is out of range."""
        _choice("split", self.split, SPLITS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("precision", self.precision, PRECISIONS)
        _choice("accelerator", self.accelerator, ACCELERATORS)
        _choice("force_method", self.force_method, FORCE_METHODS)
        _choice("force_loss", self.force_loss, FORCE_LOSSES)
        if self.size:
            _choice("size", self.size, tuple(STUDENT_SIZES))
        if self.force_method == "analytical" and self.precision.endswith("-mixed"):
            raise ValueError(
                f"precision '{self.precision}' needs force_method 'autograd' (--force-method "
                "autograd): the analytical force backward is written for one floating-point type"
            )
        for name in (
            "train_size",
            "cutoff",
            "lr",
            "huber_delta",
            "batch_size",
            "val_batch_size",
            "max_epochs",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"config field '{name}' must be > 0, got {getattr(self, name)}")
        for name in (
            "val_size",
            "energy_weight",
            "forces_weight",
            "weight_decay",
            "grad_clip",
            "hessian_weight",
            "warmup_steps",
            "max_time_min",
            "patience",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"config field '{name}' must be >= 0, got {getattr(self, name)}")
        if self.committee < 0 or self.committee == 1:
            raise ValueError(
                f"config field 'committee' must be 0 (one student) or >= 2, got {self.committee}"
            )
        if self.energy_weight == 0 and self.forces_weight == 0:
            raise ValueError("energy_weight and forces_weight are both 0: nothing to learn")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"config field 'ema_decay' must be in [0, 1), got {self.ema_decay}")
        if self.val_size == 0:
            raise ValueError(
                "config field 'val_size' must be > 0: early stopping and the best "
                "checkpoint need a validation split"
            )

    @property
    def out_dir(self) -> Path:
        return Path(self.out)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def config_fields() -> list[dataclasses.Field]:
    """The public fields (YAML keys / CLI options) of :class:`TrainConfig`."""
    return list(dataclasses.fields(TrainConfig))


def load_config(path: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """Read a YAML config (if given), then apply ``overrides`` (those that are not None).

    Unknown YAML keys raise ``ValueError`` naming the key and the file.
    """
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file '{path}' not found")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"config file '{path}' must hold a mapping of field: value")
        values.update(loaded)
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in config_fields()}
    unknown = sorted(set(values) - known)
    if unknown:
        where = f" in '{path}'" if path is not None else ""
        raise ValueError(f"unknown config field(s) {unknown}{where}; known: {sorted(known)}")
    return TrainConfig(**values)


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"config field '{name}' must be one of {allowed}, got {value!r}")
