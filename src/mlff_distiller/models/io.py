"""Save and load models as ``model.safetensors`` + ``config.json`` (no pickle).

``config.json``::

    {"format": "mlff_distiller.model", "format_version": 1, "architecture": "painn",
     "config": {...dataclass fields...}, "metadata": {...}}

``metadata`` repeats human-readable facts (elements, scale, shift, reference energies of the
known elements); the tensors in ``model.safetensors`` are authoritative.

Architectures are looked up in a registry: ``register_architecture(name, config_cls, model_cls)``
where ``config_cls`` is a dataclass and ``model_cls(config)`` builds the module. An unregistered
name is looked up by importing ``mlff_distiller.models.<name>`` (which should register itself).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from pathlib import Path

import torch
from torch import nn

FORMAT = "mlff_distiller.model"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"

_REGISTRY: dict[str, tuple[type, type[nn.Module]]] = {}


class ModelFileError(ValueError):
    """A model file is missing, of another architecture or format version, or inconsistent."""


def register_architecture(name: str, config_cls: type, model_cls: type[nn.Module]) -> None:
    """Make ``name`` loadable. ``model_cls.architecture`` should equal ``name``."""
    if not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"config class for {name!r} must be a dataclass, got {config_cls}")
    _REGISTRY[name] = (config_cls, model_cls)


def registered_architectures() -> list[str]:
    _ensure_builtin()
    return sorted(_REGISTRY)


def _ensure_builtin() -> None:
    if "painn" not in _REGISTRY:
        from mlff_distiller.models.painn import PaiNN, PaiNNConfig

        register_architecture("painn", PaiNNConfig, PaiNN)


def _lookup(name: str) -> tuple[type, type[nn.Module]]:
    _ensure_builtin()
    if name not in _REGISTRY:
        try:
            importlib.import_module(f"mlff_distiller.models.{name}")
        except ImportError:
            pass
    if name not in _REGISTRY:
        raise ModelFileError(
            f"unknown model architecture {name!r}; known: {sorted(_REGISTRY)} "
            "(register it with mlff_distiller.models.io.register_architecture)"
        )
    return _REGISTRY[name]


def _resolve(path: str | Path) -> tuple[Path, Path]:
    """(weights file, config file) for a directory or a path to either file."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return path, path.with_name(CONFIG_FILE)
    if path.suffix == ".json":
        return path.with_name(WEIGHTS_FILE), path
    return path / WEIGHTS_FILE, path / CONFIG_FILE


def save_model(model: nn.Module, path: str | Path) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into directory ``path`` (created).

    ``path`` may also name the ``.safetensors`` file; ``config.json`` goes beside it.
    Returns the weights file path.
    """
    from safetensors.torch import save_file

    name = getattr(model, "architecture", None)
    if name is None:
        raise ModelFileError(f"{type(model).__name__} has no 'architecture' name; cannot save it")
    config = getattr(model, "config", None)
    if config is None or not dataclasses.is_dataclass(config):
        raise ModelFileError(f"{type(model).__name__}.config must be a dataclass to be saved")
    weights, config_path = _resolve(path)
    weights.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(weights), metadata={"architecture": name})
    document = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": name,
        "config": dataclasses.asdict(config),
        "metadata": _metadata(model),
    }
    config_path.write_text(json.dumps(document, indent=2) + "\n")
    return weights


def _metadata(model: nn.Module) -> dict:
    out: dict = {}
    if getattr(model, "elements_restricted", False):
        out["elements"] = list(model.elements)
    for name in ("scale", "shift"):
        value = getattr(model, name, None)
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            out[name] = float(value)
    ref = getattr(model, "reference_energies", None)
    if isinstance(ref, torch.Tensor) and "elements" in out:
        out["reference_energies"] = {str(z): float(ref[z]) for z in out["elements"]}
    return out


def read_config(path: str | Path) -> dict:
    """The validated ``config.json`` document of a saved model."""
    _, config_path = _resolve(path)
    if not config_path.is_file():
        raise ModelFileError(f"no {CONFIG_FILE} at {config_path}; is {path} a saved model?")
    try:
        document = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise ModelFileError(f"{config_path} is not valid JSON: {err}") from err
    if not isinstance(document, dict):
        raise ModelFileError(f"{config_path} must hold a JSON object")
    missing = [
        k for k in ("format", "format_version", "architecture", "config") if k not in document
    ]
    if missing:
        raise ModelFileError(
            f"{config_path} lacks keys {missing}; it is not an mlff_distiller model"
        )
    if document["format"] != FORMAT:
        raise ModelFileError(f"{config_path}: format {document['format']!r} is not {FORMAT!r}")
    if document["format_version"] != FORMAT_VERSION:
        raise ModelFileError(
            f"{config_path}: format version {document['format_version']} is not supported "
            f"(this code reads version {FORMAT_VERSION})"
        )
    return document


def load_model(
    path: str | Path, device: str | torch.device | None = None, architecture: str | None = None
) -> nn.Module:
    """Rebuild a model saved by :func:`save_model`, in eval mode, on ``device``.

    ``architecture``: if given, the file must be of that architecture.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    document = read_config(path)
    name = document["architecture"]
    if architecture is not None and name != architecture:
        raise ModelFileError(f"{path} holds a {name!r} model, expected {architecture!r}")
    config_cls, model_cls = _lookup(name)
    try:
        config = config_cls(**document["config"])
    except (TypeError, ValueError) as err:
        raise ModelFileError(f"{path}: config does not fit {config_cls.__name__}: {err}") from err
    model = model_cls(config)
    weights, _ = _resolve(path)
    if not weights.is_file():
        raise ModelFileError(f"no {WEIGHTS_FILE} at {weights}")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as err:
        raise ModelFileError(f"{weights} is not a readable safetensors file: {err}") from err
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ModelFileError(
            f"{weights} does not match architecture {name!r}: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    for key, tensor in state.items():
        if tensor.shape != expected[key].shape:
            raise ModelFileError(
                f"{weights}: tensor {key!r} has shape {tuple(tensor.shape)}, the config implies "
                f"{tuple(expected[key].shape)}"
            )
    dtype = state[next(k for k in state if state[k].is_floating_point())].dtype
    model = model.to(dtype)
    model.load_state_dict(state)
    return model.to(device).eval()
