"""Amber ff14SB (OpenMM's ``amber14-all.xml``) for standard peptides and proteins.

The topology comes from a PDB file or an MDTraj HDF5 file (read with h5py: its ``topology``
dataset is JSON, so MDTraj need not be installed), e.g.
``tests/fixtures/mdtraj_ala2.h5``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from mlff_distiller import keys, units
from mlff_distiller.teachers.base import (
    StructureMismatchError,
    TeacherError,
    TeacherInfo,
    describe_atoms,
    elements_of,
)
from mlff_distiller.teachers.openmm_base import OpenMMTeacher, constraint_options

AMBER14_ELEMENTS = elements_of("H", "C", "N", "O", "S")


def read_mdtraj_h5(path: str | Path):
    """Topology and frames of an MDTraj HDF5 file.

    Returns ``(openmm.app.Topology, frames)`` with ``frames`` a list of ``Atoms`` (positions
    converted nm -> Å; ``info['name']`` is the file stem, ``info['time']`` in fs)."""
    import h5py
    from openmm import app

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MDTraj HDF5 file '{path}' does not exist")
    with h5py.File(path, "r") as f:
        if "topology" not in f or "coordinates" not in f:
            raise ValueError(f"'{path}' is not an MDTraj HDF5 file (no topology/coordinates)")
        raw = f["topology"][0]
        data = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
        unit = f["coordinates"].attrs.get("units", b"nanometers")
        unit = unit.decode() if isinstance(unit, bytes) else str(unit)
        coords = np.asarray(f["coordinates"][:], dtype=np.float64)
        times_ps = np.asarray(f["time"][:], dtype=np.float64) if "time" in f else None
    scale = units.NM if unit.startswith("nano") else units.ANGSTROM
    top = app.Topology()
    atoms_by_index: dict[int, Any] = {}
    for chain_data in data["chains"]:
        chain = top.addChain()
        for res_data in chain_data["residues"]:
            res = top.addResidue(res_data["name"], chain, str(res_data.get("resSeq", "")))
            for a in res_data["atoms"]:
                element = app.Element.getBySymbol(a["element"])
                atoms_by_index[a["index"]] = top.addAtom(a["name"], element, res)
    for i, j in data["bonds"]:
        top.addBond(atoms_by_index[i], atoms_by_index[j])
    numbers = [a.element.atomic_number for a in top.atoms()]
    frames = []
    for k, xyz in enumerate(coords):
        atoms = Atoms(numbers=numbers, positions=xyz * scale)
        atoms.info[keys.NAME] = path.stem
        if times_ps is not None:
            atoms.info[keys.TIME] = float(times_ps[k] * units.PS)
        frames.append(atoms)
    return top, frames


def read_topology(path: str | Path):
    """An OpenMM Topology from a PDB file or an MDTraj HDF5 file."""
    from openmm import app

    path = Path(path)
    if path.suffix.lower() in (".h5", ".hdf5"):
        return read_mdtraj_h5(path)[0]
    if path.suffix.lower() == ".pdb":
        if not path.is_file():
            raise FileNotFoundError(f"PDB file '{path}' does not exist")
        return app.PDBFile(str(path)).topology
    raise ValueError(f"topology '{path}': give a .pdb or an MDTraj .h5 file")


class Amber14Teacher(OpenMMTeacher):
    """``openmm-amber14``: one fixed topology; structures must match its atoms in order."""

    def __init__(self, info: TeacherInfo, topology, forcefield_files: tuple[str, ...], **kw: Any):
        super().__init__(info, **kw)
        self.topology = topology
        self.forcefield_files = forcefield_files
        self.numbers = tuple(a.element.atomic_number for a in topology.atoms())

    def molecule_key(self, atoms: Atoms) -> Any:
        self._check_matches(atoms)
        return self.numbers

    def _check_matches(self, atoms: Atoms) -> None:
        if tuple(int(z) for z in atoms.numbers) != self.numbers:
            raise StructureMismatchError(
                f"structure {describe_atoms(atoms)} does not match the amber14 topology "
                f"({len(self.numbers)} atoms): give the topology of this molecule"
            )

    def build_system(self, atoms: Atoms, constraints: str | None = None):
        from openmm import app

        self._check_matches(atoms)
        ff = app.ForceField(*self.forcefield_files)
        try:
            system = ff.createSystem(
                self.topology,
                nonbondedMethod=app.NoCutoff,
                removeCMMotion=False,
                **constraint_options(constraints),
            )
        except ValueError as err:
            raise TeacherError(
                f"amber14 cannot parametrize {describe_atoms(atoms)}: {err}"
            ) from err
        net = round(self.check_net_charge_value(system))
        self.check_net_charge(system, net, f"amber14 system of {describe_atoms(atoms)}")
        return self.topology, system

    @staticmethod
    def check_net_charge_value(system) -> float:
        import openmm
        from openmm import unit

        nb = [f for f in system.getForces() if isinstance(f, openmm.NonbondedForce)][0]
        return sum(
            nb.getParticleParameters(i)[0].value_in_unit(unit.elementary_charge)
            for i in range(nb.getNumParticles())
        )


def make_amber14(
    topology: str | None = None,
    forcefield: str = "amber14-all.xml",
    platform: str | None = None,
    threads: int | None = None,
) -> Amber14Teacher:
    """Build ``openmm-amber14`` for the molecule in ``topology`` (a .pdb or MDTraj .h5 file)."""
    if topology is None:
        raise ValueError(
            "openmm-amber14 needs topology=PATH (a .pdb or MDTraj .h5 file of the peptide), "
            "e.g. tests/fixtures/mdtraj_ala2.h5"
        )
    top = read_topology(topology)
    settings = {
        "force_field": forcefield,
        "topology": str(topology),
        "nonbonded": "NoCutoff",
        "engine": "openmm",
    }
    info = TeacherInfo(
        name="openmm-amber14", elements=AMBER14_ELEMENTS, settings=settings, kind="mm"
    )
    return Amber14Teacher(info, top, (forcefield,), platform=platform, threads=threads)
