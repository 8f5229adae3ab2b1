"""Foundation ML potentials as teachers: SevenNet-0, ANI-1x, CHGNet and Orb-v2.

All load offline: SevenNet-0 and CHGNet weights ship in their wheels, ANI-1x is assembled by
hand from the files in ``torchani/resources/ani-1x_8x`` (``torchani.models.ANI1x()`` would try
to download), and Orb-v2 reads a weights file the user provides.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from mlff_distiller.teachers.base import (
    TeacherInfo,
    WrappedCalculator,
    element_range,
    elements_of,
)

MOLECULE_BOX_A = 30.0  # edge of the cubic box a non-periodic molecule is put in for CHGNet/Orb


def boxed(atoms: Atoms, box: float = MOLECULE_BOX_A, margin: float = 10.0) -> Atoms:
    """A copy of a non-periodic molecule centred in a periodic cubic box of edge ``box`` Å,
    enlarged to ``extent + margin`` for big molecules so that periodic images stay farther
    apart than the models' cutoffs (energies and forces are translation invariant)."""
    work = atoms.copy()
    work.info = {}  # e.g. orb-models asserts on a "charge" without a "spin"
    if work.pbc.any():
        return work
    extent = float(np.ptp(work.positions, axis=0).max()) if len(work) else 0.0
    work.cell = np.eye(3) * max(box, extent + margin)
    work.pbc = True
    work.center()
    return work


class BoxedCalculator(WrappedCalculator):
    """A wrapped calculator that needs a cell: molecules are placed in a large box."""

    box: float = MOLECULE_BOX_A

    def prepare(self, atoms: Atoms) -> Atoms:
        return boxed(atoms, self.box)


def _torch_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(int(threads))


# -- SevenNet-0 ------------------------------------------------------------------------------
def make_sevennet(model: str = "7net-0", device: str = "cpu", threads: int | None = None):
    """``sevennet``: SevenNet-0 (``model`` may be another sevenn name or a checkpoint path)."""
    _torch_threads(threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from sevenn.calculator import SevenNetCalculator

        inner = SevenNetCalculator(model, device=device)
    elements = frozenset(int(z) for z in inner.type_map)
    settings = {"model": str(model), "cutoff_a": float(inner.cutoff), "engine": "sevenn"}
    info = TeacherInfo(name="sevennet", elements=elements, settings=settings, kind="ml")
    return WrappedCalculator(info, inner)


# -- ANI-1x ------------------------------------------------------------------------------
ANI1X_ELEMENTS = elements_of("H", "C", "N", "O")


def load_ani1x_model(ensemble_size: int = 8):
    """The ANI-1x ensemble (``torch.nn.Module`` (species, coordinates) -> energies in Hartree)
    and its species list, built from the resources shipped in the torchani 2.2.4 wheel."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torchani
        from torchani import neurochem

    root = Path(torchani.__file__).parent / "resources" / "ani-1x_8x"
    if not root.is_dir():
        raise FileNotFoundError(
            f"ANI-1x resources not found under {root}: pip install torchani==2.2.4"
        )
    consts = neurochem.Constants(str(root / "rHCNO-5.2R_16-3.5A_a4-8.params"))
    aev = torchani.AEVComputer(**consts)
    shifter = neurochem.load_sae(str(root / "sae_linfit.dat"))
    ensemble = neurochem.load_model_ensemble(consts.species, str(root / "train"), ensemble_size)
    model = torchani.nn.Sequential(aev, ensemble, shifter).double().eval()
    return model, list(consts.species)


def make_ani1x(ensemble_size: int = 8, threads: int | None = None):
    """``ani1x``: the 8-model ANI-1x ensemble (H, C, N, O), double precision."""
    _torch_threads(threads)
    if not 1 <= ensemble_size <= 8:
        raise ValueError(f"ensemble_size must be 1..8, got {ensemble_size}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torchani.ase

        model, species = load_ani1x_model(ensemble_size)
        inner = torchani.ase.Calculator(species, model)
    settings = {"model": "ANI-1x", "ensemble_size": ensemble_size, "engine": "torchani 2.2.4"}
    info = TeacherInfo(name="ani1x", elements=ANI1X_ELEMENTS, settings=settings, kind="ml")
    return WrappedCalculator(info, inner)


# -- CHGNet ------------------------------------------------------------------------------
def make_chgnet(box: float = MOLECULE_BOX_A, threads: int | None = None):
    """``chgnet``: CHGNet 0.3.0 from the chgnet wheel; molecules go in a ``box`` Å cube."""
    _torch_threads(threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from chgnet.model.dynamics import CHGNetCalculator
        from chgnet.model.model import CHGNet

        model = CHGNet.load(verbose=False)
        inner = CHGNetCalculator(model=model, use_device="cpu", stress_weight=0.0)
    settings = {"model": f"CHGNet {model.version}", "box_a": box, "engine": "chgnet"}
    info = TeacherInfo(name="chgnet", elements=element_range(1, 94), settings=settings)
    calc = BoxedCalculator(info, inner)
    calc.box = float(box)
    return calc


# -- Orb-v2 ------------------------------------------------------------------------------
ORB_WEIGHTS_ENV = "MLFFD_ORB_V2_WEIGHTS"
ORB_HOW_TO = (
    "Orb-v2 weights cannot be downloaded here. On a machine with internet, run\n"
    '  python -c "from orb_models.forcefield import pretrained; '
    "import torch; m = pretrained.orb_v2(device='cpu'); "
    "torch.save(m.state_dict(), 'orb-v2.pt')\"\n"
    "copy orb-v2.pt here and pass it: get_teacher('orb-v2', weights='orb-v2.pt'), "
    "`--teacher-option weights=orb-v2.pt`, or set "
    f"{ORB_WEIGHTS_ENV}=/path/to/orb-v2.pt. (The public checkpoint "
    "orb-v2-20241011.ckpt from the orb-models release works too.)"
)


def load_orb_v2(weights: str | Path | None, device: str = "cpu", untrained: bool = False):
    """The Orb-v2 network: ``orb_v2_architecture`` with a local state dict loaded (a plain
    state dict or a Lightning-style checkpoint with ``state_dict``; loaded with
    ``weights_only=True``). ``untrained=True`` skips the weights (tests only)."""
    import torch

    try:
        from orb_models.forcefield import pretrained
    except ImportError as err:
        raise ValueError(
            "teacher 'orb-v2' needs orb-models: pip install orb-models (see ENVIRONMENT notes: "
            "it wants rich<14 and filelock<4)"
        ) from err
    from orb_models.forcefield.atomic_system import SystemConfig

    # the published Orb-v2: 6 Å radius, 20 neighbours (as orb_models.pretrained.orb_v2)
    model = pretrained.orb_v2_architecture(
        device=device, system_config=SystemConfig(radius=6.0, max_num_neighbors=20)
    )
    if untrained:
        return model
    weights = weights or os.environ.get(ORB_WEIGHTS_ENV)
    if not weights:
        raise ValueError("no Orb-v2 weights file given. " + ORB_HOW_TO)
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"Orb-v2 weights file '{path}' does not exist. " + ORB_HOW_TO)
    state = torch.load(path, map_location=device, weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"'{path}' holds a {type(state).__name__}, not an Orb-v2 state dict")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as first:
        try:  # a checkpoint whose keys carry one extra "model." prefix
            model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
        except RuntimeError:
            raise ValueError(f"'{path}' is not an Orb-v2 state dict: {first}") from first
    return model.eval()


def make_orb_v2(
    weights: str | None = None,
    device: str = "cpu",
    untrained: bool = False,
    box: float = MOLECULE_BOX_A,
    threads: int | None = None,
):
    """``orb-v2``: Orb-v2 from a local ``weights`` file (see :data:`ORB_HOW_TO`). Orb-v2 is a
    direct-force model: its forces are predicted, not the gradient of its energy."""
    _torch_threads(threads)
    model = load_orb_v2(weights, device=device, untrained=untrained)
    from orb_models.forcefield.calculator import ORBCalculator

    inner = ORBCalculator(model, device=device)
    settings: dict[str, Any] = {
        "model": "orb-v2",
        "weights": str(weights) if weights else None,
        "untrained": untrained,
        "box_a": box,
        "engine": "orb-models",
    }
    info = TeacherInfo(name="orb-v2", elements=element_range(1, 118), settings=settings)
    calc = BoxedCalculator(info, inner)
    calc.box = float(box)
    return calc
