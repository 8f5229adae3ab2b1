"""Jump networks that ship with the package: one per corrector family, trained by
``benchmarks/kstep.py`` on the molecule sets of :mod:`mlff_distiller.kstep.molecules`.

- ``gaff2``: EGNN with a force head trained on GAFF2 (OpenMM) reference MD of 138 H/C/N/O
  molecules at 300 K; used for the ``openmm-gaff2`` and ``openmm-amber14`` correctors.
- ``xtb``: the same network fine-tuned on GFN2-xTB MD of 24 molecules; used for ``xtb`` and
  ``student`` (students distilled from xTB-like teachers) and any other teacher.

k is an input of the network (trained on k = 4, 8 and 12 at dt = 0.5 fs): one file serves every
k of its training range. Each folder holds ``model.safetensors`` + ``config.json``
(:mod:`mlff_distiller.models.io`) and ``training.json`` (what it was trained on).
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent / "pretrained_networks"
FAMILY = {"openmm-gaff2": "gaff2", "openmm-amber14": "gaff2", "xtb": "xtb", "student": "xtb"}
TRAINED_K = (4, 8, 12)
TRAINED_DT_FS = 0.5


def pretrained_path(corrector: str) -> Path:
    """The shipped network for ``corrector`` (a folder loadable by ``load_model``); correctors
    without a family of their own use the xTB network."""
    return shipped_network(FAMILY.get(corrector, "xtb"))


def shipped_network(name: str) -> Path:
    """The shipped network named by its family (``gaff2``, ``xtb``) or by a corrector of
    :data:`FAMILY`; any other name is an error that lists the known ones."""
    family = FAMILY.get(name, name)
    if family not in set(FAMILY.values()):
        known = ", ".join(sorted(set(FAMILY) | set(FAMILY.values())))
        raise ValueError(f"no shipped jump network {name!r}: use one of {known}")
    path = ROOT / family
    if not (path / "model.safetensors").exists():
        raise FileNotFoundError(
            f"no pretrained jump network {family!r} in this installation ({path}); "
            "train one with `mlffd kstep train` and pass its folder"
        )
    return path


def check_range(k: int, dt_fs: float) -> str | None:
    """A warning when (k, dt) is outside what the shipped networks were trained on."""
    if k not in TRAINED_K or abs(dt_fs - TRAINED_DT_FS) > 1e-9:
        return (
            f"the pretrained jump networks were trained on k in {TRAINED_K} at dt = "
            f"{TRAINED_DT_FS} fs; k = {k}, dt = {dt_fs} fs is an extrapolation"
        )
    return None
