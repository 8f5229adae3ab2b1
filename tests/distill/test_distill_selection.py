"""Frame selection of the active-learning loop: threshold, quota, diversity, per-molecule shares."""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from mlff_distiller.distill.selection import (
    farthest_point_sampling,
    inverse_distance_descriptor,
    select_frames,
)


def test_descriptor_is_invariant_to_rotation_translation_and_permutation():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 3)) * 2.0
    moved = Rotation.random(random_state=1).apply(x) + [3.0, -1.0, 0.5]
    moved = moved[rng.permutation(7)]
    d = inverse_distance_descriptor(np.stack([x, moved]))
    assert d.shape == (2, 21)
    np.testing.assert_allclose(d[0], d[1], rtol=1e-12)
    # a hand-computed pair: two atoms 2 Å apart
    assert inverse_distance_descriptor(np.array([[[0, 0, 0], [0, 0, 2.0]]]))[0, 0] == 0.5


def test_farthest_point_sampling_picks_the_clusters_once_each():
    # three tight clusters of 10 points: 3 picks land in 3 different clusters
    rng = np.random.default_rng(2)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = np.concatenate([c + 0.01 * rng.normal(size=(10, 2)) for c in centres])
    picks = farthest_point_sampling(points, 3)
    assert sorted(p // 10 for p in picks) == [0, 1, 2]
    assert farthest_point_sampling(points, 50) == list(range(30))


def test_select_frames_threshold_quota_and_shares():
    rng = np.random.default_rng(3)
    n = 40
    molecule = np.array(["a"] * 30 + ["b"] * 10)
    positions = [rng.normal(size=(5 if m == "a" else 4, 3)) * 2 for m in molecule]
    uncertainty = np.linspace(0.0, 1.0, n)
    picked = select_frames(uncertainty, molecule, positions, threshold=0.5, quota=6)
    assert len(picked) == 6 and all(uncertainty[i] > 0.5 for i in picked)
    # candidates: a has 10 (frames 20-29), b has 10 (30-39): three each
    assert sum(i < 30 for i in picked) == 3 and sum(i >= 30 for i in picked) == 3
    assert 39 in picked and 29 in picked  # each share starts from its most uncertain frame
    assert select_frames(uncertainty, molecule, positions, threshold=2.0, quota=6) == []
    assert select_frames(uncertainty, molecule, positions, threshold=0.5, quota=0) == []
    everything = select_frames(uncertainty, molecule, positions, threshold=0.5, quota=100)
    assert everything == list(range(20, 40))
