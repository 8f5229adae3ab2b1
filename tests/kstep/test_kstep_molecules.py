"""The k-step molecule sets: valid H/C/N/O SMILES of 2-30 heavy atoms, at least 100 for GAFF2
and 20 for xTB, and held-out molecules that no training set contains (canonical SMILES)."""

import pytest
from rdkit import Chem

from mlff_distiller.kstep import molecules


def test_sets_are_large_valid_and_hcno():
    assert len(molecules.GAFF2_TRAIN) >= 100 and len(molecules.XTB_TRAIN) >= 20
    assert len(molecules.GAFF2_HELD_OUT) >= 4 and len(molecules.XTB_HELD_OUT) >= 2
    heavy = []
    for smiles in molecules.GAFF2_TRAIN.values():
        mol = Chem.MolFromSmiles(smiles)
        assert mol is not None, smiles
        assert {a.GetSymbol() for a in mol.GetAtoms()} <= {"C", "N", "O"}, smiles
        heavy.append(mol.GetNumHeavyAtoms())
    assert min(heavy) >= 2 and max(heavy) == 30


def test_held_out_molecules_are_not_trained_on(monkeypatch):
    molecules.check_disjoint()
    monkeypatch.setitem(molecules.GAFF2_HELD_OUT, "ethanol_again", "OCC")  # ethanol, reordered
    with pytest.raises(ValueError, match="ethanol_again"):
        molecules.check_disjoint()
