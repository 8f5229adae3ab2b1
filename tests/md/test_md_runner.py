"""Batched student MD runner: the trajectory it writes is the run (NVE energies conserved,
frames match a plain step loop), resume continues from the last saved frame, blow-ups are named."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from ase.build import molecule

from mlff_distiller import keys
from mlff_distiller.data.hdf5 import Dataset
from mlff_distiller.md.integrators import velocity_verlet_step, with_forces
from mlff_distiller.md.runner import MDConfig, MDError, initial_state, run_md
from mlff_distiller.models.painn import PaiNN, PaiNNConfig


@pytest.fixture(scope="module")
def model() -> PaiNN:
    torch.manual_seed(3)
    m = PaiNN(PaiNNConfig(hidden=16, n_interactions=2, n_rbf=12, cutoff=4.0))
    m.set_scale_shift(1.0, 0.0)
    return m.double().eval()


def _structures():
    out = []
    for name in ("CH3CH2OH", "H2O"):
        atoms = molecule(name)
        atoms.info["name"] = name
        out.append(atoms)
    return out


def test_nve_trajectory_matches_step_loop_and_conserves_energy(model, tmp_path):
    config = MDConfig(steps=40, dt_fs=0.25, ensemble="nve", save_every=10, temperature_k=300)
    out = tmp_path / "md.h5"
    result = run_md(model, _structures(), config, out=out, progress=False)
    assert result.frames_written == 2 * 5  # frames at steps 0, 10, 20, 30, 40 for 2 molecules

    state = with_forces(initial_state(_structures(), 300.0, 0), model)
    for _ in range(40):
        state = velocity_verlet_step(state, model, 0.25)
    with Dataset(out) as ds:
        last = [ds.get_arrays(i) for i in (8, 9)]
        assert [f[keys.NAME] for f in last] == ["CH3CH2OH", "H2O"]
        assert last[0][keys.TIME] == pytest.approx(10.0)
        np.testing.assert_allclose(
            np.concatenate([f[keys.POSITIONS] for f in last]), state.positions.numpy(), atol=1e-12
        )
        total = np.array(
            [
                ds.get_arrays(i)[keys.POTENTIAL_ENERGY] + ds.get_arrays(i)[keys.KINETIC_ENERGY]
                for i in range(0, 10, 2)
            ]
        )
    kinetic_scale = float(state.kinetic_energy()[0])
    assert np.ptp(total) < 1e-3 * max(kinetic_scale, 1e-3)


def test_resume_runs_only_the_missing_steps(model, tmp_path):
    out = tmp_path / "md.h5"
    short = MDConfig(steps=20, dt_fs=0.25, save_every=5, seed=1)
    run_md(model, _structures(), short, out=out, progress=False)
    full = MDConfig(steps=40, dt_fs=0.25, save_every=5, seed=1)
    result = run_md(model, _structures(), full, out=out, resume=True, progress=False)
    assert result.steps_done == 20
    with Dataset(out) as ds:
        assert len(ds) == 2 * 9
        times = [ds.get_arrays(i)[keys.TIME] for i in range(0, len(ds), 2)]
    np.testing.assert_allclose(times, np.arange(0, 41, 5) * 0.25)


def test_blow_up_names_the_structure(model):
    structures = _structures()
    structures[1].positions[0] = np.nan
    with pytest.raises(MDError, match="H2O"):
        run_md(model, structures, MDConfig(steps=2, save_every=1), progress=False)


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="ensemble"):
        MDConfig(ensemble="npt")


def test_cli_batched_and_ase_engines_agree(model, tmp_path):
    """`mlffd md` with the batched engine and with ASE's VelocityVerlet give the same NVE
    trajectory for one molecule (same seeded initial velocities)."""
    from typer.testing import CliRunner

    from mlff_distiller.cli.main import app
    from mlff_distiller.models.io import save_model

    save_model(model, tmp_path / "student")
    xyz = tmp_path / "ethanol.xyz"
    molecule("CH3CH2OH").write(xyz)
    runner = CliRunner()
    outs = {}
    for engine in ("batched", "ase"):
        outs[engine] = tmp_path / f"{engine}.h5"
        args = ["md", str(tmp_path / "student"), "--structure", str(xyz), "--steps", "20"]
        args += ["--dt", "0.25", "--ensemble", "nve", "--save-every", "10"]
        args += ["--engine", engine, "--out", str(outs[engine])]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    with Dataset(outs["batched"]) as a, Dataset(outs["ase"]) as b:
        assert len(a) == len(b) == 3
        for i in range(3):
            x, y = a.get_arrays(i), b.get_arrays(i)
            np.testing.assert_allclose(x[keys.POSITIONS], y[keys.POSITIONS], atol=1e-9)
            np.testing.assert_allclose(x[keys.VELOCITIES], y[keys.VELOCITIES], atol=1e-9)
            assert x[keys.POTENTIAL_ENERGY] == pytest.approx(y[keys.POTENTIAL_ENERGY], abs=1e-9)


def test_cli_reports_missing_input(model, tmp_path):
    from typer.testing import CliRunner

    from mlff_distiller.cli.main import app
    from mlff_distiller.models.io import save_model

    save_model(model, tmp_path / "student")
    result = CliRunner().invoke(app, ["md", str(tmp_path / "student"), "--steps", "2"])
    assert result.exit_code == 1
    assert "--smiles or --structure" in result.output


def test_an_element_the_model_never_saw_is_named_before_any_step(model, tmp_path):
    from mlff_distiller.md.calculator import UnsupportedElementError

    restricted = copy.deepcopy(model)
    ref = torch.zeros(119, dtype=restricted.reference_energies.dtype)
    restricted.set_reference_energies(ref, elements=[1, 6, 8])
    with pytest.raises(UnsupportedElementError, match="'CH3Cl'.*Cl"):
        run_md(restricted, [molecule("CH3Cl")], MDConfig(steps=2), out=tmp_path / "x.h5",
               progress=False)
    assert not (tmp_path / "x.h5").exists()  # refused before anything was written
