"""Each round's labelling quota spends the budget by the last round (hand-computed values)."""

from __future__ import annotations

from mlff_distiller.distill.config import DistillConfig
from mlff_distiller.distill.loop import round_quota


def _config(**kw) -> DistillConfig:
    return DistillConfig(smiles=["CCO"], **kw)


def test_the_budget_left_is_spread_over_the_rounds_left():
    cfg = _config(budget=500, frames_per_iteration=40, max_iterations=8)
    # 452 calls left after a 48-frame seed set, 8 rounds to go: ceil(452 / 8) = 57 > 40
    assert round_quota(cfg, 1, 452, 0) == 57
    # the last round takes all that is left
    assert round_quota(cfg, 1, 90, 7) == 90


def test_the_per_molecule_pace_is_a_floor_and_the_budget_a_ceiling():
    cfg = _config(budget=500, frames_per_iteration=40, max_iterations=8)
    assert round_quota(cfg, 3, 200, 0) == 120  # 3 molecules x 40 > ceil(200 / 8)
    assert round_quota(cfg, 3, 70, 0) == 70  # never more than the budget left
    assert round_quota(cfg, 1, 0, 2) == 0
    # a run continued with fewer rounds than it has done: the last round's rule
    assert round_quota(cfg, 1, 100, 12) == 100
