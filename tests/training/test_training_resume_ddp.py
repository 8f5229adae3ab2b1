"""A real training process killed with SIGKILL resumes from last.ckpt; two CPU processes under
torchrun (DDP, gloo) stay in sync and learn."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlff_distiller.training.config import TrainConfig
from mlff_distiller.training.trainer import load_checkpoint, train

SMALL = dict(
    train_size=100, val_size=40, hidden=16, n_interactions=2, n_rbf=8, batch_size=10,
    warmup_steps=5, lr=3e-3, ema_decay=0.9, patience=0, progress_bar=False, seed=3,
)


def cli_args(config: TrainConfig) -> list[str]:
    args = []
    for key, value in config.to_dict().items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + flag[2:])
        else:
            args += [flag, str(value)]
    return args


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def torchrun_two_processes(config: TrainConfig) -> dict:
    """``mlffd train`` under ``torchrun`` with two CPU processes; returns its result.json."""
    torchrun = Path(sys.executable).with_name("torchrun")
    run = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2",
         "-m", "mlff_distiller.cli.main", "train", *cli_args(config), "--accelerator", "cpu"],
        env=env(), capture_output=True, text=True, timeout=280,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads((Path(config.out) / "result.json").read_text())


def test_sigkill_then_resume_continues(ethanol_h5, tmp_path, val_curve):
    cfg = TrainConfig(data=str(ethanol_h5), out=str(tmp_path / "run"), max_epochs=30, **SMALL)
    last = Path(cfg.out) / "checkpoints" / "last.ckpt"
    log = (tmp_path / "train.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlff_distiller.cli.main", "train", *cli_args(cfg)],
        env=env(), stdout=log, stderr=subprocess.STDOUT,
    )
    killed_epoch = None
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if last.is_file():
                epoch = load_checkpoint(last)["epoch"]
                if epoch >= 3:
                    proc.send_signal(signal.SIGKILL)
                    killed_epoch = epoch
                    break
            time.sleep(0.05)
    finally:
        if proc.poll() is None and killed_epoch is None:
            proc.kill()
        proc.wait()
        log.close()
    assert killed_epoch is not None, f"ended before the kill: {log.name}"
    assert proc.returncode == -signal.SIGKILL
    assert not (Path(cfg.out) / "model").exists()  # it never finished
    before = val_curve(Path(cfg.out))

    result = train(cfg, resume=True)
    after = val_curve(Path(cfg.out))[len(before):]
    # the resumed run starts after the killed epoch instead of from scratch ...
    state = load_checkpoint(last)
    assert state["epoch"] == cfg.max_epochs - 1
    assert len(before) + len(after) <= cfg.max_epochs + 1
    assert len(after) < cfg.max_epochs - 2
    assert result.global_step == cfg.max_epochs * 10  # 100 structures / batch 10 per epoch
    # ... and keeps learning from where it was
    assert result.best_val_force_mae <= min(before)
    assert after[0] < 1.2 * before[-1]


@pytest.mark.timeout(300)
def test_torchrun_two_processes_stay_in_sync_and_learn(ethanol_h5, tmp_path, val_curve):
    cfg = TrainConfig(data=str(ethanol_h5), out=str(tmp_path / "ddp"), max_epochs=8, **SMALL)
    result = torchrun_two_processes(cfg)
    assert result["world_size"] == 2
    assert result["ddp_max_param_diff"] == 0.0  # identical weights on both ranks
    assert result["global_step"] == cfg.max_epochs * 5  # each rank sees half of the 100
    curve = val_curve(Path(cfg.out))
    assert len(curve) == cfg.max_epochs
    assert min(curve) < 0.6 * curve[0]


@pytest.mark.timeout(300)
def test_torchrun_time_budget_keeps_ranks_in_sync(ethanol_h5, tmp_path):
    """With a wall-clock budget the cosine follows the time fraction; each rank's clock differs a
    little, so the ranks agree on the largest one and apply the same learning rate."""
    cfg = TrainConfig(
        data=str(ethanol_h5), out=str(tmp_path / "ddp_time"), max_epochs=100_000,
        max_time_min=0.25, schedule="cosine", **SMALL,
    )  # fmt: skip
    result = torchrun_two_processes(cfg)
    assert result["world_size"] == 2
    assert result["epochs"] < cfg.max_epochs  # the budget, not the epoch limit, ended it
    assert result["ddp_max_param_diff"] == 0.0
