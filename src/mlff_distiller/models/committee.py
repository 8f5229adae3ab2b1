"""A committee of PaiNN students: member-mean energy and forces plus a force uncertainty.

Shapes: ``M`` members, ``n`` atoms, ``S`` structures. :meth:`Committee.energy_and_forces` returns
``ENERGY`` (S,) and ``FORCES`` (n, 3), the member means, with ``MEMBER_ENERGIES`` (M, S),
``MEMBER_FORCES`` (M, n, 3), ``FORCE_UNCERTAINTY`` (n,) = RMS over members of
``|F_m - F_mean|`` and ``STRUCTURE_UNCERTAINTY`` (S,) = its largest value per structure
(definitions in :mod:`mlff_distiller.keys`).

Two kinds of committee (``CommitteeConfig.shared``):

- ``"none"``: M independent PaiNNs (``committee.members``), e.g. trained with different seeds
  and bootstrap samples (:func:`mlff_distiller.training.committee.train_committee`).
- ``"representation"``: one PaiNN ``body`` (embedding + interaction blocks) read out by M heads
  (a readout ensemble). Member 0 is ``body`` itself; member k > 0 is ``body`` with its readout
  replaced by ``heads[k - 1]``.

One call: the neighbour list is built once for all members (one cutoff). Then either

- vmap: ``torch.func.vmap`` over ``functional_call`` of the one-model analytical code
  (PaiNN's forward and :func:`mlff_distiller.models.analytic_forces._backward`) with the
  members' weights stacked (M, ...). For ``"representation"`` only the heads are stacked, so
  vmap runs the body's forward once and batches the readouts and the backward (M cotangents,
  one per member: per-member forces need M backward passes, shared body or not); or
- a loop over the members' own ``energy_and_forces`` (also the path of ``method="autograd"``
  and ``create_graph=True``).

``Committee.vectorized`` chooses; its default (None) is the faster one measured on a CPU
(``benchmarks/committee.py``): the loop for ``"none"`` (vmap's batched gathers and matmuls
cost more than the loop saves, eager and compiled), vmap for ``"representation"``.
"""

from __future__ import annotations

import copy
import functools
import warnings
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from mlff_distiller import keys
from mlff_distiller.data.batch import AtomsBatch
from mlff_distiller.models import fast_path
from mlff_distiller.models.analytic_forces import _backward
from mlff_distiller.models.io import register_architecture
from mlff_distiller.models.layers import silu
from mlff_distiller.models.painn import (
    ForceMethod,
    Intermediates,
    PaiNN,
    PaiNNConfig,
    check_stress_batch,
)

SHARED = ("none", "representation")
# vmap runs the in-place addcmul_ of the one-model code member by member (no batching rule)
warnings.filterwarnings("ignore", message=".*batching rule for aten::addcmul_.*")
_HEAD_PARAMS = ("readout_in.weight", "readout_in.bias", "readout_out.weight", "readout_out.bias")


@dataclass
class CommitteeConfig:
    """``members`` students of architecture ``painn`` (the :class:`PaiNNConfig` fields);
    ``shared``: ``"none"`` (independent members) or ``"representation"`` (readout ensemble)."""

    members: int = 4
    painn: dict = field(default_factory=dict)
    shared: str = "none"

    def __post_init__(self) -> None:
        if self.members < 1:
            raise ValueError(f"a committee needs >= 1 member, got {self.members}")
        if self.shared not in SHARED:
            raise ValueError(f"shared must be one of {SHARED}, got {self.shared!r}")
        self.painn = self.painn_config().to_dict()  # validated, defaults filled in

    def painn_config(self) -> PaiNNConfig:
        return PaiNNConfig.from_dict(self.painn)

    def to_dict(self) -> dict:
        return asdict(self)


class _Readout(nn.Module):
    """A readout head, named as PaiNN's (``readout_in`` (F -> R), ``readout_out`` (R -> 1))."""

    def __init__(self, hidden: int, readout_hidden: int):
        super().__init__()
        self.readout_in = nn.Linear(hidden, readout_hidden)
        self.readout_out = nn.Linear(readout_hidden, 1)


class _Call(nn.Module):
    """``forward(fn, *args) = fn(model, *args)``: lets ``functional_call`` swap ``model``'s
    weights around any function of the model, not only its ``forward``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn, *args):
        return fn(self.model, *args)


def _analytic(model: PaiNN, batch: AtomsBatch, edges, stress: bool):
    """(energy (S,), forces (n, 3)[, stress (S, 3, 3)]) of one member, analytical backward.

    :func:`~mlff_distiller.models.analytic_forces._energy_and_forces`, except that the energy
    is summed from the readout here into a tensor made from a member's own (``new_zeros``):
    PaiNN sums into ``torch.zeros``, which vmap expands (stride 0) for the M members, and
    torch 2.13's inductor then adds all members into each (pytorch/pytorch#183986).
    """
    keep = Intermediates()
    model(batch, edges=edges, intermediates=keep)
    forces, virial = _backward(model, batch, keep, stress)
    z, pos = batch.atomic_numbers, batch.positions
    atom_energy = model.readout_out(silu(keep.readout_pre)).squeeze(-1) * model.scale
    atom_energy = atom_energy + model.shift + model.reference_energies.to(pos.dtype)[z]
    if batch.n_systems == 1:  # inductor 2.13 fails to generate the vmapped scatter into 1 slot
        energy = atom_energy.sum(0, keepdim=True)
    else:
        energy = atom_energy.new_zeros(batch.n_systems).index_add(
            0, batch.system_idx, atom_energy
        )
    return (energy, forces) if virial is None else (energy, forces, virial)


def _vmapped(template: nn.Module, stacked: dict, batch: AtomsBatch, edges, stress: bool):
    """``_analytic`` of every member at once: ``stacked`` holds (M, ...) weights keyed as
    ``template``'s (the keys it lacks keep ``template``'s own, shared, tensors)."""
    call = _Call(template)
    stacked = {f"model.{name}": value for name, value in stacked.items()}

    def one(weights):
        return torch.func.functional_call(call, weights, (_analytic, batch, edges, stress))

    return torch.func.vmap(one)(stacked)


@functools.cache
def _compiled_vmapped():
    fast_path.configure_compile_cache()
    return torch.compile(_vmapped, dynamic=True)


class Committee(nn.Module):
    """M PaiNN students evaluated as one (see the module docstring for the outputs)."""

    architecture = "committee"
    compiled_forces = False
    """Run the analytical forces through ``torch.compile`` (:meth:`compile_forces`)."""
    vectorized: bool | None = None
    """vmap over the members (True), a loop over them (False), or None: the loop for
    ``shared="none"``, vmap for ``"representation"`` (the measured faster ones)."""
    check_every: int = 1
    """1 (default): every call evaluates every member and returns the member mean. ``n > 1``
    (:meth:`set_check_every`): member 0 drives the dynamics (its energy and forces on every
    call) and the whole committee runs only on every n-th call; the calls in between cost one
    student and carry the uncertainty of the last full call. Per MD step a committee of M then
    costs about ``1 + (M - 1) / n`` students (M = 4, n = 4: 1.75x)."""

    def __init__(self, config: CommitteeConfig | None = None):
        super().__init__()
        self.config = config = config or CommitteeConfig()
        painn = config.painn_config()
        if config.shared == "none":
            self.members = nn.ModuleList(PaiNN(painn) for _ in range(config.members))
        else:
            self.body = PaiNN(painn)
            readout_hidden = self.body.readout_in.out_features
            self.heads = nn.ModuleList(
                _Readout(painn.hidden, readout_hidden) for _ in range(config.members - 1)
            )
        self._stack_cache: tuple | None = None

    @classmethod
    def from_members(cls, members: list[PaiNN]) -> Committee:
        """A ``shared="none"`` committee holding copies of ``members`` (same architecture;
        weights, reference energies, scale, shift and known elements are copied)."""
        if not members or not all(isinstance(m, PaiNN) for m in members):
            raise TypeError("from_members needs a non-empty list of PaiNN models")
        config = members[0].config
        for k, member in enumerate(members[1:], start=1):
            if member.config != config:
                raise ValueError(
                    f"member {k} has architecture {member.config}, member 0 has {config}: "
                    "a committee's members must share one architecture"
                )
        ref = members[0].filter_weight
        committee = cls(CommitteeConfig(members=len(members), painn=config.to_dict()))
        committee.to(device=ref.device, dtype=ref.dtype)
        for own, member in zip(committee.members, members):
            own.load_state_dict(member.state_dict())
        return committee.train(members[0].training)

    # ------------------------------------------------------------------ PaiNN-like interface
    @property
    def n_members(self) -> int:
        return self.config.members

    def member(self, k: int) -> PaiNN:
        """Member ``k`` as a standalone PaiNN (a copy for ``shared="representation"``)."""
        if self.config.shared == "none":
            return self.members[k]
        model = copy.deepcopy(self.body)
        if k > 0:
            model.readout_in = copy.deepcopy(self.heads[k - 1].readout_in)
            model.readout_out = copy.deepcopy(self.heads[k - 1].readout_out)
        return model

    def _bodies(self) -> list[PaiNN]:
        return list(self.members) if self.config.shared == "none" else [self.body]

    @property
    def elements(self) -> list[int]:
        """Atomic numbers every member was trained on."""
        known = torch.stack([m.known_elements for m in self._bodies()]).all(0)
        return torch.nonzero(known).flatten().tolist()

    @property
    def elements_restricted(self) -> bool:
        return any(m.elements_restricted for m in self._bodies())

    def neighbors(self, batch: AtomsBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(edge_index (2, e), shifts (e, 3)): one list for all members (one cutoff)."""
        return self._bodies()[0].neighbors(batch)

    def set_check_every(self, every: int) -> Committee:
        """Evaluate the whole committee on every ``every``-th call only (see
        :attr:`check_every`). Not saved with the model. Returns self."""
        if every < 1:
            raise ValueError(f"check_every must be >= 1, got {every}")
        self.check_every = int(every)
        self._calls = 0
        self._last_uncertainty = None
        return self

    def compile_forces(self, enabled: bool = True) -> Committee:
        """Opt in to ``torch.compile`` of the analytical path (vectorised, or each member in a
        loop). Not saved with the model. Returns self."""
        self.compiled_forces = bool(enabled)
        if self.config.shared == "none":
            for member in self.members:
                member.compile_forces(enabled)
        return self

    def _apply(self, fn, *args, **kwargs):  # .to(), .double(), ...: the stacked copy is stale
        self._stack_cache = None
        return super()._apply(fn, *args, **kwargs)

    # ------------------------------------------------------------------ forces
    def _stacked(self) -> tuple[nn.Module, dict[str, torch.Tensor]]:
        """(template module, {name: (M, ...) member weights}), cached until a weight changes."""
        if self.config.shared == "none":
            named = [dict(m.named_parameters()) | dict(m.named_buffers()) for m in self.members]
            template = self.members[0]
        else:
            template = self.body
            body = dict(self.body.named_parameters())
            heads = [dict(h.named_parameters()) for h in self.heads]
            named = [{k: body[k] for k in _HEAD_PARAMS}, *heads]
        tensors = [t for member in named for t in member.values()]
        key = tuple((id(t), t._version) for t in tensors)
        if self._stack_cache is None or self._stack_cache[0] != key:
            with torch.no_grad():
                stacked = {k: torch.stack([m[k] for m in named]) for k in named[0]}
            self._stack_cache = (key, stacked)
        return template, self._stack_cache[1]

    def energy_and_forces(
        self,
        batch: AtomsBatch,
        method: ForceMethod = "analytical",
        create_graph: bool = False,
        edges: tuple[torch.Tensor, torch.Tensor] | None = None,
        stress: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Member means ``ENERGY`` (S,), ``FORCES`` (n, 3) [, ``STRESS`` (S, 3, 3)], the members'
        ``MEMBER_ENERGIES`` (M, S), ``MEMBER_FORCES`` (M, n, 3), and ``FORCE_UNCERTAINTY`` (n,),
        ``STRUCTURE_UNCERTAINTY`` (S,) in eV/Å. Arguments as ``PaiNN.energy_and_forces``."""
        if edges is None:
            edges = self.neighbors(batch)
        if self.check_every > 1:
            return self._interval_call(batch, method, create_graph, edges, stress)
        return self._all_members(batch, method, create_graph, edges, stress)

    def _interval_call(self, batch, method, create_graph, edges, stress) -> dict:
        """Member 0's energy and forces; the whole committee on every ``check_every``-th call."""
        calls = self.__dict__.get("_calls", 0)
        self._calls = calls + 1
        last = self.__dict__.get("_last_uncertainty")
        if calls % self.check_every and last is not None and last.shape[0] == batch.n_systems:
            out = self._member_call(0, batch, method, create_graph, edges, stress)
            return {**out, keys.STRUCTURE_UNCERTAINTY: last}
        out = self._all_members(batch, method, create_graph, edges, stress)
        self._last_uncertainty = out[keys.STRUCTURE_UNCERTAINTY]
        driver = {
            keys.ENERGY: out[keys.MEMBER_ENERGIES][0],
            keys.FORCES: out[keys.MEMBER_FORCES][0],
        }
        return {**out, **driver}

    def _all_members(self, batch, method, create_graph, edges, stress) -> dict:
        vectorized = self.vectorized
        if vectorized is None:
            vectorized = self.config.shared == "representation"
        if method == "analytical" and not create_graph and vectorized:
            if stress:
                check_stress_batch(batch)
            out = self._vectorized(batch, edges, stress)
        else:
            outs = [self._member_call(k, batch, method, create_graph, edges, stress)
                    for k in range(self.n_members)]  # fmt: skip
            out = tuple(torch.stack([o[name] for o in outs]) for name in
                        (keys.ENERGY, keys.FORCES, keys.STRESS) if name in outs[0])  # fmt: skip
        return _committee_outputs(batch, *out)

    def _member_call(self, k: int, batch, method, create_graph, edges, stress) -> dict:
        args = (batch, method, create_graph, edges, stress)
        if self.config.shared == "none":
            return self.members[k].energy_and_forces(*args)
        if k == 0:
            return self.body.energy_and_forces(*args)
        head = dict(self.heads[k - 1].named_parameters())
        weights = {f"model.{name}": value for name, value in head.items()}
        return torch.func.functional_call(
            _Call(self.body), weights, (PaiNN.energy_and_forces, *args)
        )

    def _vectorized(self, batch: AtomsBatch, edges, stress: bool) -> tuple[torch.Tensor, ...]:
        template, stacked = self._stacked()
        if not self.compiled_forces:
            with torch.inference_mode():
                return _vmapped(template, stacked, batch, edges, stress)
        with torch.no_grad():  # compiled graphs cannot take inference-mode tensors
            key = (batch.dtype, batch.device.type, batch.n_systems > 1, stress)
            if key in self.__dict__.setdefault("_compiled_keys", set()):
                return _compiled_vmapped()(template, stacked, batch, edges, stress)
            marker = fast_path.announce_first_compile(self, batch.dtype, batch.device, key)
            try:
                out = _compiled_vmapped()(template, stacked, batch, edges, stress)
            except Exception as err:  # no working compiler, an unsupported op: run eager
                first_line = (str(err).strip().splitlines() or [""])[0][:200]
                fast_path.notice(
                    f"compiling the committee's forces failed ({type(err).__name__}: "
                    f"{first_line}); running them eager"
                )
                self.compile_forces(False)
                with torch.inference_mode():
                    return _vmapped(template, stacked, batch, edges, stress)
            fast_path.mark_compiled(marker)
            self._compiled_keys.add(key)
            return out


def _committee_outputs(
    batch: AtomsBatch,
    energies: torch.Tensor,
    forces: torch.Tensor,
    stresses: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Means and uncertainties from member energies (M, S), forces (M, n, 3), stresses
    (M, S, 3, 3) or None."""
    mean_forces = forces.mean(0)
    force_unc = (forces - mean_forces).square().sum(-1).mean(0).sqrt()  # (n,)
    structure_unc = force_unc.new_zeros(batch.n_systems).scatter_reduce(
        0, batch.system_idx, force_unc, "amax", include_self=False
    )
    out = {
        keys.ENERGY: energies.mean(0),
        keys.FORCES: mean_forces,
        keys.MEMBER_ENERGIES: energies,
        keys.MEMBER_FORCES: forces,
        keys.FORCE_UNCERTAINTY: force_unc,
        keys.STRUCTURE_UNCERTAINTY: structure_unc,
    }
    if stresses is not None:
        out[keys.STRESS] = stresses.mean(0)
    return out


register_architecture(Committee.architecture, CommitteeConfig, Committee)
