"""Label a dataset with a teacher, serially or in parallel on Ray, resumably.

Output: an HDF5 dataset with the input's structures that the teacher could do, in input order,
with ``energy`` and ``forces``. A structure the teacher cannot do (unsupported element, SCF
failure, parametrization failure) is not written with made-up labels: it is recorded as
failed with its reason, first in ``OUT.failures.jsonl`` (one JSON line per failure, written
in order with the frames, so that ``committed frames + failures`` is how far a killed run got),
and at the end also in the HDF5 file as ``failures/input_index`` and ``failures/reason``.

Hessian-informed distillation (:class:`HessianOptions`, ``hessian_rows_per_frame`` > 0): every
frame also gets ``r`` random rows of the teacher's Hessian (seeded by the input index, so a
resumed or parallel run picks the same rows), by autograd for torch teachers or by central
differences of the forces (2 force calls per row) for any other; the file records how
(root attribute ``hessian_labels``) and what it cost (``teacher_calls_per_frame``), and
:class:`LabelSummary` counts the teacher calls of the run.

On Ray every worker is an actor that builds the teacher once and labels chunks of structures.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from mlff_distiller import keys
from mlff_distiller.teachers.base import TeacherCalculator, TeacherError, UnsupportedElementError

HESSIAN_ATTR = "hessian_labels"


@dataclass(frozen=True)
class HessianOptions:
    """Hessian rows per frame: ``rows_per_frame`` random rows (0: none), central differences
    with ``delta`` Å where needed, rows seeded by ``(seed, input index)``; ``method`` "auto"
    (autograd for torch teachers, else finite differences), "fd" or "autograd"."""

    rows_per_frame: int = 0
    delta: float = 1e-3
    seed: int = 0
    method: str = "auto"

    def __post_init__(self) -> None:
        from mlff_distiller.teachers.hessian import HESSIAN_METHODS

        if self.rows_per_frame < 0:
            raise ValueError(f"hessian rows per frame must be >= 0, got {self.rows_per_frame}")
        if not self.delta > 0:
            raise ValueError(f"hessian finite-difference delta must be > 0, got {self.delta}")
        if self.method not in HESSIAN_METHODS:
            raise ValueError(f"hessian method must be one of {HESSIAN_METHODS}: {self.method!r}")

    @property
    def enabled(self) -> bool:
        return self.rows_per_frame > 0

    def resolved(self, teacher) -> HessianOptions:
        """A copy whose ``method`` is what "auto" means for ``teacher`` ("fd" or "autograd")."""
        from mlff_distiller.teachers.hessian import resolve_method

        if not self.enabled:
            return self
        return HessianOptions(
            self.rows_per_frame, self.delta, self.seed, resolve_method(teacher, self.method)
        )

    def attrs(self) -> dict:
        """Root attributes of a file labelled with these options (none when disabled)."""
        from mlff_distiller.teachers.hessian import calls_per_row

        if not self.enabled:
            return {}
        value = {
            "rows_per_frame": self.rows_per_frame,
            "method": self.method,
            "delta_a": self.delta if self.method == "fd" else None,
            "seed": self.seed,
            "teacher_calls_per_frame": 1 + calls_per_row(self.method) * self.rows_per_frame,
        }
        return {HESSIAN_ATTR: value}


@dataclass
class LabelSummary:
    """What a labelling run did: frames written now, skipped (already done), failures."""

    n_input: int
    n_labelled: int
    n_skipped: int
    failures: list[dict] = field(default_factory=list)  # {"index", "name", "reason"}
    out_path: Path | None = None
    teacher_calls: int = 0
    """Teacher calls of this run: 1 energy+forces call per structure tried, plus 2 force calls
    (finite differences) or 1 backward pass (autograd) per Hessian row labelled."""


def failures_path(out_path: str | Path) -> Path:
    return Path(str(out_path) + ".failures.jsonl")


def read_failures(out_path: str | Path) -> list[dict]:
    """Failures recorded so far (complete lines only: a line cut by a kill is dropped)."""
    path = failures_path(out_path)
    if not path.exists():
        return []
    text = path.read_text()
    lines = text.split("\n")
    complete = lines[:-1]  # the piece after the last newline is incomplete (or empty)
    if lines[-1]:
        path.write_text("".join(line + "\n" for line in complete))
    return [json.loads(line) for line in complete if line.strip()]


def frame_arrays(ds, i: int) -> dict[str, Any]:
    """The parts of input structure ``i`` a teacher needs (picklable, small)."""
    arr = ds.get_arrays(i)
    return {
        "index": int(i),
        keys.ATOMIC_NUMBERS: np.asarray(arr[keys.ATOMIC_NUMBERS]),
        keys.POSITIONS: np.asarray(arr[keys.POSITIONS]),
        keys.CELL: np.asarray(arr[keys.CELL]),
        keys.PBC: np.asarray(arr[keys.PBC]),
        keys.NAME: arr.get(keys.NAME, ""),
        keys.SMILES: arr.get(keys.SMILES, ""),
        "charge": int(arr["charge"]) if "charge" in arr else None,
    }


def label_one(
    teacher: TeacherCalculator, frame: dict[str, Any], hessian: HessianOptions | None = None
) -> dict[str, Any]:
    """Energy and forces of one frame (and its Hessian rows when ``hessian`` is enabled; its
    method resolved), or ``{"error": reason}`` if the teacher cannot do it. ``teacher_calls``:
    what it cost."""
    atoms = Atoms(
        numbers=frame[keys.ATOMIC_NUMBERS],
        positions=frame[keys.POSITIONS],
        cell=frame[keys.CELL],
        pbc=frame[keys.PBC],
    )
    for key in (keys.NAME, keys.SMILES):
        if frame.get(key):
            atoms.info[key] = frame[key]
    atoms.calc = teacher
    try:
        energy = float(atoms.get_potential_energy())
        forces = np.array(atoms.get_forces(), dtype=np.float64)
    except (TeacherError, UnsupportedElementError, ValueError) as err:
        return {"index": frame["index"], "error": str(err), "teacher_calls": 1}
    out = {"index": frame["index"], keys.ENERGY: energy, keys.FORCES: forces, "teacher_calls": 1}
    if hessian is not None and hessian.enabled:
        from mlff_distiller.teachers.hessian import calls_per_row, frame_rows, hessian_rows

        rows = frame_rows(len(atoms), hessian.rows_per_frame, hessian.seed, frame["index"])
        out["teacher_calls"] += calls_per_row(hessian.method) * int((rows >= 0).sum())
        try:
            values = hessian_rows(atoms, teacher, rows, hessian.delta, hessian.method)
        except (TeacherError, UnsupportedElementError, ValueError) as err:
            return {"index": frame["index"], "error": f"Hessian rows: {err}", **_calls(out)}
        if not np.all(np.isfinite(values)):
            reason = "Hessian rows: the teacher gave non-finite forces near this structure"
            return {"index": frame["index"], "error": reason, **_calls(out)}
        out[keys.HESSIAN_INDEX], out[keys.HESSIAN_ROWS] = rows, values
    return out


def _calls(result: dict) -> dict:
    return {"teacher_calls": result["teacher_calls"]}


def label_chunk(
    teacher: TeacherCalculator, frames: Sequence[dict], hessian: HessianOptions | None = None
) -> list[dict]:
    return [label_one(teacher, fr, hessian) for fr in frames]


# -- Ray --------------------------------------------------------------------------------------
def init_ray(workers: int, address: str | None = None) -> None:
    """Connect to ``address`` or start a local Ray on loopback with ``workers`` CPUs."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(
            _node_ip_address="127.0.0.1",
            num_cpus=max(1, workers),
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={
                "env_vars": {
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
                    "RAY_AUTH_MODE": "disabled",
                }
            },
        )


def _make_actor_class():
    import ray

    @ray.remote(num_cpus=1)
    class LabelWorker:
        """Holds one teacher for its whole life; labels chunks."""

        def __init__(self, teacher_name: str, options: dict, hessian: HessianOptions) -> None:
            from mlff_distiller.teachers.registry import get_teacher

            self.teacher = get_teacher(teacher_name, **options)
            self.hessian = hessian.resolved(self.teacher)

        def info_attrs(self) -> dict:
            return {**self.teacher.info.attrs(), **self.hessian.attrs()}

        def label(self, frames: list[dict]) -> list[dict]:
            return label_chunk(self.teacher, frames, self.hessian)

    return LabelWorker


def _ray_results(
    teacher_name: str,
    options: dict,
    chunks: Iterator[list[dict]],
    workers: int,
    on_attrs: Callable[[dict], None],
    hessian: HessianOptions | None = None,
) -> Iterator[list[dict]]:
    """Label chunks on ``workers`` actors; yield results chunk by chunk in input order."""
    import ray

    worker_cls = _make_actor_class()
    hessian = hessian or HessianOptions()
    actors = [worker_cls.remote(teacher_name, options, hessian) for _ in range(max(1, workers))]
    on_attrs(ray.get(actors[0].info_attrs.remote()))
    pending: dict[int, Any] = {}
    free = list(range(len(actors)))
    busy: dict[Any, int] = {}
    next_submit, next_yield = 0, 0
    chunk_iter = iter(chunks)
    exhausted = False
    done: dict[int, list[dict]] = {}
    try:
        while True:
            while free and not exhausted:
                try:
                    chunk = next(chunk_iter)
                except StopIteration:
                    exhausted = True
                    break
                a = free.pop()
                ref = actors[a].label.remote(chunk)
                pending[next_submit] = ref
                busy[ref] = a
                next_submit += 1
            if not busy and exhausted and next_yield == next_submit:
                return
            ready, _ = ray.wait(list(busy), num_returns=1)
            for ref in ready:
                free.append(busy.pop(ref))
                k = next(i for i, r in pending.items() if r == ref)
                done[k] = ray.get(pending.pop(k))
            while next_yield in done:
                yield done.pop(next_yield)
                next_yield += 1
    finally:
        for a in actors:
            ray.kill(a)


# -- the run --------------------------------------------------------------------------------
def label_dataset(
    input_path: str | Path,
    teacher_name: str,
    out_path: str | Path,
    teacher_options: dict | None = None,
    workers: int = 0,
    address: str | None = None,
    chunk_size: int = 8,
    on_progress: Callable[[int], None] | None = None,
    hessian: HessianOptions | None = None,
) -> LabelSummary:
    """Label every structure of ``input_path`` with ``teacher_name`` into ``out_path``.

    ``workers`` 0: serial in this process; N > 0: N Ray actors (a local cluster, or the one
    at ``address``). A killed run resumes where it stopped: committed frames and recorded
    failures are not relabelled. ``on_progress(n)`` is called with structures done.
    ``hessian``: add Hessian rows per frame (:class:`HessianOptions`; default none)."""
    from mlff_distiller.data.hdf5 import Dataset, DatasetWriter

    options = dict(teacher_options or {})
    hessian = hessian or HessianOptions()
    out_path = Path(out_path)
    src = Dataset(input_path)
    n_input = len(src)
    n_out, old_attrs = 0, {}
    if out_path.exists():
        with Dataset(out_path) as ds:
            n_out, old_attrs = len(ds), ds.attrs
    failures = read_failures(out_path) if out_path.exists() else []
    if not out_path.exists() and failures_path(out_path).exists():
        failures_path(out_path).unlink()
        failures = []
    start = n_out + len(failures)
    if start > n_input:
        raise ValueError(
            f"'{out_path}' holds {start} structures but '{input_path}' only {n_input}: "
            "it was labelled from another dataset; choose a new --out"
        )
    summary = LabelSummary(n_input, 0, start, list(failures), out_path)
    if on_progress and start:
        on_progress(start)
    chunks = _chunks(src, start, n_input, chunk_size)
    writer: DatasetWriter | None = None
    base_attrs = {"labelled_from": str(input_path), "n_input": n_input}

    def open_writer(attrs: dict) -> None:
        nonlocal writer
        if n_out:
            _check_same_teacher(out_path, old_attrs, attrs)
        mode = "a" if out_path.exists() and n_out else "w"
        writer = DatasetWriter(out_path, mode=mode, attrs={**base_attrs, **attrs})

    if start >= n_input:
        src.close()
        return summary
    try:
        if workers > 0:
            init_ray(workers, address)
            results = _ray_results(teacher_name, options, chunks, workers, open_writer, hessian)
        else:
            from mlff_distiller.teachers.registry import get_teacher

            teacher = get_teacher(teacher_name, **options)
            hessian = hessian.resolved(teacher)
            open_writer({**teacher.info.attrs(), **hessian.attrs()})
            results = (label_chunk(teacher, c, hessian) for c in chunks)
        with open(failures_path(out_path), "a") as fail_log:
            for chunk_results in results:
                for res in chunk_results:
                    _write_result(writer, src, res, fail_log, summary)
                if on_progress:
                    on_progress(len(chunk_results))
    finally:
        if writer is not None:
            writer.close()
        src.close()
    _store_failures(out_path, read_failures(out_path), n_input)
    return summary


def _check_same_teacher(out_path: Path, old: dict, new: dict) -> None:
    """Refuse to resume a file that another teacher (or other settings) started."""
    old_settings = old.get("teacher_settings")
    new_settings = json.loads(new["teacher_settings"])
    if old.get("teacher") != new["teacher"] or old_settings != new_settings:
        raise ValueError(
            f"'{out_path}' was labelled by teacher '{old.get('teacher')}' with settings "
            f"{old_settings}; resuming it with '{new['teacher']}' {new_settings} would mix "
            "teachers: choose a new --out or the same teacher and options"
        )
    old_hessian, new_hessian = old.get(HESSIAN_ATTR), new.get(HESSIAN_ATTR)
    if old_hessian != new_hessian:
        raise ValueError(
            f"'{out_path}' was labelled with Hessian rows {old_hessian}; resuming it with "
            f"{new_hessian} would mix labels: choose a new --out or the same Hessian options"
        )


def _chunks(src, start: int, stop: int, size: int) -> Iterator[list[dict]]:
    for a in range(start, stop, size):
        yield [frame_arrays(src, i) for i in range(a, min(stop, a + size))]


def _write_result(writer, src, res: dict, fail_log, summary: LabelSummary) -> None:
    i = res["index"]
    summary.teacher_calls += int(res.get("teacher_calls", 1))
    arr = src.get_arrays(i)
    name = arr.get(keys.NAME) or ""
    if "error" in res:
        record = {"index": i, "name": name, "reason": res["error"]}
        fail_log.write(json.dumps(record) + "\n")
        fail_log.flush()
        os.fsync(fail_log.fileno())
        summary.failures.append(record)
        return
    writer.append_frame(
        arr[keys.ATOMIC_NUMBERS],
        arr[keys.POSITIONS],
        cell=arr[keys.CELL],
        pbc=arr[keys.PBC],
        energy=res[keys.ENERGY],
        forces=res[keys.FORCES],
        molecule=name or None,
        smiles=arr.get(keys.SMILES) or None,
        charge=int(arr["charge"]) if "charge" in arr else None,
        hessian_index=res.get(keys.HESSIAN_INDEX),
        hessian_rows=res.get(keys.HESSIAN_ROWS),
    )
    summary.n_labelled += 1


def _store_failures(out_path: Path, failures: list[dict], n_input: int) -> None:
    """Copy the failure records into the finished HDF5 file (``failures/`` group)."""
    import h5py

    if not out_path.exists():
        return
    with h5py.File(out_path, "a") as h5:
        if "failures" in h5:
            del h5["failures"]
        grp = h5.create_group("failures")
        grp.create_dataset(
            "input_index", data=np.array([f["index"] for f in failures], dtype=np.int64)
        )
        grp.create_dataset(
            "reason",
            data=np.array([f["reason"].encode() for f in failures], dtype=object),
            dtype=h5py.string_dtype(),
        )
        h5.attrs["n_failed"] = len(failures)
        h5.attrs["n_input"] = n_input


def read_failed_indices(out_path: str | Path) -> list[int]:
    """Input indices that the teacher could not label (from the HDF5 file or the log)."""
    return [int(f["index"]) for f in read_failures(out_path)]
