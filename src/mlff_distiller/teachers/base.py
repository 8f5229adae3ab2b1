"""What every teacher shares: its description (:class:`TeacherInfo`), its errors, and the
ASE-calculator contract (:class:`TeacherCalculator`).

A teacher is an ASE calculator in internal units (eV, eV/Å) that knows which elements it
supports and checks them *before* any compute, so that a structure it cannot do fails in
microseconds with a message naming the element, not deep inside an SCF or a neural network.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.data import chemical_symbols

from mlff_distiller import keys


class TeacherError(RuntimeError):
    """A teacher could not compute a structure (SCF did not converge, parametrization failed)."""


class UnsupportedElementError(ValueError):
    """A structure holds an element the teacher was not made for (found before any compute)."""


class StructureMismatchError(ValueError):
    """A structure does not fit the teacher's fixed molecule (e.g. another topology)."""


def describe_atoms(atoms: Atoms) -> str:
    """A short human name for a structure: ``info['name']`` or ``info['smiles']``, else formula."""
    for key in (keys.NAME, keys.SMILES):
        value = atoms.info.get(key)
        if value:
            return f"'{value}' ({atoms.get_chemical_formula()})"
    return f"'{atoms.get_chemical_formula()}'"


@dataclass(frozen=True)
class TeacherInfo:
    """What a teacher is and what it can do.

    ``elements`` are atomic numbers; ``settings`` are the options that determine its labels
    (method, basis, charges, model file, ...) and go into the HDF5 attributes of a dataset it
    labelled, so that a dataset always says which teacher made it.
    """

    name: str
    elements: frozenset[int]
    implemented_properties: tuple[str, ...] = (keys.ENERGY, keys.FORCES)
    settings: dict[str, Any] = field(default_factory=dict)
    kind: str = "ml"  # "qm", "mm" or "ml": chooses the default MD time step

    def element_symbols(self) -> list[str]:
        return [chemical_symbols[z] for z in sorted(self.elements)]

    def check_elements(self, atoms: Atoms) -> None:
        """Raise :class:`UnsupportedElementError` naming the structure and the elements that
        this teacher does not support."""
        unsupported = sorted(set(int(z) for z in atoms.numbers) - self.elements)
        if unsupported:
            bad = ", ".join(chemical_symbols[z] for z in unsupported)
            raise UnsupportedElementError(
                f"teacher '{self.name}' does not support element(s) {bad} in structure "
                f"{describe_atoms(atoms)}; it supports {format_elements(self.elements)}. "
                "Choose another teacher (`mlffd teachers` lists them) or drop this structure."
            )

    def attrs(self) -> dict[str, str]:
        """Flat string attributes for an HDF5 file: ``teacher``, ``teacher_settings`` (JSON)."""
        return {
            "teacher": self.name,
            "teacher_settings": json.dumps(self.settings, sort_keys=True, default=str),
            "teacher_elements": ",".join(self.element_symbols()),
        }


def format_elements(elements: Iterable[int]) -> str:
    """``{1, 6, 7, 8}`` -> ``'H, C, N, O'``; long contiguous ranges as ``'H-Rn'``."""
    zs = sorted(elements)
    if len(zs) > 12 and zs == list(range(zs[0], zs[-1] + 1)):
        return f"{chemical_symbols[zs[0]]}-{chemical_symbols[zs[-1]]} (Z {zs[0]}-{zs[-1]})"
    return ", ".join(chemical_symbols[z] for z in zs)


def element_range(first: int, last: int) -> frozenset[int]:
    return frozenset(range(first, last + 1))


def elements_of(*symbols: str) -> frozenset[int]:
    return frozenset(chemical_symbols.index(s) for s in symbols)


class TeacherCalculator(Calculator):
    """Base class of every teacher: an ASE calculator giving ``energy`` (eV) and ``forces``
    (eV/Å, shape ``(n_atoms, 3)``).

    Subclasses implement :meth:`compute`; this class checks the elements first and turns any
    failure of the wrapped engine into a :class:`TeacherError` that names the structure.
    """

    implemented_properties = [keys.ENERGY, keys.FREE_ENERGY, keys.FORCES]
    # separate instances may compute at once in threads (the engine releases the GIL and
    # shares no state between instances); the MD engine's force providers then use a pool
    concurrent_calls = False

    def __init__(self, info: TeacherInfo, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.info = info

    @property
    def name(self) -> str:  # ASE uses ``calc.name`` in messages
        return self.info.name

    def check_elements(self, atoms: Atoms) -> None:
        self.info.check_elements(atoms)

    def compute(self, atoms: Atoms) -> tuple[float, np.ndarray]:
        """Return ``(energy_ev, forces_ev_per_a (n_atoms, 3))`` for ``atoms``."""
        raise NotImplementedError

    def evaluate(self, atoms: Atoms) -> tuple[float, np.ndarray]:
        """``(energy eV, forces (n_atoms, 3) eV/Å)`` of ``atoms``, checked: elements first, the
        engine's failures and non-finite results as :class:`TeacherError` naming the structure.
        What :meth:`calculate` runs, without ASE's state bookkeeping (the MD engine's force
        providers call it directly: on GFN2-xTB MD of isopropanol that bookkeeping, mostly
        ``compare_atoms``, was a third of the per-call overhead outside tblite)."""
        self.check_elements(atoms)
        try:
            energy, forces = self.compute(atoms)
        except (TeacherError, UnsupportedElementError, StructureMismatchError):
            raise
        except Exception as err:  # the engine's own error, re-raised with context
            raise TeacherError(
                f"teacher '{self.info.name}' failed on structure {describe_atoms(atoms)}: "
                f"{type(err).__name__}: {err}"
            ) from err
        forces = np.asarray(forces, dtype=np.float64).reshape(len(atoms), 3)
        if not np.isfinite(energy) or not np.all(np.isfinite(forces)):
            raise TeacherError(
                f"teacher '{self.info.name}' returned non-finite energy or forces for "
                f"{describe_atoms(atoms)} (atoms too close?)"
            )
        return float(energy), forces

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: Iterable[str] = (keys.ENERGY,),
        system_changes: Iterable[str] = all_changes,
    ) -> None:
        super().calculate(atoms, properties, system_changes)
        energy, forces = self.evaluate(self.atoms)
        self.results = {
            keys.ENERGY: float(energy),
            keys.FREE_ENERGY: float(energy),
            keys.FORCES: forces,
        }


class WrappedCalculator(TeacherCalculator):
    """A teacher around an existing ASE calculator that already works in eV and eV/Å."""

    def __init__(self, info: TeacherInfo, inner: Calculator, **kwargs: Any) -> None:
        super().__init__(info, **kwargs)
        self.inner = inner

    def prepare(self, atoms: Atoms) -> Atoms:
        """Return the structure the inner calculator sees (a copy; e.g. boxed for CHGNet)."""
        return atoms.copy()

    def compute(self, atoms: Atoms) -> tuple[float, np.ndarray]:
        work = self.prepare(atoms)
        work.calc = self.inner
        energy = float(work.get_potential_energy())
        forces = np.array(work.get_forces(), dtype=np.float64)
        return energy, forces
