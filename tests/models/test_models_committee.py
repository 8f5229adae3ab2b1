"""Committee of PaiNN students: its member outputs are each member's own, its means and
uncertainties are the hand-computed ones, per structure, through save/load and through ASE."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from ase import Atoms

from mlff_distiller import keys
from mlff_distiller.data.batch import AtomsBatch
from mlff_distiller.models.committee import Committee, CommitteeConfig
from mlff_distiller.models.io import ModelFileError, load_model, save_model
from mlff_distiller.models.painn import PaiNN, PaiNNConfig

TINY = dict(hidden=16, n_interactions=2, n_rbf=8, cutoff=4.0)
ETHANOL = (
    [6, 6, 8, 1, 1, 1, 1, 1, 1],
    [[-0.75, 0.0, 0.0], [0.75, 0.05, 0.0], [1.2, 1.3, 0.1], [-1.1, 1.0, 0.1],
     [-1.1, -0.5, 0.9], [-1.1, -0.5, -0.9], [1.1, -0.5, 0.9], [1.1, -0.5, -0.9],
     [2.1, 1.3, 0.2]],
)  # fmt: skip
WATER = ([8, 1, 1], [[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])


def students(n: int = 3, seed: int = 0) -> list[PaiNN]:
    """Independent tiny float64 PaiNNs with their own reference energies, scale and shift."""
    torch.manual_seed(seed)
    out = []
    for k in range(n):
        model = PaiNN(PaiNNConfig(**TINY)).double()
        ref = torch.zeros(119, dtype=torch.float64)
        ref[[1, 6, 8]] = torch.tensor([-13.6, -1030.0, -2040.0], dtype=torch.float64) + k
        model.set_reference_energies(ref, elements=[1, 6, 8])
        model.set_scale_shift(0.5 + 0.1 * k, 0.01 * k)
        out.append(model)
    return out


def batch_of(*molecules, dtype=torch.float64) -> AtomsBatch:
    return AtomsBatch.from_arrays(
        [np.array(z) for z, _ in molecules],
        [np.array(p, dtype=float) for _, p in molecules],
        dtype=dtype,
    )


def reference_members(committee: Committee) -> list[PaiNN]:
    """Each member as a plain PaiNN, assembled here from the committee's weights."""
    if committee.config.shared == "none":
        return [copy.deepcopy(m) for m in committee.members]
    out = [copy.deepcopy(committee.body)]
    for head in committee.heads:
        model = copy.deepcopy(committee.body)
        model.readout_in.load_state_dict(head.readout_in.state_dict())
        model.readout_out.load_state_dict(head.readout_out.state_dict())
        out.append(model)
    return out


def make_committee(shared: str) -> Committee:
    if shared == "none":
        return Committee.from_members(students())
    torch.manual_seed(1)
    return Committee(CommitteeConfig(members=3, painn=TINY, shared=shared)).double()


def hand_uncertainty(forces: np.ndarray, system_idx: np.ndarray) -> tuple[np.ndarray, list]:
    """Per-atom RMS over members of |F_m - F_mean| and its maximum per structure, in numpy."""
    n_members, n_atoms, _ = forces.shape
    mean = forces.sum(0) / n_members
    per_atom = np.array([
        np.sqrt(sum(np.sum((forces[m, a] - mean[a]) ** 2) for m in range(n_members)) / n_members)
        for a in range(n_atoms)
    ])  # fmt: skip
    per_structure = [per_atom[system_idx == s].max() for s in range(system_idx.max() + 1)]
    return per_atom, per_structure


@pytest.mark.parametrize("shared", ["none", "representation"])
@pytest.mark.parametrize("vectorized", [True, False], ids=["vmap", "loop"])
def test_outputs_are_the_members_own(shared, vectorized):
    committee = make_committee(shared)
    committee.vectorized = vectorized
    members = reference_members(committee)
    batch = batch_of(ETHANOL, WATER)
    out = committee.energy_and_forces(batch)
    own = [m.energy_and_forces(batch) for m in members]
    energies = torch.stack([o[keys.ENERGY] for o in own])
    forces = torch.stack([o[keys.FORCES] for o in own])
    assert out[keys.MEMBER_ENERGIES].shape == (3, 2) and out[keys.MEMBER_FORCES].shape == (3, 12, 3)
    torch.testing.assert_close(out[keys.MEMBER_ENERGIES], energies, rtol=0, atol=1e-10)
    torch.testing.assert_close(out[keys.MEMBER_FORCES], forces, rtol=0, atol=1e-10)
    torch.testing.assert_close(out[keys.ENERGY], energies.mean(0), rtol=0, atol=1e-10)
    torch.testing.assert_close(out[keys.FORCES], forces.mean(0), rtol=0, atol=1e-10)
    per_atom, per_structure = hand_uncertainty(forces.numpy(), batch.system_idx.numpy())
    assert per_atom.min() > 1e-4  # the members really differ
    np.testing.assert_allclose(out[keys.FORCE_UNCERTAINTY].numpy(), per_atom, rtol=0, atol=1e-10)
    np.testing.assert_allclose(
        out[keys.STRUCTURE_UNCERTAINTY].numpy(), per_structure, rtol=0, atol=1e-10
    )
    # a batch of two gives per structure what each gives alone
    for s, molecule in enumerate((ETHANOL, WATER)):
        alone = committee.energy_and_forces(batch_of(molecule))
        atoms = batch.system_idx == s
        for key in (keys.ENERGY, keys.STRUCTURE_UNCERTAINTY):
            torch.testing.assert_close(alone[key][0], out[key][s], rtol=0, atol=1e-10)
        for key in (keys.FORCES, keys.FORCE_UNCERTAINTY):
            torch.testing.assert_close(alone[key], out[key][atoms], rtol=0, atol=1e-10)
        torch.testing.assert_close(
            alone[keys.MEMBER_FORCES], out[keys.MEMBER_FORCES][:, atoms], rtol=0, atol=1e-10
        )


@pytest.mark.parametrize("shared", ["none", "representation"])
def test_autograd_stress_and_training_paths(shared):
    committee = make_committee(shared)
    cell = np.eye(3) * 6.0
    batch = AtomsBatch.from_arrays(
        [np.array(ETHANOL[0])], [np.array(ETHANOL[1]) + 3.0], [cell], [np.ones(3, bool)],
        dtype=torch.float64,
    )  # fmt: skip
    vmap = committee.energy_and_forces(batch, stress=True)
    autograd = committee.energy_and_forces(batch, "autograd", stress=True)
    stresses = [m.energy_and_forces(batch, stress=True)[keys.STRESS]
                for m in reference_members(committee)]  # fmt: skip
    for key in (keys.MEMBER_FORCES, keys.FORCE_UNCERTAINTY, keys.STRESS):
        torch.testing.assert_close(autograd[key], vmap[key], rtol=0, atol=1e-10)
    torch.testing.assert_close(vmap[keys.STRESS], torch.stack(stresses).mean(0), atol=1e-10, rtol=0)
    # create_graph: an energy and force loss reaches every member's weights
    out = committee.energy_and_forces(batch, create_graph=True)
    (out[keys.FORCES].square().sum() + out[keys.ENERGY].square().sum()).backward()
    grads = [p.grad for p in committee.parameters() if p.requires_grad]
    assert all(g is not None and bool(g.abs().sum() > 0) for g in grads)


def test_from_members_copies_everything_and_checks_the_architecture():
    members = students()
    committee = Committee.from_members(members)
    assert committee.n_members == 3 and committee.elements == [1, 6, 8]
    assert committee.elements_restricted
    for own, member in zip(committee.members, members):
        for key, value in member.state_dict().items():
            torch.testing.assert_close(own.state_dict()[key], value, rtol=0, atol=0)
    batch = batch_of(WATER)
    before = committee.energy_and_forces(batch)[keys.MEMBER_FORCES].clone()
    with torch.no_grad():
        members[1].embedding.weight.add_(1.0)  # the committee holds copies
    torch.testing.assert_close(
        committee.energy_and_forces(batch)[keys.MEMBER_FORCES], before, rtol=0, atol=0
    )
    other = PaiNN(PaiNNConfig(**{**TINY, "hidden": 8})).double()
    with pytest.raises(ValueError, match="share one architecture"):
        Committee.from_members([members[0], other])


def test_changed_weights_reach_the_vectorised_path():
    """The stacked (M, ...) weights are a cache: in-place changes and casts invalidate it."""
    committee = Committee.from_members(students())
    batch = batch_of(ETHANOL)
    committee.energy_and_forces(batch)
    with torch.no_grad():
        committee.members[2].readout_out.bias.add_(0.5)
        committee.members[0].load_state_dict(students(1, seed=5)[0].state_dict())
    out = committee.energy_and_forces(batch)
    own = [m.energy_and_forces(batch) for m in reference_members(committee)]
    torch.testing.assert_close(
        out[keys.MEMBER_ENERGIES], torch.stack([o[keys.ENERGY] for o in own]), rtol=0, atol=1e-10
    )
    single = committee.float().energy_and_forces(batch_of(ETHANOL, dtype=torch.float32))
    assert single[keys.FORCES].dtype == torch.float32
    torch.testing.assert_close(single[keys.ENERGY], out[keys.ENERGY].float(), rtol=1e-5, atol=0)


@pytest.mark.parametrize("shared", ["none", "representation"])
def test_save_load_round_trip(tmp_path, shared):
    committee = make_committee(shared)
    path = tmp_path / "committee"
    save_model(committee, path)
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_model(path)
    assert isinstance(loaded, Committee) and loaded.config == committee.config
    batch = batch_of(ETHANOL, WATER)
    a, b = committee.energy_and_forces(batch), loaded.energy_and_forces(batch)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    with pytest.raises(ModelFileError, match="expected 'painn'"):
        load_model(path, architecture="painn")


def test_student_calculator_gives_member_mean_forces_and_uncertainty():
    from mlff_distiller.md.calculator import StudentCalculator, UnsupportedElementError

    members = students()
    calc = StudentCalculator(Committee.from_members(members), dtype=torch.float64, compile=False)
    atoms = Atoms(numbers=ETHANOL[0], positions=ETHANOL[1])
    atoms.calc = calc
    forces = atoms.get_forces()
    batch = batch_of(ETHANOL)
    own = np.stack([m.energy_and_forces(batch)[keys.FORCES].numpy() for m in members])
    np.testing.assert_allclose(forces, own.mean(0), rtol=0, atol=1e-10)
    energy = np.mean([float(m.energy_and_forces(batch)[keys.ENERGY][0]) for m in members])
    assert atoms.get_potential_energy() == pytest.approx(energy, abs=1e-10)
    per_atom, per_structure = hand_uncertainty(own, np.zeros(9, dtype=np.int64))
    np.testing.assert_allclose(calc.results[keys.FORCE_UNCERTAINTY], per_atom, atol=1e-10)
    assert calc.results[keys.STRUCTURE_UNCERTAINTY] == pytest.approx(per_structure[0], abs=1e-10)
    with pytest.raises(UnsupportedElementError):
        calc.calculate(Atoms(numbers=[7, 1], positions=[[0, 0, 0], [1.0, 0, 0]]), ["forces"])


def test_paths_chosen_by_default_and_compile_flags():
    none, readout = make_committee("none"), make_committee("representation")
    assert none.vectorized is None and readout.vectorized is None
    none.compile_forces(True)
    assert none.compiled_forces and all(m.compiled_forces for m in none.members)
    none.compile_forces(False)
    assert not any(m.compiled_forces for m in none.members)


@pytest.mark.slow
@pytest.mark.parametrize("shared", ["none", "representation"])
def test_compiled_vectorised_path_matches_eager(shared):
    committee = make_committee(shared)
    committee.vectorized = True
    compiled = copy.deepcopy(committee).compile_forces(True)
    # a second size reuses the dynamic graph; one structure alone compiles its own graph (its
    # energy sum is a plain sum: inductor 2.13 failed on the vmapped scatter into one slot)
    for molecules in ((ETHANOL, WATER), (WATER,)):
        batch = batch_of(*molecules)
        eager = committee.energy_and_forces(batch)
        out = compiled.energy_and_forces(batch)
        assert compiled.compiled_forces  # no fallback to eager
        for key in eager:
            torch.testing.assert_close(out[key], eager[key], rtol=0, atol=1e-9)


def test_check_every_n_drives_with_member_0_and_runs_the_committee_every_nth_call():
    members = students(3)
    committee = Committee.from_members(members).set_check_every(3)
    batch = batch_of(ETHANOL, WATER)
    own = members[0].energy_and_forces(batch)
    full = Committee.from_members(members).energy_and_forces(batch)
    seen = []
    for _ in range(7):
        out = committee.energy_and_forces(batch)
        seen.append(keys.MEMBER_FORCES in out)
        torch.testing.assert_close(out[keys.FORCES], own[keys.FORCES], rtol=0, atol=1e-12)
        torch.testing.assert_close(out[keys.ENERGY], own[keys.ENERGY], rtol=0, atol=1e-12)
        # the uncertainty is the last full call's: here always the same structures
        torch.testing.assert_close(
            out[keys.STRUCTURE_UNCERTAINTY], full[keys.STRUCTURE_UNCERTAINTY], rtol=0, atol=1e-12
        )
    assert seen == [True, False, False, True, False, False, True]
    with pytest.raises(ValueError, match="check_every"):
        committee.set_check_every(0)
