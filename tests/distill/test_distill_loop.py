"""``mlffd distill`` end to end with the real GFN2-xTB teacher on ethanol: the loop labels only
what the committee selects, within the budget, resumes after ``kill -9`` with no frame lost or
labelled twice, and writes its report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mlff_distiller.data.hdf5 import Dataset
from mlff_distiller.distill.config import DistillConfig
from mlff_distiller.distill.loop import label_files, run_distill, teacher_calls

# The training time limits are far above what 60 epochs take (3-6 s): members stop at
# max_epochs, so the committees, and the tests on them, do not depend on the machine's load
TINY = dict(
    smiles=["CCO"], teacher="xtb", budget=40, seed_frames=16, temperatures_k=[300.0, 800.0],
    replicas=1, md_fs=100.0, save_every=5, max_uncertainty=0.02, frames_per_iteration=8,
    max_iterations=2, members=2, size="fast", first_train_minutes=1.0, train_minutes=1.0,
    max_epochs=60, holdout_fs=50.0, seed=3, explore_bias_kt=100.0,
)


def _label_positions(out: Path) -> list[np.ndarray]:
    """Positions of every teacher-labelled frame: the seed set, then each round's labels."""
    frames = []
    for path in label_files(out):
        with Dataset(path) as ds:
            frames += [ds.get_arrays(i)["positions"] for i in range(len(ds))]
    return frames


def _no_duplicates(frames: list[np.ndarray]) -> bool:
    keys = {np.round(f, 8).tobytes() for f in frames}
    return len(keys) == len(frames)


def _start_loop(out: Path) -> subprocess.Popen:
    """The TINY loop in its own process and session (so that a test can kill it)."""
    code = (
        "from mlff_distiller.distill.config import DistillConfig;"
        "from mlff_distiller.distill.loop import run_distill;"
        f"run_distill(DistillConfig(out={str(out)!r}, **{TINY!r}), say=print)"
    )
    return subprocess.Popen([sys.executable, "-c", code], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("distill") / "run"
    summary = run_distill(DistillConfig(out=str(out), **TINY), say=lambda msg: None)
    return out, summary


def test_the_loop_labels_what_it_selects_within_the_budget(finished_run):
    out, summary = finished_run
    calls = teacher_calls(out)
    assert calls == summary["teacher_calls"] <= TINY["budget"]
    selected = 0
    for path in out.glob("iter_*/selected.h5"):
        with Dataset(path) as ds:
            selected += len(ds)
    frames = _label_positions(out)
    assert len(frames) == TINY["seed_frames"] + selected == calls  # xTB failed on none
    assert _no_duplicates(frames)
    with Dataset(out / "train_data.h5") as ds:  # the final committee trained on every label
        assert len(ds) == calls
    assert summary["model_path"].endswith(f"iter_{TINY['max_iterations']:02d}/committee")
    # the threshold is tiny: the first exploration finds candidates, so a second round trains
    assert summary["iterations"][0]["candidates"] > 0 and selected > 0
    with Dataset(out / "iter_00" / "selected.h5") as ds:
        selected_0 = np.stack([ds.get_arrays(i)["positions"] for i in range(len(ds))])
    with Dataset(out / "labels" / "iter_00.h5") as ds:
        labelled_0 = np.stack([ds.get_arrays(i)["positions"] for i in range(len(ds))])
    np.testing.assert_allclose(labelled_0, selected_0)  # the teacher labelled those frames


def test_the_selected_frames_are_the_uncertain_ones(finished_run):
    from mlff_distiller.distill.loop import frame_uncertainties

    out, _ = finished_run
    candidates = json.loads((out / "iter_00" / "candidates.json").read_text())
    assert candidates and all(u > TINY["max_uncertainty"] for _, _, u in candidates)
    u = frame_uncertainties(out / "iter_00" / "committee", out / "iter_00" / "selected.h5")
    assert (u > TINY["max_uncertainty"]).all()


def test_the_biased_exploration_reaches_frames_the_committee_disagrees_on_more(finished_run):
    """The biased run at the top temperature starts where the unbiased one starts, with its
    settings recorded; the committee's energy variance over its frames is larger."""
    from mlff_distiller.distill.loop import frame_uncertainties

    out, summary = finished_run
    it = out / "iter_00"
    settings = json.loads((it / "bias.json").read_text())
    assert settings["temperature_k"] == 800.0 and settings["width_ev"] > 0
    assert abs(settings["strength_ev"] - 100.0 * 8.617333e-5 * 800.0) < 1e-4  # 100 kT at 800 K
    _, plain = frame_uncertainties(it / "committee", it / "md_800K.h5", energy_variance=True)
    _, biased = frame_uncertainties(it / "committee", it / "md_800K_biased.h5",
                                    energy_variance=True)
    assert np.median(biased[1:]) > 1.5 * np.median(plain[1:])
    runs = summary["iterations"][0]["per_temperature"]
    assert runs["800K_biased"]["candidates"] > 0
    # the biased run's frames get one run's share (of 3) of the round's 12 labels, and what
    # the unbiased runs leave
    with Dataset(it / "md_800K_biased.h5") as ds:
        far_out = {np.round(ds.get_arrays(i)["positions"], 5).tobytes() for i in range(len(ds))}
    with Dataset(it / "selected.h5") as ds:
        picked = [np.round(ds.get_arrays(i)["positions"], 5).tobytes() for i in range(len(ds))]
    n_plain = summary["iterations"][0]["unbiased_candidates"]
    n_biased = runs["800K_biased"]["candidates"]
    assert len(picked) == min(12, n_plain + n_biased)
    assert sum(p in far_out for p in picked) == min(n_biased, max(4, 12 - n_plain))
    assert summary["iterations"][0]["unbiased_candidates"] == sum(
        runs[k]["candidates"] for k in ("300K", "800K")
    )


def test_the_report_shows_the_history(finished_run):
    out, summary = finished_run
    report = (out / "report.md").read_text()
    assert "held-out force MAE" in report and "Calibration" in report
    assert "100 kT uncertainty bias" in report
    for name in ("error_vs_calls.png", "calibration.png", "uncertainty_md.png"):
        assert (out / name).stat().st_size > 5000
    scored = [h for h in summary["iterations"] if "holdout_force_mae_mev" in h]
    assert len(scored) >= 2 and all(np.isfinite(h["holdout_force_mae_mev"]) for h in scored)


def test_kill_9_then_rerun_loses_nothing_and_labels_nothing_twice(tmp_path):
    out = tmp_path / "run"
    proc = _start_loop(out)
    deadline = time.monotonic() + 240
    killed_at = None
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "iter_00" / "train.done").exists():  # first committee trained: kill now
            os.killpg(proc.pid, signal.SIGKILL)
            killed_at = "after training"
            break
        time.sleep(0.2)
    proc.wait()
    assert killed_at, "the run ended or timed out before it could be killed"
    before = _label_positions(out)
    summary = run_distill(DistillConfig(out=str(out), **TINY), say=lambda msg: None)
    after = _label_positions(out)
    assert len(after) >= len(before) and _no_duplicates(after)
    for a, b in zip(before, after[: len(before)], strict=True):
        np.testing.assert_array_equal(a, b)  # nothing committed was lost or rewritten
    assert summary["teacher_calls"] == len(after) <= TINY["budget"]


def _spawned_workers(parent: int) -> list[int]:
    """PIDs of live multiprocessing workers whose parent is ``parent`` (read from /proc)."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(
                line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line
            )
            cmdline = (status.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields["PPid"]) == parent and b"spawn_main" in cmdline:
            found.append(int(status.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text().split("State:\t", 1)[1][0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux")
def test_kill_9_of_the_loop_alone_takes_its_training_workers_with_it(tmp_path):
    """A user's ``kill -9 PID`` hits only the loop's process: its training workers must not live
    on as orphans writing to the checkpoints a restarted run will use."""
    out = tmp_path / "run"
    proc = _start_loop(out)
    workers: list[int] = []
    deadline = time.monotonic() + 240
    try:
        members = [out / "iter_00" / f"member_{k}" for k in range(2)]
        while time.monotonic() < deadline and proc.poll() is None:
            workers = _spawned_workers(proc.pid)
            if len(workers) == 2 and all(m.exists() for m in members):  # both are training
                break
            time.sleep(0.2)
        assert len(workers) == 2, "the two members never started training in parallel"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(_alive(w) for w in workers):
            time.sleep(0.2)
        assert not any(_alive(w) for w in workers), "training workers outlived the loop"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_rerun_of_a_finished_run_keeps_each_rounds_call_count(finished_run, tmp_path):
    """Each round records the calls spent before it; a rerun (every stage already done, as after
    a kill -9 late in the run) must read the same numbers back, not the final count."""
    import shutil

    out, summary = finished_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    # the budget (free to change on a rerun) set to what was spent: then the rerun meets a
    # spent budget in its first round unless it counts only the calls made before each round
    spent = summary["teacher_calls"]
    again = run_distill(
        DistillConfig(**{**TINY, "out": str(copy), "budget": spent}), say=lambda msg: None
    )
    first = [h["teacher_calls"] for h in summary["iterations"]]
    assert first[0] == TINY["seed_frames"] and first == sorted(first)
    assert [h["teacher_calls"] for h in again["iterations"]] == first
    assert again["model_path"].replace(str(copy), str(out)) == summary["model_path"]


def test_a_rerun_with_fewer_rounds_or_a_smaller_budget_is_refused_before_anything_changes(
    finished_run, tmp_path
):
    import shutil

    out, summary = finished_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    before = (copy / "history.json").read_text()
    rounds = TINY["max_iterations"]
    with pytest.raises(ValueError, match=f"already holds {rounds} rounds"):
        run_distill(DistillConfig(**{**TINY, "out": str(copy), "max_iterations": rounds - 1}),
                    say=lambda msg: None)
    spent = summary["teacher_calls"]
    with pytest.raises(ValueError, match=f"already spent {spent} teacher calls"):
        run_distill(DistillConfig(**{**TINY, "out": str(copy), "budget": spent - 1}),
                    say=lambda msg: None)
    assert (copy / "history.json").read_text() == before


def test_a_committee_of_one_skips_the_biased_run_instead_of_failing(tmp_path):
    """One member has no spread to bias on: the run says so and goes on without it."""
    config = {**TINY, "members": 1, "budget": 24, "max_iterations": 1, "md_fs": 50.0,
              "first_train_minutes": 0.05, "max_epochs": 5, "holdout_fs": 0.0}
    messages = []
    summary = run_distill(DistillConfig(out=str(tmp_path / "run"), **config), say=messages.append)
    assert any("no biased run at 800 K" in m for m in messages)
    assert not (tmp_path / "run" / "iter_00" / "md_800K_biased.h5").exists()
    assert summary["status"] == "converged"  # one member: no uncertainty, nothing to label
