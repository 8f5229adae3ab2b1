"""On-policy windows (DAgger): exact-flow labels against ASE's own velocity Verlet, the
reference/hybrid mix of a refinement round, resume, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from ase import units as ase_units
from ase.md.verlet import VelocityVerlet

from mlff_distiller import units
from mlff_distiller.data.structures import from_smiles
from mlff_distiller.kstep.dataset import read_windows
from mlff_distiller.kstep.onpolicy import (
    RefineConfig,
    States,
    exact_flow_windows,
    molecule_round,
    refine,
)
from mlff_distiller.kstep.pretrained import pretrained_path
from mlff_distiller.md.forces import make_force_provider
from mlff_distiller.models.io import load_model
from mlff_distiller.teachers import get_teacher

SMILES = "CCO"


def test_exact_flow_windows_match_ase_velocity_verlet():
    """Two states of ethanol under GAFF2, labelled as one batch, equal ASE's VelocityVerlet
    (an independent integrator, the teacher as its ASE calculator) after 4 and 8 steps."""
    atoms = from_smiles(SMILES, seed=0)[0]
    rng = np.random.default_rng(1)
    x = atoms.positions[None] + rng.normal(0, 0.03, (2, len(atoms), 3))
    v = rng.normal(0, 0.01, (2, len(atoms), 3))  # Å/fs
    provider = make_force_provider("openmm-gaff2", [atoms] * 2, smiles=SMILES)
    windows = exact_flow_windows(States(x, v), atoms, provider, 0.5, ks=(4, 8))
    assert windows["k"].tolist() == [4, 4, 8, 8]
    calc = get_teacher("openmm-gaff2", smiles=SMILES)
    for s in range(2):
        ref = atoms.copy()
        ref.calc = calc
        ref.positions = x[s]
        ref.set_velocities(units.velocities_internal_to_ase(v[s]))
        dyn = VelocityVerlet(ref, timestep=0.5 * ase_units.fs)
        f0 = ref.get_forces()
        np.testing.assert_allclose(windows["f_t"][s], f0, atol=1e-8)
        for row in (s, 2 + s):  # k = 4, then 8
            dyn.run(4)
            np.testing.assert_allclose(windows["x_tk"][row], ref.positions, atol=1e-9)
            v_ase = units.velocities_ase_to_internal(ref.get_velocities())
            np.testing.assert_allclose(windows["v_tk"][row], v_ase, atol=1e-10)
            np.testing.assert_allclose(windows["f_tk"][row], ref.get_forces(), atol=1e-8)
            np.testing.assert_allclose(windows["x_t"][row], x[s])


def test_round_mixes_reference_and_hybrid_states():
    """A round labels as many hybrid as reference states (the hybrid's frames after the
    transient of 40 cycles, every 5th), each with the three k."""
    network = load_model(pretrained_path("openmm-gaff2")).float().eval()
    config = RefineConfig(corrector="openmm-gaff2", replicas=2, cycles=60, every=5)
    mol = molecule_round(network, "ethanol", SMILES, config, seed=0)
    n_states = mol.n_windows // 3
    # reference: 2 replicas x 12 frames (every 45 of 540 steps, the start left out) = 24;
    # hybrid: 2 replicas x 5 frames (cycles 40, 45, ..., 60) = 10; half = min(24 // 2, 10)
    assert n_states == 2 * 10
    assert sorted(set(mol.k.tolist())) == [4, 8, 12]
    assert mol.split == "train" and mol.smiles == SMILES
    assert np.isfinite(mol.x_tk).all() and np.isfinite(mol.f_tk).all()


def test_refine_round_trains_and_resumes(tmp_path):
    """One round end to end on ethanol (GAFF2, the shipped GAFF2 network) changes the weights and
    keeps the architecture; a second call reuses the round's windows (resume)."""
    config = RefineConfig(corrector="openmm-gaff2", replicas=2, cycles=50, every=5, epochs=1)
    start = pretrained_path("openmm-gaff2")
    best = refine(start, {"ethanol": SMILES}, tmp_path, config, progress=False)
    refined, shipped = load_model(best), load_model(start)
    assert refined.config == shipped.config
    changed = [
        n for (n, p), q in zip(refined.named_parameters(), shipped.parameters())
        if not np.allclose(p.detach().numpy(), q.detach().numpy())
    ]  # fmt: skip
    assert changed, "the fine-tune changed no weight"
    windows = tmp_path / "round_1" / "windows.h5"
    stamp = windows.stat().st_mtime_ns
    assert read_windows(windows, "train")[0].n_windows > 0
    refine(start, {"ethanol": SMILES}, tmp_path, config, progress=False)
    assert windows.stat().st_mtime_ns == stamp


@pytest.mark.parametrize(
    "field, value, match",
    [("cycles", 30, "leave no hybrid states"), ("rounds", 0, "rounds must be >= 1")],
)
def test_refine_config_errors(field, value, match):
    with pytest.raises(ValueError, match=match):
        RefineConfig(**{field: value})


def test_refine_cli(tmp_path):
    from typer.testing import CliRunner

    from mlff_distiller.cli.main import app

    r = CliRunner().invoke(app, [
        "kstep", "refine", "pretrained:openmm-gaff2", "--smiles", SMILES, "--corrector",
        "openmm-gaff2", "--replicas", "2", "--cycles", "45", "--epochs", "1", "--out",
        str(tmp_path),
    ])  # fmt: skip
    assert r.exit_code == 0, r.output
    best = tmp_path / "round_1" / "model" / "best"
    assert str(best) in "".join(r.output.split())
    assert load_model(best).architecture == "egnn"
    bad = CliRunner().invoke(app, ["kstep", "refine", "--smiles", "C1CC", "--cycles", "45",
                                   "--out", str(tmp_path / "bad")])  # fmt: skip
    assert bad.exit_code != 0 and "C1CC" in bad.output
