"""Foundation ML teachers (SevenNet-0, ANI-1x, CHGNet, Orb-v2) and PySCF: forces are the
negative finite-difference gradient of their energies; each equals the library it wraps."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from teachers_testlib import assert_fd_forces, molecule

from mlff_distiller.teachers import get_teacher

# float32 networks: h = 1e-2 Å keeps round-off (~1e-5 eV / 2h) below the tolerance
COMPONENTS = [(0, 0), (1, 2), (2, 1), (4, 0), (8, 2)]


@pytest.fixture(scope="module")
def ethanol():
    return molecule("CCO", name="ethanol", jitter=0.03)


@pytest.fixture(scope="module")
def sevennet():
    return get_teacher("sevennet", threads=1)


@pytest.fixture(scope="module")
def chgnet():
    return get_teacher("chgnet", threads=1)


def test_sevennet_fd_and_equals_sevenn(sevennet, ethanol):
    assert_fd_forces(sevennet, ethanol, h=1e-2, atol=5e-3, rtol=2e-2, components=COMPONENTS)
    a = ethanol.copy()
    a.calc = sevennet
    b = ethanol.copy()
    b.calc = sevennet.inner
    assert a.get_potential_energy() == pytest.approx(b.get_potential_energy(), abs=1e-6)
    assert 1 in sevennet.info.elements and 89 in sevennet.info.elements


def test_ani1x_fd(ethanol):
    teacher = get_teacher("ani1x")
    # double precision ensemble: tight tolerance
    assert_fd_forces(teacher, ethanol, h=1e-4, atol=1e-5, rtol=1e-5, components=COMPONENTS)


def test_chgnet_fd_and_box_independence(chgnet, ethanol):
    assert_fd_forces(chgnet, ethanol, h=1e-2, atol=5e-3, rtol=2e-2, components=COMPONENTS)
    a = ethanol.copy()
    a.calc = chgnet
    shifted = ethanol.copy()
    shifted.positions += 7.3  # the molecule is centred in its box: translation changes nothing
    shifted.calc = chgnet
    assert a.get_potential_energy() == pytest.approx(shifted.get_potential_energy(), abs=1e-4)


def test_pyscf_hf_fd():
    water = molecule("O", name="water", jitter=0.05)
    teacher = get_teacher("pyscf", method="hf", basis="sto-3g")
    assert_fd_forces(teacher, water, h=1e-3, atol=5e-4, components=[(0, 0), (1, 1), (2, 2)])


HAS_ORB = importlib.util.find_spec("orb_models") is not None


def test_orb_v2_without_weights_says_how_to_get_them(monkeypatch):
    monkeypatch.delenv("MLFFD_ORB_V2_WEIGHTS", raising=False)
    if not HAS_ORB:
        with pytest.raises(ValueError, match="not available here"):
            get_teacher("orb-v2")
        return
    with pytest.raises(ValueError, match="weights=orb-v2.pt"):
        get_teacher("orb-v2")


@pytest.mark.skipif(not HAS_ORB, reason="orb-models is not installed (pip install -e .[orb])")
def test_orb_v2_adapter_loads_a_weights_file(tmp_path, ethanol):
    """The untrained orb_v2_architecture's weights, saved by the test, load through the
    teacher and give the same energy and forces as the network they came from."""
    import torch
    from orb_models.forcefield.calculator import ORBCalculator

    from mlff_distiller.teachers.ml_potentials import boxed, load_orb_v2

    torch.manual_seed(0)
    network = load_orb_v2(None, untrained=True).eval()
    path = tmp_path / "orb-v2.pt"
    torch.save(network.state_dict(), path)
    teacher = get_teacher("orb-v2", weights=str(path))
    a = ethanol.copy()
    a.calc = teacher
    ref = boxed(ethanol)
    ref.calc = ORBCalculator(network, device="cpu")
    assert np.isfinite(a.get_potential_energy())
    assert a.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-5)
    np.testing.assert_allclose(a.get_forces(), ref.get_forces(), atol=1e-5)
    bad = tmp_path / "bad.pt"
    torch.save({"w": torch.zeros(3)}, bad)
    with pytest.raises(ValueError, match="not an Orb-v2 state dict"):
        get_teacher("orb-v2", weights=str(bad))
