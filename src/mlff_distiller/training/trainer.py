"""``train(config) -> TrainResult``: one distillation run on Lightning, crash-safe and resumable.

Output directory layout (``config.out``)::

    config.yaml              the full config of the run
    split.json               the structure indices of the training and validation split
    checkpoints/last.ckpt    written atomically after every validation (``--resume`` reads it)
    checkpoints/best.ckpt    lowest validation force MAE so far
    logs/version_k/          CSV metrics;  tb/version_k/  TensorBoard events
    model/                   the exported student: model.safetensors + config.json (EMA
                             weights of the best checkpoint; load with models.io.load_model)
    result.json              the final numbers

Lightning checkpoints hold only tensors and plain Python values and are read back with
``torch.load(weights_only=True)``; the model file users get is safetensors + JSON, never a pickle.
Under ``torchrun`` the run is data-parallel (DDP; gloo on CPU, nccl on GPU).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.callbacks import (
    EarlyStopping,
    ModelCheckpoint,
    RichProgressBar,
    TQDMProgressBar,
)
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import DDPStrategy

from mlff_distiller.models.io import save_model
from mlff_distiller.models.painn import PaiNN, PaiNNConfig
from mlff_distiller.training.config import TrainConfig
from mlff_distiller.training.datamodule import HDF5DataModule
from mlff_distiller.training.module import (
    VAL_ENERGY_MAE,
    VAL_FORCE_MAE,
    VAL_FORCE_RMSE,
    DistillationModule,
)

MODEL_DIR = "model"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT_NAME = "last"  # checkpoints/last.ckpt


@dataclass
class TrainResult:
    """What a finished run produced. MAEs in meV/Å (forces) and meV/atom (energy)."""

    out_dir: str
    model_path: str
    best_checkpoint: str
    best_val_force_mae: float
    val_energy_mae: float
    val_force_mae: float
    val_force_rmse: float
    epochs: int
    global_step: int
    stopped_by: str
    wall_s: float
    n_train: int
    n_val: int
    world_size: int
    ddp_max_param_diff: float = 0.0
    """Largest difference of any weight between DDP ranks at the end (0 when in sync)."""

    def to_dict(self) -> dict:
        return asdict(self)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes checkpoints to a temporary file and renames it into place (a ``kill -9`` never
    leaves a half-written ``last.ckpt``), and reads them with ``weights_only=True``."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        return load_checkpoint(path, map_location)

    def remove_checkpoint(self, path) -> None:
        fs = get_filesystem(path)
        if fs.exists(path):
            fs.rm(path, recursive=True)


def load_checkpoint(path: str | Path, map_location=None) -> dict:
    """Read a training checkpoint without unpickling code (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint '{path}' not found")
    return torch.load(path, map_location=map_location or "cpu", weights_only=True)


def _accelerator(config: TrainConfig) -> str:
    if config.accelerator == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    if config.accelerator == "gpu" and not torch.cuda.is_available():
        raise ValueError("accelerator 'gpu' asked for but no CUDA device is visible; use 'cpu'")
    return config.accelerator


def _precision(config: TrainConfig, accelerator: str) -> str:
    if config.precision in ("bf16-mixed", "16-mixed") and accelerator != "gpu":
        raise ValueError(
            f"precision '{config.precision}' needs a GPU; on the CPU use '32-true' or '64-true'"
        )
    return config.precision


def _dtype(precision: str) -> torch.dtype:
    return torch.float64 if precision == "64-true" else torch.float32


def _distributed(accelerator: str) -> tuple[object, int, int]:
    """(strategy, devices per node, nodes): DDP when launched by torchrun, else one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return "auto", 1, 1
    local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    backend = "nccl" if accelerator == "gpu" else "gloo"
    return DDPStrategy(process_group_backend=backend), local, max(world // local, 1)


def build_model(config: TrainConfig) -> PaiNN:
    """A fresh PaiNN with the architecture fields of ``config``."""
    return PaiNN(
        PaiNNConfig(
            hidden=config.hidden,
            n_interactions=config.n_interactions,
            n_rbf=config.n_rbf,
            cutoff=config.cutoff,
            shared_filters=config.shared_filters,
        )
    )


def warm_start(model: PaiNN, path: str | Path) -> None:
    """Copy the weights and buffers (reference energies, scale, shift, known elements) of the
    saved model at ``path`` into ``model``; the architectures must match."""
    from mlff_distiller.models.io import ModelFileError, load_model

    source = load_model(path, architecture=model.architecture)
    if source.config != model.config:
        raise ModelFileError(
            f"init_from {path}: its architecture {source.config} differs from this run's "
            f"{model.config}"
        )
    model.load_state_dict(source.to(next(model.parameters()).dtype).state_dict())


def progress_bar_callbacks(enabled: bool) -> list:
    """The progress bar of a run: rich on a terminal, tqdm otherwise, none when disabled."""
    if not enabled:
        return []
    if sys.stdout.isatty():
        return [RichProgressBar(leave=True)]
    return [TQDMProgressBar(refresh_rate=20)]


def _progress_bar(config: TrainConfig) -> list:
    return progress_bar_callbacks(config.progress_bar)


def checkpoint_callbacks(dirpath: str | Path, monitor: str) -> list[ModelCheckpoint]:
    """``best.ckpt`` (lowest ``monitor`` so far) and ``last.ckpt`` (after every epoch's
    validation) in ``dirpath``; the first is ``trainer.checkpoint_callback``."""
    checkpoint = ModelCheckpoint(
        dirpath=dirpath,
        filename="best",
        monitor=monitor,
        mode="min",
        save_top_k=1,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    # Lightning's save_last writes last.ckpt only when a better checkpoint is saved; a second
    # callback writes it after every validation, so a kill loses at most one epoch
    last = ModelCheckpoint(
        dirpath=dirpath,
        filename=LAST_CHECKPOINT_NAME,
        monitor=None,
        save_top_k=1,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    return [checkpoint, last]


def quiet_lightning() -> None:
    """Silence Lightning's info lines and the small-dataset logging-interval warning."""
    # Lightning's info lines (accelerator summary, a logging-service advert) are noise in our
    # CLI: the run's own summary states the device and why training stopped.
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    # small datasets (active learning's first rounds) have fewer batches than the logging
    # interval; the per-epoch training RMSE is logged regardless
    warnings.filterwarnings("ignore", message=r"The number of training batches .* logging")


def export_checkpoint(module: L.LightningModule, checkpoint: str | Path, model_dir: str | Path):
    """Load ``checkpoint``'s weights (``weights_only=True``) into ``module`` and save its
    ``eval_model()`` (the EMA copy when there is one) to ``model_dir`` as safetensors + JSON.
    Returns the exported model (on the CPU)."""
    module.load_state_dict(load_checkpoint(checkpoint)["state_dict"])
    final = module.eval_model().to("cpu")
    save_model(final, model_dir)
    return final


def build_trainer(config: TrainConfig) -> L.Trainer:
    """The Lightning ``Trainer`` of a run: checkpoints, early stopping, loggers, DDP."""
    quiet_lightning()
    out = config.out_dir
    accelerator = _accelerator(config)
    precision = _precision(config, accelerator)
    strategy, devices, nodes = _distributed(accelerator)
    callbacks: list = [
        *checkpoint_callbacks(out / CHECKPOINT_DIR, VAL_FORCE_MAE),
        *_progress_bar(config),
    ]
    if config.patience > 0:
        callbacks.append(EarlyStopping(monitor=VAL_FORCE_MAE, mode="min", patience=config.patience))
    return L.Trainer(
        accelerator=accelerator,
        devices=devices,
        num_nodes=nodes,
        strategy=strategy,
        precision=precision,
        max_epochs=config.max_epochs,
        max_time=timedelta(minutes=config.max_time_min) if config.max_time_min > 0 else None,
        gradient_clip_val=config.grad_clip if config.grad_clip > 0 else None,
        gradient_clip_algorithm="norm",
        check_val_every_n_epoch=config.val_every_n_epochs,
        callbacks=callbacks,
        logger=[CSVLogger(out, name="logs"), TensorBoardLogger(out, name="tb")],
        plugins=[AtomicCheckpointIO()],
        deterministic=True if accelerator == "cpu" else "warn",
        inference_mode=False,  # validation needs autograd forces
        num_sanity_val_steps=0,
        enable_progress_bar=config.progress_bar,
        enable_model_summary=False,
        log_every_n_steps=10,
    )


# Lightning-internal deprecation noise that says nothing about the user's run
warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")


def train(config: TrainConfig, resume: bool = False) -> TrainResult:
    """Train a student on ``config.data`` and export it to ``<out>/model/``.

    ``resume=True`` continues from ``<out>/checkpoints/last.ckpt`` (weights, optimiser, schedule,
    EMA, early-stopping state, epoch counter); without one the run starts fresh.
    """
    start = time.perf_counter()
    out = config.out_dir
    last = out / CHECKPOINT_DIR / f"{LAST_CHECKPOINT_NAME}.ckpt"
    ckpt_path = None
    if resume:
        if last.is_file():
            ckpt_path = str(last)
        else:
            print(f"--resume: no checkpoint at '{last}' yet, starting fresh", file=sys.stderr)
    L.seed_everything(config.seed, workers=True, verbose=False)
    datamodule = HDF5DataModule(config, dtype=_dtype(config.precision))
    trainer = build_trainer(config)
    model = build_model(config)
    datamodule.fit_statistics(model)
    if config.init_from and ckpt_path is None:
        warm_start(model, config.init_from)
    module = DistillationModule(model, config)
    model.compile_forces(config.compile)  # the training copy only; the EMA copy stays eager
    if trainer.is_global_zero:
        out.mkdir(parents=True, exist_ok=True)
        config.save(out / "config.yaml")
        split = {"train": datamodule.train_indices.tolist(), "val": datamodule.val_indices.tolist()}
        (out / "split.json").write_text(json.dumps(split))

    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)

    param_diff = ranks_param_spread(module.model) if trainer.world_size > 1 else 0.0
    checkpoint_cb = trainer.checkpoint_callback
    best = checkpoint_cb.best_model_path or str(last)
    result = None
    if trainer.is_global_zero:
        export_checkpoint(module, best, out / MODEL_DIR)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        result = TrainResult(
            out_dir=str(out),
            model_path=str(out / MODEL_DIR),
            best_checkpoint=str(best),
            best_val_force_mae=float(checkpoint_cb.best_model_score or float("nan")),
            val_energy_mae=metrics.get(VAL_ENERGY_MAE, float("nan")),
            val_force_mae=metrics.get(VAL_FORCE_MAE, float("nan")),
            val_force_rmse=metrics.get(VAL_FORCE_RMSE, float("nan")),
            epochs=int(trainer.current_epoch),
            global_step=int(trainer.global_step),
            stopped_by=_stop_reason(trainer, config),
            wall_s=time.perf_counter() - start,
            n_train=len(datamodule.train_indices),
            n_val=len(datamodule.val_indices),
            world_size=int(trainer.world_size),
            ddp_max_param_diff=param_diff,
        )
        (out / "result.json").write_text(json.dumps(result.to_dict(), indent=2))
    if trainer.world_size > 1:
        trainer.strategy.barrier()
        close_process_group()
    if result is None:  # other ranks read what rank 0 wrote
        result = TrainResult(**json.loads((out / "result.json").read_text()))
    return result


def close_process_group() -> None:
    """Destroy the DDP process group once every rank is done with it. Left to the interpreter's
    exit, gloo's worker threads can outlive it and abort a rank ("terminate called without an
    active exception", exit code -6), failing a run that had finished."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def ranks_param_spread(model: torch.nn.Module) -> float:
    """Max over weights of (max over ranks - min over ranks): 0 when all ranks hold the same
    weights. Collective: every rank must call it."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return 0.0
    flat = torch.cat([p.detach().reshape(-1).double() for p in model.parameters()])
    hi, lo = flat.clone(), flat.clone()
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    return float((hi - lo).max())


def _stop_reason(trainer: L.Trainer, config: TrainConfig) -> str:
    for cb in trainer.callbacks:
        if isinstance(cb, EarlyStopping) and cb.stopped_epoch > 0:
            return "early_stopping"
    if trainer.current_epoch >= config.max_epochs:
        return "max_epochs"
    if config.max_time_min > 0:
        return "max_time"
    return "interrupted"
