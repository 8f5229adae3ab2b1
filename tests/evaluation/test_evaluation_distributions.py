"""Ensemble comparison as distributions (evaluation/distributions.py), on seeded synthetic data.

Independent references: hand-built geometries, ASE's own angle/dihedral code, scipy's 1-D
Wasserstein distance, the analytic Maxwell-Boltzmann expectation of the centre-of-mass-free
element temperature, and closed forms for Gaussians (W1 of a 20% wider Gaussian = 0.2 spreads).
"""

import json

import numpy as np
import pytest
from ase import Atoms
from ase.data import atomic_masses
from matplotlib.image import imread
from scipy.stats import wasserstein_distance

from mlff_distiller import units
from mlff_distiller.evaluation import distributions as dist
from mlff_distiller.kstep.topology import Topology, build_topology


def dihedral_frame(phi_deg):
    """4 atoms around the z axis: i=(1,0,0), j=0, k=(0,0,1.5), l rotated by phi about +z."""
    phi = np.radians(phi_deg)
    return np.array([[1.0, 0, 0], [0, 0, 0], [0, 0, 1.5], [np.cos(phi), np.sin(phi), 1.5]])


# ---------------------------------------------------------------- internal coordinates


def test_angles_and_bonds_by_hand():
    pos = np.array([[3.0, 0, 0], [0, 0, 0], [0, 4.0, 0], [-1.0, 0, 0]])
    assert dist.bond_angles(pos, [[0, 1, 2]]) == pytest.approx([90.0])
    assert dist.bond_angles(pos, [[0, 1, 3]]) == pytest.approx([180.0])
    assert dist.bond_angles(pos, [[1, 0, 2]]) == pytest.approx([np.degrees(np.arctan2(4, 3))])
    top = build_topology([6, 6, 6, 6], pos, bonds=np.array([[0, 1], [0, 2]]))
    coords = dist.internal_coordinates(pos[None, None], top)
    assert coords["bond"][0, 0] == pytest.approx([3.0, 5.0])
    assert coords["angle"].shape == (1, 1, 1)  # the one angle 1-0-2


def test_dihedral_cis_trans_sign_and_periodicity():
    d = [[0, 1, 2, 3]]
    assert dist.dihedral_angles(dihedral_frame(0.0), d) == pytest.approx([0.0], abs=1e-9)
    assert dist.dihedral_angles(dihedral_frame(180.0), d) == pytest.approx([180.0])
    # chirality: +60 and its mirror image (y -> -y) have opposite signs
    right = dihedral_frame(60.0)
    assert dist.dihedral_angles(right, d) == pytest.approx([60.0])
    assert dist.dihedral_angles(right * [1, -1, 1], d) == pytest.approx([-60.0])
    # periodic: 190 and 300 read -170 and -60; all values in (-180, 180]
    frames = np.stack([dihedral_frame(a) for a in (190.0, 300.0, -180.0, 540.0)])
    assert dist.dihedral_angles(frames, d)[:, 0] == pytest.approx([-170.0, -60.0, 180.0, 180.0])


def test_internal_coordinates_match_ase_on_random_geometries():
    rng = np.random.default_rng(0)
    pos = rng.normal(size=(20, 4, 3)) * 1.5
    phi = dist.dihedral_angles(pos, [[0, 1, 2, 3]])[:, 0]
    theta = dist.bond_angles(pos, [[0, 1, 2]])[:, 0]
    for f in range(20):
        atoms = Atoms("C4", positions=pos[f])
        assert np.mod(phi[f], 360.0) == pytest.approx(atoms.get_dihedral(0, 1, 2, 3), abs=1e-8)
        assert theta[f] == pytest.approx(atoms.get_angle(0, 1, 2), abs=1e-8)
    assert phi.shape == (20,) and np.all((phi > -180) & (phi <= 180))


# ---------------------------------------------------------------- element temperatures


def mb_molecule(temps, n_c=20, n_h=40):
    numbers = np.array([6] * n_c + [1] * n_h)
    masses = atomic_masses[numbers]
    t_atom = np.where(numbers == 6, temps[6], temps[1])
    sigma = np.sqrt(units.BOLTZMANN * t_atom * units.ACCEL_PER_FORCE_OVER_MASS / masses)
    return numbers, masses, t_atom, sigma


def expected_temperature(masses, t_atom, mask):
    """E[T] of the atoms in ``mask`` from independent Maxwell-Boltzmann velocities at t_atom, with
    the centre-of-mass velocity removed: E[m_i |v_i - v_com|^2] / 3k =
    T_i (1 - 2 m_i/M) + m_i sum_j m_j T_j / M^2, over dof 3 (1 - m_i/M) per atom."""
    total = masses.sum()
    per_atom = t_atom * (1 - 2 * masses / total) + masses * (masses @ t_atom) / total**2
    return per_atom[mask].sum() / (1 - masses[mask] / total).sum()


def test_element_temperatures_recover_maxwell_boltzmann():
    numbers, masses, t_atom, sigma = mb_molecule({1: 300.0, 6: 600.0})
    rng = np.random.default_rng(1)
    vel = rng.normal(size=(10, 100, len(masses), 3)) * sigma[:, None]
    temps = dist.element_temperatures(vel, masses, numbers)
    whole = dist.molecule_temperature(vel, masses)
    assert set(temps) == {"H", "C"}
    for name, est, mask, nominal in (
        ("H", temps["H"], numbers == 1, 300.0),
        ("C", temps["C"], numbers == 6, 600.0),
        ("molecule", whole, np.ones(len(masses), bool), None),
    ):
        expected = expected_temperature(masses, t_atom, mask)
        if nominal is not None:  # the centre-of-mass correction is below 1% for 60 atoms
            assert abs(expected - nominal) / nominal < 0.01
        assert est.per_replica.shape == (10,)
        assert 0 < est.stderr < 0.02 * est.mean
        assert abs(est.mean - expected) < 3.5 * est.stderr, (name, est.mean, expected, est.stderr)
    assert abs(temps["C"].mean - temps["H"].mean - 300.0) < 15.0


def test_temperature_stderr_matches_spread_over_experiments():
    numbers, masses, _, sigma = mb_molecule({1: 300.0, 6: 600.0})
    rng = np.random.default_rng(2)
    means, stderrs = {"H": [], "C": []}, {"H": [], "C": []}
    for _ in range(120):  # 120 experiments: the observed std is known to ~7%
        vel = rng.normal(size=(6, 20, len(masses), 3)) * sigma[:, None]
        for name, est in dist.element_temperatures(vel, masses, numbers).items():
            means[name].append(est.mean)
            stderrs[name].append(est.stderr)
    for name in ("H", "C"):
        observed = np.std(means[name], ddof=1)
        reported = np.sqrt(np.mean(np.square(stderrs[name])))
        assert 0.8 < reported / observed < 1.25, (name, reported, observed)


# ---------------------------------------------------------------- distribution distances


def test_wasserstein_against_scipy_and_on_the_circle():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=300), rng.normal(1.0, 2.0, size=500)
    assert dist.wasserstein_1(a, b) == pytest.approx(wasserstein_distance(a, b), rel=1e-10)
    assert dist.wasserstein_1([179.0], [-179.0], period=360.0) == pytest.approx(2.0)
    assert dist.wasserstein_1([179.0], [-179.0]) == pytest.approx(358.0)
    assert dist.wasserstein_1([10.0], [350.0], period=360.0) == pytest.approx(20.0)
    # two bumps centred on 179 and -179 degrees are 2 degrees apart, not 358
    p = dist.wrap_degrees(rng.normal(179.0, 3.0, 20000))
    q = dist.wrap_degrees(rng.normal(-179.0, 3.0, 20000))
    assert dist.wasserstein_1(p, q, period=360.0) == pytest.approx(2.0, abs=0.2)
    assert dist.wasserstein_1(p, q) > 50.0  # what a non-periodic metric would make of it
    # the spread of a Gaussian is sigma sqrt(2/pi), also for one wrapped around +-180
    assert dist.spread(rng.normal(0, 2.0, 50000)) == pytest.approx(2 * np.sqrt(2 / np.pi), rel=0.02)
    wrapped = dist.wrap_degrees(rng.normal(180.0, 10.0, 50000))
    assert dist.spread(wrapped, 360.0) == pytest.approx(10 * np.sqrt(2 / np.pi), rel=0.03)


def test_normalised_distance_reads_a_width_change():
    rng = np.random.default_rng(4)
    ref = rng.normal(1.5, 0.05, size=(20000, 1))
    wider = rng.normal(1.5, 0.06, size=(20000, 1))
    shifted = rng.normal(1.55, 0.05, size=(20000, 1))
    assert dist.coordinate_distances(wider, ref, "bond") == pytest.approx([0.2], abs=0.03)
    shift = 0.05 / (0.05 * np.sqrt(2 / np.pi))
    assert dist.coordinate_distances(shifted, ref, "bond") == pytest.approx([shift], rel=0.05)


CHAIN_NUMBERS = np.array([1, 6, 6, 8, 6, 6, 6, 1])
CHAIN_MASSES = atomic_masses[CHAIN_NUMBERS]
CHAIN = np.array([[1.25 * i, 0.84 * (i % 2), 0.0] for i in range(8)])  # planar zigzag, trans
CHAIN_TOP = build_topology(CHAIN_NUMBERS, CHAIN, bonds=np.array([[i, i + 1] for i in range(7)]))


def chain_ensemble(n_replicas, n_frames, jitter, seed):
    rng = np.random.default_rng(seed)
    return CHAIN + jitter * rng.normal(size=(n_replicas, n_frames, 8, 3))


def test_same_ensemble_is_at_the_noise_floor_and_a_hotter_one_is_not():
    ref = chain_ensemble(8, 300, 0.05, seed=10)
    same = chain_ensemble(8, 300, 0.05, seed=11)
    hot = chain_ensemble(8, 300, 0.06, seed=12)  # 20% wider, same mean geometry
    phi = dist.dihedral_angles(ref, CHAIN_TOP.dihedrals)
    assert (phi > 170).any() and (phi < -170).any()  # trans dihedrals straddle +-180
    r_same = dist.compare_ensembles(
        (same, None), (ref, None), CHAIN_MASSES, CHAIN_NUMBERS, CHAIN_TOP
    )
    r_hot = dist.compare_ensembles((hot, None), (ref, None), CHAIN_MASSES, CHAIN_NUMBERS, CHAIN_TOP)
    assert r_same.replicas_per_set == 4 and r_same.n_frames == 300
    for kind in ("bond", "angle", "dihedral"):
        s, h = r_same.coordinates[kind], r_hot.coordinates[kind]
        assert 1 / 1.5 < s.ratio < 1.5, (kind, s)
        assert h.ratio > 2.0, (kind, h)
        assert h.test_vs_ref == pytest.approx(0.2, abs=0.05)  # the 20% width change, in spreads
        assert h.test_vs_ref - h.test_vs_ref_err > s.test_vs_ref + s.test_vs_ref_err
        n_coordinates = len(getattr(CHAIN_TOP, kind + "s"))
        assert r_hot.per_coordinate[kind]["test_vs_ref"].shape == (n_coordinates,)
    assert set(r_same.rdf) == {"O-H", "O-C", "C-H", "C-C", "H-H"}
    assert r_hot.rdf_max_test_vs_ref > 1.3 * r_same.rdf_max_test_vs_ref
    assert r_same.temperatures == {}


def test_sample_sizes_are_matched_before_comparing():
    # 16 long test replicas vs 4 short reference replicas of one distribution: compared unmatched,
    # the larger test sample would sit closer to the reference than its halves to each other
    ref = chain_ensemble(4, 300, 0.05, seed=20)
    big = chain_ensemble(16, 600, 0.05, seed=21)
    res = dist.compare_ensembles((big, None), (ref, None), CHAIN_MASSES, CHAIN_NUMBERS, CHAIN_TOP)
    assert res.replicas_per_set == 2 and res.n_frames == 300
    for kind in ("bond", "angle", "dihedral"):
        assert 1 / 1.5 < res.coordinates[kind].ratio < 1.5, (kind, res.coordinates[kind])


def test_dihedral_across_the_boundary_is_compared_periodically():
    rng = np.random.default_rng(5)

    def ensemble(centre):
        phi = dist.wrap_degrees(rng.normal(centre, 20.0, size=(4, 400)))
        return np.stack([[dihedral_frame(p) for p in rep] for rep in phi])

    numbers, masses = np.array([6, 6, 6, 6]), np.full(4, 12.0)
    top = build_topology(numbers, dihedral_frame(179.0), bonds=np.array([[0, 1], [1, 2], [2, 3]]))
    res = dist.compare_ensembles(
        (ensemble(-179.0), None), (ensemble(179.0), None), masses, numbers, top
    )
    assert res.coordinates["dihedral"].test_vs_ref < 0.3  # 2 degrees / 16 degrees spread + noise
    assert res.coordinates["bond"].test_vs_ref == pytest.approx(0.0, abs=1e-6)  # rigid bonds


# ---------------------------------------------------------------- element-pair RDF


def test_pair_histograms_put_known_distances_in_the_right_bins():
    # O, H, C: O-H 0.97 (bin 48 of 0.02 Å), O-C 1.43 (bin 71), C-H sqrt(0.97^2 + 1.43^2) = 1.728
    # (bin 86); second frame: C moved to 7 Å from O, beyond r_max = 6: overflow for O-C and C-H
    frames = np.array(
        [
            [[0, 0, 0], [0.97, 0, 0], [0, 1.43, 0]],
            [[0, 0, 0], [0.97, 0, 0], [0, 7.0, 0]],
        ]
    )
    edges, hist = dist.pair_distance_histograms(frames, [8, 1, 6], r_max=6.0, bin_width=0.02)
    assert len(edges) == 301 and edges[1] == pytest.approx(0.02)
    assert list(hist) == ["O-C", "O-H", "C-H"]  # by descending atomic numbers
    assert np.nonzero(hist["O-H"])[0].tolist() == [48] and hist["O-H"][48] == 1.0
    assert np.nonzero(hist["O-C"])[0].tolist() == [71, 300]
    assert hist["O-C"][[71, 300]] == pytest.approx([0.5, 0.5])
    assert np.nonzero(hist["C-H"])[0].tolist() == [86, 300]
    # water-like: two O-H at 1.01 and 0.99 (bins 50, 49) and H-H sqrt(1.01^2 + 0.99^2) (bin 70)
    water = np.array([[0, 0, 0], [1.01, 0, 0], [0, 0.99, 0]])
    _, hist = dist.pair_distance_histograms(water, [8, 1, 1], bin_width=0.02)
    assert list(hist) == ["O-H", "H-H"]
    assert np.nonzero(hist["O-H"])[0].tolist() == [49, 50]
    assert np.nonzero(hist["H-H"])[0].tolist() == [70]


def hco_ensemble(n_replicas, scale=1.0, seed=0):
    base = np.array([[0, 0, 0], [0.97, 0, 0], [0, 1.43, 0]])
    rng = np.random.default_rng(seed)
    return scale * (base + 0.03 * rng.normal(size=(n_replicas, 50, 3, 3)))


HCO = dict(masses=atomic_masses[[8, 1, 6]], atomic_numbers=np.array([8, 1, 6]))
HCO_TOP = build_topology([8, 1, 6], np.zeros((3, 3)), bonds=np.array([[0, 1], [0, 2]]))


def test_identical_ensembles_differ_by_zero_and_disjoint_by_100_percent():
    one = hco_ensemble(1)
    ref, test = np.repeat(one, 4, axis=0), np.repeat(one, 2, axis=0)
    res = dist.compare_ensembles((test, None), (ref, None), topology=HCO_TOP, **HCO)
    assert res.rdf_max_test_vs_ref == 0.0 and res.rdf_max_ref_vs_ref == 0.0
    assert res.coordinates["bond"].test_vs_ref == 0.0 and np.isnan(res.coordinates["bond"].ratio)
    ref = hco_ensemble(4, seed=1)
    far = dist.compare_ensembles(
        (hco_ensemble(2, 2.5, 2), None), (ref, None), topology=HCO_TOP, **HCO
    )
    assert far.rdf_max_test_vs_ref == pytest.approx(100.0)
    assert all(v.test_vs_ref == pytest.approx(100.0) for v in far.rdf.values())
    assert far.rdf["O-H"].ref_vs_ref < 50.0
    assert dist.histogram_difference_percent([1, 2, 0], [2, 4, 0]) == 0.0


# ---------------------------------------------------------------- result, report, errors


def test_result_dict_table_and_plot(tmp_path):
    numbers, masses, _, sigma = mb_molecule({1: 300.0, 6: 300.0}, n_c=2, n_h=2)
    rng = np.random.default_rng(6)
    base = np.array([[0, 0, 0], [1.5, 0, 0], [-0.6, 0.9, 0], [2.1, 0.9, 0.3]])
    top = build_topology(numbers, base, bonds=np.array([[0, 1], [0, 2], [1, 3]]))

    def ens(n_rep):
        pos = base + 0.05 * rng.normal(size=(n_rep, 60, 4, 3))
        return dist.Ensemble(pos, rng.normal(size=pos.shape) * sigma[:, None])

    res = dist.compare_ensembles(ens(3), ens(4), masses, numbers, top, n_splits=4)
    assert set(res.temperatures) == {"H", "C", "molecule"}
    t = res.temperatures["C"]
    assert t.relative_difference_percent == pytest.approx(100 * (t.test_mean / t.ref_mean - 1))
    d = json.loads(json.dumps(res.to_dict()))
    assert set(d["coordinates"]) == {"bond", "angle", "dihedral"} and "curves" not in d
    table = res.table()
    assert "| bond W1 (ref spreads) |" in table and "| H |" in table and "RDF C-H" in table
    path = tmp_path / "dist.png"
    res.plot(path)
    assert imread(path).shape[0] > 100


def test_bad_input_raises_naming_the_problem():
    ref, test = hco_ensemble(4), hco_ensemble(2)
    call = dict(topology=HCO_TOP, **HCO)
    with pytest.raises(ValueError, match="reference needs >= 2"):
        dist.compare_ensembles((test, None), (ref[:1], None), **call)
    with pytest.raises(ValueError, match="test velocities shape"):
        dist.compare_ensembles((test, test[:, :10]), (ref, None), **call)
    nan = ref.copy()
    nan[2, 5, 1, 0] = np.nan
    with pytest.raises(ValueError, match=r"reference positions contain NaN.*\[2\]"):
        dist.compare_ensembles((test, None), (nan, None), **call)
    with pytest.raises(ValueError, match=r"test positions must have shape \(R, F, 3, 3\)"):
        dist.compare_ensembles((test[0], None), (ref, None), **call)
    with pytest.raises(ValueError, match="atomic_numbers"):
        dist.compare_ensembles((test, None), (ref, None), HCO["masses"], [8, 1], HCO_TOP)
    bad_top = Topology(np.array([[0, 5]]), np.zeros((0, 3)), np.zeros((0, 4)), np.ones(1))
    with pytest.raises(ValueError, match="topology.bonds"):
        dist.compare_ensembles((test, None), (ref, None), topology=bad_top, **HCO)
