"""``mlffd train``: distil a PaiNN student from an HDF5 dataset of teacher labels.

Every :class:`~mlff_distiller.training.config.TrainConfig` field is an option ``--field-name``
(built from the dataclass, so the YAML keys and the options cannot drift apart); options given
on the command line override the ``--config`` YAML file.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

import typer

from mlff_distiller.cli._common import console, user_errors

HELP = {
    "data": "HDF5 dataset with energy and force labels",
    "split": "split by 'frame' or by 'molecule'",
    "train_size": "training split: fraction (<1) or count (>=1)",
    "val_size": "validation split: fraction (<1) or count (>=1)",
    "size": "a named student size: 'fast', 'balanced' or 'accurate' (README table: ms per "
    "call and rMD17 accuracy); sets hidden, n_interactions, n_rbf, cutoff and shared_filters "
    "where they are left at their defaults",
    "hidden": "PaiNN hidden features",
    "shared_filters": "one filter network shared by all interaction blocks (faster)",
    "init_from": "a saved model of the same architecture whose weights (and reference energies) "
    "start this training (warm start; the optimiser starts fresh)",
    "n_interactions": "PaiNN interaction blocks",
    "n_rbf": "radial basis functions",
    "cutoff": "cutoff radius, Å",
    "energy_weight": "weight of the energy-per-atom MSE (eV^2)",
    "forces_weight": "weight of the force term",
    "force_loss": "force term: 'mse' (per component), 'l2mae' (mean per-atom error norm, eV/Å) "
    "or 'huber' (per component, huber_delta)",
    "huber_delta": "Huber loss threshold, eV/Å (force_loss 'huber')",
    "force_method": "forces in the loss: 'analytical' (hand-derived backward, recorded by "
    "autograd) or 'autograd' (double backward); the same gradients",
    "hessian_weight": "weight of the Hessian-row MSE, (eV/Å^2)^2 (0: off); needs a dataset "
    "labelled with Hessian rows (mlffd label --hessian-rows R); trains through autograd",
    "compile": "torch.compile the analytical energy+forces of each step (compiles for about "
    "half a minute; about 2x faster steps on a CPU for small molecules)",
    "lr": "peak learning rate (AdamW)",
    "weight_decay": "AdamW weight decay (decoupled)",
    "warmup_steps": "linear learning-rate warm-up, optimiser steps",
    "schedule": "'cosine' (to min_lr_ratio at max_epochs) or 'plateau' (on val force MAE)",
    "min_lr_ratio": "final learning rate of the cosine schedule, as a fraction of lr",
    "plateau_factor": "learning-rate factor when the validation error plateaus",
    "plateau_patience": "validations without improvement before the plateau factor applies",
    "grad_clip": "gradient norm clip (0: off)",
    "ema_decay": "decay of the weight moving average used for validation and export (0: off)",
    "patience": "early stopping: validations without val force MAE improvement (0: off)",
    "max_epochs": "maximum epochs",
    "max_time_min": "wall-clock budget in minutes (0: none)",
    "batch_size": "structures per training batch (per process under DDP)",
    "val_batch_size": "structures per validation batch",
    "val_every_n_epochs": "validate every n epochs",
    "seed": "random seed (split, initialisation, shuffling)",
    "precision": "'32-true', '64-true', or on a GPU 'bf16-mixed' / '16-mixed'",
    "accelerator": "'auto', 'cpu' or 'gpu'",
    "out": "output directory (checkpoints, logs, exported model)",
    "progress_bar": "show a progress bar",
    "split_seed": "seed of the train/validation split (-1: --seed)",
    "bootstrap_seed": "resample the training frames with replacement with this seed (-1: off; "
    "committee members use it)",
    "committee": "train a committee of this many students (seeds seed..seed+N-1, bootstrap "
    "resampled training sets, one validation split) into <out>/member_k and save it as one "
    "model with a force uncertainty to <out>/model; 0: one student",
}

_PY_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def _option_annotation(field_type: Any) -> Any:
    base = _PY_TYPES.get(field_type if isinstance(field_type, str) else field_type.__name__)
    return base | None


def _build_command():
    """A typer command function whose options are the TrainConfig fields plus --config/--resume."""
    from mlff_distiller.training.config import config_fields

    def command(**kwargs: Any) -> None:
        config_path = kwargs.pop("config")
        resume = kwargs.pop("resume")
        with user_errors():
            from mlff_distiller.training.config import load_config
            from mlff_distiller.training.trainer import train

            cfg = load_config(config_path, **kwargs)
            rank_zero = os.environ.get("RANK", "0") == "0"
            if rank_zero:
                console.print(f"[bold]training[/] on {cfg.data} -> {cfg.out}")
            if cfg.committee:
                from mlff_distiller.training.committee import train_committee

                done = train_committee(cfg, members=cfg.committee, resume=resume)
                if rank_zero:
                    maes = ", ".join(f"{r.best_val_force_mae:.2f}" for r in done.members)
                    console.print(
                        f"[green]done[/]: committee of {cfg.committee}, best val force MAEs "
                        f"{maes} meV/Å; model -> {done.model_path}"
                    )
                return
            result = train(cfg, resume=resume)
            if rank_zero:
                console.print(
                    f"[green]done[/]: best val force MAE {result.best_val_force_mae:.2f} meV/Å, "
                    f"energy MAE {result.val_energy_mae:.2f} meV/atom after {result.epochs} epochs "
                    f"({result.stopped_by}); model -> {result.model_path}"
                )

    params = [
        inspect.Parameter(
            "config",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(None, "--config", "-c", help="YAML file of TrainConfig fields"),
            annotation=Path | None,
        ),
        inspect.Parameter(
            "resume",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(
                False, "--resume", help="continue from <out>/checkpoints/last.ckpt"
            ),
            annotation=bool,
        ),
    ]
    for f in config_fields():
        flag = "--" + f.name.replace("_", "-")
        decls = [f"{flag}/--no-{flag[2:]}"] if f.type in ("bool", bool) else [flag]
        params.append(
            inspect.Parameter(
                f.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=typer.Option(None, *decls, help=HELP.get(f.name, f.name)),
                annotation=_option_annotation(f.type),
            )
        )
    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = "Distil a PaiNN student from an HDF5 dataset (options override --config)."
    return command


def register(app: typer.Typer) -> None:
    app.command("train")(_build_command())
