"""Options of ``mlffd distill`` (field names match the command's options)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class DistillConfig:
    """Everything one active-learning run needs.

    Budget: ``budget`` teacher calls for training labels (the seed set and every later label;
    the held-out teacher MD used only to score the result is counted apart). Uncertainty: the
    committee's largest per-atom force uncertainty of a structure (eV/Å); frames above
    ``max_uncertainty`` are labelled. A replica is *lost* once it passes ``lost_factor`` times
    the threshold: its later frames are not used.
    """

    smiles: list[str] = field(default_factory=list)
    structures: list[str] = field(default_factory=list)  # structure files (xyz, sdf, ...)
    teacher: str = "xtb"
    out: str = "mlffd_distill"
    budget: int = 500
    seed_frames: int = 48  # first training set: rattled RDKit conformers (per molecule)
    rattle_a: float = 0.08  # Gaussian displacement of the seed frames, Å
    temperatures_k: list[float] = field(default_factory=lambda: [300.0, 400.0, 500.0, 600.0])
    replicas: int = 2  # student MD replicas per molecule and temperature
    md_fs: float = 1000.0  # student MD per replica and iteration; the converged run's length
    dt_fs: float = 0.5
    friction_per_ps: float = 1.0
    save_every: int = 10
    max_uncertainty: float = 0.15
    lost_factor: float = 3.0
    explore_bias_kt: float = 20.0  # uncertainty-biased run at the top temperature, kT (0: off)
    frames_per_iteration: int = 40  # per molecule; more when the budget would go unspent
    max_iterations: int = 6
    members: int = 4
    size: str = "fast"
    first_train_minutes: float = 1.5  # per member, iteration 0
    train_minutes: float = 0.5  # per member, later iterations (warm-started)
    max_epochs: int = 2000
    holdout_fs: float = 1000.0  # teacher MD at the top temperature, scored each iteration
    workers: int = 0  # Ray actors for teacher labels (0: in this process)
    threads: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.smiles and not self.structures:
            raise ValueError("give at least one SMILES or structure file")
        for name in (
            "budget",
            "seed_frames",
            "replicas",
            "members",
            "save_every",
            "frames_per_iteration",
            "max_iterations",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("md_fs", "dt_fs", "max_uncertainty", "first_train_minutes", "train_minutes"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.holdout_fs < 0 or self.rattle_a < 0 or self.explore_bias_kt < 0:
            raise ValueError("holdout_fs, rattle_a and explore_bias_kt must be >= 0")
        if self.lost_factor < 1:
            raise ValueError(f"lost_factor must be >= 1, got {self.lost_factor}")
        if not self.temperatures_k or min(self.temperatures_k) <= 0:
            raise ValueError(f"temperatures_k must be positive, got {self.temperatures_k}")
        self.temperatures_k = sorted(float(t) for t in self.temperatures_k)

    def training_processes(self) -> int:
        """Members trained at once: one process per CPU core, at most one per member."""
        import os

        return max(1, min(self.members, len(os.sched_getaffinity(0))))

    @property
    def out_dir(self) -> Path:
        return Path(self.out)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    def check_same_run(self, path: Path) -> None:
        """Refuse to continue a run started with other science settings (paths and the
        number of threads or workers may change)."""
        old = json.loads(path.read_text())
        old.setdefault("explore_bias_kt", 0.0)  # runs started before the biased exploration
        free = {"out", "workers", "threads", "max_iterations", "budget"}
        changed = sorted(k for k, v in asdict(self).items() if k not in free and old.get(k) != v)
        if changed:
            raise ValueError(
                f"{path.parent} holds a run with other settings ({', '.join(changed)}); "
                "continue it with the same options or choose another --out"
            )
