"""The hybrid k-step integrator: a network jump over ``k`` MD steps, then one velocity-Verlet step
with real forces from a :class:`~mlff_distiller.kstep.correctors.Corrector`.

One cycle, from ``(x, v)`` with the forces ``f = F(x)`` known:

1. jump: ``(dx, dv) = net(x, v, f)``; ``x' = x + s dx``, ``v' = v + s dv`` (``s = 1``). The
   centre of mass keeps moving ballistically and total momentum is kept (an isolated molecule).
2. checks: finite numbers, no bond longer than ``bond_factor`` x its reference length, kinetic
   energy below ``ke_factor`` x its running mean; then ``E(x'), F(x')`` (one force call; skipped
   when the jump is exactly zero) and no potential-energy jump above ``pe_jump_per_atom``.
3. corrector: one velocity-Verlet step of length ``dt`` from ``(x', v', F(x'))`` (one call).
4. energy check (``energy_tol_per_atom``, on by default): the total energy ``E + K`` after the
   corrector may differ from its value at the cycle start (``energy_anchor="cycle"``) or at the
   start of the run (``"start"``, which also bounds slow heating) by at most
   ``energy_tol_per_atom`` x n_atoms; otherwise the attempt fails with reason ``"energy"``.
   With real forces at ``x'`` (two calls per cycle) the same check runs on ``E(x') + K(v')``
   before the corrector, so a rejected jump costs one call, not two. The default 0.003 eV/atom
   is ~5x the median and about the maximum change of the total energy over 5-13 steps of 0.5 fs
   in unconstrained GAFF2 reference MD of small organic molecules (xTB: ~4x smaller).
   ``None`` switches the check off.

Two options change the cost and the physics:

- ``predicted_forces`` (models with a force head): the first half-kick of the corrector step uses
  the network's forces at ``x'`` instead of a real call, so a cycle costs one real force call
  (``F(x_{t+k+1})``) instead of two; retries always use real forces, and the potential-energy
  check then compares ``E(x_{t+k+1})`` with ``E(x_t)``.
- ``energy_rescale``: after the corrector step the internal (centre-of-mass-free) velocities are
  scaled so that the total energy equals that at the cycle start (NVE by construction; a jump that
  leaves too little kinetic energy is rejected). Off by default: it hides the network's energy
  error from the drift measurement, so report it separately.

A failed check retries the jump with ``s = 0.8, 0.64, ...`` (``scale_factor ** attempt``); when
``max_attempts`` are used up the cycle falls back to ``k`` plain velocity-Verlet steps
(``fallback="physics"``) or raises :class:`IntegrationError` (``fallback="stop"``), after the
frames so far were written. One cycle always advances time by ``(k + 1) dt``.

Units: Å, Å/fs, fs, eV, amu. The network runs in torch; the physics in float64 numpy.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from mlff_distiller import keys, units
from mlff_distiller.kstep.correctors import Corrector
from mlff_distiller.models.kstep_common import DELTA_POSITIONS, DELTA_VELOCITIES, KStepInput


class IntegrationError(RuntimeError):
    """The hybrid integrator could not continue; ``result`` holds everything up to the failure
    (and the trajectory file holds the frames written so far)."""

    def __init__(self, message: str, result: HybridResult):
        super().__init__(message)
        self.result = result


@dataclass
class HybridConfig:
    """Options of :class:`HybridIntegrator` (names match ``mlffd kstep run``)."""

    k: int = 8
    dt: float = 0.5  # fs
    max_attempts: int = 3  # jump scales 1, 0.8, 0.64 before the fallback
    scale_factor: float = 0.8
    fallback: str = "physics"  # or "stop"
    bond_factor: float = 2.0
    ke_factor: float = 10.0
    pe_jump_per_atom: float = 0.1  # eV per atom between E(x) and E(x')
    energy_tol_per_atom: float | None = 0.003  # eV per atom, total energy after the corrector
    energy_anchor: str = "cycle"  # compare with the cycle start ("cycle") or the run start
    predicted_forces: bool = True  # use the model's force head (if any) for the first half-kick
    energy_rescale: bool = False
    keep_momentum: bool = True
    save_every: int = 1  # cycles between written frames

    def __post_init__(self) -> None:
        if self.k < 1 or self.dt <= 0 or self.max_attempts < 1 or self.save_every < 1:
            raise ValueError(
                f"hybrid config needs k >= 1, dt > 0, max_attempts >= 1, save_every >= 1; got "
                f"k={self.k}, dt={self.dt}, max_attempts={self.max_attempts}, "
                f"save_every={self.save_every}"
            )
        if self.fallback not in ("physics", "stop"):
            raise ValueError(f"fallback must be 'physics' or 'stop', got {self.fallback!r}")
        if self.energy_anchor not in ("cycle", "start"):
            raise ValueError(
                f"energy_anchor must be 'cycle' or 'start', got {self.energy_anchor!r}"
            )
        if self.energy_tol_per_atom is not None and self.energy_tol_per_atom <= 0:
            raise ValueError(
                f"energy_tol_per_atom must be > 0 (or None to switch the check off), got "
                f"{self.energy_tol_per_atom}"
            )
        if not 0 < self.scale_factor < 1:
            raise ValueError(f"scale_factor must be in (0, 1), got {self.scale_factor}")


@dataclass
class HybridResult:
    """Frames at cycle ends (including the start): ``time`` (n,), ``positions``/``velocities``/
    ``forces`` (n, n_atoms, 3), ``potential_energy``/``kinetic_energy`` (n,); counters."""

    time: list[float] = field(default_factory=list)
    positions: list[np.ndarray] = field(default_factory=list)
    velocities: list[np.ndarray] = field(default_factory=list)
    forces: list[np.ndarray] = field(default_factory=list)
    potential_energy: list[float] = field(default_factory=list)
    kinetic_energy: list[float] = field(default_factory=list)
    cycles: int = 0
    md_steps: int = 0
    force_calls: int = 0
    network_calls: int = 0
    retries: int = 0
    fallbacks: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    attempt_scales: list[float] = field(default_factory=list)  # every jump scale tried
    network_seconds: float = 0.0
    corrector_seconds: float = 0.0
    wall_seconds: float = 0.0

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "time": np.asarray(self.time),
            "positions": np.asarray(self.positions),
            "velocities": np.asarray(self.velocities),
            "forces": np.asarray(self.forces),
            "potential_energy": np.asarray(self.potential_energy),
            "kinetic_energy": np.asarray(self.kinetic_energy),
        }

    def summary(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if not isinstance(v, list)}
        out["attempt_scales"] = sorted(set(self.attempt_scales), reverse=True)
        return out


def kinetic_energy(velocities: np.ndarray, masses: np.ndarray) -> float:
    """velocities (n, 3) Å/fs, masses (n,) amu -> eV."""
    v = units.velocities_internal_to_ase(velocities)
    return float(0.5 * np.sum(masses[:, None] * v * v))


class CountedForces:
    """Calls a corrector and times it; ``(energy, forces)`` in eV, eV/Å."""

    def __init__(self, corrector: Corrector):
        self.corrector = corrector
        self.seconds = 0.0

    def __call__(self, positions: np.ndarray) -> tuple[float, np.ndarray]:
        start = time.perf_counter()
        energy, forces = self.corrector.forces(positions)
        self.seconds += time.perf_counter() - start
        return energy, forces


def velocity_verlet_step(
    x: np.ndarray, v: np.ndarray, f: np.ndarray, masses: np.ndarray, dt: float, forces_fn
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """One velocity-Verlet step (one force call). Returns ``(x1, v1, f1, e1)``.

    x, v, f: (n_atoms, 3) in Å, Å/fs, eV/Å; masses (n_atoms,) amu; dt fs.
    """
    to_acc = units.ACCEL_PER_FORCE_OVER_MASS / masses[:, None]  # eV/Å/amu -> Å/fs²
    v_half = v + 0.5 * dt * f * to_acc
    x1 = x + dt * v_half
    e1, f1 = forces_fn(x1)
    v1 = v_half + 0.5 * dt * f1 * to_acc
    return x1, v1, f1, e1


class HybridIntegrator:
    """Hybrid k-step MD of one molecule. ``model(KStepInput) -> {delta_positions,
    delta_velocities}``; ``bonds`` (n_bonds, 2) and ``bond_lengths`` (n_bonds,) are the reference
    for the bond check (:func:`mlff_distiller.kstep.topology.molecule_topology`)."""

    def __init__(
        self,
        model: torch.nn.Module,
        corrector: Corrector,
        atomic_numbers: np.ndarray,
        masses: np.ndarray,
        bonds: np.ndarray,
        bond_lengths: np.ndarray,
        config: HybridConfig | None = None,
        device: str | torch.device = "cpu",
    ):
        self.model = model.eval()
        self.corrector = corrector
        self.forces = CountedForces(corrector)
        self.numbers = np.asarray(atomic_numbers, dtype=np.int64)
        self.masses = np.asarray(masses, dtype=np.float64)
        self.bonds = np.asarray(bonds, dtype=np.int64).reshape(-1, 2)
        self.bond_lengths = np.asarray(bond_lengths, dtype=np.float64)
        self.config = config or HybridConfig()
        self.device = torch.device(device)
        dtype = next(iter(model.parameters()), torch.zeros(())).dtype
        self.dtype = dtype if dtype.is_floating_point else torch.float32
        n = len(self.numbers)
        self._static = KStepInput(
            atomic_numbers=torch.as_tensor(self.numbers, device=self.device),
            masses=torch.as_tensor(self.masses, dtype=self.dtype, device=self.device),
            positions=torch.zeros(n, 3),
            velocities=torch.zeros(n, 3),
            system_idx=torch.zeros(n, dtype=torch.long, device=self.device),
            k=torch.tensor([self.config.k], device=self.device),
            dt=torch.tensor([self.config.dt], dtype=self.dtype, device=self.device),
        )

    # ------------------------------------------------------------------ pieces
    def predict(
        self, x: np.ndarray, v: np.ndarray, f: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Network jump ``(dx (n, 3) Å, dv (n, 3) Å/fs, forces at x + dx (n, 3) eV/Å or None)``
        from the state at the cycle start."""

        def t(a: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(a, dtype=self.dtype, device=self.device)

        inp = KStepInput(
            **{
                **self._static.__dict__,
                "positions": t(x - x.mean(0)),
                "velocities": t(v),
                "forces": t(f),
            }
        )
        with torch.no_grad():
            out = self.model(inp)
        dx = out[DELTA_POSITIONS].detach().cpu().double().numpy()
        dv = out[DELTA_VELOCITIES].detach().cpu().double().numpy()
        f_pred = None
        if self.config.predicted_forces and keys.FORCES in out:
            f_pred = out[keys.FORCES].detach().cpu().double().numpy()
            f_pred = f_pred - f_pred.mean(0)  # no net force on an isolated molecule
        if self.config.keep_momentum:
            w = self.masses[:, None] / self.masses.sum()
            tau = self.config.k * self.config.dt
            v_com = (w * v).sum(0)
            dx = dx - (w * dx).sum(0) + v_com * tau
            dv = dv - (w * dv).sum(0)
        return dx, dv, f_pred

    def geometry_problem(self, x: np.ndarray, v: np.ndarray, ke_mean: float) -> str | None:
        """Why the jumped state is rejected before any force call, or None."""
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(v))):
            return "nan"
        if len(self.bonds):
            lengths = np.linalg.norm(x[self.bonds[:, 0]] - x[self.bonds[:, 1]], axis=-1)
            if np.any(lengths > self.config.bond_factor * self.bond_lengths):
                return "bond"
        if kinetic_energy(v, self.masses) > self.config.ke_factor * ke_mean:
            return "kinetic_energy"
        return None

    # ------------------------------------------------------------------ the loop
    def run(
        self,
        positions: np.ndarray,
        velocities: np.ndarray,
        n_cycles: int,
        writer=None,
        time0: float = 0.0,
        molecule: str | None = None,
        smiles: str | None = None,
        progress: bool = False,
    ) -> HybridResult:
        """Integrate ``n_cycles`` cycles from ``positions`` (n, 3) Å, ``velocities`` (n, 3) Å/fs.

        ``writer``: an open :class:`mlff_distiller.data.hdf5.DatasetWriter`; gets the start frame
        and every ``save_every``-th cycle end (the reference MD trajectory format)."""
        cfg = self.config
        res = HybridResult()
        start_wall = time.perf_counter()
        calls0 = self.corrector.n_calls
        x = np.array(positions, dtype=np.float64)
        v = np.array(velocities, dtype=np.float64)
        e, f = self.forces(x)
        ke_mean, n_ke = kinetic_energy(v, self.masses), 1
        self._total_energy_start = e + ke_mean
        now = float(time0)

        def save(write: bool) -> None:
            res.time.append(now)
            res.positions.append(x.copy())
            res.velocities.append(v.copy())
            res.forces.append(f.copy())
            res.potential_energy.append(e)
            res.kinetic_energy.append(kinetic_energy(v, self.masses))
            if write and writer is not None:
                writer.append_frame(
                    self.numbers,
                    x,
                    energy=e,
                    forces=f,
                    velocities=v,
                    time=now,
                    kinetic_energy=res.kinetic_energy[-1],
                    potential_energy=e,
                    molecule=molecule,
                    smiles=smiles,
                )

        def finish() -> HybridResult:
            res.force_calls = self.corrector.n_calls - calls0
            res.corrector_seconds = self.forces.seconds
            res.wall_seconds = time.perf_counter() - start_wall
            if writer is not None:
                writer.flush()
            return res

        save(True)
        cycles = range(n_cycles)
        if progress:
            from rich.progress import track

            cycles = track(cycles, description="k-step hybrid MD")
        for cycle in cycles:
            t0 = time.perf_counter()
            dx, dv, f_pred = self.predict(x, v, f)
            res.network_seconds += time.perf_counter() - t0
            res.network_calls += 1
            accepted = None
            for attempt in range(cfg.max_attempts):
                scale = cfg.scale_factor**attempt
                res.attempt_scales.append(scale)
                if attempt:
                    res.retries += 1
                reason, accepted = self._try_jump(
                    x, v, e, f, scale * dx, scale * dv, ke_mean, f_pred if attempt == 0 else None
                )
                if reason is None:
                    break
                res.failures[reason] = res.failures.get(reason, 0) + 1
                accepted = None
            if accepted is None:
                if cfg.fallback == "stop":
                    finish()
                    raise IntegrationError(
                        f"hybrid step failed at cycle {cycle} (t = {now:.1f} fs) after "
                        f"{cfg.max_attempts} jump attempts ({res.failures}); the trajectory up "
                        "to here is kept",
                        res,
                    )
                res.fallbacks += 1
                for _ in range(cfg.k + 1):
                    x, v, f, e = velocity_verlet_step(x, v, f, self.masses, cfg.dt, self.forces)
            else:
                x, v, f, e = accepted
            now += (cfg.k + 1) * cfg.dt
            res.cycles += 1
            res.md_steps += cfg.k + 1
            ke = kinetic_energy(v, self.masses)
            ke_mean, n_ke = (ke_mean * n_ke + ke) / (n_ke + 1), n_ke + 1
            save((cycle + 1) % cfg.save_every == 0)
        return finish()

    def _try_jump(self, x, v, e, f, dx, dv, ke_mean, f_pred=None):
        """One jump attempt + corrector step: ``(reason, None)`` or ``(None, (x, v, f, e))``."""
        cfg = self.config
        n = len(x)
        xj, vj = x + dx, v + dv
        reason = self.geometry_problem(xj, vj, ke_mean)
        if reason is not None:
            return reason, None
        if np.array_equal(xj, x):
            fj = f  # a zero jump: the forces at x are known
        elif f_pred is not None:
            fj = f_pred  # the network's forces at x': one real call per cycle
        else:
            ej, fj = self.forces(xj)
            if not np.isfinite(ej) or abs(ej - e) > cfg.pe_jump_per_atom * n:
                return "potential_energy", None
            if self._energy_off(ej + kinetic_energy(vj, self.masses), e, v):
                return "energy", None  # caught before the corrector: saves its force call
        x1, v1, f1, e1 = velocity_verlet_step(xj, vj, fj, self.masses, cfg.dt, self.forces)
        if not (np.isfinite(e1) and np.all(np.isfinite(x1)) and np.all(np.isfinite(v1))):
            return "nan", None
        if abs(e1 - e) > cfg.pe_jump_per_atom * n:
            return "potential_energy", None
        if self._energy_off(e1 + kinetic_energy(v1, self.masses), e, v):
            return "energy", None
        if cfg.energy_rescale:
            v1 = self._rescale_to_energy(v1, e + kinetic_energy(v, self.masses) - e1)
            if v1 is None:
                return "potential_energy", None
        return None, (x1, v1, f1, e1)

    def _energy_off(self, total: float, e: float, v: np.ndarray) -> bool:
        """Whether the total energy ``total`` (eV) left the band of the energy check around the
        cycle start (potential ``e``, velocities ``v``) or the run start."""
        cfg = self.config
        if cfg.energy_tol_per_atom is None:
            return False
        if cfg.energy_anchor == "cycle":
            anchor = e + kinetic_energy(v, self.masses)
        else:
            anchor = self._total_energy_start
        return abs(total - anchor) > cfg.energy_tol_per_atom * len(v)

    def _rescale_to_energy(self, v: np.ndarray, kinetic_target: float) -> np.ndarray | None:
        """Scale the centre-of-mass-free velocities so the kinetic energy is ``kinetic_target``
        (eV); None when that is impossible (the jump landed too high in potential energy)."""
        w = self.masses[:, None] / self.masses.sum()
        v_com = (w * v).sum(0)
        internal = v - v_com
        ke_com = kinetic_energy(np.broadcast_to(v_com, v.shape), self.masses)
        ke_int = kinetic_energy(internal, self.masses)
        wanted = kinetic_target - ke_com
        if wanted <= 0 or ke_int <= 0:
            return None
        return v_com + internal * np.sqrt(wanted / ke_int)


def velocity_verlet_trajectory(
    corrector: Corrector,
    positions: np.ndarray,
    velocities: np.ndarray,
    masses: np.ndarray,
    dt: float,
    n_steps: int,
    save_every: int = 1,
    time0: float = 0.0,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Plain NVE velocity-Verlet with the same corrector (the hybrid's reference).

    Returns frames every ``save_every`` steps (with the start) as arrays like
    :meth:`HybridResult.arrays` and ``{"force_calls", "wall_seconds"}``."""
    masses = np.asarray(masses, dtype=np.float64)
    forces_fn = CountedForces(corrector)
    calls0 = corrector.n_calls
    start = time.perf_counter()
    x = np.array(positions, dtype=np.float64)
    v = np.array(velocities, dtype=np.float64)
    e, f = forces_fn(x)
    frames: dict[str, list] = {k: [] for k in HybridResult().arrays()}

    def save(t: float) -> None:
        for key, value in (
            ("time", t),
            ("positions", x.copy()),
            ("velocities", v.copy()),
            ("forces", f.copy()),
            ("potential_energy", e),
            ("kinetic_energy", kinetic_energy(v, masses)),
        ):
            frames[key].append(value)

    save(time0)
    for step in range(1, n_steps + 1):
        x, v, f, e = velocity_verlet_step(x, v, f, masses, dt, forces_fn)
        if step % save_every == 0:
            save(time0 + step * dt)
    stats = {
        "force_calls": corrector.n_calls - calls0,
        "wall_seconds": time.perf_counter() - start,
        "corrector_seconds": forces_fn.seconds,
    }
    return {k: np.asarray(v) for k, v in frames.items()}, stats
