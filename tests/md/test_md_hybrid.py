"""The k-step hybrid as an integrator of the batched engine (md.hybrid): exact reductions to the
engine's own steps, the ensemble of a harmonic oscillator under NVT with an exact jump, energy
restoring in NVE, every rejection reason, and force providers against their libraries."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ase import Atoms

from mlff_distiller import keys, thermo, units
from mlff_distiller.data.state import MDState
from mlff_distiller.data.structures import from_smiles
from mlff_distiller.md.forces import CountedForces, make_force_provider
from mlff_distiller.md.hybrid import (
    REASONS,
    Bonds,
    HybridConfig,
    HybridIntegrator,
    HybridResult,
    IntegrationError,
    run_hybrid,
)
from mlff_distiller.md.integrators import (
    langevin_baoab_step,
    rescale_to_energy,
    velocity_verlet_step,
    with_forces,
)
from mlff_distiller.md.runner import initial_state
from mlff_distiller.models.kstep_common import DELTA_POSITIONS, DELTA_VELOCITIES


class Scripted(torch.nn.Module):
    """A jump 'network': ``fn(inp) -> (dx, dv)``; zero when ``fn`` is None."""

    def __init__(self, fn=None, forces: bool = False):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
        self.fn, self.forces = fn, forces

    def forward(self, inp):
        dx, dv = torch.zeros_like(inp.positions), torch.zeros_like(inp.velocities)
        forces = inp.forces
        if self.fn is not None:
            dx, dv, *rest = self.fn(inp)
            forces = rest[0] if rest else forces
        out = {DELTA_POSITIONS: dx, DELTA_VELOCITIES: dv}
        if self.forces:
            out[keys.FORCES] = forces
        return out


@pytest.fixture(scope="module")
def ethanol():
    return from_smiles("CCO", seed=0)[0]


@pytest.fixture(scope="module")
def gaff(ethanol):
    return make_force_provider("openmm-gaff2", [ethanol, ethanol])


def _start(ethanol, provider, temperature=300.0):
    return with_forces(initial_state([ethanol, ethanol], temperature, 0), provider)


def test_zero_jump_nve_cycle_is_one_velocity_verlet_step(ethanol, gaff):
    state = _start(ethanol, gaff)
    hybrid = HybridIntegrator(Scripted(), gaff, HybridConfig(k=8, ensemble="nve", rescale=False),
                              None)  # fmt: skip
    result = HybridResult(state)
    cycled = hybrid.cycle(state, state.kinetic_energy(), result)
    plain = velocity_verlet_step(state, gaff, 0.5)
    assert torch.equal(cycled.positions, plain.positions)
    assert torch.equal(cycled.velocities, plain.velocities)
    assert sum(result.rejections.values()) == 0


def test_k0_nvt_cycle_is_one_baoab_step_random_numbers_included(ethanol, gaff):
    state = _start(ethanol, gaff)
    config = HybridConfig(k=0, friction_per_ps=2.0, rescale=False)
    hybrid = HybridIntegrator(Scripted(), gaff, config, None)
    hybrid.generator = torch.Generator().manual_seed(7)
    cycled = hybrid.cycle(state, state.kinetic_energy(), HybridResult(state))
    plain = langevin_baoab_step(
        state, gaff, 0.5, 300.0, 2.0 / units.PS, torch.Generator().manual_seed(7)
    )
    assert torch.equal(cycled.positions, plain.positions)
    assert torch.equal(cycled.velocities, plain.velocities)


def test_openmm_provider_equals_the_teachers_calculator(ethanol, gaff):
    from mlff_distiller.teachers import get_teacher

    out = gaff.energy_and_forces(initial_state([ethanol, ethanol], 300.0, 0).to_batch())
    atoms = ethanol.copy()
    atoms.calc = get_teacher("openmm-gaff2", smiles="CCO")
    assert float(out[keys.ENERGY][1]) == pytest.approx(atoms.get_potential_energy(), abs=1e-9)
    np.testing.assert_allclose(out[keys.FORCES][9:].numpy(), atoms.get_forces(), atol=1e-8)


# ---------------------------------------------------------------- a harmonic dimer
KAPPA = 2.0  # eV/Å^2
MASS = 12.011  # amu (two carbons)


class HarmonicDimer:
    """E = kappa |x1 - x2|^2 / 2 for every 2-atom structure of a batch."""

    def energy_and_forces(self, batch, method="analytical"):
        x = batch.positions.view(-1, 2, 3)
        r = x[:, 0] - x[:, 1]
        f = torch.stack([-KAPPA * r, KAPPA * r], 1).reshape(-1, 3)
        return {keys.ENERGY: 0.5 * KAPPA * r.square().sum(-1), keys.FORCES: f}


def exact_dimer_jump(inp):
    """The exact flow of the dimer's relative motion over k dt (the centre of mass is the
    hybrid's business)."""
    tau = float(inp.k[0] * inp.dt[0])
    omega = math.sqrt(KAPPA * units.ACCEL_PER_FORCE_OVER_MASS / (MASS / 2))
    x, v = inp.positions.view(-1, 2, 3), inp.velocities.view(-1, 2, 3)
    r, u = x[:, 0] - x[:, 1], v[:, 0] - v[:, 1]
    c, s = math.cos(omega * tau), math.sin(omega * tau)
    dr = r * c + u * s / omega - r
    du = -r * omega * s + u * c - u
    dx = torch.stack([dr / 2, -dr / 2], 1).reshape(-1, 3)
    dv = torch.stack([du / 2, -du / 2], 1).reshape(-1, 3)
    forces = torch.stack([-KAPPA * (r + dr), KAPPA * (r + dr)], 1).reshape(-1, 3)
    return dx, dv, forces


def _dimers(n: int, temperature: float, seed: int) -> list[Atoms]:
    """Dimers with separations drawn from their Boltzmann distribution (var kT / kappa)."""
    rng = np.random.default_rng(seed)
    sigma = math.sqrt(units.BOLTZMANN * temperature / KAPPA)
    out = []
    for _ in range(n):
        r = rng.normal(scale=sigma, size=3)
        out.append(Atoms("C2", positions=[0.5 * r, -0.5 * r]))
    return out


@pytest.mark.parametrize(("k", "rescale"), [(0, False), (8, False), (8, True)])
def test_nvt_samples_the_harmonic_variance_kt_over_kappa(k, rescale):
    """Plain BAOAB (k = 0) and the hybrid with the exact jump (k = 8), 2 ps^-1: the separation's
    variance per component is kT / kappa and the temperature is T (3 internal dof per dimer)."""
    temperature, n = 300.0, 256
    structures = _dimers(n, temperature, seed=k)
    config = HybridConfig(k=k, temperature_k=temperature, friction_per_ps=2.0, seed=k,
                          energy_tol_per_atom=None, rescale=rescale)  # fmt: skip
    network = Scripted(exact_dimer_jump, forces=True)  # the exact F(x') as a force head
    provider = CountedForces(HarmonicDimer())
    state = initial_state(structures, temperature, k)
    hybrid = HybridIntegrator(network, provider, config, None)
    hybrid.generator = torch.Generator().manual_seed(k)
    state = with_forces(state, provider)
    result = HybridResult(state)
    r2, temps = [], []
    for _ in range(2000 // (k + 1)):
        state = hybrid.cycle(state, state.kinetic_energy() + 1.0, result)
        x = state.positions.view(-1, 2, 3)
        r2.append((x[:, 0] - x[:, 1]).square().mean().item())
        temps.append(state.temperature().mean().item())
    variance = np.mean(r2) / (units.BOLTZMANN * temperature / KAPPA)
    assert variance == pytest.approx(1.0, abs=0.05)
    assert np.mean(temps) == pytest.approx(temperature, rel=0.04)
    assert result.fallbacks == 0
    calls = n * (1 + 2000 // (k + 1))  # one call per cycle
    if rescale:  # a rare failed rescale (too little internal energy) retries with a real call
        assert calls <= provider.structure_calls <= 1.01 * calls
    else:
        assert provider.structure_calls == calls


def test_a_heating_jump_shows_in_the_raw_nvt_temperature_and_energy_error():
    """The check above can fail: a jump that adds 3% to the velocities each cycle heats the
    dimers far beyond 300 K although the thermostat is on (2 ps^-1). Restoring the energy
    balance each cycle (``rescale``, the default) holds the temperature, and the raw energy
    error of the jumps still reports the heating network."""

    def heating(inp):
        dx, dv, _ = exact_dimer_jump(inp)
        return dx, dv + 0.03 * (inp.velocities + dv)

    structures = _dimers(64, 300.0, seed=3)
    runs = {}
    for rescale in (False, True):
        config = HybridConfig(k=8, friction_per_ps=2.0, energy_tol_per_atom=None, rescale=rescale)
        runs[rescale] = run_hybrid(Scripted(heating), HarmonicDimer(), structures, config, 200,
                                   progress=False).summary()  # fmt: skip
    hot, restored = runs[False]["mean_temperature_k"], runs[True]["mean_temperature_k"]
    assert hot > 400.0
    assert abs(restored - 300.0) < 0.4 * abs(hot - 300.0)
    kt = units.BOLTZMANN * 300.0
    assert runs[True]["raw_energy_error_ev_per_atom"]["median"] > 0.01 * kt


def test_nve_rescaling_restores_the_total_energy_each_cycle(ethanol, gaff):
    """A jump with a random velocity error: the raw energy error is reported, the total energy
    after every cycle equals the start's to 1e-10 eV."""
    gen = torch.Generator().manual_seed(0)

    def noisy(inp):
        return torch.zeros_like(inp.positions), 1e-3 * torch.randn(
            inp.velocities.shape, generator=gen, dtype=inp.velocities.dtype
        )

    config = HybridConfig(k=4, ensemble="nve", energy_tol_per_atom=None)
    state = _start(ethanol, gaff)
    start = state.energy + state.kinetic_energy()
    hybrid = HybridIntegrator(Scripted(noisy), gaff, config, None)
    result = HybridResult(state)
    for _ in range(5):
        state = hybrid.cycle(state, state.kinetic_energy(), result)
        np.testing.assert_allclose((state.energy + state.kinetic_energy()).numpy(),
                                   start.numpy(), rtol=0, atol=1e-10)  # fmt: skip
    raw = np.abs(np.concatenate(result.energy_errors))
    assert raw.min() > 1e-6  # the jumps' own error, reported before the rescaling


def test_rescaling_keeps_linear_and_angular_momentum():
    from ase.build import molecule

    state = MDState.from_atoms([molecule("CH3CH2OH"), molecule("H2O")])
    gen = torch.Generator().manual_seed(1)
    v = 0.01 * torch.randn(state.positions.shape, generator=gen, dtype=torch.float64)
    state = state.replace(velocities=v, energy=torch.tensor([-1.0, -2.0], dtype=torch.float64))
    target = state.energy + state.kinetic_energy() + torch.tensor([0.05, -0.01])
    new, ok = rescale_to_energy(state, target)
    assert ok.all()
    np.testing.assert_allclose((new.energy + new.kinetic_energy()).numpy(), target.numpy(),
                               rtol=0, atol=1e-10)  # fmt: skip

    def momenta(s):
        m, idx = s.masses, s.system_idx
        p = torch.zeros(2, 3, dtype=m.dtype).index_add(0, idx, m[:, None] * s.velocities)
        r = s.positions - thermo.centre_of_mass_velocity(s.positions, m, idx, 2)[idx]
        cross = torch.linalg.cross(r, s.velocities)
        return p, torch.zeros(2, 3, dtype=m.dtype).index_add(0, idx, m[:, None] * cross)

    (p0, l0), (p1, l1) = momenta(state), momenta(new)
    assert torch.allclose(p0, p1, atol=1e-14) and torch.allclose(l0, l1, atol=1e-13)
    assert l0.abs().max() > 0.1  # a real angular momentum was kept, not a zero one


# ---------------------------------------------------------------- rejections
def _bump(atom: int, dx=(0.0, 0.0, 0.0), dv=(0.0, 0.0, 0.0)):
    def fn(inp):
        x, v = torch.zeros_like(inp.positions), torch.zeros_like(inp.velocities)
        x[atom] = torch.tensor(dx, dtype=x.dtype)
        v[atom] = torch.tensor(dv, dtype=v.dtype)
        return x, v

    return fn


NAN = (float("nan"), 0.0, 0.0)
REJECTIONS = {
    "nan": (_bump(0, dx=NAN), {}),
    "bond": (_bump(0, dx=(5.0, 0.0, 0.0)), {}),
    "kinetic_energy": (_bump(0, dv=(2.0, 0.0, 0.0)), {}),
    "potential_energy": (_bump(0, dx=(0.05, 0.0, 0.0)), {"pe_jump_per_atom": 1e-6}),
    "energy": (_bump(0, dx=(0.02, 0.0, 0.0)), {"energy_tol_per_atom": 1e-9}),
    "rescale": (
        _bump(0, dx=(0.5, 0.3, 0.0)),
        {"ensemble": "nve", "energy_tol_per_atom": None, "pe_jump_per_atom": 100.0},
    ),
}


@pytest.mark.parametrize("reason", REASONS)
def test_every_rejection_reason_is_counted_and_falls_back_to_plain_steps(ethanol, gaff, reason):
    fn, options = REJECTIONS[reason]
    config = HybridConfig(k=2, max_attempts=1, **options)
    state = initial_state([ethanol], 5.0 if reason == "rescale" else 300.0, 0)
    provider = CountedForces(make_force_provider("openmm-gaff2", [ethanol]))
    state = with_forces(state, provider)
    from mlff_distiller.kstep.topology import build_topology

    bonds = Bonds.of([build_topology(ethanol.numbers, ethanol.positions)], state)
    hybrid = HybridIntegrator(Scripted(fn), provider, config, bonds)
    result = HybridResult(state)
    after = hybrid.cycle(state, state.kinetic_energy(), result)
    assert result.rejections == {r: int(r == reason) for r in REASONS}
    assert result.fallbacks == 1
    assert torch.isfinite(after.positions).all()
    result.cycles = 1
    assert "fell back to plain MD" in result.summary()["warnings"][0]
    with pytest.raises(IntegrationError, match="failed"):
        stop = HybridConfig(k=2, max_attempts=2, fallback="stop", **options)
        HybridIntegrator(Scripted(fn), provider, stop, bonds).cycle(
            state, state.kinetic_energy(), HybridResult(state)
        )


def test_run_writes_an_on_step_trajectory_with_its_measured_temperature(tmp_path, ethanol, gaff):
    from mlff_distiller.data.hdf5 import Dataset

    out = tmp_path / "hybrid.h5"
    result = run_hybrid(Scripted(forces=True), gaff, [ethanol, ethanol], HybridConfig(k=3), 6,
                        out=out, progress=False)  # fmt: skip
    with Dataset(out) as ds:
        assert len(ds) == 2 * 7
        assert ds.attrs[keys.VELOCITY_CONVENTION] == keys.ON_STEP
        measured = float(ds.attrs[keys.MEASURED_TEMPERATURE])
        last = ds.get_arrays(13)
    assert measured == pytest.approx(result.summary()["mean_temperature_k"])
    np.testing.assert_allclose(last[keys.POSITIONS], result.state.positions[9:].numpy())
    assert float(last[keys.TIME]) == pytest.approx(6 * 4 * 0.5)


def test_xtb_zero_jump_cycle_is_one_ase_velocity_verlet_step():
    """The engine's step with the xTB provider equals ASE's VelocityVerlet with the xtb teacher."""
    from ase.build import molecule
    from ase.md.verlet import VelocityVerlet
    from ase.units import fs

    from mlff_distiller.teachers import get_teacher

    atoms = molecule("H2O")
    config = HybridConfig(k=4, ensemble="nve", rescale=False, temperature_k=500.0)
    result = run_hybrid(Scripted(), make_force_provider("xtb", [atoms]), [atoms], config, 1,
                        progress=False, keep_frames=True)  # fmt: skip
    frames = result.frame_arrays()
    ref = atoms.copy()
    ref.calc = get_teacher("xtb")
    ref.set_velocities(frames["velocities"][0] / fs)
    VelocityVerlet(ref, timestep=0.5 * fs).run(1)
    np.testing.assert_allclose(frames["positions"][1], ref.positions, atol=1e-10)
    np.testing.assert_allclose(frames["velocities"][1], ref.get_velocities() * fs, atol=1e-10)
    assert result.force_calls == 2  # the start and one step: the zero jump reused F(x)


def test_teacher_provider_keeps_the_teachers_checks():
    """The provider calls a teacher without ASE's bookkeeping, but not without its element
    check: an element the teacher lacks is an error before any compute."""
    from mlff_distiller.teachers.base import UnsupportedElementError

    bad_element = Atoms("HOg", positions=[[0.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
    provider = make_force_provider("xtb", [bad_element])
    with pytest.raises(UnsupportedElementError, match="Og"):
        provider.energy_and_forces(initial_state([bad_element], 300.0, 0).to_batch())


def test_summary_reports_per_element_temperatures_and_no_warning_for_a_clean_run(ethanol):
    """The run summary's per-element temperatures equal a hand computation from the saved
    on-step velocities (ASE's unit constants, centre of mass removed, 3 (1 - m_i / M) degrees of
    freedom per atom); a run without rejections carries no warning."""
    from ase.units import fs, kB

    provider = make_force_provider("openmm-gaff2", [ethanol, ethanol])
    config = HybridConfig(k=2, ensemble="nvt", seed=3)
    result = run_hybrid(Scripted(), provider, [ethanol, ethanol], config, 12, progress=False,
                        keep_frames=True)  # fmt: skip
    summary = result.summary()
    assert summary["warnings"] == []
    v = result.frame_arrays()["velocities"][1:]  # (F, 18, 3), the cycle ends
    m = np.tile(ethanol.get_masses(), 2)
    z = np.tile(ethanol.numbers, 2)
    expected = {}
    for symbol, number in (("H", 1), ("C", 6), ("O", 8)):
        temps = []
        for frame in v:
            twice_ke, dof = 0.0, 0.0
            for s in range(2):
                sl = slice(9 * s, 9 * s + 9)
                vs, ms = frame[sl], m[sl]
                internal = vs - (ms[:, None] * vs).sum(0) / ms.sum()
                sel = z[sl] == number
                twice_ke += (ms[sel] * (internal[sel] ** 2).sum(1)).sum() / fs**2
                dof += (3 * (1 - ms[sel] / ms.sum())).sum()
            temps.append(twice_ke / (dof * kB))
        expected[symbol] = np.mean(temps)
    assert summary["element_temperatures_k"].keys() == expected.keys()
    for symbol, t in expected.items():
        assert summary["element_temperatures_k"][symbol] == pytest.approx(t, rel=1e-6)


def test_kinetic_energy_flows_add_up_and_point_at_the_heated_element(ethanol):
    """``record_flows``: the stages' per-element changes of an accepted run add up, cycle by
    cycle, to each element's internal kinetic energy at the end minus at the start (a ledger
    that cannot balance by accident), and a jump that speeds up only the H atoms shows as a
    jump flow on H (C and O: only the net momentum removed), which the NVE restoring then
    takes from every element."""
    from ase.units import fs as ase_fs

    provider = make_force_provider("openmm-gaff2", [ethanol, ethanol])
    z = torch.as_tensor(np.tile(ethanol.numbers, 2))
    n, m = len(ethanol), ethanol.get_masses()

    def internal_ke(v):  # by hand, ASE's constants: (18,) eV per atom, centre of mass removed
        out = []
        for s in range(2):
            vs = v[n * s : n * (s + 1)]
            internal = vs - (m[:, None] * vs).sum(0) / m.sum()
            out.append(0.5 * m * (internal**2).sum(1) / ase_fs**2)
        return torch.as_tensor(np.concatenate(out))

    def speed_up_hydrogen(inp):
        dv = torch.where((inp.atomic_numbers == 1)[:, None], 0.02 * inp.velocities, 0.0)
        return torch.zeros_like(inp.positions), dv

    for ensemble, fn in (("nvt", None), ("nve", speed_up_hydrogen)):
        config = HybridConfig(k=2, ensemble=ensemble, seed=5, record_flows=True,
                              energy_tol_per_atom=None)  # fmt: skip
        result = run_hybrid(Scripted(fn), provider, [ethanol, ethanol], config, 15,
                            progress=False, keep_frames=True)  # fmt: skip
        assert result.fallbacks == 0 and sum(result.rejections.values()) == 0
        frames = result.frame_arrays()
        ke = [internal_ke(frames["velocities"][0]), internal_ke(frames["velocities"][-1])]
        table = result.summary()["kinetic_energy_flow_mev_per_atom_cycle"]
        for symbol, number in (("H", 1), ("C", 6), ("O", 8)):
            count = int((z == number).sum()) * 15
            ledger = sum(stage[symbol] for stage in table.values()) * count / 1e3
            expected = float((ke[1] - ke[0])[z == number].sum())
            assert ledger == pytest.approx(expected, abs=1e-9)
        if ensemble == "nve":
            assert table["jump"]["H"] > 0.1  # meV per H per cycle
            # C and O only feel the removal of the speed-up's net momentum
            assert all(table["jump"]["H"] > 10 * abs(table["jump"][s]) for s in ("C", "O"))
            assert all(table["restoring"][s] < 0 for s in ("H", "C", "O"))
            assert table["thermostat"] == {"H": 0.0, "C": 0.0, "O": 0.0}


def test_compiled_jump_network_follows_the_eager_trajectory(ethanol, gaff, monkeypatch):
    """``HybridConfig.compile``: the shipped network through ``torch.compile`` (from the second
    jump on) gives the eager run's trajectory to float32 rounding; the default (None) compiles
    only from COMPILE_MIN_CYCLES on and never with MLFFD_COMPILE=0 or for the zero jump."""
    from mlff_distiller.kstep.pretrained import pretrained_path
    from mlff_distiller.md import hybrid
    from mlff_distiller.md.hybrid import COMPILE_MIN_CYCLES, NoJump
    from mlff_distiller.models.fast_path import find_cxx_compiler
    from mlff_distiller.models.io import load_model

    if find_cxx_compiler() is None:
        pytest.skip("no C++ compiler for inductor")
    net = load_model(pretrained_path("openmm-gaff2"))
    runs = {}
    for compiled in (False, True):
        cfg = HybridConfig(compile=compiled, seed=4)
        provider = make_force_provider("openmm-gaff2", [ethanol] * 2)
        runs[compiled] = run_hybrid(net, provider, [ethanol.copy()] * 2, cfg, 12, progress=False)
    assert runs[True].cycles == runs[False].cycles == 12
    moved = (runs[False].state.positions - torch.as_tensor(np.tile(ethanol.positions, (2, 1))))
    assert float(moved.abs().max()) > 0.05  # the runs went somewhere
    diff = (runs[True].state.positions - runs[False].state.positions).abs().max()
    assert float(diff) < 1e-4
    wanted = hybrid._compile_wanted
    monkeypatch.delenv("MLFFD_COMPILE", raising=False)  # the suite sets it to 0
    assert not wanted(None, COMPILE_MIN_CYCLES - 1, net) and wanted(None, COMPILE_MIN_CYCLES, net)
    assert not wanted(False, 10**6, net) and wanted(True, 1, net) and not wanted(True, 1, NoJump())
    monkeypatch.setenv("MLFFD_COMPILE", "0")
    assert not wanted(None, 10**6, net) and wanted(True, 1, net)
