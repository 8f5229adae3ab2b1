"""Training loop of the k-step jump networks (EGNN, Transformer-EGNN).

A plain PyTorch loop rather than the distillation Lightning module: the k-step batches are
``(KStepInput, KStepTargets)`` pairs, not ``AtomsBatch`` energies/forces, and everything the
brief asks for (AdamW, linear warm-up then cosine via the shared :class:`warmup_cosine`,
gradient clipping and accumulation, bf16 autocast on GPU, checkpoints and resume, transfer
learning) fits in one short module. Data come from any object with
``batches(batch_size, shuffle, seed) -> Iterator[(KStepInput, KStepTargets)]`` and ``len()``
(e.g. :class:`mlff_distiller.kstep.dataset.KStepWindows`).

Noise augmentation (``noise_positions`` Å, ``noise_velocities`` Å/fs for a hydrogen atom,
scaled by ``sqrt(m_H / m)`` for heavier atoms so that every atom gets the same kinetic-energy
noise): each training batch's ``x_t, v_t`` are perturbed by fresh Gaussian noise (centre-of-mass
and momentum free) while the targets stay the true ``x_{t+k}, v_{t+k}``, so the network learns
to pull a state that left the data manifold back onto it, as the hybrid MD needs after a slightly
wrong jump (:func:`perturb_windows`).

Checkpoints (``out_dir/checkpoint/``): the model as ``model.safetensors`` + ``config.json``
(:func:`mlff_distiller.models.io.save_model`), ``trainer_state.json`` (epoch, step, history,
config) and ``optimizer.pt`` (optimizer and scheduler state dicts, plain tensors, read back
with ``weights_only=True``). The best model by validation loss goes to ``out_dir/best/``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from mlff_distiller.models.io import load_model, save_model
from mlff_distiller.models.kstep_common import KStepInput
from mlff_distiller.training.kstep_losses import KStepLossWeights, KStepTargets, kstep_loss
from mlff_distiller.training.module import warmup_cosine


class WindowSource(Protocol):
    def __len__(self) -> int: ...

    def batches(
        self, batch_size: int, shuffle: bool = False, seed: int = 0
    ) -> Iterator[tuple[KStepInput, KStepTargets]]: ...


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
        if model.architecture not in ("egnn", "transformer_egnn"):
            raise ValueError(f"{config.init_from} is not a k-step model ({model.architecture})")
        model.float().train()
        freeze_first_layers(model, config.freeze_layers)
        return model
    if config.architecture == "egnn":
        from mlff_distiller.models.egnn import EGNNConfig, EGNNJump

        return EGNNJump(EGNNConfig(**config.model))
    from mlff_distiller.models.transformer_egnn import TransformerEGNNConfig, TransformerEGNNJump

    return TransformerEGNNJump(TransformerEGNNConfig(**config.model))


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


HYDROGEN_MASS = 1.008  # amu


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
    new_inp = KStepInput(**{**inp.__dict__, "positions": x + e_x, "velocities": v + e_v})
    new_tgt = KStepTargets(
        **{
            **tgt.__dict__,
            "delta_positions": tgt.delta_positions - e_x,
            "delta_velocities": tgt.delta_velocities - e_v,
        }
    )
    return new_inp, new_tgt


def _device(config: KStepTrainConfig) -> torch.device:
    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(config.device)


def evaluate_kstep(
    model: nn.Module, data: WindowSource, batch_size: int, weights: KStepLossWeights, device
) -> dict[str, float]:
    """Mean loss parts over ``data`` (weighted by windows)."""
    model.eval()
    sums: dict[str, float] = {}
    count = 0
    with torch.no_grad():
        for inp, tgt in data.batches(batch_size, shuffle=False):
            inp, tgt = inp.to(device), tgt.to(device)
            total, parts = kstep_loss(model(inp), inp.positions, tgt, weights, inp)
            n = inp.n_systems
            for key, value in {"loss": total.detach(), **parts}.items():
                sums[key] = sums.get(key, 0.0) + float(value) * n
            count += n
    model.train()
    return {key: value / max(count, 1) for key, value in sums.items()}


def train_kstep(
    config: KStepTrainConfig,
    train_data: WindowSource,
    val_data: WindowSource | None = None,
    resume: bool = False,
    progress: bool = False,
    stop_after_epochs: int | None = None,
) -> KStepTrainResult:
    """Train (or resume) a k-step model; returns where the best model is.

    ``stop_after_epochs``: end this call after that many epochs (a later ``resume=True`` call
    continues on the same schedule, exactly as if it had not stopped)."""
    torch.manual_seed(config.seed)
    start = time.perf_counter()
    out = Path(config.out_dir)
    ckpt = out / "checkpoint"
    device = _device(config)
    weights = KStepLossWeights(**config.loss)
    if len(train_data) == 0:
        raise ValueError("no training windows: check the window file's train split and k values")

    state: dict[str, Any] = {"epoch": 0, "step": 0, "best_val": math.inf, "history": []}
    if resume and (ckpt / "trainer_state.json").is_file():
        model = load_model(ckpt).float().train()
        freeze_first_layers(model, config.freeze_layers if config.init_from else 0)
        state = json.loads((ckpt / "trainer_state.json").read_text())
    else:
        model = build_kstep_model(config)
    model.to(device).train()

    steps_per_epoch = math.ceil(math.ceil(len(train_data) / config.batch_size) / config.accumulate)
    total_steps = max(steps_per_epoch * config.epochs, 1)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    schedule = warmup_cosine(config.warmup_steps, total_steps, config.min_lr_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    if resume and (ckpt / "optimizer.pt").is_file():
        saved = torch.load(ckpt / "optimizer.pt", map_location=device, weights_only=True)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])

    use_bf16 = config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda")
    last_epoch = config.epochs
    if stop_after_epochs is not None:
        last_epoch = min(last_epoch, int(state["epoch"]) + stop_after_epochs)
    epochs = range(int(state["epoch"]), last_epoch)
    if progress:
        from rich.progress import track

        epochs = track(epochs, description="k-step training")
    for epoch in epochs:
        sums, n_seen = {}, 0
        optimizer.zero_grad(set_to_none=True)
        batches = list(
            train_data.batches(config.batch_size, shuffle=True, seed=config.seed + epoch)
        )
        noisy = config.noise_positions > 0 or config.noise_velocities > 0
        noise_rng = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        for i, (inp, tgt) in enumerate(batches):
            if noisy:
                inp, tgt = perturb_windows(
                    inp, tgt, config.noise_positions, config.noise_velocities, noise_rng
                )
            inp, tgt = inp.to(device), tgt.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                outputs = model(inp)
            outputs = {k: v.float() for k, v in outputs.items()}
            loss, parts = kstep_loss(outputs, inp.positions, tgt, weights, inp)
            (loss / config.accumulate).backward()
            last = i == len(batches) - 1
            if (i + 1) % config.accumulate == 0 or last:
                if config.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                state["step"] += 1
            for key, value in {"loss": loss.detach(), **parts}.items():
                sums[key] = sums.get(key, 0.0) + float(value) * inp.n_systems
            n_seen += inp.n_systems
        record = {f"train_{k}": v / max(n_seen, 1) for k, v in sums.items()}
        record["epoch"] = epoch + 1
        record["lr"] = optimizer.param_groups[0]["lr"]
        if val_data is not None and len(val_data):
            val = evaluate_kstep(model, val_data, config.batch_size, weights, device)
            record.update({f"val_{k}": v for k, v in val.items()})
        monitored = record.get("val_loss", record["train_loss"])
        if monitored < state["best_val"]:
            state["best_val"] = monitored
            save_model(model, out / "best")
        state["epoch"] = epoch + 1
        state["history"].append(record)
        _save_checkpoint(ckpt, model, optimizer, scheduler, state, config)
    return KStepTrainResult(
        out_dir=out,
        best_model=out / "best",
        epochs_done=int(state["epoch"]),
        best_val_loss=float(state["best_val"]),
        history=state["history"],
        seconds=time.perf_counter() - start,
    )


def _save_checkpoint(ckpt: Path, model, optimizer, scheduler, state: dict, config) -> None:
    """Write the checkpoint into a temporary directory, then swap it in (crash-safe)."""
    import shutil

    tmp = ckpt.with_name(ckpt.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(model, tmp)
    torch.save(
        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
        tmp / "optimizer.pt",
    )
    (tmp / "trainer_state.json").write_text(
        json.dumps({**state, "config": asdict(config)}, indent=2, default=str)
    )
    old = ckpt.with_name(ckpt.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if ckpt.exists():
        ckpt.rename(old)
    tmp.rename(ckpt)
    shutil.rmtree(old, ignore_errors=True)
