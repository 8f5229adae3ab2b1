"""Shared fixtures of the k-step tests: short real reference trajectories (OpenMM GAFF2,
written by the shared sampling code, every MD step saved) of three tiny molecules."""

import pytest

from mlff_distiller.data.structures import from_smiles
from mlff_distiller.teachers import get_teacher
from mlff_distiller.teachers.sampling import SamplingConfig, sample

KSTEP_TEST_MOLECULES = {"methanol": "CO", "ethane": "CC", "methylamine": "CN"}


@pytest.fixture(scope="session")
def gaff2_trajectories(tmp_path_factory):
    """name -> path of a 60 fs (120 steps of 0.5 fs, weak friction) trajectory."""
    out = tmp_path_factory.mktemp("kstep_traj")
    cfg = SamplingConfig(
        dt_fs=0.5,
        friction_per_ps=0.1,
        equilibration_fs=20.0,
        production_fs=60.0,
        save_every=1,
        constraints="none",
        seed=1,
    )
    paths = {}
    for name, smiles in KSTEP_TEST_MOLECULES.items():
        atoms = from_smiles(smiles, name=name)[0]
        paths[name] = out / f"{name}.h5"
        sample(get_teacher("openmm-gaff2", smiles=smiles), atoms, paths[name], cfg)
    return paths
