"""k-step training windows ``(x_t, v_t) -> (x_{t+k}, v_{t+k})`` from teacher MD trajectories.

:func:`build_windows` reads reference trajectories (the HDF5 format of ``mlffd sample``: frames
with positions, velocities (Å/fs), forces and time), finds every pair of frames exactly ``k`` MD
steps apart (``k * dt`` in time, ``dt`` from the file's ``sampling`` attribute or given), takes
every ``stride``-th start frame, and writes a small window file (HDF5)::

    /molecules/<name>/ atomic_numbers (n,) masses (n,) bonds (b,2) angles (a,3) dihedrals (d,4)
                       x_t v_t f_t x_tk v_tk f_tk (w, n, 3)   k (w,)   dt (w,)
                       [f_c x_2 v_2 (w, n, 3): rollout windows, see below]
                       attrs: smiles, split ("train" | "val" | "test")

Rollout windows (``rollout=True``, trajectories saved every MD step) follow one hybrid cycle
further: ``f_c`` are the teacher's forces at ``t + k + 1`` (after the cycle's corrector step),
``x_2``, ``v_2`` the state at ``t + 2k + 1`` (the end of the next jump); only starts with both
frames are kept. The rollout loss (:mod:`mlff_distiller.training.kstep_rollout`) trains on them.

Velocities enter the windows on step (``v(t)``, as the hybrid integrator hands them over). A
trajectory says which velocities it stores in its root attribute ``keys.VELOCITY_CONVENTION``
(written by ``mlffd sample`` and the MD runners): ``keys.ON_STEP`` ones are used as they are,
``keys.HALF_STEP`` ones (OpenMM's leapfrog integrators, ``v(t - dt/2)``) are moved on step
(:func:`to_on_step_velocities`). A file without the attribute is refused unless the convention
is given (``velocity_convention=``, ``mlffd kstep dataset --velocity-convention``).

Splits are by molecule (70/15/15 by default, seeded) so test molecules are never trained on.
:class:`KStepWindows` loads one split into memory and yields batches of
``(KStepInput, KStepTargets)``, centred on each window's centre of mass and, optionally,
randomly rotated (the same rotation for positions, velocities, forces and targets).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from ase.data import atomic_masses

from mlff_distiller import keys, units
from mlff_distiller.kstep.topology import molecule_topology
from mlff_distiller.models.kstep_common import KStepInput
from mlff_distiller.training.kstep_losses import KStepTargets

SPLITS = ("train", "val", "test")
WINDOW_FORMAT = "mlff_distiller.kstep_windows"


@dataclass
class MoleculeWindows:
    """All windows of one molecule (arrays as in the module docstring)."""

    name: str
    smiles: str
    atomic_numbers: np.ndarray
    masses: np.ndarray
    bonds: np.ndarray
    angles: np.ndarray
    dihedrals: np.ndarray
    x_t: np.ndarray
    v_t: np.ndarray
    f_t: np.ndarray
    x_tk: np.ndarray
    v_tk: np.ndarray
    f_tk: np.ndarray
    k: np.ndarray
    dt: np.ndarray
    split: str = "train"
    f_c: np.ndarray | None = None
    x_2: np.ndarray | None = None
    v_2: np.ndarray | None = None

    @property
    def n_windows(self) -> int:
        return len(self.k)

    @property
    def has_rollout(self) -> bool:
        return self.x_2 is not None


ARRAYS = ("x_t", "v_t", "f_t", "x_tk", "v_tk", "f_tk", "k", "dt")
ROLLOUT_ARRAYS = ("f_c", "x_2", "v_2")
STATIC = ("atomic_numbers", "masses", "bonds", "angles", "dihedrals")


def trajectory_dt(attrs: dict) -> float | None:
    """MD time step (fs) of a trajectory written by ``mlffd sample`` (its ``sampling`` attr)."""
    sampling = attrs.get("sampling")
    if isinstance(sampling, str):
        try:
            sampling = json.loads(sampling)
        except json.JSONDecodeError:
            return None
    if isinstance(sampling, dict) and sampling.get("dt_fs"):
        return float(sampling["dt_fs"])
    return None


def read_trajectory(path: str | Path) -> dict:
    """Frames of one-molecule trajectory ``path`` as arrays: positions, velocities, forces
    (n_frames, n, 3), time (n_frames,), atomic_numbers, name, smiles, dt (fs or None)."""
    from mlff_distiller.data.hdf5 import Dataset

    with Dataset(path) as ds:
        if len(ds) < 2:
            raise ValueError(f"trajectory {path} has {len(ds)} frames; k-step windows need >= 2")
        if not (ds.has(keys.VELOCITIES) and ds.has(keys.TIME)):
            raise ValueError(
                f"trajectory {path} has no velocities/time; write it with `mlffd sample`"
            )
        frames = [ds.get_arrays(i) for i in range(len(ds))]
        attrs = dict(ds.attrs)
    numbers = frames[0][keys.ATOMIC_NUMBERS]
    if any(len(f[keys.ATOMIC_NUMBERS]) != len(numbers) for f in frames):
        raise ValueError(f"trajectory {path} mixes molecules; give one trajectory per molecule")
    has_forces = keys.FORCES in frames[0]
    return {
        "positions": np.stack([f[keys.POSITIONS] for f in frames]).astype(np.float64),
        "velocities": np.stack([f[keys.VELOCITIES] for f in frames]).astype(np.float64),
        "forces": (
            np.stack([f[keys.FORCES] for f in frames]).astype(np.float64)
            if has_forces
            else np.full((len(frames), len(numbers), 3), np.nan)
        ),
        "time": np.array([float(f[keys.TIME]) for f in frames]),
        "atomic_numbers": np.asarray(numbers, dtype=np.int64),
        "name": str(frames[0].get(keys.NAME) or Path(path).stem),
        "smiles": str(frames[0].get(keys.SMILES) or ""),
        "dt": trajectory_dt(attrs),
        "velocity_convention": attrs.get(keys.VELOCITY_CONVENTION),
        "path": str(path),
    }


VELOCITY_CONVENTIONS = (keys.ON_STEP, keys.HALF_STEP)


def velocity_convention(traj: dict, override: str | None = "auto") -> str:
    """``keys.ON_STEP`` or ``keys.HALF_STEP``: ``override`` unless it is ``"auto"``/None, else
    what the trajectory file records (its ``keys.VELOCITY_CONVENTION`` root attribute). A file
    that does not record it is an error that names the file and the two ways out."""
    if override not in (None, "auto"):
        if override not in VELOCITY_CONVENTIONS:
            raise ValueError(
                f"velocity convention must be auto, {keys.ON_STEP} or {keys.HALF_STEP}, "
                f"not {override!r}"
            )
        return override
    stored = traj.get("velocity_convention")
    where = traj.get("path") or traj.get("name") or "this trajectory"
    if stored is None:
        raise ValueError(
            f"trajectory {where} does not record whether its velocities are on-step or "
            f"half-step (root attribute {keys.VELOCITY_CONVENTION!r}). Resample it with "
            "`mlffd sample` (which records it), or give the convention: "
            "`mlffd kstep dataset --velocity-convention half-step` (OpenMM leapfrog / "
            "Langevin-middle integrators) or `on-step` (ASE, velocity Verlet), "
            "build_windows(..., velocity_convention=...) in Python"
        )
    if stored not in VELOCITY_CONVENTIONS:
        raise ValueError(
            f"trajectory {where} records an unknown velocity convention {stored!r} "
            f"(expected {keys.ON_STEP} or {keys.HALF_STEP}); pass velocity_convention="
        )
    return str(stored)


_velocity_convention = velocity_convention  # build_windows has a parameter of that name


def to_on_step_velocities(traj: dict, dt: float) -> dict:
    """A copy of ``traj`` with half-step velocities moved to the frame times:
    ``v(t) = v(t - dt/2) + dt/2 F(x_t) / m`` (the second half-kick of velocity Verlet), so that
    windows match the on-step velocities of the hybrid integrator."""
    masses = atomic_masses[traj["atomic_numbers"]][None, :, None]
    kick = 0.5 * dt * traj["forces"] * units.ACCEL_PER_FORCE_OVER_MASS / masses
    return {**traj, "velocities": traj["velocities"] + kick}


def windows_of_trajectory(
    traj: dict, ks: Sequence[int], stride: int = 1, dt: float | None = None, rollout: bool = False
) -> dict[str, np.ndarray]:
    """Window arrays for every ``k`` in ``ks``: start frames ``0, stride, 2 stride, ...`` whose
    partner frame lies exactly ``k * dt`` later (frames of another time step are skipped);
    with ``rollout`` also the frames ``(k + 1) dt`` and ``(2k + 1) dt`` later (starts without
    them are skipped) for the :data:`ROLLOUT_ARRAYS`."""
    dt = dt or traj["dt"]
    if not dt:
        raise ValueError(
            f"trajectory of {traj['name']!r} does not say its MD time step; pass dt (fs)"
        )
    t = traj["time"]
    names = ARRAYS + (ROLLOUT_ARRAYS if rollout else ())
    out: dict[str, list] = {name: [] for name in names}

    def frame(i: int, steps: int) -> int | None:
        j = int(np.searchsorted(t, t[i] + steps * dt - 1e-6))
        return j if j < len(t) and abs(t[j] - t[i] - steps * dt) <= 1e-6 else None

    for k in ks:
        for i in range(0, len(t), stride):
            j = frame(i, k)
            if j is None:
                continue
            if rollout:
                c, e = frame(i, k + 1), frame(i, 2 * k + 1)
                if c is None or e is None:
                    continue
                for name, src, idx in (("f_c", "forces", c), ("x_2", "positions", e),
                                       ("v_2", "velocities", e)):  # fmt: skip
                    out[name].append(traj[src][idx])
            for name, src, idx in (
                ("x_t", "positions", i),
                ("v_t", "velocities", i),
                ("f_t", "forces", i),
                ("x_tk", "positions", j),
                ("v_tk", "velocities", j),
                ("f_tk", "forces", j),
            ):
                out[name].append(traj[src][idx])
            out["k"].append(k)
            out["dt"].append(dt)
    n = traj["positions"].shape[1]
    return {
        name: (
            np.asarray(values)
            if values
            else np.zeros((0, n, 3) if name not in ("k", "dt") else (0,))
        )
        for name, values in out.items()
    }


def split_molecules(
    names: Sequence[str],
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    test: Sequence[str] = (),
) -> dict[str, str]:
    """Molecule name -> split. ``test`` names are forced into the test split. With >= 3
    molecules, val and test each get at least one; the rest is train."""
    if abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {fractions}")
    unknown = sorted(set(test) - set(names))
    if unknown:
        raise ValueError(f"test molecules {unknown} are not among the trajectories {list(names)}")
    names = sorted(set(names))
    rng = np.random.default_rng(seed)
    rest = [n for n in names if n not in set(test)]
    rest = [rest[i] for i in rng.permutation(len(rest))]
    n = len(names)
    n_train = round(fractions[0] * n)
    n_val = min(round(fractions[1] * n), n - n_train)
    n_test = n - n_train - n_val
    for needed in ("test", "val"):  # >= 3 molecules: one each for val and test at least
        frac = fractions[2] if needed == "test" else fractions[1]
        if n >= 3 and frac > 0 and (n_test if needed == "test" else n_val) == 0:
            n_train -= 1
            n_test, n_val = (n_test + 1, n_val) if needed == "test" else (n_test, n_val + 1)
    if len(test) > n_test:
        n_train, n_test = n_train - (len(test) - n_test), len(test)
    test_names = list(test) + rest[: n_test - len(test)]
    rest = rest[n_test - len(test) :]
    out = {name: "test" for name in test_names}
    out.update({name: "val" for name in rest[:n_val]})
    out.update({name: "train" for name in rest[n_val:]})
    return out


def build_windows(
    trajectories: Sequence[str | Path],
    out_path: str | Path,
    ks: Sequence[int] = (8,),
    stride: int = 1,
    dt: float | None = None,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    test_molecules: Sequence[str] = (),
    on_step_velocities: bool = True,
    velocity_convention: str | None = "auto",
    rollout: bool = False,
) -> dict[str, MoleculeWindows]:
    """Windows of every trajectory (several files of one molecule are merged), split by
    molecule, written to ``out_path``. Returns them by molecule name.

    ``on_step_velocities`` (default): trajectories with half-step velocities (e.g. OpenMM
    Langevin-middle) get on-step velocities (:func:`to_on_step_velocities`), the convention of
    the hybrid integrator, which hands the network ``v(t)`` after each corrector step; ``False``
    keeps the velocities as stored. ``velocity_convention``: what the files store, ``"auto"``
    (read each file's ``keys.VELOCITY_CONVENTION`` attribute; a file without it is an error),
    or ``"on-step"`` / ``"half-step"`` for every file (overrides the attribute). ``rollout``:
    also the next cycle's frames (module docstring); needs frames every MD step."""
    if not trajectories:
        raise ValueError("no trajectories given to build k-step windows from")
    if any(k < 1 for k in ks) or stride < 1:
        raise ValueError(f"k values must be >= 1 and stride >= 1, got ks={list(ks)}, {stride=}")
    merged: dict[str, MoleculeWindows] = {}
    for path in trajectories:
        traj = read_trajectory(path)
        if on_step_velocities and _velocity_convention(traj, velocity_convention) == keys.HALF_STEP:
            step = dt or traj["dt"]
            if not step:
                raise ValueError(
                    f"trajectory {path} does not say its MD time step, needed to move its "
                    "half-step velocities on step; pass dt (fs)"
                )
            traj = to_on_step_velocities(traj, step)
        arrays = windows_of_trajectory(traj, ks, stride, dt, rollout)
        name = traj["name"]
        if name in merged:
            old = merged[name]
            if not np.array_equal(old.atomic_numbers, traj["atomic_numbers"]):
                raise ValueError(f"two trajectories named {name!r} hold different molecules")
            for key in arrays:
                setattr(old, key, np.concatenate([getattr(old, key), arrays[key]]))
            continue
        numbers = traj["atomic_numbers"]
        topo = molecule_topology(name, numbers, traj["positions"][0], traj["smiles"] or None)
        merged[name] = MoleculeWindows(
            name=name,
            smiles=traj["smiles"],
            atomic_numbers=numbers,
            masses=atomic_masses[numbers].astype(np.float64),
            bonds=topo.bonds,
            angles=topo.angles,
            dihedrals=topo.dihedrals,
            **arrays,
        )
    if all(m.n_windows == 0 for m in merged.values()):
        if rollout:
            raise ValueError(
                f"no rollout windows for k={list(ks)}: they need frames k + 1 and 2k + 1 steps "
                "after the start; sample the trajectories with save_every=1"
            )
        raise ValueError(
            f"no frame pairs k*dt apart for k={list(ks)}; the trajectories must be saved at "
            "least every k steps (save_every dividing k)"
        )
    for name, split in split_molecules(list(merged), fractions, seed, test_molecules).items():
        merged[name].split = split
    write_windows(out_path, merged.values())
    return merged


def write_windows(path: str | Path, molecules) -> None:
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with h5py.File(tmp, "w") as h5:
        h5.attrs["format"] = WINDOW_FORMAT
        group = h5.create_group("molecules")
        for mol in molecules:
            g = group.create_group(mol.name.replace("/", "_"))
            g.attrs["name"], g.attrs["smiles"], g.attrs["split"] = mol.name, mol.smiles, mol.split
            for key in STATIC + ARRAYS + (ROLLOUT_ARRAYS if mol.has_rollout else ()):
                g.create_dataset(key, data=getattr(mol, key))
    tmp.replace(path)  # crash-safe: the old file stays until the new one is complete


def read_windows(path: str | Path, split: str | None = None) -> list[MoleculeWindows]:
    """Molecules of a window file, optionally only those of ``split``."""
    import h5py

    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"k-step window file {path} does not exist (mlffd kstep dataset)")
    with h5py.File(path, "r") as h5:
        if h5.attrs.get("format") != WINDOW_FORMAT:
            raise ValueError(f"{path} is not a k-step window file (mlffd kstep dataset makes one)")
        out = []
        for g in h5["molecules"].values():
            if split is not None and g.attrs["split"] != split:
                continue
            out.append(
                MoleculeWindows(
                    name=str(g.attrs["name"]),
                    smiles=str(g.attrs["smiles"]),
                    split=str(g.attrs["split"]),
                    **{key: g[key][()] for key in STATIC + ARRAYS + ROLLOUT_ARRAYS if key in g},
                )
            )
    return out


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random proper rotation (3, 3) from the QR of a Gaussian matrix."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


class KStepWindows:
    """Windows of one split in memory, served as ``(KStepInput, KStepTargets)`` batches.

    ``reverse_time``: the probability that a window is served time-reversed, from
    ``(x_{t+k}, -v_{t+k}, F_{t+k})`` to ``(x_t, -v_t, F_t)`` (``dx -> -dx``, ``dv`` unchanged):
    Hamiltonian dynamics is time-reversible, so this is a valid window of the same dynamics
    (up to the thermostat's friction, ~gamma k dt = 0.6% at 1/ps and k = 12), and training on
    both directions asks the jump map to be its own time reverse.

    ``rollout``: serve the next cycle's targets too (``KStepTargets.corrector_forces``,
    ``delta_positions_2``, ``delta_velocities_2``); every molecule needs rollout windows, and
    time reversal does not apply to them."""

    def __init__(
        self,
        molecules: Sequence[MoleculeWindows],
        augment_rotations: bool = False,
        centre: bool = True,
        ks: Sequence[int] | None = None,
        reverse_time: float = 0.0,
        rollout: bool = False,
    ):
        if not 0.0 <= reverse_time <= 1.0:
            raise ValueError(f"reverse_time is a probability in [0, 1], got {reverse_time}")
        self.molecules = list(molecules)
        if rollout:
            missing = [m.name for m in self.molecules if not m.has_rollout]
            if missing:
                raise ValueError(
                    f"no rollout windows for {missing[:5]}{' ...' if len(missing) > 5 else ''}: "
                    "build the window file with rollout=True (mlffd kstep dataset --rollout) "
                    "from trajectories saved every MD step"
                )
            if reverse_time:
                raise ValueError("rollout windows cannot be served time-reversed (reverse_time)")
        self.rollout = rollout
        self.reverse_time = reverse_time
        self.augment_rotations = augment_rotations
        self.centre = centre
        self.index = np.array(
            [
                (m, w)
                for m, mol in enumerate(self.molecules)
                for w in range(mol.n_windows)
                if ks is None or int(mol.k[w]) in set(ks)
            ],
            dtype=np.int64,
        ).reshape(-1, 2)

    @classmethod
    def from_file(cls, path: str | Path, split: str, **kwargs) -> KStepWindows:
        return cls(read_windows(path, split), **kwargs)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def has_forces(self) -> bool:
        return all(np.all(np.isfinite(m.f_t)) for m in self.molecules if m.n_windows)

    def batches(
        self, batch_size: int, shuffle: bool = False, seed: int = 0, dtype=torch.float32
    ) -> Iterator[tuple[KStepInput, KStepTargets]]:
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(self)) if shuffle else np.arange(len(self))
        for start in range(0, len(order), batch_size):
            yield self.collate(self.index[order[start : start + batch_size]], rng, dtype)

    def collate(
        self, items: np.ndarray, rng: np.random.Generator, dtype=torch.float32
    ) -> tuple[KStepInput, KStepTargets]:
        parts: dict[str, list] = {
            name: []
            for name in (
                "z",
                "m",
                "x",
                "v",
                "f",
                "dx",
                "dv",
                "f1",
                "k",
                "dt",
                "tau",
                "b",
                "a",
                "d",
                "sys",
                "fc",
                "dx2",
                "dv2",
            )
        }
        offset = 0
        for s, (mi, wi) in enumerate(items):
            mol = self.molecules[mi]
            n = len(mol.atomic_numbers)
            x, v, f = mol.x_t[wi], mol.v_t[wi], mol.f_t[wi]
            dx, dv, f1 = mol.x_tk[wi] - x, mol.v_tk[wi] - v, mol.f_tk[wi]
            if self.reverse_time and rng.random() < self.reverse_time:
                x, v, f, dx, f1 = mol.x_tk[wi], -mol.v_tk[wi], mol.f_tk[wi], -dx, mol.f_t[wi]
            if self.centre:
                x = x - (mol.masses[:, None] * x).sum(0) / mol.masses.sum()
            rollout = ()
            if self.rollout:  # the next cycle, relative to the start like dx, dv
                rollout = (mol.f_c[wi], mol.x_2[wi] - mol.x_t[wi], mol.v_2[wi] - mol.v_t[wi])
            if self.augment_rotations:
                rot = random_rotation(rng)
                x, v, f, dx, dv, f1 = (a @ rot.T for a in (x, v, f, dx, dv, f1))
                rollout = tuple(a @ rot.T for a in rollout)
            for key, value in zip(("fc", "dx2", "dv2"), rollout):
                parts[key].append(value)
            for key, value in (
                ("z", mol.atomic_numbers), ("m", mol.masses), ("x", x), ("v", v), ("f", f),
                ("dx", dx), ("dv", dv), ("f1", f1), ("sys", np.full(n, s)),
                ("b", mol.bonds + offset), ("a", mol.angles + offset),
                ("d", mol.dihedrals + offset),
                ("tau", np.full((n, 1), mol.k[wi] * mol.dt[wi])),
            ):  # fmt: skip
                parts[key].append(value)
            parts["k"].append(int(mol.k[wi]))
            parts["dt"].append(float(mol.dt[wi]))
            offset += n

        def cat(key, dt=dtype):
            return torch.as_tensor(np.concatenate(parts[key]), dtype=dt)

        forces = cat("f")
        inp = KStepInput.molecules(
            atomic_numbers=cat("z", torch.long),
            masses=cat("m"),
            positions=cat("x"),
            velocities=cat("v"),
            system_idx=cat("sys", torch.long),
            k=torch.as_tensor(parts["k"], dtype=torch.long),
            dt=torch.as_tensor(parts["dt"], dtype=dtype),
            forces=forces if torch.isfinite(forces).all() else None,
        )
        f1 = cat("f1")
        targets = KStepTargets(
            delta_positions=cat("dx"),
            delta_velocities=cat("dv"),
            tau=cat("tau"),
            bonds=cat("b", torch.long).reshape(-1, 2),
            angles=cat("a", torch.long).reshape(-1, 3),
            dihedrals=cat("d", torch.long).reshape(-1, 4),
            forces=f1 if torch.isfinite(f1).all() else None,
        )
        if self.rollout:
            targets = replace(
                targets,
                corrector_forces=cat("fc"),
                delta_positions_2=cat("dx2"),
                delta_velocities_2=cat("dv2"),
            )
        return inp, targets
