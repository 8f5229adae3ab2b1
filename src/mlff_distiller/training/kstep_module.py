"""The Lightning module of the k-step jump networks (EGNN, Transformer-EGNN).

Loss: :func:`mlff_distiller.training.kstep_losses.kstep_loss` on ``(KStepInput, KStepTargets)``
batches (:mod:`mlff_distiller.training.kstep_datamodule`), computed in fp32 on the network's
outputs (the forward pass may run under bf16 autocast). Optimiser: AdamW over the trainable
weights (frozen layers excluded), stepped per optimiser step on the shared linear warm-up +
cosine schedule (:class:`mlff_distiller.training.module.warmup_cosine`); optionally an
exponential moving average of the weights (:class:`mlff_distiller.training.ema.
ExponentialMovingAverage`, as in distillation), which validation and the exported model use.

Each epoch appends one record to :attr:`KStepModule.history`: the window-weighted means of the
loss and its parts over the epoch's training batches (``train_*``) and over the validation split
(``val_*``, in fp32, without noise), ``epoch`` and the learning rate ``lr`` at its end. The
history travels in every checkpoint (plain floats), with the architecture and configuration
of the network, so a resumed run needs nothing but the checkpoint.
"""

from __future__ import annotations

import dataclasses

import lightning as L
import torch
from torch import nn

from mlff_distiller.training.ema import ExponentialMovingAverage
from mlff_distiller.training.kstep_losses import KStepLossWeights, kstep_loss
from mlff_distiller.training.kstep_rollout import rollout_loss
from mlff_distiller.training.module import warmup_cosine

TRAIN_LOSS = "train_loss"
VAL_LOSS = "val_loss"
CHECKPOINT_KEY = "kstep"  # checkpoint["kstep"]: architecture, model config, history


def kstep_architectures() -> dict[str, tuple[type, type[nn.Module]]]:
    """Architecture name -> (config class, model class) of the k-step networks."""
    from mlff_distiller.models.egnn import EGNNConfig, EGNNJump
    from mlff_distiller.models.transformer_egnn import TransformerEGNNConfig, TransformerEGNNJump

    return {
        "egnn": (EGNNConfig, EGNNJump),
        "transformer_egnn": (TransformerEGNNConfig, TransformerEGNNJump),
    }


def build_jump_network(architecture: str, config: dict) -> nn.Module:
    """A fresh k-step network of ``architecture`` with hyper-parameters ``config``."""
    archs = kstep_architectures()
    if architecture not in archs:
        raise ValueError(f"{architecture!r} is not a k-step architecture ({sorted(archs)})")
    config_cls, model_cls = archs[architecture]
    return model_cls(config_cls(**config))


def freeze_first_layers(model: nn.Module, n_layers: int) -> list[str]:
    """Freeze the input embeddings and the first ``n_layers`` message-passing layers (and their
    attention blocks). Returns the frozen parameter names."""
    if n_layers <= 0:
        return []
    if n_layers > len(model.layers):
        raise ValueError(f"cannot freeze {n_layers} layers of a {len(model.layers)}-layer model")
    prefixes = ["embed.", "vec_in.", "element_embedding."]
    prefixes += [f"layers.{i}." for i in range(n_layers)]
    prefixes += [f"attention.{i}." for i in range(n_layers)]
    frozen = []
    for name, p in model.named_parameters():
        if any(name.startswith(pre) for pre in prefixes):
            p.requires_grad_(False)
            frozen.append(name)
    return frozen


def _add(sums: dict[str, torch.Tensor], values: dict[str, torch.Tensor], weight: int) -> None:
    for key, value in values.items():
        value = value.detach().double() * weight
        sums[key] = sums[key] + value if key in sums else value


class KStepModule(L.LightningModule):
    """Wraps a jump network for training on k-step windows."""

    def __init__(
        self,
        model: nn.Module,
        weights: KStepLossWeights | None = None,
        lr: float = 1e-3,
        weight_decay: float = 1e-5,
        warmup_steps: int = 50,
        total_steps: int = 1,
        min_lr_ratio: float = 0.05,
        ema_decay: float = 0.0,
    ):
        super().__init__()
        self.model = model
        self.weights = weights or KStepLossWeights()
        self.lr, self.weight_decay = lr, weight_decay
        self.warmup_steps, self.total_steps = warmup_steps, max(int(total_steps), 1)
        self.min_lr_ratio = min_lr_ratio
        self.ema = ExponentialMovingAverage(model, ema_decay) if ema_decay > 0 else None
        self.history: list[dict[str, float]] = []
        self._train_sums: dict[str, torch.Tensor] = {}
        self._train_count = 0
        self._val_sums: dict[str, torch.Tensor] = {}
        self._val_count = 0
        self._val_record: dict[str, float] = {}

    def eval_model(self) -> nn.Module:
        """The weights validation and export use: the EMA copy when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def forward(self, inp):
        return self.model(inp)

    def _loss(self, model: nn.Module, inp, tgt):
        outputs = {k: v.float() for k, v in model(inp).items()}
        total, parts = kstep_loss(outputs, inp.positions, tgt, self.weights, inp)
        if self.weights.rollout > 0:
            parts["rollout"] = rollout_loss(model, outputs, inp, tgt)
            total = total + self.weights.rollout * parts["rollout"]
            parts["rollout"] = parts["rollout"].detach()
        return total, parts

    # ------------------------------------------------------------------ training
    def on_train_epoch_start(self) -> None:
        self._train_sums, self._train_count = {}, 0
        self._val_record = {}

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        inp, tgt = batch
        loss, parts = self._loss(self.model, inp, tgt)
        _add(self._train_sums, {"loss": loss, **parts}, inp.n_systems)
        self._train_count += inp.n_systems
        return loss

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:  # once per optimiser step (not per accumulated batch)
            self.ema.update(self.model)

    def on_train_epoch_end(self) -> None:
        count = max(self._train_count, 1)
        record = {f"train_{k}": float(v) / count for k, v in self._train_sums.items()}
        record["epoch"] = int(self.current_epoch) + 1
        record["lr"] = float(self.optimizers().param_groups[0]["lr"])
        record.update(self._val_record)
        self.history.append(record)
        # before the checkpoint callbacks run: they monitor it and save the history
        self.log(TRAIN_LOSS, record[TRAIN_LOSS], prog_bar=True)

    # ------------------------------------------------------------------ validation
    def on_validation_epoch_start(self) -> None:
        self._val_sums, self._val_count = {}, 0

    def validation_step(self, batch, batch_idx: int) -> None:
        inp, tgt = batch
        with torch.autocast(self.device.type, enabled=False):  # validation in fp32
            loss, parts = self._loss(self.eval_model(), inp, tgt)
        _add(self._val_sums, {"loss": loss, **parts}, inp.n_systems)
        self._val_count += inp.n_systems

    def on_validation_epoch_end(self) -> None:
        count = max(self._val_count, 1)
        self._val_record = {f"val_{k}": float(v) / count for k, v in self._val_sums.items()}
        if VAL_LOSS in self._val_record:
            self.log(VAL_LOSS, self._val_record[VAL_LOSS], prog_bar=True)

    # ------------------------------------------------------------------ optimiser
    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        schedule = warmup_cosine(self.warmup_steps, self.total_steps, self.min_lr_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = {
            "architecture": self.model.architecture,
            "model_config": dataclasses.asdict(self.model.config),
            "history": [dict(record) for record in self.history],
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get(CHECKPOINT_KEY, {})
        self.history = [dict(record) for record in saved.get("history", [])]
