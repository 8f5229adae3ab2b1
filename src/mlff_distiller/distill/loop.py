"""The active-learning loop of ``mlffd distill``.

Iteration ``i`` (``out/iter_<i>/``), every stage resumable and marked done by a file:

1. **train**: a committee of students on every frame labelled so far; members train in parallel
   processes, each warm-started from its predecessor of the previous iteration.
2. **explore**: batched student MD of every molecule over the temperature ladder, and (with
   ``explore_bias_kt > 0``) once more at the top temperature drawn towards where the committee
   disagrees (uncertainty-biased MD), which reaches the rare excursions that end long runs.
3. **select**: frames whose committee uncertainty passes the threshold (up to the point where a
   replica is lost), thinned to a diverse set within the remaining budget.
4. **label**: the teacher labels them (on Ray with ``workers > 0``) into ``labels/``.

Before the first iteration the seed set (rattled RDKit conformers) is labelled, and a held-out
teacher MD at the top temperature is run to score each committee (not counted in the budget).
The loop stops when the unbiased exploration finds no frame above the threshold and loses no
replica (``converged``), when the budget is spent, or after ``max_iterations``. The teacher-call
count is read back from the label files, so a run killed with ``kill -9`` and started again
loses no frame and labels none twice.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
from ase import Atoms

from mlff_distiller import keys
from mlff_distiller.distill.config import DistillConfig
from mlff_distiller.distill.holdout import score_holdout
from mlff_distiller.distill.selection import select_frames

Say = Callable[[str], None]
DONE = ".done"


def run_distill(config: DistillConfig, say: Say | None = None) -> dict:
    """Run (or continue) the loop in ``config.out``; returns the summary (``summary.json``)."""
    import torch

    if say is None:
        from rich.console import Console

        say = Console().print
    torch.set_num_threads(config.threads)
    out = config.out_dir
    if (out / "config.json").exists():
        config.check_same_run(out / "config.json")
        say(f"continuing the run in {out}")
    molecules = starting_structures(config)  # bad input is refused before anything is written
    out.mkdir(parents=True, exist_ok=True)
    config.save(out / "config.json")
    (out / "labels").mkdir(exist_ok=True)
    stage(out / "labels" / "seed", lambda: label_seed(config, molecules, say))
    holdout = out / "holdout.h5"
    if config.holdout_fs > 0:
        stage(out / "holdout", lambda: run_holdout(config, molecules, holdout, say))
    history = _read_history(out)
    check_continuation(config, out, history)
    status = "max_iterations"
    for i in range(config.max_iterations):
        it = out / f"iter_{i:02d}"
        it.mkdir(exist_ok=True)
        calls = teacher_calls(out, before_iteration=i)  # also right when resuming iteration i
        say(f"[bold]iteration {i}[/]: {calls} of {config.budget} teacher calls spent")
        stage(it / "train", lambda it=it, i=i: train_committee_stage(config, out, it, i, say))
        model_path = it / "committee"
        stage(it / "explore", lambda it=it, m=model_path: explore(config, molecules, m, it, say))
        found = analyse_exploration(config, model_path, it)
        record = {"iteration": i, "teacher_calls": calls, **found}
        if holdout.exists():
            record.update(score_holdout(model_path, holdout))
        history = [h for h in history if h["iteration"] != i] + [record]
        _write_history(out, history)
        unbiased = found.get("unbiased_candidates", found["candidates"])
        if unbiased == 0 and found["lost_replicas"] == 0:
            status = "converged"
            break
        remaining = config.budget - calls
        if remaining <= 0:
            status = "budget_spent"
            break
        quota = round_quota(config, len(molecules), remaining, i)
        stage(it / "select", lambda it=it, q=quota: select_stage(config, it, q))
        stage(it / "label", lambda it=it, i=i: label_stage(config, it, out, i, say))
        last_round = i == config.max_iterations - 1
        spent = teacher_calls(out, before_iteration=i + 1)  # this round's labels included
        if spent >= config.budget or last_round:
            status = "budget_spent" if spent >= config.budget else status
            # one more training on the last labels, scored, so that no label goes unused
            final = out / f"iter_{i + 1:02d}"
            final.mkdir(exist_ok=True)
            stage(
                final / "train",
                lambda f=final, n=i + 1: train_committee_stage(config, out, f, n, say),
            )
            record = {"iteration": i + 1, "teacher_calls": spent}
            if holdout.exists():
                record.update(score_holdout(final / "committee", holdout))
            history = [h for h in history if h["iteration"] != i + 1] + [record]
            _write_history(out, history)
            break
    last = max(h["iteration"] for h in history)
    summary = {
        "status": status,
        "iterations": history,
        "teacher_calls": teacher_calls(out),
        "model_path": str(out / f"iter_{last:02d}" / "committee"),
        "config": asdict(config),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    from mlff_distiller.distill.report import write_report

    say(f"writing the report ({out / 'report.md'})")
    write_report(out, summary)
    return summary


# ------------------------------------------------------------------ bookkeeping
def stage(marker: Path, work: Callable[[], object]) -> None:
    """Run ``work`` unless ``marker`` + ``.done`` exists; create it when ``work`` returns."""
    done = marker.with_name(marker.name + DONE)
    if done.exists():
        return
    work()
    done.touch()


def label_files(out: Path) -> list[Path]:
    """The teacher-labelled files in order: the seed set, then each round's labels."""
    seed = out / "labels" / "seed.h5"
    rounds = sorted((out / "labels").glob("iter_*.h5"))
    return ([seed] if seed.exists() else []) + [p for p in rounds if "_candidates" not in p.name]


def teacher_calls(out: Path, before_iteration: int | None = None) -> int:
    """Teacher calls spent on labels: frames in every ``labels/*.h5`` plus recorded failures;
    with ``before_iteration`` only the seed set and the rounds before it (what a resumed
    iteration started from)."""
    from mlff_distiller.data.hdf5 import Dataset
    from mlff_distiller.teachers.labelling import read_failures

    total = 0
    for path in label_files(out):
        if before_iteration is not None and path.name.startswith("iter_"):
            if int(path.stem.split("_")[1]) >= before_iteration:
                continue
        with Dataset(path) as ds:
            total += len(ds)
        total += len(read_failures(path))
    return total


def check_continuation(config: DistillConfig, out: Path, history: list[dict]) -> None:
    """Refuse to continue a run with fewer rounds or a smaller budget than it already used:
    its later rounds would be rewritten as if they had not happened."""
    done = max((h["iteration"] for h in history), default=0)
    if done > config.max_iterations:
        raise ValueError(
            f"{out} already holds {done} rounds; max_iterations={config.max_iterations} "
            f"would rewrite them: continue with at least {done}"
        )
    spent = teacher_calls(out)
    if spent > config.budget:
        raise ValueError(
            f"{out} already spent {spent} teacher calls; budget={config.budget} is smaller: "
            f"continue with a budget of at least {spent}"
        )


def _read_history(out: Path) -> list[dict]:
    path = out / "history.json"
    return json.loads(path.read_text()) if path.exists() else []


def _write_history(out: Path, history: list[dict]) -> None:
    path = out / "history.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(sorted(history, key=lambda h: h["iteration"]), indent=2))
    tmp.replace(path)


# ------------------------------------------------------------------ structures and seed set
def starting_structures(config: DistillConfig) -> list[Atoms]:
    """One relaxed structure per molecule (RDKit for SMILES, the first frame of each file)."""
    from mlff_distiller.data.structures import from_smiles, read_structures

    molecules = [from_smiles(s, seed=config.seed)[0] for s in config.smiles]
    for path in config.structures:
        atoms = read_structures(path, index=0)[0]
        atoms.info.setdefault(keys.NAME, Path(path).stem)
        molecules.append(atoms)
    names = [str(a.info.get(keys.NAME) or a.get_chemical_formula()) for a in molecules]
    if len(set(names)) != len(names):
        raise ValueError(f"two molecules share a name: {names}")
    from mlff_distiller.teachers import get_teacher

    teacher = get_teacher(config.teacher)
    for atoms in molecules:
        teacher.check_elements(atoms)
    return molecules


def label_seed(config: DistillConfig, molecules: list[Atoms], say: Say) -> None:
    """The seed set: ``seed_frames`` per molecule from RDKit conformers with Gaussian
    displacements of ``rattle_a`` Å, labelled by the teacher (counted in the budget)."""
    from mlff_distiller.data.hdf5 import DatasetWriter
    from mlff_distiller.data.structures import from_smiles

    out = config.out_dir / "labels"
    candidates = out / "seed_candidates.h5"
    if not (out / "seed_candidates.h5.done").exists():
        rng = np.random.default_rng(config.seed)
        with DatasetWriter(candidates, flush_every=64) as writer:
            for atoms in molecules:
                smiles = atoms.info.get(keys.SMILES)
                n_conf = max(1, config.seed_frames // 8)
                confs = (
                    from_smiles(
                        smiles,
                        n_conformers=n_conf,
                        seed=config.seed,
                        name=atoms.info.get(keys.NAME),
                    )
                    if smiles
                    else [atoms]
                )
                for k in range(config.seed_frames):
                    frame = confs[k % len(confs)].copy()
                    frame.positions += rng.normal(scale=config.rattle_a, size=frame.positions.shape)
                    writer.append_frame(
                        frame.numbers, frame.positions, molecule=str(atoms.info.get(keys.NAME))
                    )
        (out / "seed_candidates.h5.done").touch()
    say(f"labelling {config.seed_frames} seed frames per molecule with {config.teacher}")
    _label(config, candidates, out / "seed.h5")


def _label(config: DistillConfig, candidates: Path, labelled: Path) -> None:
    from mlff_distiller.teachers.labelling import label_dataset

    label_dataset(candidates, config.teacher, labelled, workers=config.workers)


def run_holdout(config: DistillConfig, molecules: list[Atoms], path: Path, say: Say) -> None:
    """Held-out teacher NVT MD at the top temperature, every ``save_every`` steps saved."""
    from mlff_distiller.data.hdf5 import Dataset, DatasetWriter
    from mlff_distiller.teachers import get_teacher
    from mlff_distiller.teachers.sampling import SamplingConfig, sample

    t_top = config.temperatures_k[-1]
    say(f"held-out teacher MD: {config.holdout_fs:g} fs at {t_top:g} K per molecule")
    parts = []
    for k, atoms in enumerate(molecules):
        part = path.with_name(f"holdout_{k}.h5")
        cfg = SamplingConfig(
            temperature_k=t_top,
            dt_fs=config.dt_fs,
            equilibration_fs=500.0,
            production_fs=config.holdout_fs,
            save_every=config.save_every,
            seed=config.seed + 1000 + k,
            friction_per_ps=config.friction_per_ps,
        )
        sample(get_teacher(config.teacher), atoms, part, cfg, resume=True)
        parts.append(part)
    with DatasetWriter(path, flush_every=256) as writer:
        for part in parts:
            with Dataset(part) as ds:
                for i in range(len(ds)):
                    writer.append(ds[i])


# ------------------------------------------------------------------ train
def merged_labels(out: Path) -> Path:
    """Every labelled frame so far in one file (rebuilt from ``labels/``; deterministic)."""
    from mlff_distiller.data.hdf5 import Dataset, DatasetWriter

    path = out / "train_data.h5"
    tmp = path.with_suffix(".tmp.h5")  # written aside, then renamed over the old file
    with DatasetWriter(tmp, flush_every=512) as writer:
        for part in label_files(out):
            with Dataset(part) as ds:
                for i in range(len(ds)):
                    writer.append(ds[i])
    tmp.replace(path)
    return path


def train_committee_stage(config: DistillConfig, out: Path, it: Path, i: int, say: Say) -> None:
    """Train ``config.members`` students (warm-started from the previous iteration's members)
    in parallel processes, then save them as one committee in ``it/committee``."""
    from mlff_distiller.training.config import TrainConfig

    data = merged_labels(out)
    prev = out / f"iter_{i - 1:02d}"
    minutes = config.first_train_minutes if i == 0 else config.train_minutes
    say(f"training {config.members} students ({minutes:g} min each, warm start: {i > 0})")
    configs = []
    for k in range(config.members):
        init = prev / f"member_{k}" / "model"
        configs.append(
            TrainConfig(
                data=str(data),
                size=config.size,
                train_size=0.9,
                val_size=0.1,
                lr=2e-3 if i == 0 else 1e-3,
                warmup_steps=50 if i == 0 else 10,
                schedule="cosine",
                ema_decay=0.99,
                batch_size=8,
                patience=0,
                max_epochs=config.max_epochs,
                max_time_min=minutes,
                seed=config.seed + 101 * k + i,
                split_seed=config.seed,
                bootstrap_seed=config.seed + 101 * k + i,
                out=str(it / f"member_{k}"),
                init_from=str(init) if init.exists() else "",
                progress_bar=False,
            )
        )
    train_members(configs, workers=config.training_processes())
    save_committee([Path(c.out) / "model" for c in configs], it / "committee")


def train_members(configs: list, workers: int) -> None:
    """Train each config (resuming a killed member from its last checkpoint), ``workers`` at a
    time in separate processes (one torch thread each)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    todo = [c for c in configs if not (Path(c.out) / "model" / "config.json").exists()]
    if not todo:
        return
    if workers <= 1 or len(todo) == 1:
        for c in todo:
            _train_one(c)
        return
    context = mp.get_context("spawn")
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_die_with_parent, initargs=(os.getpid(),)
    ) as pool:
        for future in [pool.submit(_train_one, c) for c in todo]:
            future.result()


def _die_with_parent(parent: int) -> None:
    """Linux: a training worker is killed when the loop's process dies (``kill -9``), so that a
    restarted run never meets an orphan still writing to the same member's checkpoints. A
    worker whose parent died before this ran exits at once."""
    import ctypes
    import signal

    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


def _train_one(config) -> str:
    import torch

    from mlff_distiller.training.trainer import train

    torch.set_num_threads(1)
    resume = (Path(config.out) / "checkpoints" / "last.ckpt").exists()
    return train(config, resume=resume).model_path


def save_committee(member_paths: list[Path], path: Path) -> None:
    from mlff_distiller.models.committee import Committee
    from mlff_distiller.models.io import load_model, save_model

    save_model(Committee.from_members([load_model(p) for p in member_paths]), path)


# ------------------------------------------------------------------ explore and select
def explore(
    config: DistillConfig, molecules: list[Atoms], model_path: Path, it: Path, say: Say
) -> None:
    """Student NVT MD of every molecule x ``replicas`` at each temperature, batched; then, with
    ``explore_bias_kt > 0``, the same at the top temperature under the uncertainty bias
    (:mod:`mlff_distiller.md.uncertainty_bias`, settings in ``it/bias.json``)."""
    from mlff_distiller.models.io import load_model

    model = load_model(model_path)
    structures = []
    for atoms in molecules:
        for r in range(config.replicas):
            copy = atoms.copy()
            copy.info[keys.NAME] = f"{atoms.info.get(keys.NAME)}|{r}"
            structures.append(copy)
    for label, t, biased in exploration_runs(config):
        if (it / f"md_{label}.h5{DONE}").exists():
            continue
        provider = bias_provider(config, model, model_path, it, t) if biased else model
        if provider is None:
            why = json.loads((it / "bias.json").read_text())["skipped"]
            say(f"no biased run at {t:g} K: {why}")
            (it / f"md_{label}.h5{DONE}").touch()
            continue
        kind = " under the uncertainty bias" if biased else ""
        say(f"student MD at {t:g} K{kind}: {len(structures)} replicas x {config.md_fs:g} fs")
        # the biased run shares the unbiased run's seed: it differs by the bias alone
        _explore_run(config, provider, structures, it, label, t, seed=config.seed + int(t))


def exploration_runs(config: DistillConfig) -> list[tuple[str, float, bool]]:
    """(label, temperature K, biased) of each exploration run; its trajectory is
    ``md_<label>.h5``."""
    runs = [(f"{t:g}K", t, False) for t in config.temperatures_k]
    if config.explore_bias_kt > 0:
        t_top = config.temperatures_k[-1]
        runs.append((f"{t_top:g}K_biased", t_top, True))
    return runs


def _explore_run(config, model, structures, it: Path, label: str, t: float, seed: int) -> None:
    from mlff_distiller.md.runner import MDConfig, MDError, run_md

    path = it / f"md_{label}.h5"
    md = MDConfig(
        steps=int(round(config.md_fs / config.dt_fs)),
        dt_fs=config.dt_fs,
        temperature_k=t,
        friction_per_ps=config.friction_per_ps,
        save_every=config.save_every,
        seed=seed,
    )
    try:
        run_md(model, structures, md, out=path, resume=path.exists(), dtype=torch_float32())
    except MDError as err:  # a replica blew up: its frames so far are in the file
        (it / f"md_{label}.failed").write_text(str(err))
    (it / f"md_{label}.h5{DONE}").touch()


def bias_provider(config: DistillConfig, model, model_path: Path, it: Path, t: float):
    """The committee under the uncertainty bias at ``t`` K: strength ``explore_bias_kt`` kT;
    width B from the unbiased run at ``t``: ``N B^2`` = 4x the median energy variance of the
    committee over its frames (per atom), so that the bias force acts from where the unbiased
    MD already is towards more uncertain frames. Kept in ``it/bias.json``. None (and the
    reason in ``bias.json``) when the members do not disagree there (a committee of one) or
    the unbiased run saved no frame."""
    from mlff_distiller import units
    from mlff_distiller.md.uncertainty_bias import UncertaintyBias

    record = it / "bias.json"
    if not record.exists():
        _, variance = frame_uncertainties(model_path, it / f"md_{t:g}K.h5", energy_variance=True)
        width = float(np.sqrt(4.0 * np.median(variance))) if variance.size else 0.0
        settings = {
            "temperature_k": t,
            "strength_ev": config.explore_bias_kt * units.BOLTZMANN * t,
            "width_ev": width,
        }
        if not (np.isfinite(width) and width > 0):
            settings["skipped"] = "no spread of the member energies on the unbiased run's frames"
        record.write_text(json.dumps(settings, indent=2))
    settings = json.loads(record.read_text())
    if "skipped" in settings:
        return None
    return UncertaintyBias(model, settings["strength_ev"], settings["width_ev"])


def torch_float32():
    import torch

    return torch.float32


def frame_uncertainties(
    model_path: Path, path: Path, batch_size: int = 64, energy_variance: bool = False
):
    """STRUCTURE_UNCERTAINTY (n_frames,) eV/Å of the committee on every frame of ``path``; with
    ``energy_variance`` also the variance of the members' energies per atom (n_frames,) eV^2."""
    from mlff_distiller.data.hdf5 import Dataset
    from mlff_distiller.md.uncertainty_bias import energy_variance as variance_of
    from mlff_distiller.models.io import load_model

    model = load_model(model_path)
    values, variances = [], []
    with Dataset(path) as ds:
        for start in range(0, len(ds), batch_size):
            idx = np.arange(start, min(start + batch_size, len(ds)))
            batch = ds.get_batch(idx, labels=[])
            out = model.energy_and_forces(batch)
            values.append(out[keys.STRUCTURE_UNCERTAINTY].detach().double().numpy())
            n_atoms = np.bincount(batch.system_idx.numpy(), minlength=batch.n_systems)
            var = variance_of(out[keys.MEMBER_ENERGIES].detach().double()).numpy()
            variances.append(var / n_atoms)
    u = np.concatenate(values) if values else np.zeros(0)
    if energy_variance:
        return u, (np.concatenate(variances) if variances else np.zeros(0))
    return u


def replica_traces(config: DistillConfig, model_path: Path, it: Path) -> dict:
    """Per exploration run (label, see :func:`exploration_runs`): (n_saves, n_replicas)
    uncertainties, times (fs), replica names, whether the run was biased or stopped early."""
    from mlff_distiller.data.hdf5 import Dataset

    traces = {}
    for label, _, biased in exploration_runs(config):
        path = it / f"md_{label}.h5"
        if not path.exists():
            continue
        with Dataset(path) as ds:
            names = ds.molecule_names
            n_rep = len(names)
            n_saves = len(ds) // n_rep
        u = frame_uncertainties(model_path, path)[: n_saves * n_rep].reshape(n_saves, n_rep)
        traces[label] = {
            "uncertainty": u,
            "sound_saves": sound_saves(path, n_saves, n_rep) if biased else None,
            "names": names,
            "biased": biased,
            "time_fs": np.arange(n_saves) * config.save_every * config.dt_fs,
            "failed": (it / f"md_{label}.failed").exists(),
        }
    return traces


def sound_saves(path: Path, n_saves: int, n_rep: int) -> np.ndarray:
    """(n_rep,) saves of each replica before its first failed frame
    (:func:`mlff_distiller.distill.failure.failure`, bonds of its first frame)."""
    from mlff_distiller.data.hdf5 import Dataset
    from mlff_distiller.distill.failure import failure, reference_bonds

    sound = np.full(n_rep, n_saves)
    with Dataset(path) as ds:
        for r in range(n_rep):
            first = ds.get_arrays(r)
            numbers = first[keys.ATOMIC_NUMBERS]
            bonds, ref = reference_bonds(numbers, first[keys.POSITIONS])
            for s in range(1, n_saves):
                if failure(ds.get_arrays(s * n_rep + r)[keys.POSITIONS], numbers, bonds, ref):
                    sound[r] = s
                    break
    return sound


def analyse_exploration(config: DistillConfig, model_path: Path, it: Path) -> dict:
    """Candidates (frames above the threshold before their replica was lost; for the biased
    run, before its structure failed) of every run, and lost replicas of the unbiased runs (a
    biased run seeks uncertainty: its losses say nothing about the student's own MD); cached in
    ``it/exploration.json``."""
    cache = it / "exploration.json"
    if cache.exists():
        return json.loads(cache.read_text())
    traces = replica_traces(config, model_path, it)
    per_run, candidates, lost = {}, [], 0
    for label, tr in traces.items():
        u = tr["uncertainty"]
        n_saves, n_rep = u.shape
        t_cand, t_lost = 0, 0
        for r in range(n_rep):
            # frames up to and including the first one past lost_factor x threshold; frame 0
            # is the starting structure (the same for every replica and round): never used
            over = np.flatnonzero(u[1:, r] > config.lost_factor * config.max_uncertainty) + 1
            stop = int(over[0]) + 1 if len(over) else n_saves
            if len(over) or tr["failed"]:
                t_lost += 1
            if tr["biased"]:  # far out by design: every frame until the structure fails
                stop = int(tr["sound_saves"][r])
            for s in np.flatnonzero(u[1:stop, r] > config.max_uncertainty) + 1:
                candidates.append([label, int(s * n_rep + r), float(u[s, r])])
                t_cand += 1
        per_run[label] = {
            "candidates": t_cand,
            "lost": t_lost,
            "max_uncertainty": float(u.max()) if u.size else 0.0,
            "median_uncertainty": float(np.median(u)) if u.size else 0.0,
        }
        lost += 0 if tr["biased"] else t_lost
    unbiased = sum(per_run[k]["candidates"] for k, tr in traces.items() if not tr["biased"])
    found = {
        "candidates": len(candidates),
        "unbiased_candidates": unbiased,
        "lost_replicas": lost,
        "per_temperature": per_run,
    }
    (it / "candidates.json").write_text(json.dumps(candidates))
    np.savez(it / "traces.npz", **{label: tr["uncertainty"] for label, tr in traces.items()})
    cache.write_text(json.dumps(found, indent=2))
    return found


def round_quota(config: DistillConfig, n_molecules: int, remaining: int, iteration: int) -> int:
    """Frames to label in round ``iteration``: ``frames_per_iteration`` per molecule, or more
    when that pace would leave budget unspent after the last round (the ``remaining`` calls
    spread evenly over the rounds left), never more than ``remaining``."""
    rounds_left = max(config.max_iterations - iteration, 1)
    even = -(-remaining // rounds_left)  # ceil
    return max(0, min(remaining, max(config.frames_per_iteration * n_molecules, even)))


def select_stage(config: DistillConfig, it: Path, quota: int) -> None:
    """Write ``it/selected.h5``: a diverse subset of at most ``quota`` candidates to label. The
    biased run's candidates (far out, and the most diverse by construction) get at most their
    run's share of the quota (one run of the exploration's), the unbiased runs the rest."""
    from mlff_distiller.data.hdf5 import Dataset, DatasetWriter

    candidates = json.loads((it / "candidates.json").read_text())
    for c in candidates:  # runs written before the biased run were keyed by temperature
        c[0] = f"{c[0]:g}K" if isinstance(c[0], (int, float)) else c[0]
    frames, mol, unc, biased = [], [], [], []
    for label in sorted({c[0] for c in candidates}):  # each MD file opened once
        with Dataset(it / f"md_{label}.h5") as ds:
            for _, index, u in (c for c in candidates if c[0] == label):
                atoms = ds[int(index)]
                frames.append(atoms)
                mol.append(str(atoms.info.get(keys.NAME, "")).split("|")[0])
                unc.append(u)
                biased.append(label.endswith("_biased"))
    biased = np.array(biased, dtype=bool)
    n_runs = len(exploration_runs(config))
    biased_quota = min(int(biased.sum()), -(-quota // n_runs)) if biased.any() else 0
    plain_quota = min(int((~biased).sum()), quota - biased_quota)
    biased_quota = min(int(biased.sum()), quota - plain_quota)  # what the unbiased runs leave
    picked = []
    for pool, share in ((~biased, plain_quota), (biased, biased_quota)):
        idx = np.flatnonzero(pool)
        chosen = select_frames(
            np.array(unc)[idx], np.array(mol)[idx], [frames[k].positions for k in idx],
            config.max_uncertainty, share,
        )  # fmt: skip
        picked += [int(idx[k]) for k in chosen]
    with DatasetWriter(it / "selected.h5", flush_every=64) as writer:
        for k in sorted(picked):
            writer.append_frame(frames[k].numbers, frames[k].positions, molecule=mol[k])


def label_stage(config: DistillConfig, it: Path, out: Path, i: int, say: Say) -> None:
    from mlff_distiller.data.hdf5 import Dataset

    with Dataset(it / "selected.h5") as ds:
        n = len(ds)
    say(f"labelling {n} selected frames with {config.teacher}")
    if n:
        _label(config, it / "selected.h5", out / "labels" / f"iter_{i:02d}.h5")


# ------------------------------------------------------------------ scoring
