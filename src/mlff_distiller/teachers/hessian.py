"""A few rows of a teacher's Hessian ``d2E / dx_i dx`` (eV/Å^2) per structure.

Hessian-informed distillation (Amin, Raja and Krishnapriyan, ICLR 2025) adds 1-4 random rows
of the teacher's Hessian per molecule to the loss. Two ways to get a row ``i``:

- ``"fd"``: central finite differences of the teacher's forces, for any teacher (xTB, OpenMM,
  PySCF, ...): ``H[i, :] = -(F(x + delta e_i) - F(x - delta e_i)) / (2 delta)``, two force
  calls per row, error ``O(delta^2)`` plus the teacher's force noise ``/ delta``;
- ``"autograd"``: one more backward pass through the teacher's force graph per row, exact, for
  torch teachers whose energy is differentiable twice: a PaiNN (or any
  :mod:`mlff_distiller.models` module), :class:`~mlff_distiller.md.calculator.StudentCalculator`,
  ANI-1x (torchani) and SevenNet-0 (sevenn), non-periodic structures.

``hessian_rows(atoms, calculator, rows)`` picks autograd where it can (``method="auto"``).
Rows are flat coordinates ``i = 3 * atom + axis``; ``-1`` is a padding row (all zeros).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator

from mlff_distiller import keys, units

HESSIAN_METHODS = ("auto", "fd", "autograd")
DEFAULT_DELTA = 1e-3  # Å
FD_CALLS_PER_ROW = 2
AUTOGRAD_CALLS_PER_ROW = 1  # one Hessian-vector product (a backward pass), counted as one call

EnergyFunction = Callable[["torch.Tensor"], "torch.Tensor"]  # noqa: F821


def choose_rows(n_atoms: int, r: int, rng: np.random.Generator) -> np.ndarray:
    """``r`` distinct random rows (flat coordinates) of a structure of ``n_atoms`` atoms, sorted;
    padded with -1 when ``r > 3 * n_atoms``."""
    if r < 0:
        raise ValueError(f"number of Hessian rows must be >= 0, got {r}")
    n3 = 3 * int(n_atoms)
    take = min(r, n3)
    rows = np.sort(rng.choice(n3, size=take, replace=False)).astype(np.int64)
    return np.concatenate([rows, np.full(r - take, -1, dtype=np.int64)])


def frame_rows(n_atoms: int, r: int, seed: int, index: int) -> np.ndarray:
    """The rows of input structure ``index``: seeded by ``(seed, index)`` only, so that they do
    not depend on chunking, workers or resuming."""
    return choose_rows(n_atoms, r, np.random.default_rng([int(seed), int(index)]))


def _as_rows(rows: Sequence[int] | np.ndarray, n_atoms: int) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    if rows.size and (rows.min() < -1 or rows.max() >= 3 * n_atoms):
        raise ValueError(
            f"Hessian rows {rows.tolist()} out of range for {n_atoms} atoms: "
            f"-1 or 0..{3 * n_atoms - 1}"
        )
    return rows


# -- finite differences --------------------------------------------------------------------
def hessian_rows_fd(
    atoms: Atoms,
    calculator: Calculator,
    rows: Sequence[int] | np.ndarray,
    delta: float = DEFAULT_DELTA,
) -> np.ndarray:
    """Rows (r, 3N) eV/Å^2 of the Hessian by central differences of ``calculator``'s forces
    with displacement ``delta`` Å (two force calls per row; -1 rows are zeros)."""
    if not delta > 0:
        raise ValueError(f"finite-difference delta must be > 0, got {delta}")
    n = len(atoms)
    rows = _as_rows(rows, n)
    work = atoms.copy()
    work.calc = calculator
    x0 = np.array(atoms.positions, dtype=np.float64)
    out = np.zeros((len(rows), 3 * n))
    for k, i in enumerate(rows.tolist()):
        if i < 0:
            continue
        atom, axis = divmod(i, 3)
        forces = []
        for sign in (1.0, -1.0):
            pos = x0.copy()
            pos[atom, axis] += sign * delta
            work.positions = pos
            forces.append(np.array(work.get_forces(), dtype=np.float64).reshape(-1))
        out[k] = -(forces[0] - forces[1]) / (2.0 * delta)
    return out


# -- autograd ------------------------------------------------------------------------------
def _rows_from_energy(fn: EnergyFunction, x0, rows: np.ndarray) -> np.ndarray:
    """Rows of the Hessian of the scalar ``fn(x)`` (eV) at ``x0`` ((n, 3) tensor, Å)."""
    import torch

    x = x0.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        energy = fn(x)
        (gradient,) = torch.autograd.grad(energy, x, create_graph=True)
        flat = gradient.reshape(-1)
        out = np.zeros((len(rows), x.numel()))
        for k, i in enumerate(rows.tolist()):
            if i < 0:
                continue
            (row,) = torch.autograd.grad(flat[i], x, retain_graph=True, allow_unused=True)
            if row is not None:
                out[k] = row.detach().double().reshape(-1).cpu().numpy()
    return out


def _module_rows(model, atoms: Atoms, rows: np.ndarray, dtype, device) -> np.ndarray:
    """Rows of a module with ``forward(batch) -> {ENERGY}`` (PaiNN and the other students), by
    double backward through its energy (models are right of teachers: duck-typed here)."""
    from mlff_distiller.data.batch import AtomsBatch

    batch = AtomsBatch.from_atoms([atoms], dtype=dtype, device=device)
    batch.labels = {}

    def energy(x):
        moved = AtomsBatch(batch.atomic_numbers, x, batch.system_idx, batch.cell, batch.pbc)
        return model(moved)[keys.ENERGY].sum()

    import torch

    x0 = torch.as_tensor(atoms.positions, dtype=dtype, device=device)
    return _rows_from_energy(energy, x0, rows)


def _ani_energy(inner, atoms: Atoms) -> EnergyFunction:
    import torch

    if inner.periodic_table_index:
        species = torch.as_tensor(atoms.numbers, dtype=torch.long, device=inner.device)
    else:
        species = inner.species_to_tensor(atoms.get_chemical_symbols()).to(inner.device)
    species = species[None]

    def energy(x):
        return inner.model((species, x.to(inner.dtype)[None])).energies.sum() * units.HARTREE

    return energy


def _sevennet_rows(inner, atoms: Atoms, rows: np.ndarray) -> np.ndarray:
    """SevenNet differentiates its energy by the edge vectors: rebuild them from positions
    that require grad, and keep the force graph (the force module's ``training`` flag is what
    sevenn reads for ``create_graph``)."""
    import sevenn._keys as KEY
    import torch
    from sevenn.atom_graph_data import AtomGraphData
    from sevenn.train.dataload import unlabeled_atoms_to_graph

    data = AtomGraphData.from_numpy_dict(unlabeled_atoms_to_graph(atoms, inner.cutoff))
    if inner.modal:
        data[KEY.DATA_MODALITY] = inner.modal
    data.to(inner.device)
    model = inner.model
    force_module = model._modules["force_output"]
    pos = data[KEY.POS].detach().requires_grad_(True)
    edge_index = data[KEY.EDGE_IDX]
    with torch.enable_grad():
        data[KEY.EDGE_VEC] = pos.index_select(0, edge_index[1]) - pos.index_select(0, edge_index[0])
        was_training = force_module.training
        force_module.train()
        try:
            out = model(data)
        finally:
            force_module.train(was_training)
        flat = out[KEY.PRED_FORCE].reshape(-1)
        result = np.zeros((len(rows), pos.numel()))
        for k, i in enumerate(rows.tolist()):
            if i < 0:
                continue
            (row,) = torch.autograd.grad(-flat[i], pos, retain_graph=True, allow_unused=True)
            if row is not None:
                result[k] = row.detach().double().reshape(-1).cpu().numpy()
    return result


def _unwrap(calculator):
    """The torch calculator inside a teacher that only passes structures through."""
    from mlff_distiller.teachers.base import WrappedCalculator

    if isinstance(calculator, WrappedCalculator) and (
        type(calculator).prepare is WrappedCalculator.prepare
    ):
        return calculator.inner  # e.g. the ANI-1x and SevenNet-0 teachers
    return calculator


def autograd_kind(calculator, atoms: Atoms | None = None) -> str | None:
    """Which autograd path fits ``calculator`` (for ``atoms``): ``"module"``, ``"student"``,
    ``"ani"``, ``"sevennet"``, or None (finite differences only). Decided from types alone."""
    import torch

    inner = _unwrap(calculator)
    if isinstance(inner, torch.nn.Module):
        return "module"
    student = getattr(inner, "model", None)  # a StudentCalculator (md), duck-typed
    if (
        isinstance(student, torch.nn.Module)
        and hasattr(inner, "dtype")
        and hasattr(inner, "device")
        and not type(inner).__module__.startswith(("sevenn", "torchani"))
    ):
        return "student"
    periodic = atoms is not None and bool(np.any(atoms.pbc))
    module = type(inner).__module__
    if module.startswith("torchani") and not periodic and hasattr(inner, "species_to_tensor"):
        return "ani"
    if module.startswith("sevenn") and not periodic and hasattr(inner, "model"):
        import sevenn._keys as KEY

        model = inner.model
        if "force_output" in model._modules and getattr(model, "key_grad", None) == KEY.EDGE_VEC:
            return "sevennet"
    return None


def _autograd_rows(calculator, atoms: Atoms, rows: np.ndarray) -> np.ndarray:
    import torch

    kind = autograd_kind(calculator, atoms)
    inner = _unwrap(calculator)
    if kind == "module":
        param = next(iter(inner.parameters()), None)
        dtype = param.dtype if param is not None else torch.float64
        device = param.device if param is not None else "cpu"
        return _module_rows(inner, atoms, rows, dtype, device)
    if kind == "student":
        return _module_rows(inner.model, atoms, rows, inner.dtype, inner.device)
    if kind == "ani":
        x0 = torch.as_tensor(atoms.positions, dtype=inner.dtype, device=inner.device)
        return _rows_from_energy(_ani_energy(inner, atoms), x0, rows)
    if kind == "sevennet":
        return _sevennet_rows(inner, atoms, rows)
    raise ValueError(
        f"teacher {getattr(calculator, 'name', type(calculator).__name__)!r} has no autograd "
        "Hessian (torch teachers only: PaiNN/students, ANI-1x, SevenNet-0, molecules); "
        "use method 'fd' (finite differences of its forces)"
    )


def resolve_method(calculator, method: str = "auto", atoms: Atoms | None = None) -> str:
    """``"fd"`` or ``"autograd"``: what ``method`` means for ``calculator``."""
    if method not in HESSIAN_METHODS:
        raise ValueError(f"Hessian method must be one of {HESSIAN_METHODS}, got {method!r}")
    if method == "auto":
        return "autograd" if autograd_kind(calculator, atoms) else "fd"
    if method == "autograd" and autograd_kind(calculator, atoms) is None:
        _autograd_rows(calculator, atoms, np.zeros(0, dtype=np.int64))  # raises, naming it
    return method


def calls_per_row(method: str) -> int:
    """Teacher calls one Hessian row costs: 2 force calls (fd) or 1 backward pass (autograd)."""
    return FD_CALLS_PER_ROW if method == "fd" else AUTOGRAD_CALLS_PER_ROW


def hessian_rows(
    atoms: Atoms,
    calculator,
    rows: Sequence[int] | np.ndarray,
    delta: float = DEFAULT_DELTA,
    method: str = "auto",
) -> np.ndarray:
    """Rows ``rows`` (r,) of the Hessian d2E/dx_i dx of ``calculator`` at ``atoms``:
    (r, 3N) eV/Å^2, zeros for -1 rows.

    ``method``: ``"fd"`` (central differences of the forces, ``delta`` Å, any calculator),
    ``"autograd"`` (torch teachers) or ``"auto"`` (autograd where possible). ``calculator`` is
    an ASE calculator or a torch module with ``forward(batch) -> {ENERGY}`` (a PaiNN)."""
    rows = _as_rows(rows, len(atoms))
    used = resolve_method(calculator, method, atoms)
    if used == "autograd":
        return _autograd_rows(calculator, atoms, rows)
    if not isinstance(calculator, Calculator):
        raise TypeError(f"finite differences need an ASE calculator, got {type(calculator)}")
    return hessian_rows_fd(atoms, calculator, rows, delta)
