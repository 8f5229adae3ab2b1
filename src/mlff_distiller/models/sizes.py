"""Named student sizes: the speed/accuracy menu of ``mlffd train --size``.

Each size is a set of :class:`~mlff_distiller.models.painn.PaiNNConfig` fields. The knobs, in
order of effect on speed: width (``hidden``), interaction blocks, one filter network shared by
all blocks (``shared_filters``), cutoff (fewer pairs) and radial functions. Measured ms per call
and rMD17 ethanol accuracy at a fixed training budget are in the README (``benchmarks/sizes.py``
and ``benchmarks/rmd17.py --size``).
"""

from __future__ import annotations

STUDENT_SIZES: dict[str, dict] = {
    # ~10x faster than GFN2-xTB on 21 atoms, ~50x at 100 atoms (compiled, one CPU thread)
    "fast": {"hidden": 32, "n_interactions": 2, "n_rbf": 16, "cutoff": 4.5, "shared_filters": True},
    # the rMD17 recipe that reaches PaiNN's published ethanol accuracy
    "balanced": {
        "hidden": 64,
        "n_interactions": 3,
        "n_rbf": 20,
        "cutoff": 5.0,
        "shared_filters": False,
    },
    # the published PaiNN width
    "accurate": {
        "hidden": 128,
        "n_interactions": 3,
        "n_rbf": 20,
        "cutoff": 5.0,
        "shared_filters": False,
    },
}
RECOMMENDED_SIZE = "balanced"


def size_fields(name: str) -> dict:
    """The PaiNN fields of size ``name`` (a copy); unknown names raise ``ValueError``."""
    if name not in STUDENT_SIZES:
        raise ValueError(f"unknown student size {name!r}; choose one of {sorted(STUDENT_SIZES)}")
    return dict(STUDENT_SIZES[name])
