"""``train_committee(config, members)``: M students by the ordinary :func:`train`, one committee.

Output directory layout (``config.out``)::

    member_k/        the run of member k (the layout of :func:`~.trainer.train`): seed
                     ``config.seed + k``, with ``bootstrap`` a resampled training set
    model/           the committee (models.committee.Committee): model.safetensors + config.json
    result.json      the members' final numbers

All members share the validation split of ``config.seed`` (so their validation errors compare);
with ``bootstrap`` member k trains on as many structures drawn with replacement (seed
``config.seed + k``) from the common training split, else on the common training split itself.
A member whose ``member_k/model`` exists is not trained again, so an interrupted committee run
continues where it stopped (``resume=True`` also continues a half-trained member from its last
checkpoint).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

from mlff_distiller.models.committee import Committee
from mlff_distiller.models.io import CONFIG_FILE, load_model, save_model
from mlff_distiller.training import trainer
from mlff_distiller.training.config import TrainConfig


@dataclass
class CommitteeResult:
    """What :func:`train_committee` produced; ``members[k]`` is member k's :class:`TrainResult`,
    ``trained`` the members trained by this call (the others were already done)."""

    out_dir: str
    model_path: str
    members: list[trainer.TrainResult]
    trained: list[int]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def member_dir(out: str | Path, k: int) -> Path:
    return Path(out) / f"member_{k}"


def train_committee(
    config: TrainConfig, members: int = 4, bootstrap: bool = True, resume: bool = False
) -> CommitteeResult:
    """Train ``members`` students (see the module docstring) and save their committee to
    ``<config.out>/model``. ``config.committee`` is ignored here (``members`` counts)."""
    if members < 1:
        raise ValueError(f"a committee needs >= 1 member, got {members}")
    out = config.out_dir
    results, trained = [], []
    for k in range(members):
        member = _member_config(config, k)
        if (member.out_dir / trainer.MODEL_DIR / CONFIG_FILE).is_file():
            results.append(_finished_result(member))
            continue
        if bootstrap:
            member = dataclasses.replace(member, bootstrap_seed=member.seed)
        results.append(trainer.train(member, resume=resume))
        trained.append(k)
    result = CommitteeResult(str(out), str(out / trainer.MODEL_DIR), results, trained)
    if os.environ.get("RANK", "0") == "0":  # under torchrun the first process writes
        students = [load_model(r.model_path, architecture="painn") for r in results]
        save_model(Committee.from_members(students), result.model_path)
        (out / "result.json").write_text(json.dumps(result.to_dict(), indent=2))
    return result


def _member_config(config: TrainConfig, k: int) -> TrainConfig:
    split_seed = config.seed if config.split_seed < 0 else config.split_seed
    return dataclasses.replace(
        config,
        seed=config.seed + k,
        split_seed=split_seed,
        out=str(member_dir(config.out, k)),
        committee=0,
    )


def _finished_result(member: TrainConfig) -> trainer.TrainResult:
    path = member.out_dir / "result.json"
    if path.is_file():
        return trainer.TrainResult(**json.loads(path.read_text()))
    nan = float("nan")  # an exported model without its result.json (copied by hand)
    return trainer.TrainResult(
        str(member.out_dir), str(member.out_dir / trainer.MODEL_DIR), "", nan, nan, nan, nan,
        0, 0, "unknown", 0.0, 0, 0, 1,
    )  # fmt: skip
