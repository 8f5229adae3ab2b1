"""Training of the k-step jump networks (EGNN, Transformer-EGNN) on the Lightning stack of
distillation.

:func:`train_kstep` runs a ``lightning.pytorch.Trainer`` on :class:`~mlff_distiller.training.
kstep_module.KStepModule` (loss, AdamW, warm-up + cosine, optional EMA) and :class:`~mlff_distiller.
training.kstep_datamodule.KStepDataModule` (window batches with random rotations and optional
input noise), with the pieces of :mod:`mlff_distiller.training.trainer`: the ``best``/``last``
checkpoint callbacks, the crash-safe checkpoint I/O that reads with ``weights_only=True``, the
progress bar, and the export of the best checkpoint as safetensors + JSON. Gradient clipping
(by norm), accumulation and bf16 autocast (``precision`` "auto": on a GPU only) are Lightning's.

Transfer learning (``init_from`` + ``freeze_layers``): the run starts from a saved k-step model
(e.g. trained on MM windows) with its embeddings and first layers frozen (e.g. to fine-tune on
QM windows); frozen weights are not in the optimiser and stay bit for bit unchanged.

Output directory (``out_dir``)::

    checkpoint/last.ckpt   written atomically after every epoch (``resume=True`` reads it)
    checkpoint/best.ckpt   lowest validation loss so far (training loss without validation)
    best/                  the best model: model.safetensors + config.json (models.io.load_model;
                           the EMA weights when ``ema_decay`` > 0)
    logs/version_k/        CSV metrics

Checkpoints hold only tensors and plain Python values (the history of the run and the
network's architecture and configuration included, so that a resume needs nothing else) and
are read back with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn

from mlff_distiller.models.io import load_model
from mlff_distiller.training.kstep_datamodule import (
    HYDROGEN_MASS,
    KStepDataModule,
    WindowSource,
    perturb_windows,
)
from mlff_distiller.training.kstep_losses import KStepLossWeights
from mlff_distiller.training.kstep_module import (
    CHECKPOINT_KEY,
    TRAIN_LOSS,
    VAL_LOSS,
    KStepModule,
    build_jump_network,
    freeze_first_layers,
    kstep_architectures,
)
from mlff_distiller.training.trainer import (
    LAST_CHECKPOINT_NAME,
    AtomicCheckpointIO,
    checkpoint_callbacks,
    export_checkpoint,
    load_checkpoint,
    progress_bar_callbacks,
    quiet_lightning,
)

__all__ = [
    "HYDROGEN_MASS",
    "KStepTrainConfig",
    "KStepTrainResult",
    "WindowSource",
    "build_kstep_model",
    "fit_kstep",
    "freeze_first_layers",
    "perturb_windows",
    "train_kstep",
]

CHECKPOINT_DIR = "checkpoint"  # out_dir/checkpoint/{last,best}.ckpt
BEST_DIR = "best"  # out_dir/best: the exported best model


@dataclass
class KStepTrainConfig:
    """Options of :func:`train_kstep` (names match ``mlffd kstep train``)."""

    out_dir: str = "runs/kstep"
    architecture: str = "egnn"  # or "transformer_egnn"
    model: dict[str, Any] = field(default_factory=dict)  # EGNNConfig / TransformerEGNNConfig
    epochs: int = 20
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-5
    warmup_steps: int = 50
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    accumulate: int = 1
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU; or "32", "bf16"
    device: str = "auto"
    seed: int = 0
    loss: dict[str, float] = field(default_factory=dict)  # KStepLossWeights fields
    init_from: str | None = None  # a saved k-step model (e.g. MM) to fine-tune (e.g. on QM)
    freeze_layers: int = 0  # with init_from: freeze the embedding and the first N layers
    noise_positions: float = 0.0  # Å, std of the Gaussian noise on x_t (training batches)
    noise_velocities: float = 0.0  # Å/fs for hydrogen (x sqrt(m_H / m)), on v_t
    ema_decay: float = 0.0  # > 0: validate and export an EMA of the weights (as distillation)

    def __post_init__(self) -> None:
        if self.architecture not in ("egnn", "transformer_egnn"):
            raise ValueError(
                f"architecture must be 'egnn' or 'transformer_egnn', got {self.architecture!r}"
            )
        if self.epochs < 1 or self.batch_size < 1 or self.accumulate < 1:
            raise ValueError("epochs, batch_size and accumulate must be >= 1")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.precision not in ("auto", "32", "bf16"):
            raise ValueError(f"precision must be auto, 32 or bf16, got {self.precision!r}")
        if self.freeze_layers < 0:
            raise ValueError(f"freeze_layers must be >= 0, got {self.freeze_layers}")
        if self.noise_positions < 0 or self.noise_velocities < 0:
            raise ValueError("noise_positions and noise_velocities must be >= 0")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        KStepLossWeights(**self.loss)  # fail early on unknown loss names


@dataclass
class KStepTrainResult:
    out_dir: Path
    best_model: Path
    epochs_done: int
    best_val_loss: float
    history: list[dict[str, float]]
    seconds: float


def build_kstep_model(config: KStepTrainConfig) -> nn.Module:
    """A fresh model, or ``init_from`` loaded (transfer learning) with layers frozen."""
    if config.init_from:
        model = load_model(config.init_from)
        if model.architecture not in kstep_architectures():
            raise ValueError(f"{config.init_from} is not a k-step model ({model.architecture})")
        model.float().train()
        freeze_first_layers(model, config.freeze_layers)
        return model
    return build_jump_network(config.architecture, config.model)


def _resumed_model(checkpoint: dict, config: KStepTrainConfig) -> nn.Module:
    """The network of a checkpoint (weights restored by Lightning), frozen as the run was."""
    saved = checkpoint[CHECKPOINT_KEY]
    model = build_jump_network(saved["architecture"], saved["model_config"]).float().train()
    freeze_first_layers(model, config.freeze_layers if config.init_from else 0)
    return model


def _accelerator(device: str) -> tuple[str, int | list[int]]:
    """Lightning (accelerator, devices) of ``device``: auto, cpu, cuda, cuda:N, ..."""
    if device == "auto":
        return ("gpu", 1) if torch.cuda.is_available() else ("cpu", 1)
    dev = torch.device(device)
    if dev.type == "cuda":
        return "gpu", [dev.index or 0]
    return dev.type, 1


def _precision(config: KStepTrainConfig, accelerator: str) -> str:
    """auto: bf16 autocast on a GPU, fp32 elsewhere; "32"; "bf16" (autocast, also on a CPU)."""
    if config.precision == "bf16" or (config.precision == "auto" and accelerator == "gpu"):
        return "bf16-mixed"
    return "32-true"


def build_kstep_trainer(
    config: KStepTrainConfig, max_epochs: int, validate: bool, progress: bool
) -> L.Trainer:
    """The Lightning ``Trainer`` of a k-step run (checkpoints as in distillation)."""
    quiet_lightning()
    out = Path(config.out_dir)
    accelerator, devices = _accelerator(config.device)
    return L.Trainer(
        accelerator=accelerator,
        devices=devices,
        precision=_precision(config, accelerator),
        max_epochs=max_epochs,
        accumulate_grad_batches=config.accumulate,
        gradient_clip_val=config.grad_clip if config.grad_clip > 0 else None,
        gradient_clip_algorithm="norm",
        callbacks=[
            *checkpoint_callbacks(out / CHECKPOINT_DIR, VAL_LOSS if validate else TRAIN_LOSS),
            *progress_bar_callbacks(progress),
        ],
        logger=CSVLogger(out, name="logs"),
        plugins=[AtomicCheckpointIO()],
        limit_val_batches=1.0 if validate else 0,
        use_distributed_sampler=False,  # the data module draws each epoch's batches itself
        inference_mode=False,
        num_sanity_val_steps=0,
        enable_progress_bar=progress,
        enable_model_summary=False,
        log_every_n_steps=10,
    )


def train_kstep(
    config: KStepTrainConfig,
    train_data: WindowSource,
    val_data: WindowSource | None = None,
    resume: bool = False,
    progress: bool = False,
    stop_after_epochs: int | None = None,
) -> KStepTrainResult:
    """Train (or resume) a k-step model; returns where the best model is.

    ``resume=True`` continues from ``out_dir/checkpoint/last.ckpt`` (weights, optimiser,
    schedule, EMA, history, epoch counter); without one the run starts fresh.
    ``stop_after_epochs``: end this call after that many epochs (a later ``resume=True`` call
    continues on the same schedule, exactly as if it had not stopped)."""
    return fit_kstep(config, train_data, val_data, resume, progress, stop_after_epochs)[0]


def fit_kstep(
    config: KStepTrainConfig,
    train_data: WindowSource,
    val_data: WindowSource | None = None,
    resume: bool = False,
    progress: bool = False,
    stop_after_epochs: int | None = None,
) -> tuple[KStepTrainResult, KStepModule]:
    """:func:`train_kstep`, also returning the Lightning module, which holds the best
    checkpoint's weights (``module.eval_model()`` is the exported model)."""
    start = time.perf_counter()
    if KStepLossWeights(**config.loss).rollout > 0:
        for name, source in (("training", train_data), ("validation", val_data)):
            if source is not None and not getattr(source, "rollout", False):
                raise ValueError(
                    f"loss weight rollout > 0 needs rollout windows, but the {name} windows "
                    "have none: KStepWindows(..., rollout=True) from a file built with "
                    "rollout=True (mlffd kstep dataset --rollout; mlffd kstep train "
                    "--rollout-weight serves them)"
                )
    out = Path(config.out_dir)
    last = out / CHECKPOINT_DIR / f"{LAST_CHECKPOINT_NAME}.ckpt"
    L.seed_everything(config.seed, workers=True, verbose=False)
    data = KStepDataModule(
        train_data,
        val_data,
        config.batch_size,
        config.seed,
        config.noise_positions,
        config.noise_velocities,
    )
    ckpt_path, epochs_before = None, 0
    if resume and last.is_file():
        checkpoint = load_checkpoint(last)
        model = _resumed_model(checkpoint, config)
        ckpt_path = str(last)
        epochs_before = len(checkpoint[CHECKPOINT_KEY]["history"])
        del checkpoint
    else:
        if resume and (out / CHECKPOINT_DIR / "trainer_state.json").is_file():
            print(
                f"--resume: {out / CHECKPOINT_DIR} is a checkpoint of the former k-step trainer, "
                "which this one cannot continue; starting fresh",
                file=sys.stderr,
            )
        model = build_kstep_model(config)
    batches = math.ceil(len(train_data) / config.batch_size)
    total_steps = max(math.ceil(batches / config.accumulate) * config.epochs, 1)
    module = KStepModule(
        model,
        KStepLossWeights(**config.loss),
        lr=config.lr,
        weight_decay=config.weight_decay,
        warmup_steps=config.warmup_steps,
        total_steps=total_steps,
        min_lr_ratio=config.min_lr_ratio,
        ema_decay=config.ema_decay,
    )
    max_epochs = config.epochs
    if stop_after_epochs is not None:
        max_epochs = min(max_epochs, epochs_before + stop_after_epochs)
    trainer = build_kstep_trainer(config, max_epochs, data.has_validation, progress)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* is not empty")
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)

    best = trainer.checkpoint_callback.best_model_path or str(last)
    export_checkpoint(module, best, out / BEST_DIR)
    best_record = load_checkpoint(best)[CHECKPOINT_KEY]["history"][-1]
    result = KStepTrainResult(
        out_dir=out,
        best_model=out / BEST_DIR,
        epochs_done=int(trainer.current_epoch),
        best_val_loss=float(best_record.get(VAL_LOSS, best_record[TRAIN_LOSS])),
        history=list(module.history),
        seconds=time.perf_counter() - start,
    )
    return result, module
