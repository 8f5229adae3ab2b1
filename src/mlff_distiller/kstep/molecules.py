"""Molecule sets of the k-step jump networks: H/C/N/O organics with 1-30 heavy atoms covering the
common functional groups, and held-out molecules that no training set contains.

``GAFF2_TRAIN`` (>= 100) trains the MM networks, ``XTB_TRAIN`` (>= 20, small ones: xTB MD costs
~50x GAFF2's) the QM fine-tuning; ``GAFF2_HELD_OUT`` and ``XTB_HELD_OUT`` are what the benchmark
measures. Names are unique; :func:`check_disjoint` is tested.
"""

from __future__ import annotations

GAFF2_TRAIN: dict[str, str] = {
    # alkanes, cycloalkanes, alkenes, alkynes
    "ethane": "CC", "propane": "CCC", "butane": "CCCC", "isobutane": "CC(C)C",
    "pentane": "CCCCC", "neopentane": "CC(C)(C)C", "hexane": "CCCCCC", "octane": "CCCCCCCC",
    "cyclopropane": "C1CC1", "cyclobutane": "C1CCC1", "cyclopentane": "C1CCCC1",
    "cyclohexane": "C1CCCCC1", "methylcyclohexane": "CC1CCCCC1", "decalin": "C1CCC2CCCCC2C1",
    "propene": "C=CC", "but_1_ene": "C=CCC", "isoprene": "C=CC(C)=C", "cyclohexene": "C1CC=CCC1",
    "propyne": "C#CC", "but_2_yne": "CC#CC",
    # aromatics
    "benzene": "c1ccccc1", "toluene": "Cc1ccccc1", "p_xylene": "Cc1ccc(C)cc1",
    "ethylbenzene": "CCc1ccccc1", "styrene": "C=Cc1ccccc1", "naphthalene": "c1ccc2ccccc2c1",
    "biphenyl": "c1ccc(-c2ccccc2)cc1", "mesitylene": "Cc1cc(C)cc(C)c1",
    # alcohols, diols, phenols
    "methanol": "CO", "ethanol": "CCO", "propan_1_ol": "CCCO", "butan_1_ol": "CCCCO",
    "butan_2_ol": "CCC(C)O", "tert_butanol": "CC(C)(C)O", "cyclohexanol": "OC1CCCCC1",
    "ethylene_glycol": "OCCO", "glycerol": "OCC(O)CO", "benzyl_alcohol": "OCc1ccccc1",
    "phenol": "Oc1ccccc1", "p_cresol": "Cc1ccc(O)cc1", "catechol": "Oc1ccccc1O",
    # ethers
    "dimethyl_ether": "COC", "methoxyethane": "CCOC", "diethyl_ether": "CCOCC",
    "tetrahydrofuran": "C1CCOC1", "dioxane": "C1COCCO1", "anisole": "COc1ccccc1",
    "dimethoxyethane": "COCCOC", "oxirane": "C1CO1",
    # aldehydes, ketones
    "formaldehyde": "C=O", "propanal": "CCC=O", "butanal": "CCCC=O", "benzaldehyde": "O=Cc1ccccc1",
    "acetone": "CC(=O)C", "butanone": "CCC(C)=O", "cyclohexanone": "O=C1CCCCC1",
    "acetophenone": "CC(=O)c1ccccc1", "acrolein": "C=CC=O", "hydroxyacetone": "CC(=O)CO",
    "acetylacetone": "CC(=O)CC(C)=O", "glyoxal": "O=CC=O",
    # acids, esters, anhydrides
    "formic_acid": "OC=O", "acetic_acid": "CC(=O)O", "propanoic_acid": "CCC(=O)O",
    "butanoic_acid": "CCCC(=O)O", "benzoic_acid": "OC(=O)c1ccccc1", "lactic_acid": "CC(O)C(=O)O",
    "oxalic_acid": "OC(=O)C(=O)O", "methyl_formate": "COC=O", "methyl_acetate": "CC(=O)OC",
    "ethyl_formate": "CCOC=O", "propyl_acetate": "CCCOC(C)=O", "methyl_benzoate": "COC(=O)c1ccccc1",
    "gamma_butyrolactone": "O=C1CCCO1", "acetic_anhydride": "CC(=O)OC(C)=O",
    "aspirin": "CC(=O)Oc1ccccc1C(=O)O",
    # amines
    "methylamine": "CN", "ethylamine": "CCN", "propylamine": "CCCN", "dimethylamine": "CNC",
    "trimethylamine": "CN(C)C", "diethylamine": "CCNCC", "piperidine": "C1CCNCC1",
    "morpholine": "C1COCCN1", "aniline": "Nc1ccccc1", "benzylamine": "NCc1ccccc1",
    "ethanolamine": "NCCO", "ethylenediamine": "NCCN", "n_methylaniline": "CNc1ccccc1",
    # amides, ureas, carbamates, imides
    "formamide": "NC=O", "acetamide": "CC(N)=O", "n_methylacetamide": "CC(=O)NC",
    "dimethylacetamide": "CC(=O)N(C)C", "propanamide": "CCC(N)=O", "benzamide": "NC(=O)c1ccccc1",
    "acetanilide": "CC(=O)Nc1ccccc1", "urea": "NC(N)=O", "methyl_carbamate": "COC(N)=O",
    "succinimide": "O=C1CCC(=O)N1", "caprolactam": "O=C1CCCCCN1", "glycinamide": "NCC(N)=O",
    "paracetamol": "CC(=O)Nc1ccc(O)cc1",
    # nitriles, nitro, oximes, azo-free N heterocycles
    "acetonitrile": "CC#N", "propionitrile": "CCC#N", "benzonitrile": "N#Cc1ccccc1",
    "nitromethane": "C[N+](=O)[O-]", "nitrobenzene": "O=[N+]([O-])c1ccccc1",
    "acetone_oxime": "CC(C)=NO", "pyridine": "c1ccncc1", "pyrimidine": "c1cncnc1",
    "pyrrole": "c1cc[nH]c1", "imidazole": "c1c[nH]cn1", "indole": "c1ccc2[nH]ccc2c1",
    "furan": "c1ccoc1", "oxazole": "c1cocn1", "quinoline": "c1ccc2ncccc2c1",
    # amino acids (neutral forms) and small multifunctional molecules
    "glycine": "NCC(=O)O", "alanine": "CC(N)C(=O)O", "serine": "NC(CO)C(=O)O",
    "methyl_glycinate": "COC(=O)CN", "alanine_dipeptide": "CC(=O)NC(C)C(=O)NC",
    "caffeine": "Cn1cnc2c1c(=O)n(C)c(=O)n2C", "vanillin": "COc1cc(C=O)ccc1O",
    "salicylic_acid": "OC(=O)c1ccccc1O", "ibuprofen": "CC(C)Cc1ccc(C(C)C(=O)O)cc1",
    "menthol": "CC(C)C1CCC(C)CC1O", "nicotinamide": "NC(=O)c1cccnc1",
    "tryptamine": "NCCc1c[nH]c2ccccc12", "glucose": "OCC1OC(O)C(O)C(O)C1O",
    # larger molecules (15-30 heavy atoms)
    "thymidine": "CC1=CN(C2CC(O)C(CO)O2)C(=O)NC1=O", "palmitic_acid": "CCCCCCCCCCCCCCCC(=O)O",
    "diphenhydramine": "CN(C)CCOC(c1ccccc1)c1ccccc1", "atenolol": "CC(C)NCC(O)COc1ccc(CC(N)=O)cc1",
    "trp_gly": "NC(Cc1c[nH]c2ccccc12)C(=O)NCC(=O)O",
    "triphenylmethanol": "OC(c1ccccc1)(c1ccccc1)c1ccccc1",
    "methyl_stearate": "CCCCCCCCCCCCCCCCCC(=O)OC",
    "testosterone": "CC12CCC3C(CCC4=CC(=O)CCC34C)C1CCC2O",
    "ace_ala5_nme": "CC(=O)NC(C)C(=O)NC(C)C(=O)NC(C)C(=O)NC(C)C(=O)NC(C)C(=O)NC",
}  # fmt: skip

XTB_TRAIN: dict[str, str] = {
    name: GAFF2_TRAIN[name]
    for name in (
        "ethanol", "propane", "acetone", "methylamine", "acetic_acid", "dimethyl_ether",
        "propanal", "butan_2_ol", "ethylamine", "methyl_acetate", "acetamide", "formic_acid",
        "methanol", "propene", "acetonitrile", "urea", "ethylene_glycol", "furan", "pyridine",
        "n_methylacetamide", "tetrahydrofuran", "glycine", "butanone", "formamide",
    )
}  # fmt: skip

GAFF2_HELD_OUT: dict[str, str] = {
    "isopropanol": "CC(C)O",
    "ethyl_acetate": "CCOC(C)=O",
    "methoxyethanol": "COCCO",
    "pyrrolidine": "C1CCNC1",
}
XTB_HELD_OUT: dict[str, str] = {"isopropanol": "CC(C)O", "methoxyethanol": "COCCO"}


def check_disjoint() -> None:
    """Raise ValueError when a held-out molecule (by canonical SMILES) is in a training set."""
    from rdkit import Chem

    def canonical(smiles: str) -> str:
        mol = Chem.MolFromSmiles(smiles)
        if mol is None:
            raise ValueError(f"invalid SMILES {smiles!r} in the k-step molecule sets")
        return Chem.MolToSmiles(mol)

    train = {canonical(s) for s in (*GAFF2_TRAIN.values(), *XTB_TRAIN.values())}
    for name, smiles in {**GAFF2_HELD_OUT, **XTB_HELD_OUT}.items():
        if canonical(smiles) in train:
            raise ValueError(f"held-out molecule {name} ({smiles}) is in a training set")
