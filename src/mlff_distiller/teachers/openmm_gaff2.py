"""GAFF2 for any small organic molecule, simulated by OpenMM: the classical MM teacher.

Parametrization, once per molecule (cached on disk, keyed by canonical SMILES):
1. an RDKit molecule in the structure's own atom order (bonds from its SMILES, else perceived
   from the geometry),
2. ``antechamber -c gas|bcc -at gaff2`` and ``parmchk2 -s gaff2`` (AmberTools binaries from the
   acpype wheel, called directly: acpype's wrapper overwrites ``LD_LIBRARY_PATH``),
3. ParmEd: ``gaff2.dat`` + frcmod + the mol2 residue -> an OpenMM force-field XML,
4. ``openmm.app.ForceField(xml).createSystem`` with no cutoff (an isolated molecule).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from mlff_distiller import keys
from mlff_distiller.teachers.base import TeacherError, TeacherInfo, describe_atoms, elements_of
from mlff_distiller.teachers.openmm_base import OpenMMTeacher, constraint_options

GAFF2_ELEMENTS = elements_of("H", "C", "N", "O", "F", "P", "S", "Cl", "Br", "I")
CHARGE_METHODS = ("gas", "bcc", "auto")
RESIDUE_NAME = "MOL"


def default_cache_dir() -> Path:
    root = os.environ.get("MLFFD_CACHE") or Path.home() / ".cache" / "mlff_distiller"
    return Path(root) / "gaff2"


# -- AmberTools from the acpype wheel ------------------------------------------------------
@functools.lru_cache(maxsize=1)
def amber_home() -> Path:
    try:
        import acpype
    except ImportError as err:  # pragma: no cover - a dependency
        raise TeacherError("openmm-gaff2 needs the acpype wheel: pip install acpype") from err
    home = Path(acpype.__file__).parent / "amber_linux"
    if not (home / "bin" / "wrapped_progs" / "antechamber").exists():
        raise TeacherError(f"no AmberTools binaries under {home}; reinstall acpype")
    return home


def amber_env() -> dict[str, str]:
    """Environment for the AmberTools binaries: AMBERHOME, PATH and LD_LIBRARY_PATH *appended*."""
    home = amber_home()
    env = dict(os.environ)
    env["AMBERHOME"] = str(home)
    env["PATH"] = f"{home / 'bin'}:{env.get('PATH', '')}"
    old = env.get("LD_LIBRARY_PATH")
    env["LD_LIBRARY_PATH"] = f"{home / 'lib'}:{old}" if old else str(home / "lib")
    return env


def _run_amber(program: str, args: list[str], cwd: Path, what: str) -> None:
    exe = amber_home() / "bin" / "wrapped_progs" / program
    if not exe.exists():
        exe = amber_home() / "bin" / program
    proc = subprocess.run(
        [str(exe), *args], cwd=cwd, env=amber_env(), capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-6:]
        raise TeacherError(f"{program} failed for {what}: " + " | ".join(tail))


@functools.lru_cache(maxsize=1)
def sqm_runs() -> bool:
    """Whether AmberTools' ``sqm`` (needed for AM1-BCC charges) can start on this machine."""
    try:
        sqm = amber_home() / "bin" / "sqm"
        proc = subprocess.run(
            [str(sqm), "-h"], env=amber_env(), capture_output=True, text=True, timeout=30
        )
    except (TeacherError, OSError, subprocess.SubprocessError):
        return False
    return "error while loading shared libraries" not in proc.stderr and proc.returncode != 127


@functools.cache
def _notice_gasteiger_once() -> None:
    import sys

    print(
        "mlff_distiller: AmberTools' sqm cannot start (apt-get install liblapack3 libblas3 "
        "libarpack2 libgfortran5): GAFF2 uses Gasteiger charges instead of AM1-BCC",
        file=sys.stderr,
    )


def resolve_charge_method(method: str) -> str:
    method = method.lower()
    if method not in CHARGE_METHODS:
        raise ValueError(f"unknown charge method '{method}': use one of {CHARGE_METHODS}")
    if method == "auto":
        if sqm_runs():
            return "bcc"
        _notice_gasteiger_once()
        return "gas"
    if method == "bcc" and not sqm_runs():
        raise ValueError(
            "AM1-BCC charges need AmberTools' sqm, which cannot start here (missing system "
            "libraries: apt-get install liblapack3 libblas3 libarpack2 libgfortran5); "
            "use charge_method='gas' (Gasteiger)"
        )
    return method


# -- RDKit molecule in the structure's atom order ---------------------------------------------
def molecule_for_atoms(atoms: Atoms, smiles: str | None = None, net_charge: int | None = None):
    """An RDKit molecule (explicit H, one conformer) whose atom i is ``atoms[i]``.

    Uses ``smiles`` (or ``atoms.info['smiles']``) when its H-added atom order matches the
    structure's elements and its bonds have sensible lengths; otherwise perceives bonds and
    bond orders from the geometry (``net_charge`` needed for ions)."""
    from rdkit import Chem
    from rdkit.Geometry import Point3D

    smiles = smiles or atoms.info.get(keys.SMILES)
    mol = None
    if smiles:
        template = Chem.MolFromSmiles(smiles)
        if template is None:
            raise ValueError(f"invalid SMILES '{smiles}' for {describe_atoms(atoms)}")
        template = Chem.AddHs(template)
        if _same_order(template, atoms):
            mol = Chem.Mol(template)
    if mol is None:
        mol = _perceive(atoms, net_charge)
        if smiles and _canonical(mol) != _canonical(Chem.AddHs(Chem.MolFromSmiles(smiles))):
            raise TeacherError(
                f"geometry of {describe_atoms(atoms)} does not match its SMILES '{smiles}'"
            )
    conf = Chem.Conformer(mol.GetNumAtoms())
    for i, p in enumerate(atoms.positions):
        conf.SetAtomPosition(i, Point3D(*map(float, p)))
    mol.RemoveAllConformers()
    mol.AddConformer(conf, assignId=True)
    return mol


def _same_order(mol, atoms: Atoms) -> bool:
    from ase.data import covalent_radii

    numbers = [a.GetAtomicNum() for a in mol.GetAtoms()]
    if numbers != [int(z) for z in atoms.numbers]:
        return False
    for bond in mol.GetBonds():
        i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        d = np.linalg.norm(atoms.positions[i] - atoms.positions[j])
        if d > 1.6 * (covalent_radii[numbers[i]] + covalent_radii[numbers[j]]):
            return False
    return True


def _perceive(atoms: Atoms, net_charge: int | None):
    from rdkit import Chem
    from rdkit.Chem import rdDetermineBonds

    lines = [str(len(atoms)), ""]
    lines += [
        f"{s} {x:.8f} {y:.8f} {z:.8f}"
        for s, (x, y, z) in zip(atoms.get_chemical_symbols(), atoms.positions)
    ]
    mol = Chem.MolFromXYZBlock("\n".join(lines) + "\n")
    try:
        rdDetermineBonds.DetermineBonds(mol, charge=int(net_charge or 0))
        Chem.SanitizeMol(mol)
    except Exception as err:
        raise TeacherError(
            f"could not perceive bonds of {describe_atoms(atoms)} from its geometry ({err}); "
            "give its SMILES (atoms.info['smiles'] or smiles=...)"
        ) from err
    return mol


def _canonical(mol) -> str:
    from rdkit import Chem

    return Chem.MolToSmiles(Chem.RemoveHs(mol, sanitize=False))


# -- parametrization (cached) ---------------------------------------------------------------
def gaff2_forcefield_xml(mol, charge_method: str = "gas", cache_dir: Path | None = None) -> Path:
    """GAFF2 parameters of ``mol`` as an OpenMM force-field XML (residue ``MOL``, atoms in the
    molecule's order). Cached under ``cache_dir/<hash of canonical SMILES>/``."""
    from rdkit import Chem

    charge_method = resolve_charge_method(charge_method)
    canonical = _canonical(mol)
    ranks = list(Chem.CanonicalRankAtoms(mol, breakTies=False))
    folder = Path(cache_dir or default_cache_dir())
    folder = folder / hashlib.sha1(canonical.encode()).hexdigest()[:16]
    order = hashlib.sha1(json.dumps(ranks).encode()).hexdigest()[:12]
    xml_path = folder / f"{charge_method}_{order}.xml"
    if xml_path.exists():
        return xml_path
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "smiles.txt").write_text(canonical + "\n")
    net = Chem.GetFormalCharge(mol)
    with tempfile.TemporaryDirectory(prefix="gaff2_") as tmp:
        work = Path(tmp)
        Chem.MolToMolFile(mol, str(work / "in.mol"), kekulize=True)
        what = f"'{canonical}'"
        _run_amber(
            "antechamber",
            [
                "-i",
                "in.mol",
                "-fi",
                "mdl",
                "-o",
                "out.mol2",
                "-fo",
                "mol2",
                "-c",
                charge_method,
                "-at",
                "gaff2",
                "-nc",
                str(net),
                "-rn",
                RESIDUE_NAME,
                "-pf",
                "y",
                "-dr",
                "no",
            ],
            work,
            what,
        )
        _run_amber(
            "parmchk2",
            ["-i", "out.mol2", "-f", "mol2", "-o", "out.frcmod", "-s", "gaff2"],
            work,
            what,
        )
        _write_openmm_xml(work / "out.mol2", work / "out.frcmod", net, work / "ff.xml")
        tmp_xml = xml_path.with_suffix(f".{os.getpid()}.tmp")
        tmp_xml.write_text((work / "ff.xml").read_text())
        tmp_xml.replace(xml_path)  # atomic: a concurrent reader never sees half a file
    return xml_path


def _write_openmm_xml(mol2: Path, frcmod: Path, net_charge: int, out: Path) -> None:
    import parmed

    params = parmed.amber.AmberParameterSet(
        str(amber_home() / "dat" / "leap" / "parm" / "gaff2.dat"), str(frcmod)
    )
    residue = parmed.load_file(str(mol2))
    residue.name = RESIDUE_NAME
    # antechamber rounds charges to 1e-6: spread the residual so the total is exactly integral
    residual = (net_charge - sum(a.charge for a in residue.atoms)) / len(residue.atoms)
    for atom in residue.atoms:
        atom.charge += residual
    ff = parmed.openmm.OpenMMParameterSet.from_parameterset(params)
    ff.residues[RESIDUE_NAME] = residue
    ff.write(str(out), write_unused=False)


def _xml_atom_names(xml_path: Path) -> list[str]:
    root = ET.parse(xml_path).getroot()
    return [a.get("name") for a in root.iter("Residue") for a in a.iter("Atom")]


def openmm_topology(mol, atom_names: list[str]):
    """An OpenMM Topology of one residue ``MOL`` with the molecule's atoms and bonds."""
    from openmm import app

    top = app.Topology()
    chain = top.addChain()
    res = top.addResidue(RESIDUE_NAME, chain)
    atoms = [
        top.addAtom(name, app.Element.getByAtomicNumber(a.GetAtomicNum()), res)
        for name, a in zip(atom_names, mol.GetAtoms())
    ]
    for bond in mol.GetBonds():
        top.addBond(atoms[bond.GetBeginAtomIdx()], atoms[bond.GetEndAtomIdx()])
    return top


class GAFF2Teacher(OpenMMTeacher):
    """``openmm-gaff2``: see the module docstring. One parametrization per molecule."""

    def __init__(
        self,
        info: TeacherInfo,
        smiles: str | None = None,
        charge_method: str = "gas",
        net_charge: int | None = None,
        cache_dir: str | Path | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(info, **kw)
        self.smiles = smiles
        self.charge_method = charge_method
        self.net_charge = net_charge
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._systems: dict[Any, tuple[Any, str, int]] = {}

    def molecule_key(self, atoms: Atoms) -> Any:
        return (tuple(int(z) for z in atoms.numbers), self.smiles or atoms.info.get(keys.SMILES))

    def build_system(self, atoms: Atoms, constraints: str | None = None):
        from openmm import app

        key = self.molecule_key(atoms)
        if key not in self._systems:
            mol = molecule_for_atoms(atoms, self.smiles, self.net_charge)
            xml = gaff2_forcefield_xml(mol, self.charge_method, self.cache_dir)
            top = openmm_topology(mol, _xml_atom_names(xml))
            from rdkit import Chem

            self._systems[key] = (top, str(xml), Chem.GetFormalCharge(mol))
        top, xml, net = self._systems[key]
        ff = app.ForceField(xml)
        try:
            system = ff.createSystem(
                top,
                nonbondedMethod=app.NoCutoff,
                removeCMMotion=False,
                **constraint_options(constraints),
            )
        except ValueError as err:
            raise TeacherError(
                f"OpenMM could not apply GAFF2 to {describe_atoms(atoms)}: {err}"
            ) from err
        self.check_net_charge(system, net, f"GAFF2 system of {describe_atoms(atoms)}")
        return top, system


def make_gaff2(
    smiles: str | None = None,
    charge_method: str = "auto",
    net_charge: int | None = None,
    cache_dir: str | None = None,
    platform: str | None = None,
    threads: int | None = None,
) -> GAFF2Teacher:
    """Build the ``openmm-gaff2`` teacher.

    ``smiles``: the molecule (else each structure's ``info['smiles']``, else bonds perceived
    from its geometry); ``charge_method``: ``auto`` (default: AM1-BCC where AmberTools' sqm
    runs, else Gasteiger, with a one-line notice), ``bcc`` (AM1-BCC, needs sqm) or ``gas``
    (Gasteiger); the method used is recorded in the teacher's settings (every file's
    ``teacher_settings``); ``cache_dir``: where parametrizations are kept."""
    settings = {
        "force_field": "gaff2",
        "charge_method": resolve_charge_method(charge_method),
        "nonbonded": "NoCutoff",
        "engine": "openmm",
    }
    if smiles:
        settings["smiles"] = smiles
    info = TeacherInfo(name="openmm-gaff2", elements=GAFF2_ELEMENTS, settings=settings, kind="mm")
    return GAFF2Teacher(
        info,
        smiles=smiles,
        charge_method=settings["charge_method"],
        net_charge=net_charge,
        cache_dir=cache_dir,
        platform=platform,
        threads=threads,
    )
