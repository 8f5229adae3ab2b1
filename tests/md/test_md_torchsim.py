"""torch-sim bridge: StudentModel agrees with the student and with ASE (molecules, batches, a
triclinic crystal), passes torch-sim's own validator, and its MD reproduces the batched engine
(NVE, damped Langevin), conserves energy and writes the runner's trajectory format."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from ase import Atoms

ts = pytest.importorskip("torch_sim", reason="torch-sim not installed: pip install .[torchsim]")

from mlff_distiller import keys  # noqa: E402
from mlff_distiller.data.batch import AtomsBatch  # noqa: E402
from mlff_distiller.data.hdf5 import Dataset  # noqa: E402
from mlff_distiller.data.structures import from_smiles  # noqa: E402
from mlff_distiller.md.calculator import StudentCalculator  # noqa: E402
from mlff_distiller.md.runner import MDConfig, run_md  # noqa: E402
from mlff_distiller.md.torchsim import StudentModel, run_torchsim_md  # noqa: E402
from mlff_distiller.models.painn import PaiNN, PaiNNConfig  # noqa: E402

F64 = torch.float64


@pytest.fixture(scope="module")
def model() -> PaiNN:
    torch.manual_seed(4)
    m = PaiNN(PaiNNConfig(hidden=16, n_interactions=2, n_rbf=12, cutoff=4.0))
    m.set_scale_shift(1.5, 0.0)
    return m.double().eval()


@pytest.fixture(scope="module")
def molecules() -> list[Atoms]:
    return [from_smiles(s, seed=0)[0] for s in ("CCO", "O", "CC=O")]


def _triclinic() -> Atoms:
    """A periodic C/H/O crystal in a cell whose lattice matrix is far from symmetric (a
    transposed cell moves every image)."""
    cell = np.array([[5.2, 0.0, 0.0], [1.3, 5.6, 0.0], [0.8, -1.1, 6.0]])
    frac = np.array([[0.05, 0.1, 0.2], [0.3, 0.35, 0.4], [0.6, 0.2, 0.75], [0.8, 0.7, 0.1]])
    return Atoms("COHH", scaled_positions=frac, cell=cell, pbc=True)


def _ase_reference(model, atoms: Atoms) -> tuple[float, np.ndarray]:
    atoms = atoms.copy()
    atoms.calc = StudentCalculator(model, dtype=F64)
    return atoms.get_potential_energy(), atoms.get_forces()


def test_forward_equals_model_and_ase_calculator(model, molecules):
    ts_model = StudentModel(model, dtype=F64)
    state = ts.io.atoms_to_state(molecules, torch.device("cpu"), F64)
    out = ts_model(state)
    assert out["energy"].shape == (3,) and out["forces"].shape == (state.n_atoms, 3)
    assert out["energy"].dtype == F64 and set(out) == {"energy", "forces"}

    ref = model.energy_and_forces(AtomsBatch.from_atoms(molecules, dtype=F64), "analytical")
    torch.testing.assert_close(out["energy"], ref[keys.ENERGY], atol=1e-10, rtol=0)
    torch.testing.assert_close(out["forces"], ref[keys.FORCES], atol=1e-10, rtol=0)
    start = 0
    for s, atoms in enumerate(molecules):  # batched (torch-sim) == one by one (ASE)
        energy, forces = _ase_reference(model, atoms)
        assert float(out["energy"][s]) == pytest.approx(energy, abs=1e-10)
        np.testing.assert_allclose(out["forces"][start : start + len(atoms)], forces, atol=1e-10)
        start += len(atoms)
    assert float(ref[keys.FORCES].abs().max()) > 0.1  # forces are not negligible


def test_batched_equals_one_by_one_and_state_dict(model, molecules):
    ts_model = StudentModel(model, dtype=F64, forces="autograd")
    together = ts_model(ts.io.atoms_to_state(molecules, torch.device("cpu"), F64))
    start = 0
    for s, atoms in enumerate(molecules):
        alone_state = ts.io.atoms_to_state([atoms], torch.device("cpu"), F64)
        as_dict = {k: getattr(alone_state, k) for k in ("positions", "cell", "atomic_numbers")}
        for alone in (ts_model(alone_state), ts_model(as_dict)):
            n = len(atoms)
            torch.testing.assert_close(
                alone["energy"], together["energy"][s : s + 1], atol=1e-10, rtol=0
            )
            torch.testing.assert_close(
                alone["forces"], together["forces"][start : start + n], atol=1e-10, rtol=0
            )
        start += len(atoms)


def test_triclinic_periodic_cell_matches_ase(model):
    atoms = _triclinic()
    state = ts.io.atoms_to_state([atoms], torch.device("cpu"), F64)
    assert not torch.allclose(state.cell[0], state.cell[0].T)  # column convention differs
    out = StudentModel(model, dtype=F64)(state)
    energy, forces = _ase_reference(model, atoms)
    assert float(out["energy"][0]) == pytest.approx(energy, abs=1e-10)
    np.testing.assert_allclose(out["forces"].numpy(), forces, atol=1e-10)
    # the same atoms read as non-periodic give another energy: the images do matter
    molecule = atoms.copy()
    molecule.pbc = False
    assert abs(_ase_reference(model, molecule)[0] - energy) > 1e-3


def test_torchsim_validator_and_no_in_place_cast(model):
    from torch_sim.models.interface import validate_model_outputs

    float32 = PaiNN(PaiNNConfig(hidden=8, n_interactions=1, n_rbf=6, cutoff=4.0))
    ts_model = StudentModel(float32, dtype=F64)
    assert next(float32.parameters()).dtype == torch.float32  # the caller's module is intact
    assert ts_model.model is not float32 and ts_model.dtype == F64
    assert StudentModel(model, dtype=F64).model is not model  # a private copy runs
    assert ts_model.memory_scales_with == "n_atoms_x_density"
    validate_model_outputs(StudentModel(model, dtype=F64), torch.device("cpu"), F64)


def test_stress_matches_ase_calculator(model):
    """Stress through torch-sim (column cell) equals ASE's on the triclinic crystal."""
    from ase.stress import voigt_6_to_full_3x3_stress

    atoms = _triclinic()
    state = ts.io.atoms_to_state([atoms], torch.device("cpu"), F64)
    out = StudentModel(model, dtype=F64, compute_stress=True)(state)
    assert out["stress"].shape == (1, 3, 3)
    atoms.calc = StudentCalculator(model, dtype=F64)
    reference = voigt_6_to_full_3x3_stress(atoms.get_stress())
    np.testing.assert_allclose(out["stress"][0].numpy(), reference, atol=1e-10)
    assert np.abs(reference).max() > 1e-4


def test_stress_without_model_support_is_refused(model):
    class NoStress(torch.nn.Module):
        def energy_and_forces(self, batch, method="analytical"):
            raise AssertionError("not called")

    with pytest.raises(NotImplementedError, match="stress"):
        StudentModel(NoStress(), compute_stress=True, compile=False)


def _frames(path) -> list[dict]:
    with Dataset(path) as ds:
        return [ds.get_arrays(i) for i in range(len(ds))]


@pytest.mark.parametrize("ensemble", ["nve", "nvt"])
def test_md_reproduces_batched_engine(model, molecules, tmp_path, ensemble):
    """NVE: same seeded velocities and velocity Verlet; NVT at 0 K: the Langevin O step is a
    deterministic friction exp(-gamma dt), so a wrong time or friction unit shows."""
    structures = [a.copy() for a in molecules]
    if ensemble == "nvt":
        rng = np.random.default_rng(1)
        for a in structures:
            a.set_velocities(rng.normal(scale=0.01, size=(len(a), 3)))  # ASE units
    config = MDConfig(
        steps=40, dt_fs=0.25, ensemble=ensemble, temperature_k=300.0 if ensemble == "nve" else 0,
        friction_per_ps=50.0, save_every=10, seed=3,
    )  # fmt: skip
    res_ts = run_torchsim_md(model, structures, config, out=tmp_path / "ts.h5", progress=False)
    res_b = run_md(model, structures, config, out=tmp_path / "b.h5", progress=False)
    assert res_ts.frames_written == res_b.frames_written == 3 * 5
    assert res_ts.steps_done == 40
    a, b = _frames(tmp_path / "ts.h5"), _frames(tmp_path / "b.h5")
    for x, y in zip(a, b):
        assert x[keys.NAME] == y[keys.NAME] and x[keys.TIME] == pytest.approx(y[keys.TIME])
        for key in (keys.POSITIONS, keys.VELOCITIES, keys.FORCES):
            np.testing.assert_allclose(x[key], y[key], atol=1e-9, err_msg=key)
        for key in (keys.POTENTIAL_ENERGY, keys.KINETIC_ENERGY):
            assert x[key] == pytest.approx(y[key], abs=1e-9)
    torch.testing.assert_close(res_ts.state.positions, res_b.state.positions, atol=1e-9, rtol=0)
    if ensemble == "nvt":  # the friction did act: without it the run goes elsewhere
        config.friction_per_ps = 0.0
        free = run_torchsim_md(model, structures, config, progress=False)
        assert float((free.state.positions - res_ts.state.positions).abs().max()) > 1e-3


def test_nve_conserves_energy(model, molecules, tmp_path):
    """0.25 fs steps over 100 steps: the total energy varies by less than 3e-3 of the kinetic
    energy's variation (measured <= 6e-4). A step 10x too long (time in fs taken as ASE time
    units) gives 0.05; forces off by a factor break energy conservation outright."""
    config = MDConfig(steps=100, dt_fs=0.25, ensemble="nve", temperature_k=300, save_every=5)
    run_torchsim_md(model, molecules, config, out=tmp_path / "nve.h5", progress=False)
    frames = _frames(tmp_path / "nve.h5")
    for s in range(3):
        mine = frames[s::3]
        total = np.array([f[keys.POTENTIAL_ENERGY] + f[keys.KINETIC_ENERGY] for f in mine])
        kinetic = np.array([f[keys.KINETIC_ENERGY] for f in mine])
        assert np.ptp(kinetic) > 0.05  # eV: energy flows between potential and kinetic
        assert np.ptp(total) < 3e-3 * np.ptp(kinetic), (s, np.ptp(total), np.ptp(kinetic))


def test_cli_engine_torchsim_writes_frames(model, tmp_path):
    from typer.testing import CliRunner

    from mlff_distiller.cli.main import app
    from mlff_distiller.models.io import save_model

    save_model(model, tmp_path / "student")
    out = tmp_path / "md.h5"
    args = ["md", str(tmp_path / "student"), "--engine", "torchsim", "-s", "CCO", "-s", "O"]
    result = CliRunner().invoke(app, [*args, "--steps", "20", "--out", str(out)])
    assert result.exit_code == 0, result.output
    frames = _frames(out)
    assert len(frames) == 2 * 3  # steps 0, 10, 20 for two molecules
    assert [f[keys.NAME] for f in frames[:2]] == ["CCO", "O"]
    np.testing.assert_allclose([f[keys.TIME] for f in frames[::2]], [0.0, 5.0, 10.0])


def test_importing_md_does_not_import_torch_sim():
    code = (
        "import sys, mlff_distiller.md, mlff_distiller.md.runner, mlff_distiller.md.calculator; "
        "assert 'torch_sim' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
