"""MD that knows when it is wrong: steps above the uncertainty threshold use the teacher's
(GFN2-xTB's) forces exactly, are counted, and are saved with the teacher's labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlff_distiller import keys
from mlff_distiller.data.hdf5 import Dataset
from mlff_distiller.data.structures import from_smiles
from mlff_distiller.md.runner import MDConfig, run_md
from mlff_distiller.models.committee import Committee
from mlff_distiller.models.painn import PaiNN, PaiNNConfig
from mlff_distiller.teachers import get_teacher


@pytest.fixture(scope="module")
def committee() -> Committee:
    members = []
    for seed in range(2):
        torch.manual_seed(seed)
        m = PaiNN(PaiNNConfig(hidden=16, n_interactions=2, n_rbf=8, cutoff=4.0))
        m.set_scale_shift(0.02, 0.0)  # gentle random forces: MD stays bound for a few steps
        members.append(m)
    return Committee.from_members(members).double()


def test_uncertain_steps_use_the_teachers_forces_exactly(committee, tmp_path):
    structures = [from_smiles("CCO", seed=0)[0], from_smiles("O", seed=0)[0]]
    config = MDConfig(steps=6, dt_fs=0.5, ensemble="nve", save_every=1, seed=1)
    xtb = get_teacher("xtb")
    # threshold 0: every structure at every force call falls back (1 initial call + 6 steps)
    result = run_md(
        committee,
        structures,
        config,
        out=tmp_path / "md.h5",
        progress=False,
        teacher_fallback=xtb,
        max_uncertainty=0.0,
        fallback_out=tmp_path / "fallback.h5",
    )
    assert result.fallbacks == 2 * 7
    with Dataset(tmp_path / "md.h5") as ds:
        last = [ds[len(ds) - 2], ds[len(ds) - 1]]
    for atoms in last:  # the saved forces are xTB's at the saved positions, bit for bit
        stored = atoms.get_forces()
        probe = atoms.copy()
        probe.calc = get_teacher("xtb")
        np.testing.assert_allclose(stored, probe.get_forces(), rtol=0, atol=1e-9)
    with Dataset(tmp_path / "fallback.h5") as ds:
        assert len(ds) == 14 and set(ds.molecule_names) == {"CCO", "O"}
        frame = ds[len(ds) - 1]
        probe = frame.copy()
        probe.calc = get_teacher("xtb")
        assert frame.get_potential_energy() == pytest.approx(probe.get_potential_energy(), abs=1e-8)


def test_confident_steps_keep_the_committee_and_mixed_batches_split(committee, tmp_path):
    structures = [from_smiles("CCO", seed=0)[0], from_smiles("O", seed=0)[0]]
    batch_u = []
    from mlff_distiller.data.batch import AtomsBatch

    batch = AtomsBatch.from_atoms(structures, dtype=torch.float64)
    batch_u = committee.energy_and_forces(batch)[keys.STRUCTURE_UNCERTAINTY]
    threshold = float(batch_u.mean())  # between the two structures' values
    assert batch_u.min() < threshold < batch_u.max()
    config = MDConfig(steps=1, dt_fs=0.1, ensemble="nve", save_every=1, seed=1)
    none = run_md(
        committee,
        structures,
        config,
        progress=False,
        teacher_fallback=get_teacher("xtb"),
        max_uncertainty=1e6,
    )
    assert none.fallbacks == 0
    ref = committee.energy_and_forces(none.state.to_batch())
    torch.testing.assert_close(none.state.forces, ref[keys.FORCES], rtol=0, atol=1e-12)
    some = run_md(
        committee,
        structures,
        config,
        progress=False,
        teacher_fallback=get_teacher("xtb"),
        max_uncertainty=threshold,
    )
    assert some.fallbacks == 2  # one structure, at the initial call and after the step


def test_a_model_without_uncertainty_is_refused():
    torch.manual_seed(0)
    single = PaiNN(PaiNNConfig(hidden=8, n_interactions=1, n_rbf=4))
    with pytest.raises(ValueError, match="committee"):
        run_md(
            single,
            [from_smiles("O", seed=0)[0]],
            MDConfig(steps=1),
            progress=False,
            teacher_fallback=get_teacher("xtb"),
            max_uncertainty=0.1,
        )


def test_check_every_drives_with_member_0_and_checks_every_nth_step(committee):
    """With check_every=4 the trajectory is member 0's own (same seed, same noise), and the
    committee's uncertainty still reaches the fallback: a threshold of 0 sends every step of
    both structures to the teacher (stale between checks)."""
    structures = [from_smiles("CCO", seed=0)[0], from_smiles("CO", seed=0)[0]]
    config = MDConfig(steps=8, dt_fs=0.5, temperature_k=300.0, save_every=4, seed=2)
    interval = run_md(committee, structures, config, progress=False, compile=False,
                      check_every=4)  # fmt: skip
    alone = run_md(committee.member(0), structures, config, progress=False, compile=False)
    torch.testing.assert_close(interval.state.positions, alone.state.positions, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="committee"):
        run_md(committee.member(0), structures, config, progress=False, check_every=2)
    teacher = {"teacher_fallback": get_teacher("xtb"), "max_uncertainty": 0.0}
    fallback = run_md(committee, structures, config, progress=False, compile=False,
                      check_every=4, **teacher)  # fmt: skip
    assert fallback.fallbacks == 2 * (config.steps + 1)
