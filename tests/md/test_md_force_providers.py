"""The teachers' force providers of the MD engine: GFN2-xTB structures evaluated concurrently
on a thread pool give what tblite's own ASE calculator gives, in order, with the teacher's
errors naming the structure."""

import numpy as np
import pytest
import torch
from ase.build import molecule
from tblite.ase import TBLite

from mlff_distiller import keys
from mlff_distiller.data.state import MDState
from mlff_distiller.md.forces import CalculatorForces, make_force_provider
from mlff_distiller.teachers import get_teacher
from mlff_distiller.teachers.base import TeacherError
from mlff_distiller.teachers.parallel import available_cpus


def _structures():
    rng = np.random.default_rng(3)
    out = []
    for name in ("H2O", "CH4", "NH3", "CH3OH", "H2O"):
        atoms = molecule(name)
        atoms.positions += 0.03 * rng.standard_normal(atoms.positions.shape)
        out.append(atoms)
    return out


def _batch(structures, ids=None):
    state = MDState.from_atoms(structures, dtype=torch.float64)
    if ids is not None:
        state = state.replace(structure_ids=torch.tensor(ids))
    return state.to_batch()


def test_concurrent_xtb_equals_tblites_ase_calculator_structure_by_structure():
    structures = _structures()
    provider = make_force_provider("xtb", structures)
    assert provider._pool is not None or available_cpus() == 1
    pooled = CalculatorForces(structures, lambda a: get_teacher("xtb"), workers=3)
    serial = CalculatorForces(structures, lambda a: get_teacher("xtb"), workers=1)
    assert pooled._pool is not None and serial._pool is None
    batch = _batch(structures)
    out_pool = pooled.energy_and_forces(batch)
    out_serial = serial.energy_and_forces(batch)
    for s, atoms in enumerate(structures):
        ref = atoms.copy()
        ref.calc = TBLite(method="GFN2-xTB", verbosity=0)
        mask = batch.system_idx == s
        assert abs(float(out_pool[keys.ENERGY][s]) - ref.get_potential_energy()) < 1e-6
        np.testing.assert_allclose(out_pool[keys.FORCES][mask].numpy(), ref.get_forces(), atol=1e-6)
    np.testing.assert_allclose(out_pool[keys.ENERGY], out_serial[keys.ENERGY], atol=1e-8)
    np.testing.assert_allclose(out_pool[keys.FORCES], out_serial[keys.FORCES], atol=1e-7)
    # a subset of the structures, in another order, maps to the right ones
    sub = [structures[3], structures[0]]
    sub_batch = _batch(sub, ids=[3, 0])
    out_sub = pooled.energy_and_forces(sub_batch)
    np.testing.assert_allclose(out_sub[keys.ENERGY], out_pool[keys.ENERGY][[3, 0]], atol=1e-6)


def test_worker_threads_run_openmp_on_their_share_of_the_cpus():
    from threadpoolctl import threadpool_info

    from mlff_distiller.teachers.parallel import teacher_pool

    pool = teacher_pool(8, workers=2)
    assert pool is not None
    counts = pool.submit(
        lambda: [i["num_threads"] for i in threadpool_info() if i["user_api"] == "openmp"]
    ).result()
    pool.shutdown()
    assert counts and all(c == max(1, available_cpus() // 2) for c in counts)
    assert teacher_pool(1) is None  # one structure: evaluated in the calling thread


def test_a_failing_structure_is_named_through_the_pool():
    structures = _structures()
    pooled = CalculatorForces(structures, lambda a: get_teacher("xtb"), workers=2)
    batch = _batch(structures)
    batch.positions[batch.system_idx == 2] = float("nan")
    with pytest.raises(TeacherError, match="H3N"):
        pooled.energy_and_forces(batch)


def test_one_calculator_for_several_structures_is_never_called_at_once():
    """A factory that hands the same teacher to every structure: one tblite engine must not
    compute two structures at once (it crashed the process), so no pool, and the energies are
    still each structure's own."""
    structures = _structures()[:3]
    shared = get_teacher("xtb")
    provider = CalculatorForces(structures, lambda a: shared)
    assert provider._pool is None
    out = provider.energy_and_forces(_batch(structures))
    for s, atoms in enumerate(structures):
        ref = atoms.copy()
        ref.calc = TBLite(method="GFN2-xTB", verbosity=0)
        assert abs(float(out[keys.ENERGY][s]) - ref.get_potential_energy()) < 1e-6
