"""Bad input to ``mlffd distill`` is refused before anything is written, so the corrected command
can use the same ``--out`` (a written config.json would make it refuse "other settings")."""

from __future__ import annotations

import pytest

from mlff_distiller.distill.config import DistillConfig
from mlff_distiller.distill.loop import run_distill


@pytest.mark.parametrize(
    "smiles, message", [("C1CC", "invalid SMILES 'C1CC'"), ("[Og]", "does not support element")]
)
def test_bad_molecule_is_named_and_nothing_is_written(tmp_path, smiles, message):
    out = tmp_path / "run"
    with pytest.raises(Exception, match=message):
        run_distill(DistillConfig(smiles=[smiles], out=str(out)), say=lambda msg: None)
    assert not out.exists()


def test_a_run_started_before_the_biased_exploration_continues_with_it_off(tmp_path):
    """Its config.json lacks ``explore_bias_kt``: that was a run without the bias."""
    import dataclasses
    import json

    import pytest

    from mlff_distiller.distill.config import DistillConfig

    old = dataclasses.asdict(DistillConfig(smiles=["CCO"]))
    del old["explore_bias_kt"]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(old))
    DistillConfig(smiles=["CCO"], explore_bias_kt=0.0).check_same_run(path)
    with pytest.raises(ValueError, match="explore_bias_kt"):
        DistillConfig(smiles=["CCO"]).check_same_run(path)
