"""On-policy training windows for a jump network (DAgger: Ross, Gordon and Bagnell 2011).

A jump network trained on reference-MD windows is only ever shown reference states, but in the
hybrid it acts on its own: states whose bonds its earlier jumps stretched and whose velocities
the energy restoring rescaled. Its errors there compound (exposure bias). Here the states the
hybrid visits are labelled with the exact flow of the corrector, and the network is trained on
them (mixed with reference states; rounds aggregate):

- :func:`visited_states`: plain NVT MD and the hybrid itself, R replicas each, from one start;
  every ``every``-th frame after a transient.
- :func:`exact_flow_windows`: from each state, ``max(ks)`` velocity-Verlet steps of the engine
  with real forces (NVE: the jump stands for the Hamiltonian part of the cycle, the thermostat
  acts around it), as ``k``-step windows of :mod:`mlff_distiller.kstep.dataset`.

Units: Å, Å/fs, fs, eV.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase import Atoms

from mlff_distiller.kstep.dataset import MoleculeWindows
from mlff_distiller.kstep.topology import Topology
from mlff_distiller.md.hybrid import HybridConfig, NoJump, run_hybrid
from mlff_distiller.md.integrators import velocity_verlet_step, with_forces
from mlff_distiller.md.runner import initial_state

KS = (4, 8, 12)


@dataclass
class States:
    """Phase-space points of one molecule: positions (S, n, 3) Å, velocities (S, n, 3) Å/fs."""

    positions: np.ndarray
    velocities: np.ndarray

    def __len__(self) -> int:
        return len(self.positions)

    def take(self, index: np.ndarray) -> States:
        return States(self.positions[index], self.velocities[index])

    def __add__(self, other: States) -> States:
        return States(
            np.concatenate([self.positions, other.positions]),
            np.concatenate([self.velocities, other.velocities]),
        )


def exact_flow_windows(
    states: States, atoms: Atoms, provider: Any, dt_fs: float, ks: Sequence[int] = KS
) -> dict[str, np.ndarray]:
    """Windows ``x_t v_t f_t -> x_tk v_tk f_tk`` (W, n, 3) and ``k`` (W,), W = len(ks) x S,
    from ``states`` of the molecule ``atoms`` by velocity Verlet with ``provider`` (a force
    provider for len(states) structures of ``atoms``), all states as one batch."""
    n_states, shape = len(states), states.positions.shape
    template = initial_state([atoms] * n_states, 0.0, 0)
    state = template.replace(
        positions=torch.as_tensor(states.positions.reshape(-1, 3), dtype=torch.float64),
        velocities=torch.as_tensor(states.velocities.reshape(-1, 3), dtype=torch.float64),
    )
    start = with_forces(state, provider)
    ends, state = {}, start
    for step in range(1, max(ks) + 1):
        state = velocity_verlet_step(state, provider, dt_fs)
        if step in ks:
            ends[step] = state

    def arr(t: torch.Tensor) -> np.ndarray:
        return t.detach().cpu().numpy().reshape(shape)

    first = {"x_t": arr(start.positions), "v_t": arr(start.velocities), "f_t": arr(start.forces)}
    out: dict[str, list[np.ndarray]] = {key: [] for key in (*first, "x_tk", "v_tk", "f_tk", "k")}
    for k, end in ends.items():
        for key, value in first.items():
            out[key].append(value)
        out["x_tk"].append(arr(end.positions))
        out["v_tk"].append(arr(end.velocities))
        out["f_tk"].append(arr(end.forces))
        out["k"].append(np.full(n_states, k))
    return {key: np.concatenate(v) for key, v in out.items()}


def visited_states(
    network: torch.nn.Module,
    make_provider: Callable[[int], Any],
    start: Atoms,
    topology: Topology,
    config: HybridConfig,
    replicas: int,
    cycles: int,
    every: int,
    transient: int = 40,
) -> tuple[States, States]:
    """``(reference, hybrid)`` states of ``start`` (no momenta: Maxwell-Boltzmann per replica):
    ``replicas`` of plain engine MD (``config``'s ensemble, thermostat and seed + 1000) over
    the same time as ``cycles`` hybrid cycles of ``network``; every ``every``-th cycle of both,
    the hybrid's after ``transient`` cycles. ``make_provider(n)``: a provider for n copies."""
    n = len(start)
    per_cycle = config.k + 1
    ref_cfg = HybridConfig(k=0, dt_fs=config.dt_fs, ensemble=config.ensemble,
                           temperature_k=config.temperature_k,
                           friction_per_ps=config.friction_per_ps, rescale=False,
                           energy_tol_per_atom=None, save_every=per_cycle * every,
                           seed=config.seed + 1000)  # fmt: skip
    starts = [start.copy() for _ in range(replicas)]
    ref = run_hybrid(NoJump(), make_provider(replicas), starts, ref_cfg, cycles * per_cycle,
                     progress=False, keep_frames=True)  # fmt: skip
    hyb_cfg = replace(config, save_every=every)
    hyb = run_hybrid(network, make_provider(replicas), [a.copy() for a in starts], hyb_cfg,
                     cycles, [topology] * replicas, progress=False, keep_frames=True)  # fmt: skip

    def frames(result, skip: int) -> States:
        f = result.frame_arrays()
        return States(f["positions"][skip:].reshape(-1, n, 3),
                      f["velocities"][skip:].reshape(-1, n, 3))  # fmt: skip

    return frames(ref, 1), frames(hyb, max(transient // every, 1))


def molecule_windows(
    name: str, smiles: str, atoms: Atoms, topology: Topology, windows: dict[str, np.ndarray],
    dt_fs: float,
) -> MoleculeWindows:  # fmt: skip
    """A training-split :class:`~mlff_distiller.kstep.dataset.MoleculeWindows` of ``windows``."""
    return MoleculeWindows(
        name=name, smiles=smiles, atomic_numbers=atoms.numbers.copy(), masses=atoms.get_masses(),
        bonds=np.asarray(topology.bonds, dtype=np.int64).reshape(-1, 2),
        angles=np.asarray(topology.angles, dtype=np.int64).reshape(-1, 3),
        dihedrals=np.asarray(topology.dihedrals, dtype=np.int64).reshape(-1, 4),
        dt=np.full(len(windows["k"]), dt_fs), split="train", **windows,
    )  # fmt: skip


@dataclass
class RefineConfig:
    """Options of :func:`refine` (names match ``mlffd kstep refine``)."""

    corrector: str = "xtb"
    rounds: int = 1
    replicas: int = 8
    cycles: int = 240  # hybrid cycles per molecule and round
    every: int = 5  # cycles between labelled states
    transient: int = 40  # hybrid cycles before the first labelled state
    k: int = 8  # of the hybrid runs that visit the states
    dt_fs: float = 0.5
    temperature_k: float = 300.0
    friction_per_ps: float = 1.0
    epochs: int = 2
    lr: float = 5e-4
    batch_size: int = 32
    seed: int = 0
    corrector_options: dict = field(default_factory=dict)  # e.g. charge_method for GAFF2

    def __post_init__(self) -> None:
        for name in ("rounds", "replicas", "cycles", "every", "k", "epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"refine: {name} must be >= 1, got {getattr(self, name)}")
        if self.cycles < self.transient + self.every:
            raise ValueError(
                f"refine: cycles={self.cycles} leave no hybrid states after the transient of "
                f"{self.transient} cycles; give at least {self.transient + self.every}"
            )


def molecule_start(name: str, smiles: str, config: RefineConfig, seed: int):
    """``(start, topology, make_provider)`` of one molecule: the structure after plain corrector
    MD reached the target temperature
    (:func:`~mlff_distiller.teachers.sampling.equilibrated_structure`), its bond topology, and
    ``make_provider(n)``: the corrector for n copies of it."""
    from mlff_distiller.data.structures import from_smiles
    from mlff_distiller.kstep.topology import molecule_topology
    from mlff_distiller.md.forces import OPENMM_TEACHERS, make_force_provider
    from mlff_distiller.teachers import get_teacher
    from mlff_distiller.teachers.sampling import SamplingConfig, equilibrated_structure

    atoms = from_smiles(smiles, seed=seed)[0]
    atoms.info["smiles"] = smiles
    options = dict(config.corrector_options)
    if config.corrector == "openmm-gaff2":
        options["smiles"] = smiles
    sampling = SamplingConfig(temperature_k=config.temperature_k, dt_fs=config.dt_fs,
                              friction_per_ps=config.friction_per_ps, constraints="none",
                              seed=seed)  # fmt: skip
    kind = "mm" if config.corrector in OPENMM_TEACHERS else "qm"
    start, _ = equilibrated_structure(get_teacher(config.corrector, **options), atoms, sampling,
                                      kind, name)  # fmt: skip
    start.info.update(atoms.info)
    topology = molecule_topology(name, start.numbers, start.positions, smiles)

    def make_provider(n: int):
        return make_force_provider(config.corrector, [start] * n, **options)

    return start, topology, make_provider


def molecule_states(
    network: torch.nn.Module, name: str, smiles: str, config: RefineConfig, seed: int
):
    """``(start, topology, make_provider, reference states, hybrid states)`` of one molecule
    (:func:`molecule_start`, :func:`visited_states`)."""
    start, topology, make_provider = molecule_start(name, smiles, config, seed)
    hybrid = HybridConfig(k=config.k, dt_fs=config.dt_fs, temperature_k=config.temperature_k,
                          friction_per_ps=config.friction_per_ps, seed=seed)  # fmt: skip
    ref, hyb = visited_states(network, make_provider, start, topology, hybrid, config.replicas,
                              config.cycles, config.every, config.transient)  # fmt: skip
    return start, topology, make_provider, ref, hyb


def molecule_round(
    network: torch.nn.Module, name: str, smiles: str, config: RefineConfig, seed: int
) -> MoleculeWindows:
    """One molecule of one round: half reference, half hybrid states
    (:func:`molecule_states`), labelled with the exact flow."""
    start, topology, make_provider, ref, hyb = molecule_states(network, name, smiles, config, seed)
    rng = np.random.default_rng(seed)
    half = min(len(ref) // 2, len(hyb))  # the measured recipe: 1 reference : 1 hybrid
    ref_pick, hyb_pick = rng.permutation(len(ref))[:half], rng.permutation(len(hyb))[:half]
    states = ref.take(ref_pick) + hyb.take(hyb_pick)
    windows = exact_flow_windows(states, start, make_provider(len(states)), config.dt_fs)
    return molecule_windows(name, smiles, start, topology, windows, config.dt_fs)


def refine(
    model: str | Path,
    molecules: dict[str, str],
    out_dir: str | Path,
    config: RefineConfig,
    progress: bool = True,
) -> Path:
    """``config.rounds`` rounds of on-policy refinement of the jump network ``model`` (a
    folder) on ``molecules`` ({name: SMILES}): each round runs the current network, labels the
    states it visits (:func:`molecule_round`), writes ``out_dir/round_<r>/windows.h5`` and
    fine-tunes the current network on all rounds' windows so far (DAgger aggregates) into
    ``out_dir/round_<r>/model``. Returns the last round's exported model folder. A round whose
    window file exists is not sampled again (resume after a crash)."""
    from mlff_distiller.kstep.dataset import KStepWindows, read_windows, write_windows
    from mlff_distiller.models.io import load_model
    from mlff_distiller.training.kstep_trainer import KStepTrainConfig, train_kstep

    out_dir = Path(out_dir)
    current = Path(model)
    files: list[Path] = []
    for r in range(config.rounds):
        folder = out_dir / f"round_{r + 1}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "windows.h5"
        if not path.exists():
            network = load_model(current).float().eval()
            rows = []
            for i, (name, smiles) in enumerate(_progress(molecules, progress, r + 1)):
                rows.append(molecule_round(network, name, smiles, config, config.seed + i))
            write_windows(path, rows)
        files.append(path)
        train = KStepWindows([m for f in files for m in read_windows(f, "train")],
                             augment_rotations=True)  # fmt: skip
        result = train_kstep(
            KStepTrainConfig(out_dir=str(folder / "model"), epochs=config.epochs,
                             batch_size=config.batch_size, lr=config.lr, warmup_steps=10,
                             init_from=str(current), loss={"force": 0.01, "kinetic": 0.1},
                             noise_positions=0.01, noise_velocities=0.002, seed=config.seed),
            train, resume=True, progress=progress,
        )  # fmt: skip
        current = result.best_model
    return current


def _progress(molecules: dict[str, str], show: bool, round_no: int):
    if not show:
        yield from molecules.items()
        return
    from rich.progress import track

    yield from track(list(molecules.items()), description=f"round {round_no}: visit and label")
