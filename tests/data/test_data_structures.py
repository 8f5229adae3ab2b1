"""Structures from SMILES and files, and every bad input validate_atoms must reject."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
from ase import Atoms

from mlff_distiller.data.structures import (
    StructureError,
    atoms_from_rdkit,
    from_smiles,
    rdkit_mol_from_smiles,
    read_structures,
    validate_atoms,
)


def test_from_smiles_explicit_h_seeded_and_relaxed():
    confs = from_smiles("CCO", n_conformers=3, seed=7, name="ethanol")
    assert len(confs) == 3
    assert confs[0].get_chemical_formula() == "C2H6O"  # explicit hydrogens
    assert confs[0].info["name"] == "ethanol" and confs[0].info["smiles"] == "CCO"
    again = from_smiles("CCO", n_conformers=3, seed=7)
    for a, b in zip(confs, again):
        np.testing.assert_allclose(a.positions, b.positions)  # same seed, same geometry
    # MMFF94 relaxation gives a C-O bond near 1.42 Å and C-H near 1.09 Å
    d = confs[0].get_all_distances()
    z = confs[0].numbers
    c, o = np.flatnonzero(z == 6), np.flatnonzero(z == 8)
    assert 1.38 < d[np.ix_(c, o)].min() < 1.46
    h = np.flatnonzero(z == 1)
    assert 1.06 < d[np.ix_(c, h)].min() < 1.12


def test_rdkit_mol_helper_keeps_bonds_and_matches_atoms():
    mol = rdkit_mol_from_smiles("CC(=O)O", seed=1)
    assert mol.GetNumAtoms() == 8 and mol.GetNumBonds() == 7
    atoms = atoms_from_rdkit(mol, 0)
    np.testing.assert_allclose(atoms.positions, mol.GetConformer(0).GetPositions())
    assert atoms.info["charge"] == 0
    assert from_smiles("C[N+](C)(C)C")[0].info["charge"] == 1


@pytest.mark.parametrize(
    "smiles, reason",
    [
        ("C1CC", "unclosed ring"),
        ("CC(C)(C)(C)(C)C", "valence"),
        ("c1cccc1", "kekulize"),
        ("Xx", "syntax error"),
        ("", "empty"),
    ],
)
def test_invalid_smiles_says_why(smiles, reason):
    with pytest.raises(StructureError, match="invalid SMILES") as err:
        from_smiles(smiles)
    assert reason in str(err.value).lower()
    assert repr(smiles) in str(err.value)


def test_embedding_failure_is_reported():
    with pytest.raises(StructureError, match=r"embedding failed for SMILES 'C1#CC1'"):
        from_smiles("C1#CC1")  # cyclopropyne has no 3D geometry


def test_unsupported_element_names_engine_and_element():
    atoms = from_smiles("CCCl")[0]
    with pytest.raises(StructureError, match=r"element\(s\) Cl not supported by engine 'ani1x'"):
        validate_atoms(atoms, supported_elements=["H", "C", "N", "O"], engine="ani1x")
    validate_atoms(atoms, supported_elements=[1, 6, 17])  # numbers work too


def test_unknown_atomic_number():
    with pytest.raises(StructureError, match="unknown atomic number"):
        validate_atoms(Atoms(numbers=[1, 150], positions=[[0, 0, 0], [0, 0, 1]]))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_coordinates(bad):
    atoms = from_smiles("O")[0]
    atoms.positions[2, 1] = bad
    with pytest.raises(StructureError, match=r"NaN/inf.*first atom 2 \(H\)"):
        validate_atoms(atoms, name="water")


def test_overlapping_atoms_name_pair_and_distance():
    atoms = Atoms("OHH", positions=[[0, 0, 0], [0.3, 0, 0], [0, 1.0, 0]])
    with pytest.raises(StructureError, match=r"atoms 0 \(O\) and 1 \(H\) are 0.300 Å apart"):
        validate_atoms(atoms, name="broken water")
    # periodic images count: two atoms 0.2 Å apart across the box boundary
    box = Atoms("HH", positions=[[0.1, 0, 0], [4.9, 0, 0]], cell=[5, 5, 5], pbc=True)
    with pytest.raises(StructureError, match="0.200 Å apart"):
        validate_atoms(box)


def test_read_structures_xyz_pdb_sdf_keep_geometry(tmp_path):
    ref = from_smiles("c1ccccc1O", name="phenol")[0]
    for suffix in ("xyz", "extxyz", "pdb", "sdf"):
        path = tmp_path / f"phenol.{suffix}"
        if suffix == "sdf":
            from rdkit import Chem

            mol = rdkit_mol_from_smiles("c1ccccc1O", seed=0)
            mol.SetProp("_Name", "phenol")
            with Chem.SDWriter(str(path)) as w:
                w.write(mol)
            ref_pos = mol.GetConformer().GetPositions()
        else:
            ase.io.write(path, ref)
            ref_pos = ref.positions
        (got,) = read_structures(path)
        assert got.info["name"] == "phenol"
        assert list(got.numbers) == list(ref.numbers)
        np.testing.assert_allclose(got.positions, ref_pos, atol=1e-3)  # pdb keeps 3 decimals


def test_read_structures_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_structures(tmp_path / "missing.xyz")
    junk = tmp_path / "junk.xyz"
    junk.write_text("this is not\nan xyz file\n")
    with pytest.raises(StructureError, match="cannot read structures from"):
        read_structures(junk)
