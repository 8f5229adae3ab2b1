"""The Lightning module of distillation: loss, optimiser, schedule, EMA and validation metrics.

Training differentiates the force loss through the forces of ``config.force_method``: the
hand-derived backward recorded by autograd ("analytical", optionally compiled) or autograd's
double backward ("autograd"); both give the same parameter gradients. With
``config.hessian_weight > 0`` (Hessian-informed distillation) a step computes energy, forces and
the labelled Hessian rows by autograd (:mod:`mlff_distiller.models.hessian`) and adds
``hessian_weight * MSE(rows)``.
validation runs the EMA copy of the weights and reports, over the whole validation split and
all DDP ranks: energy MAE (meV/atom), force MAE and RMSE (meV/Å).
"""

from __future__ import annotations

import math

import lightning as L
import torch
from torch import nn

from mlff_distiller import keys
from mlff_distiller.data.batch import AtomsBatch
from mlff_distiller.training.config import TrainConfig
from mlff_distiller.training.ema import ExponentialMovingAverage
from mlff_distiller.training.losses import distillation_loss, hessian_rows_mse

VAL_FORCE_MAE = "val_force_mae"
"""Name of the logged validation force MAE (meV/Å): early stopping and the best checkpoint."""
VAL_ENERGY_MAE = "val_energy_mae"
VAL_FORCE_RMSE = "val_force_rmse"


def predict_energy_forces(
    model: nn.Module, batch: AtomsBatch, create_graph: bool, method: str = "analytical"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Energy (n_systems,) and forces (n_atoms, 3) of ``model`` on ``batch``.

    ``method``: "analytical" or "autograd" (``PaiNN.energy_and_forces``); ``create_graph=True``
    makes both differentiable w.r.t. the parameters, with the same gradients.
    """
    out = model.energy_and_forces(batch, method=method, create_graph=create_graph)
    return out[keys.ENERGY], out[keys.FORCES]


class DistillationModule(L.LightningModule):
    """Wraps a student model (e.g. PaiNN) for training on energy and force labels."""

    def __init__(self, model: nn.Module, config: TrainConfig):
        super().__init__()
        self.model = model
        self.config = config
        self.ema = (
            ExponentialMovingAverage(model, config.ema_decay) if config.ema_decay > 0 else None
        )
        self._val_sums: torch.Tensor | None = None
        # running [loss, force MSE, steps] sums: since the last log, and over the epoch
        self._window_sums: torch.Tensor | None = None
        self._epoch_sums: torch.Tensor | None = None

    # ------------------------------------------------------------------ models
    def eval_model(self) -> nn.Module:
        """The weights validation and export use: the EMA copy when there is one."""
        return self.ema.module if self.ema is not None else self.model

    # ------------------------------------------------------------------ training
    def training_step(self, batch: AtomsBatch, batch_idx: int) -> torch.Tensor:
        with_hessian = self.config.hessian_weight > 0 and keys.HESSIAN_INDEX in batch.labels
        if with_hessian:  # forces and Hessian rows from one autograd graph
            from mlff_distiller.models.hessian import energy_forces_hessian_rows

            out = energy_forces_hessian_rows(
                self.model, batch, batch.labels[keys.HESSIAN_INDEX], create_graph=True
            )
            energy, forces = out[keys.ENERGY], out[keys.FORCES]
        else:
            energy, forces = predict_energy_forces(
                self.model, batch, create_graph=True, method=self.config.force_method
            )
        parts = distillation_loss(
            energy,
            batch.labels[keys.ENERGY],
            forces,
            batch.labels[keys.FORCES],
            batch.atoms_per_system,
            self.config.energy_weight,
            self.config.forces_weight,
            self.config.force_loss,
            self.config.huber_delta,
        )
        if with_hessian:
            hessian = hessian_rows_mse(
                out[keys.HESSIAN_ROWS],
                batch.labels[keys.HESSIAN_ROWS],
                batch.labels[keys.HESSIAN_INDEX],
                batch.system_idx,
            )
            parts["loss"] = parts["loss"] + self.config.hessian_weight * hessian
            if (self.global_step + 1) % max(self.trainer.log_every_n_steps, 1) == 0:
                self.log("train_hessian_rmse_step", hessian.detach().sqrt(), batch_size=1)
        # Lightning's self.log costs ~1-2 ms per call on a CPU (and a DDP all-reduce with
        # sync_dist): sum the step values in one tensor and log means every log_every_n_steps
        step = torch.stack(
            [parts["loss"].detach(), parts["forces_mse"].detach(), parts["loss"].new_ones(())]
        )
        self._window_sums = step if self._window_sums is None else self._window_sums + step
        self._epoch_sums = step if self._epoch_sums is None else self._epoch_sums + step
        if (self.global_step + 1) % max(self.trainer.log_every_n_steps, 1) == 0:
            window, self._window_sums = self._window_sums, None
            n = batch.n_systems
            self.log("train_loss", window[0] / window[2], prog_bar=True, batch_size=n)
            self.log("train_force_rmse_step", (window[1] / window[2]).sqrt() * 1000.0, batch_size=n)
            self.log("lr", self.optimizers().param_groups[0]["lr"], batch_size=n)
        return parts["loss"]

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        cfg = self.config
        scale = None
        if cfg.schedule == "plateau" and self.global_step < cfg.warmup_steps:
            scale = (self.global_step + 1) / cfg.warmup_steps  # warm-up before the plateau rule
        elif cfg.schedule == "cosine" and cfg.max_time_min > 0:
            # with a wall-clock budget the cosine runs on max(step fraction, time fraction), so
            # that the learning rate has decayed when the budget ends, whichever comes first
            lam = warmup_cosine(cfg.warmup_steps, self._total_steps(), cfg.min_lr_ratio)
            scale = lam(self.global_step, progress_floor=self._time_fraction())
        if scale is not None:
            for group in self.optimizers().param_groups:
                group["lr"] = cfg.lr * scale

    def _total_steps(self) -> int:
        return max(int(self.trainer.estimated_stepping_batches), 1)

    def _time_fraction(self) -> float:
        """Fraction of the wall-clock budget spent (Lightning's Timer survives a resume)."""
        from lightning.pytorch.callbacks import Timer

        timer = next((cb for cb in self.trainer.callbacks if isinstance(cb, Timer)), None)
        if timer is None:
            return 0.0
        fraction = timer.time_elapsed("train") / (self.config.max_time_min * 60.0)
        if self.trainer.world_size > 1:
            # ranks' clocks differ slightly: take the largest so that every rank applies the
            # same learning rate (different rates would let the replicas' weights drift apart)
            value = torch.tensor([fraction], dtype=torch.float64, device=self.device)
            fraction = float(self.trainer.strategy.reduce(value, reduce_op="max").item())
        return fraction

    def on_train_epoch_start(self) -> None:
        self._window_sums = self._epoch_sums = None

    def on_train_epoch_end(self) -> None:
        if self._epoch_sums is not None:  # training RMSE over the epoch, averaged over ranks
            rmse = (self._epoch_sums[1] / self._epoch_sums[2]).sqrt() * 1000.0
            self.log("train_force_rmse_epoch", rmse, sync_dist=True)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update(self.model)

    # ------------------------------------------------------------------ validation
    def on_validation_epoch_start(self) -> None:
        # sum |dE|/N, n structures, sum |dF|, sum dF^2, n force components
        self._val_sums = torch.zeros(5, dtype=torch.float64, device=self.device)

    def validation_step(self, batch: AtomsBatch, batch_idx: int) -> None:
        model = self.eval_model()
        with torch.enable_grad():
            energy, forces = predict_energy_forces(
                model, batch, create_graph=False, method=self.config.force_method
            )
        energy, forces = energy.detach().double(), forces.detach().double()
        de = (energy - batch.labels[keys.ENERGY].double()).abs() / batch.atoms_per_system
        df = forces - batch.labels[keys.FORCES].double()
        self._val_sums += torch.stack(
            [
                de.sum(),
                torch.tensor(float(de.numel()), dtype=torch.float64, device=de.device),
                df.abs().sum(),
                (df * df).sum(),
                torch.tensor(float(df.numel()), dtype=torch.float64, device=df.device),
            ]
        )

    def on_validation_epoch_end(self) -> None:
        sums = self.trainer.strategy.reduce(self._val_sums, reduce_op="sum")
        e_mae = sums[0] / sums[1] * 1000.0
        f_mae = sums[2] / sums[4] * 1000.0
        f_rmse = torch.sqrt(sums[3] / sums[4]) * 1000.0
        # already summed over ranks: sync_dist averages identical values (and keeps Lightning quiet)
        self.log(VAL_ENERGY_MAE, e_mae.float(), prog_bar=True, sync_dist=True)
        self.log(VAL_FORCE_MAE, f_mae.float(), prog_bar=True, sync_dist=True)
        self.log(VAL_FORCE_RMSE, f_rmse.float(), sync_dist=True)

    # ------------------------------------------------------------------ optimiser
    def configure_optimizers(self):
        cfg = self.config
        params = list(self.model.parameters())
        # the fused kernel updates every tensor in one op (about 5x less optimiser time for a
        # ~30-tensor student on a CPU thread); same update rule as the default loop
        fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
        if cfg.schedule == "plateau":
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="min", factor=cfg.plateau_factor, patience=cfg.plateau_patience
            )
            return {
                "optimizer": optimizer,
                "lr_scheduler": {
                    "scheduler": scheduler,
                    "monitor": VAL_FORCE_MAE,
                    "interval": "epoch",
                    "frequency": cfg.val_every_n_epochs,
                },
            }
        if cfg.max_time_min > 0:  # time-aware cosine, set per step in on_train_batch_start
            return optimizer
        lam = warmup_cosine(cfg.warmup_steps, self._total_steps(), cfg.min_lr_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lam)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


class warmup_cosine:  # noqa: N801 (a picklable function object)
    """LR factor at step t: linear warm-up over ``warmup`` steps, then a cosine from 1 down to
    ``min_ratio`` at step ``total`` (or earlier: ``progress_floor`` in [0, 1] is a lower bound
    on the cosine's progress, e.g. the fraction of a time budget already spent)."""

    def __init__(self, warmup: int, total: int, min_ratio: float):
        self.warmup, self.total, self.min_ratio = warmup, total, min_ratio

    def __call__(self, step: int, progress_floor: float = 0.0) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        span = max(self.total - self.warmup, 1)
        progress = min(max((step - self.warmup) / span, progress_floor), 1.0)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
