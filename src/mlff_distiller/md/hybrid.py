"""k-step hybrid MD as an integrator of the batched engine: a network jumps ``k`` steps, one
engine step with real forces corrects; all structures and replicas of an :class:`MDState` at once.

One cycle (time ``(k + 1) dt``), from a state whose forces ``F(x)`` are known:

- **NVT** (default): ``O(k dt / 2) . J . O(k dt / 2) . BAOAB(dt)``. ``O`` is the engine's exact
  Ornstein-Uhlenbeck step (:func:`~mlff_distiller.md.integrators.ornstein_uhlenbeck`), ``J`` the
  jump, and the corrector is the engine's own BAOAB step, whose ``O`` covers the last ``dt``: the
  thermostat acts for exactly the cycle's time with the reference run's friction, symmetric
  around the jump as FlashMD wraps its learned map. ``O`` keeps the Maxwell-Boltzmann
  distribution of the velocities exactly for any duration; the deterministic part (jump plus
  ``B A A B``) approximates the Hamiltonian flow. With ``rescale`` (default) the internal
  velocities are then scaled so that the cycle changed the total energy by exactly the heat the
  O steps exchanged (tracked exactly): the deterministic part conserves energy by construction,
  as Hamiltonian dynamics does. Without it a jump bias of 1e-3 eV/atom per cycle heats a
  molecule by hundreds of K at 1/ps (the bath removes only ``2 gamma (K - K_eq)``); the raw error
  is reported either way. With ``k = 0`` (no jump time) and ``rescale=False`` a cycle is exactly
  one BAOAB step of the engine, random numbers included.
- **NVE**: ``J . VV(dt)``; then (``rescale``, default) the internal velocities (centre of mass
  and rigid rotation removed) are scaled so that the total energy equals that of the cycle start
  (:func:`~mlff_distiller.md.integrators.rescale_to_energy`, momenta unchanged). The raw
  energy error before the rescaling is reported separately. With a zero jump a cycle is exactly
  one velocity-Verlet step of the engine (``rescale=False``).

The jump: ``(dx, dv[, F(x')]) = net(x, v, F(x))``; the centre of mass moves ballistically
(``dx`` and ``dv`` carry no net momentum) and the network's forces at ``x'`` (a force head,
``predicted_forces``) feed the corrector's first half-kick, so a cycle costs one real force call;
without a force head (or on a retry) ``F(x')`` is a real call (two per cycle). A zero jump reuses
the known ``F(x)``.

Rejection is a safety net, counted per reason in :attr:`HybridResult.rejections`:
``nan`` (non-finite numbers), ``bond`` (a bond past ``bond_factor`` x its reference length),
``kinetic_energy`` (above ``ke_factor`` x the structure's running mean), ``potential_energy``
(``|E(x_end) - E(x_start)|`` above ``pe_jump_per_atom`` per atom), ``energy`` (the integration
error of the cycle, ``dE_total - heat`` of the thermostat, above ``energy_tol_per_atom`` per
atom, 0.05 eV (about 2 kT at 300 K) by default: a tighter check (0.01) rejected 15-45% of the
GAFF2 jumps, cost up to half of the force calls and widened the bond distributions, since a
retried jump is a shortened one; ``benchmarks/kstep_tolerance.py``), ``rescale`` (too little
internal kinetic energy left to restore the energy). A rejected
structure retries with the jump scaled by ``scale_factor ** attempt``; after ``max_attempts`` it
runs ``k + 1`` plain engine steps (``fallback="physics"``) or the run stops (``"stop"``).

Units: Å, Å/fs, fs, eV, amu, K.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase import Atoms
from ase.data import chemical_symbols

from mlff_distiller import keys, thermo, units
from mlff_distiller.data.state import MDState
from mlff_distiller.md.forces import CountedForces
from mlff_distiller.md.integrators import (
    langevin_baoab_step,
    ornstein_uhlenbeck,
    rescale_to_energy,
    velocity_verlet_step,
    with_forces,
)
from mlff_distiller.md.runner import MDError, StepProgress, check_finite, write_frames
from mlff_distiller.models.kstep_common import DELTA_POSITIONS, DELTA_VELOCITIES, KStepInput

REASONS = ("nan", "bond", "kinetic_energy", "potential_energy", "energy", "rescale")
# From this many cycles on the jump network is compiled by default (HybridConfig.compile=None):
# 8 ethyl acetates under GAFF2, one thread, 2.2 ms per jump compiled against 4.0 eager; the
# compilations (the full batch, then the subsets of retries: dynamic shapes, and size 1) take
# 40 s with inductor's disk cache cold, 12 s warm: it pays from 22,000 (cold) or 6,700 cycles.
COMPILE_MIN_CYCLES = 20_000
FALLBACK_WARNING = 0.02  # of structure-cycles (HybridResult.warnings)
REJECTION_WARNING = 0.20
_OK = -1


class NoJump(torch.nn.Module):
    """The zero jump: with ``k = 0`` a hybrid cycle is exactly one plain engine step, so
    :func:`run_hybrid` with it is the reference MD of the same engine, writer and counters."""

    def __init__(self):
        super().__init__()
        self.register_buffer("dtype_marker", torch.zeros(1, dtype=torch.float64))

    def forward(self, inp: KStepInput) -> dict[str, torch.Tensor]:
        zero = torch.zeros_like(inp.positions)
        return {DELTA_POSITIONS: zero, DELTA_VELOCITIES: zero}


class IntegrationError(MDError):
    """The hybrid could not continue (``fallback="stop"``); ``result`` holds the run so far."""

    def __init__(self, message: str, result: HybridResult):
        super().__init__(message)
        self.result = result


@dataclass
class HybridConfig:
    """Options of a hybrid run (names match ``mlffd kstep run``)."""

    k: int = 8
    dt_fs: float = 0.5
    ensemble: str = "nvt"  # "nvt" or "nve"
    temperature_k: float = 300.0  # NVT bath (and start velocities)
    friction_per_ps: float = 1.0  # NVT; keep it <= 2 (a strong thermostat hides a heating jump)
    rescale: bool = True  # energy balance restored each cycle (NVE: the start's total energy)
    predicted_forces: bool = True  # a force head's F(x') for the first half-kick
    max_attempts: int = 3
    scale_factor: float = 0.8
    fallback: str = "physics"  # or "stop"
    bond_factor: float = 2.0
    ke_factor: float = 10.0
    pe_jump_per_atom: float = 0.1  # eV
    energy_tol_per_atom: float | None = 0.05  # eV; None: no energy check
    save_every: int = 1  # cycles between saved frames
    seed: int = 0
    record_flows: bool = False  # per-element kinetic-energy change of each stage of the cycle
    compile: bool | None = None  # torch.compile the network; None: from COMPILE_MIN_CYCLES on

    def __post_init__(self) -> None:
        if self.k < 0 or self.dt_fs <= 0 or self.max_attempts < 1 or self.save_every < 1:
            raise ValueError(
                f"hybrid config needs k >= 0, dt_fs > 0, max_attempts >= 1, save_every >= 1; got "
                f"k={self.k}, dt_fs={self.dt_fs}, max_attempts={self.max_attempts}, "
                f"save_every={self.save_every}"
            )
        if self.ensemble not in ("nvt", "nve"):
            raise ValueError(f"ensemble must be 'nvt' or 'nve', got {self.ensemble!r}")
        if self.fallback not in ("physics", "stop"):
            raise ValueError(f"fallback must be 'physics' or 'stop', got {self.fallback!r}")
        if not 0 < self.scale_factor < 1:
            raise ValueError(f"scale_factor must be in (0, 1), got {self.scale_factor}")
        if self.energy_tol_per_atom is not None and self.energy_tol_per_atom <= 0:
            raise ValueError("energy_tol_per_atom must be > 0 or None (no energy check)")

    @property
    def cycle_fs(self) -> float:
        return (self.k + 1) * self.dt_fs


@dataclass
class Bonds:
    """Reference bonds of the state's structures for the ``bond`` check: ``pairs`` (n_bonds, 2)
    atom indices into the state, ``lengths`` (n_bonds,) Å."""

    pairs: torch.Tensor
    lengths: torch.Tensor

    @classmethod
    def of(cls, topologies: Sequence[Any], state: MDState) -> Bonds:
        """From one :class:`~mlff_distiller.kstep.topology.Topology`-like object (``bonds``,
        ``bond_lengths``) per structure of ``state``."""
        counts = torch.bincount(state.system_idx, minlength=state.n_systems).tolist()
        offsets = np.cumsum([0, *counts[:-1]])
        pairs = [np.asarray(t.bonds, dtype=np.int64).reshape(-1, 2) + o
                 for t, o in zip(topologies, offsets)]  # fmt: skip
        lengths = [np.asarray(t.bond_lengths, dtype=np.float64) for t in topologies]
        device = state.positions.device
        return cls(
            torch.as_tensor(np.concatenate(pairs), device=device),
            torch.as_tensor(np.concatenate(lengths), dtype=state.positions.dtype, device=device),
        )

    def select(self, atom_mask: torch.Tensor) -> Bonds:
        """The bonds among the atoms ``atom_mask`` (n_atoms,) bool, renumbered."""
        keep = atom_mask[self.pairs].all(1)
        new_index = torch.cumsum(atom_mask.long(), 0) - 1
        return Bonds(new_index[self.pairs[keep]], self.lengths[keep])

    def stretched(self, state: MDState, factor: float) -> torch.Tensor:
        """(s,) bool: a bond longer than ``factor`` x its reference length."""
        if not len(self.pairs):
            return torch.zeros(state.n_systems, dtype=torch.bool, device=state.positions.device)
        d = state.positions[self.pairs[:, 0]] - state.positions[self.pairs[:, 1]]
        bad = (d.norm(dim=-1) > factor * self.lengths).long()
        out = torch.zeros(state.n_systems, dtype=torch.long, device=bad.device)
        return out.index_add(0, state.system_idx[self.pairs[:, 0]], bad) > 0


@dataclass
class HybridResult:
    """The final state and the run's counters (structure-cycles, structure force calls)."""

    state: MDState
    cycles: int = 0
    md_steps: int = 0  # per structure
    force_calls: int = 0  # structure-calls of the corrector (the start's included)
    network_calls: int = 0  # structure-calls of the network
    retries: int = 0
    fallbacks: int = 0
    rejections: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    energy_errors: list[np.ndarray] = field(default_factory=list)  # (s,) eV/atom, per cycle
    network_seconds: float = 0.0
    corrector_seconds: float = 0.0
    wall_seconds: float = 0.0
    frames_written: int = 0
    temperatures: list[np.ndarray] = field(default_factory=list)  # (s,) K at each cycle end
    # {Z: summed K}: each element's temperature over all structures, summed over cycle ends
    element_temperature_sums: dict[int, float] = field(default_factory=dict)
    frames: dict[str, list[np.ndarray]] | None = None  # keep_frames: time, positions, ...
    # record_flows: {stage: {Z: summed internal kinetic-energy change, eV}} of accepted cycles
    flows: dict[str, dict[int, float]] | None = None
    flow_atom_cycles: dict[int, int] = field(default_factory=dict)  # {Z: atoms x cycles}

    def frame_arrays(self) -> dict[str, np.ndarray]:
        """The kept frames: ``time`` (F,) fs, ``positions`` and ``velocities`` (F, n_atoms, 3),
        ``potential_energy`` and ``kinetic_energy`` (F, S)."""
        if self.frames is None:
            raise ValueError("no frames were kept: run with keep_frames=True")
        return {k: np.asarray(v) for k, v in self.frames.items()}

    def summary(self) -> dict[str, Any]:
        n_sys = self.state.n_systems
        errors = np.abs(np.concatenate(self.energy_errors)) if self.energy_errors else np.zeros(1)
        errors = errors[np.isfinite(errors)] if np.isfinite(errors).any() else np.zeros(1)
        temps = np.asarray(self.temperatures) if self.temperatures else np.full((1, n_sys), np.nan)
        structure_cycles = max(self.cycles * n_sys, 1)
        return {
            "structures": n_sys,
            "cycles": self.cycles,
            "md_steps_per_structure": self.md_steps,
            "force_calls": self.force_calls,
            "steps_per_force_call": self.md_steps * n_sys / max(self.force_calls, 1),
            "network_calls": self.network_calls,
            "retries": self.retries,
            "fallbacks": self.fallbacks,
            "fallback_fraction": self.fallbacks / structure_cycles,
            "rejections": dict(self.rejections),
            "raw_energy_error_ev_per_atom": {
                "median": float(np.median(errors)),
                "rms": float(np.sqrt(np.mean(errors**2))),
                "max": float(errors.max()),
            },
            "mean_temperature_k": float(np.nanmean(temps)),
            "element_temperatures_k": {
                chemical_symbols[z]: total / max(self.cycles, 1)
                for z, total in sorted(self.element_temperature_sums.items())
            },
            "warnings": self.warnings(),
            "kinetic_energy_flow_mev_per_atom_cycle": self.flow_table(),
            "network_ms_per_call": 1e3 * self.network_seconds / max(self.cycles, 1),
            "corrector_ms_per_call": 1e3 * self.corrector_seconds / max(self.force_calls, 1),
            "wall_seconds": self.wall_seconds,
            "frames_written": self.frames_written,
        }

    def flow_table(self) -> dict[str, dict[str, float]] | None:
        """``{stage: {element: meV}}``: the mean change of an atom's internal kinetic energy in
        each stage of an accepted cycle (``record_flows``). At equilibrium the stages of plain
        MD sum to zero for every element; the jump and the restoring of a hybrid that heats one
        element and cools another show here which stage moves the energy (FlashMD's known
        failure mode: loss of equipartition)."""
        if self.flows is None:
            return None
        return {
            stage: {
                chemical_symbols[z]: 1e3 * total / max(self.flow_atom_cycles.get(z, 0), 1)
                for z, total in sorted(per_z.items())
            }
            for stage, per_z in self.flows.items()
        }

    def warnings(self) -> list[str]:
        """Signs that the jump network is out of its depth for these structures: a fallback
        in more than ``FALLBACK_WARNING`` of the structure-cycles, or rejections in more than
        ``REJECTION_WARNING``. On the benchmark's held-out molecules the runs that crossed
        them also missed the reference temperature by 50-100 K (xTB methoxyethanol: 3.7%
        fallbacks; aspirin with the demo's student: 6.5%); those that did not stayed within
        two standard errors or 42 K."""
        structure_cycles = max(self.cycles * self.state.n_systems, 1)
        out = []
        fallbacks = self.fallbacks / structure_cycles
        rejected = sum(self.rejections.values()) / structure_cycles
        if fallbacks > FALLBACK_WARNING or rejected > REJECTION_WARNING:
            out.append(
                f"{100 * fallbacks:.1f}% of the cycles fell back to plain MD and "
                f"{100 * rejected:.0f}% of the jumps were rejected: the jump network is outside "
                "what it was trained on for these structures; its temperatures and "
                "distributions are unreliable (check with --compare; fine-tune the network on "
                "MD of these molecules: `mlffd sample`, `mlffd kstep dataset`, `mlffd kstep "
                "train --init-from pretrained:CORRECTOR`)"
            )
        return out


class HybridIntegrator:
    """The hybrid cycle for a batch (see the module docstring). ``network(KStepInput) ->
    {delta_positions, delta_velocities[, forces]}``; ``provider``: any force provider."""

    def __init__(
        self, network: torch.nn.Module, provider: Any, config: HybridConfig, bonds: Bonds | None
    ):
        self.network = network.eval()
        self.compiled: torch.nn.Module | None = None  # used from the second jump on
        self.provider = provider if isinstance(provider, CountedForces) else CountedForces(provider)
        self.config = config
        self.bonds = bonds
        self.friction_per_fs = config.friction_per_ps / units.PS
        self.generator: torch.Generator | None = None
        param = next(iter([*network.parameters(), *network.buffers()]), None)
        self.net_dtype = param.dtype if param is not None else torch.float32
        self.net_device = param.device if param is not None else torch.device("cpu")
        self.network_seconds = 0.0
        self.network_calls = 0
        self.flows: dict[str, dict[int, float]] | None = None  # config.record_flows
        self.flow_atom_cycles: dict[int, int] = {}

    # ------------------------------------------------------------------ pieces
    def jump(self, state: MDState, scale: float, predicted: bool) -> MDState:
        """The jumped state; its ``forces`` are the network's ``F(x')`` when ``predicted`` (and
        a force head exists), the known ``F(x)`` for a structure whose jump is zero, else None."""
        cfg = self.config
        m, idx, n_sys = state.masses, state.system_idx, state.n_systems
        centre = thermo.centre_of_mass_velocity(state.positions, m, idx, n_sys)[idx]
        net_dtype, net_device = self.net_dtype, self.net_device
        centred = state.replace(positions=state.positions - centre, structure_ids=None)
        inp = KStepInput.of(centred.to(net_device, net_dtype), cfg.k, cfg.dt_fs)
        start = time.perf_counter()
        # the first jump is eager: its checks (elements, shapes) raise clear errors
        compiled = self.compiled is not None and self.network_calls > 0
        network = self.compiled if compiled else self.network
        with torch.inference_mode():  # 10% faster than no_grad for these small graphs
            out = network(inp)
        self.network_seconds += time.perf_counter() - start
        self.network_calls += n_sys
        like = state.positions
        dx = out[DELTA_POSITIONS].to(like)
        dv = out[DELTA_VELOCITIES].to(like)
        dx = dx - thermo.centre_of_mass_velocity(dx, m, idx, n_sys)[idx]  # no net momentum
        dv = dv - thermo.centre_of_mass_velocity(dv, m, idx, n_sys)[idx]
        tau = cfg.k * cfg.dt_fs
        v_com = thermo.centre_of_mass_velocity(state.velocities, m, idx, n_sys)[idx]
        positions = state.positions + scale * dx + tau * v_com
        velocities = state.velocities + scale * dv
        forces = None
        if predicted and keys.FORCES in out:
            f = out[keys.FORCES].to(like)
            forces = f - thermo.centre_of_mass_velocity(f, torch.ones_like(m), idx, n_sys)[idx]
        # a zero jump (dx = dv = 0 for every atom) leaves the structure as it is: F(x) is known
        moved = (dx != 0).any(1) | (dv != 0).any(1)
        still = _systems_all(~moved, idx, n_sys)
        if bool(still.any()):
            keep = still[idx, None]
            positions = torch.where(keep, state.positions, positions)
            velocities = torch.where(keep, state.velocities, velocities)
            if forces is not None:
                forces = torch.where(keep, state.forces, forces)
            elif bool(still.all()):
                forces = state.forces
        energy = state.energy if bool(still.all()) else None
        return state.replace(
            positions=positions, velocities=velocities, forces=forces, energy=energy
        )

    def _o(self, state: MDState, duration: float) -> MDState:
        if self.config.ensemble != "nvt":
            return state
        return ornstein_uhlenbeck(
            state, duration, self.config.temperature_k, self.friction_per_fs, self.generator
        )

    def plain_step(self, state: MDState, heat: list | None = None) -> MDState:
        cfg = self.config
        if cfg.ensemble == "nve":
            return velocity_verlet_step(state, self.provider, cfg.dt_fs)
        return langevin_baoab_step(
            state, self.provider, cfg.dt_fs, cfg.temperature_k, self.friction_per_fs,
            self.generator, heat=heat,
        )  # fmt: skip

    # ------------------------------------------------------------------ one attempt
    def attempt(
        self, state: MDState, bonds: Bonds | None, ke_mean: torch.Tensor, scale: float, first: bool
    ) -> tuple[MDState, torch.Tensor, torch.Tensor]:
        """One try of the cycle for every structure of ``state``: ``(new state, reason (s,)
        int: index into REASONS or -1, energy error (s,) eV/atom)``. Rejected structures keep
        their input values in the returned state."""
        cfg = self.config
        n_sys = state.n_systems
        n_atoms = torch.bincount(state.system_idx, minlength=n_sys).to(state.positions.dtype)
        reason = torch.full((n_sys,), _OK, dtype=torch.long, device=state.positions.device)
        e_start = state.energy + state.kinetic_energy()
        half = 0.5 * cfg.k * cfg.dt_fs
        s1 = self._o(state, half)
        heat = s1.kinetic_energy() - state.kinetic_energy()
        jumped = self.jump(s1, scale, predicted=first and cfg.predicted_forces)
        full_ke = [_atom_ke(x) for x in (state, s1, jumped)] if cfg.record_flows else None
        finite = torch.isfinite(jumped.positions).all(1) & torch.isfinite(jumped.velocities).all(1)
        per_sys_finite = torch.zeros(n_sys, dtype=torch.long, device=finite.device).index_add(
            0, jumped.system_idx, (~finite).long()
        ) == 0  # fmt: skip
        _mark(reason, ~per_sys_finite, "nan")
        if bonds is not None:
            _mark(reason, bonds.stretched(jumped, cfg.bond_factor), "bond")
        _mark(reason, jumped.kinetic_energy() > cfg.ke_factor * ke_mean, "kinetic_energy")
        ok = torch.nonzero(reason == _OK).flatten()
        errors = torch.full((n_sys,), torch.nan, dtype=state.positions.dtype, device=reason.device)
        if not len(ok):
            return state, reason, errors
        part = jumped.select(ok) if len(ok) < n_sys else jumped
        if part.forces is None:
            part = with_forces(part, self.provider)
        part_start = state.select(ok) if len(ok) < n_sys else state
        kinetic_before = part.kinetic_energy()
        part_ke = [_atom_ke(part)] if full_ke is not None else None
        part = self._o(part, half)
        part_heat = [heat[ok] + part.kinetic_energy() - kinetic_before]
        if part_ke is not None:
            part_ke.append(_atom_ke(part))
        part = self.plain_step(part, part_heat)
        if part_ke is not None:
            part_ke.append(_atom_ke(part))
        heat_sum = sum(part_heat)
        sub_n = n_atoms[ok]
        sub_reason = torch.full((len(ok),), _OK, dtype=torch.long, device=reason.device)
        finite = torch.isfinite(part.energy) & _systems_all(
            torch.isfinite(part.positions).all(1) & torch.isfinite(part.velocities).all(1),
            part.system_idx, len(ok),
        )  # fmt: skip
        _mark(sub_reason, ~finite, "nan")
        pe_jump = (part.energy - part_start.energy).abs() > cfg.pe_jump_per_atom * sub_n
        _mark(sub_reason, pe_jump, "potential_energy")
        error = (part.energy + part.kinetic_energy() - e_start[ok] - heat_sum) / sub_n
        if cfg.energy_tol_per_atom is not None:
            _mark(sub_reason, error.abs() > cfg.energy_tol_per_atom, "energy")
        if cfg.rescale:  # the total energy changes by the thermostat's heat only (NVE: none)
            rescaled, fine = rescale_to_energy(part, e_start[ok] + heat_sum)
            _mark(sub_reason, ~fine & finite, "rescale")
            part = rescaled
        if part_ke is not None:
            part_ke.append(_atom_ke(part))
        reason[ok] = sub_reason
        errors[ok] = error.detach()
        good = ok[sub_reason == _OK]
        if not len(good):
            return state, reason, errors
        good_in_part = torch.nonzero(sub_reason == _OK).flatten()
        if full_ke is not None:
            self._record_flows(state, good, part, good_in_part, full_ke, part_ke)
        accepted = part.select(good_in_part) if len(good_in_part) < len(ok) else part
        new = state.merged(good, accepted) if len(good) < n_sys else accepted.replace(
            structure_ids=state.structure_ids
        )  # fmt: skip
        return new, reason, errors

    def _record_flows(self, state, good, part, good_in_part, full_ke, part_ke) -> None:
        """Add the accepted structures' per-element kinetic-energy change of each stage:
        ``full_ke`` (start, after the first O, after the jump) over ``state``'s atoms,
        ``part_ke`` (before and after the second O, after the corrector, after the restoring)
        over ``part``'s."""
        flows = self.flows if self.flows is not None else {}
        in_full = state.atom_mask(good)
        in_part = part.atom_mask(good_in_part)
        z_full, z_part = state.atomic_numbers[in_full], part.atomic_numbers[in_part]
        stages = [("thermostat", full_ke[1] - full_ke[0], in_full, z_full),
                  ("jump", full_ke[2] - full_ke[1], in_full, z_full),
                  ("thermostat", part_ke[1] - part_ke[0], in_part, z_part),
                  ("corrector", part_ke[2] - part_ke[1], in_part, z_part),
                  ("restoring", part_ke[3] - part_ke[2], in_part, z_part)]  # fmt: skip
        for stage, delta, mask, z in stages:
            per_z = flows.setdefault(stage, {})
            for element in torch.unique(z).tolist():
                total = float(delta[mask][z == element].sum())
                per_z[int(element)] = per_z.get(int(element), 0.0) + total
        for element, count in zip(*torch.unique(z_full, return_counts=True)):
            self.flow_atom_cycles[int(element)] = (
                self.flow_atom_cycles.get(int(element), 0) + int(count)
            )
        self.flows = flows

    # ------------------------------------------------------------------ one cycle
    def cycle(self, state: MDState, ke_mean: torch.Tensor, result: HybridResult) -> MDState:
        """Advance every structure one cycle (retries and fallbacks included). With
        :class:`NoJump` a cycle is one plain engine step, taken directly (the reference MD
        pays none of the hybrid's checks: its wall clock is that of plain engine MD)."""
        cfg = self.config
        if isinstance(self.network, NoJump):
            result.energy_errors.append(np.full(state.n_systems, np.nan))
            return self.plain_step(state)
        pending = torch.arange(state.n_systems, device=state.positions.device)
        errors = torch.full(
            (state.n_systems,), torch.nan, dtype=state.positions.dtype, device=pending.device
        )
        for attempt in range(cfg.max_attempts):
            sub = state.select(pending) if len(pending) < state.n_systems else state
            bonds = self.bonds
            if bonds is not None and len(pending) < state.n_systems:
                bonds = bonds.select(state.atom_mask(pending))
            new, reason, err = self.attempt(
                sub, bonds, ke_mean[pending], cfg.scale_factor**attempt, first=attempt == 0
            )
            if attempt:
                result.retries += len(pending)
            for code in reason[reason != _OK].tolist():
                result.rejections[REASONS[code]] += 1
            accepted = reason == _OK
            if bool(accepted.any()):
                errors[pending[accepted]] = err[accepted]
                state = state.merged(
                    pending[accepted], new.select(torch.nonzero(accepted).flatten())
                )
            pending = pending[~accepted]
            if not len(pending):
                break
        result.energy_errors.append(errors.cpu().numpy())
        if len(pending):
            if cfg.fallback == "stop":
                raise IntegrationError(
                    f"the hybrid cycle failed for structures {pending.tolist()} after "
                    f"{cfg.max_attempts} attempts (rejections so far: {result.rejections})",
                    result,
                )
            result.fallbacks += len(pending)
            sub = state.select(pending)
            for _ in range(cfg.k + 1):
                sub = self.plain_step(sub)
            state = state.merged(pending, sub)
        return state


def _save(writer, result: HybridResult, state: MDState, names, time_fs: float) -> None:
    if writer is not None:
        write_frames(writer, state, names, time_fs)
    if result.frames is not None:
        for key, value in (
            ("time", time_fs),
            ("positions", state.positions),
            ("velocities", state.velocities),
            ("potential_energy", state.energy),
            ("kinetic_energy", state.kinetic_energy()),
        ):
            keep = value if isinstance(value, float) else value.detach().cpu().numpy().copy()
            result.frames[key].append(keep)


def _atom_ke(state: MDState) -> torch.Tensor:
    """(n_atoms,) eV: each atom's internal kinetic energy (centre-of-mass motion removed)."""
    twice = thermo.internal_twice_kinetic_energy(
        state.velocities, state.masses, state.system_idx, state.n_systems
    )
    return 0.5 * twice


def _mark(reason: torch.Tensor, where: torch.Tensor, name: str) -> None:
    """Record ``name`` for the structures ``where`` (s,) bool that have no reason yet."""
    reason[(reason == _OK) & where] = REASONS.index(name)


def _systems_all(atom_ok: torch.Tensor, system_idx: torch.Tensor, n_sys: int) -> torch.Tensor:
    bad = torch.zeros(n_sys, dtype=torch.long, device=atom_ok.device)
    return bad.index_add(0, system_idx, (~atom_ok).long()) == 0


def _compile_wanted(requested: bool | None, cycles: int, network: torch.nn.Module) -> bool:
    """Compile the jump network? ``requested`` True / False, or None: from
    :data:`COMPILE_MIN_CYCLES` on; either way not where
    :func:`~mlff_distiller.models.fast_path.compiler_usable` says no."""
    from mlff_distiller.models.fast_path import compiler_usable

    if isinstance(network, NoJump) or requested is False:
        return False
    if requested is None and cycles < COMPILE_MIN_CYCLES:
        return False
    device = next(iter(network.parameters()), torch.empty(0)).device
    return compiler_usable(requested, device, "the eager jump network, about 2x slower")


def run_hybrid(
    network: torch.nn.Module,
    provider: Any,
    structures: Sequence[Atoms],
    config: HybridConfig,
    cycles: int,
    topologies: Sequence[Any] | None = None,
    out: str | Path | None = None,
    names: Sequence[str] | None = None,
    progress: bool = True,
    dtype: torch.dtype = torch.float64,
    provider_name: str = "",
    keep_frames: bool = False,
) -> HybridResult:
    """Run ``cycles`` hybrid cycles of all ``structures`` together (replicas are structures).

    Structures without momenta start from Maxwell-Boltzmann velocities at
    ``config.temperature_k`` (seeded by ``config.seed``). ``topologies``: one per structure
    (``bonds``, ``bond_lengths``) for the bond check. ``out``: an HDF5 trajectory, the start and
    every ``save_every``-th cycle of every structure (structure s of save j at ``j * S + s``),
    committed as it goes, with the settings, the velocity convention (on-step) and the measured
    mean temperature as root attributes. Raises :class:`IntegrationError` (``fallback="stop"``)
    or :class:`~mlff_distiller.md.runner.MDError` (non-finite numbers after a fallback).
    ``keep_frames``: also keep the saved frames in memory (:meth:`HybridResult.frame_arrays`).
    ``config.compile``: the network through ``torch.compile`` from its second call on (the first,
    eager, raises the network's clear errors); None compiles from :data:`COMPILE_MIN_CYCLES`
    cycles on, where the compilation pays.
    """
    from mlff_distiller.data.hdf5 import DatasetWriter
    from mlff_distiller.md.runner import initial_state

    state = initial_state(structures, config.temperature_k, config.seed, dtype)
    names = list(names or [a.info.get("name") or a.get_chemical_formula() for a in structures])
    hybrid = HybridIntegrator(
        network, provider, config, Bonds.of(topologies, state) if topologies else None
    )
    hybrid.generator = torch.Generator().manual_seed(config.seed)
    if _compile_wanted(config.compile, cycles, network):
        from mlff_distiller.models.fast_path import configure_compile_cache

        configure_compile_cache()
        hybrid.compiled = torch.compile(hybrid.network, dynamic=True)
    result = HybridResult(state)
    if keep_frames:
        result.frames = {k: [] for k in ("time", "positions", "velocities",
                                         "potential_energy", "kinetic_energy")}  # fmt: skip
    calls0 = hybrid.provider.structure_calls
    seconds0 = hybrid.provider.seconds
    start = time.perf_counter()
    state = with_forces(state, hybrid.provider)
    check_finite(state, names, 0)
    ke_mean = state.kinetic_energy()
    writer = None
    if out is not None:
        attrs = {
            "teacher": provider_name or getattr(hybrid.provider, "name", "corrector"),
            "kstep": json.dumps(asdict(config)),
            keys.VELOCITY_CONVENTION: keys.ON_STEP,
            keys.TARGET_TEMPERATURE: config.temperature_k if config.ensemble == "nvt" else np.nan,
            keys.MEASURED_TEMPERATURE: np.nan,
        }
        writer = DatasetWriter(out, attrs=attrs, flush_every=state.n_systems)
    _save(writer, result, state, names, 0.0)
    twice_ke_sum = None  # (n_atoms,) eV: internal m v^2 summed over cycle ends
    try:
        with StepProgress(progress, cycles) as advance:
            for c in range(1, cycles + 1):
                state = hybrid.cycle(state, ke_mean, result)
                result.cycles, result.md_steps = c, c * (config.k + 1)
                ke_mean = ke_mean + (state.kinetic_energy() - ke_mean) / (c + 1)
                twice_ke = thermo.internal_twice_kinetic_energy(
                    state.velocities, state.masses, state.system_idx, state.n_systems
                )
                twice_ke_sum = twice_ke if twice_ke_sum is None else twice_ke_sum + twice_ke
                result.temperatures.append(
                    thermo.temperature_of(twice_ke, state.masses, state.system_idx,
                                          state.n_systems).detach().cpu().numpy()
                )  # fmt: skip
                if c % config.save_every == 0:
                    check_finite(state, names, c)
                    _save(writer, result, state, names, c * config.cycle_fs)
                advance()
    finally:
        result.state = state
        if twice_ke_sum is not None:
            result.element_temperature_sums = {
                z: float(t) for z, t in thermo.element_temperature_of(
                    twice_ke_sum, state.masses, state.atomic_numbers, state.system_idx,
                    state.n_systems,
                ).items()
            }  # fmt: skip
        result.force_calls = hybrid.provider.structure_calls - calls0
        result.corrector_seconds = hybrid.provider.seconds - seconds0
        result.network_calls = hybrid.network_calls
        result.network_seconds = hybrid.network_seconds
        result.flows, result.flow_atom_cycles = hybrid.flows, hybrid.flow_atom_cycles
        result.wall_seconds = time.perf_counter() - start
        if writer is not None:
            if result.temperatures:
                measured = float(np.mean(result.temperatures))
                writer.set_attrs({keys.MEASURED_TEMPERATURE: measured})
            result.frames_written = len(writer)
            writer.close()
    return result
