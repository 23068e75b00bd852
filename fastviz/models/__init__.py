"""Model zoo: PilotNet and the bundled trained weights; a ResNet-50-sized net for cost tables.

Weights are stored as safetensors files, which hold tensors and string metadata only, so loading
them never runs code (no unpickling). The metadata records the architecture and the frame
preprocessing the weights were trained with, so a weights file describes itself.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..errors import InputError, InputFileNotFoundError, UnknownNameError
from .pilotnet import FramePreprocess, PilotNet
from .resnet import ResNet50, resnet50_random

__all__ = ["FramePreprocess", "PilotNet", "ResNet50", "available", "build", "load", "metadata", "resnet50_random", "save"]

#: Untrained models with random weights drawn from a fixed seed (cost tables): name -> builder.
_RANDOM = {"resnet50-random": resnet50_random}


def build(name: str, device: torch.device | str = "cpu", seed: int = 0) -> torch.nn.Module:
    """An untrained model by name, with random weights drawn from ``seed``, in eval mode.

    ``"resnet50-random"``: :class:`ResNet50` (ResNet-50's layout, 224 x 224 input, 1000 classes),
    for measuring what methods cost on a classifier of that size.

    Raises
    ------
    UnknownNameError
        For an unknown name (the message lists the known ones).
    """
    if name not in _RANDOM:
        raise UnknownNameError(f"unknown model {name!r} to build; known: {', '.join(sorted(_RANDOM))}")
    return _RANDOM[name](seed=seed, device=device)

#: Bundled trained models: name -> file inside ``fastviz/models/weights``.
_BUNDLED = {"pilotnet-carracing": "pilotnet-carracing.safetensors"}

_ARCHITECTURES = {"PilotNet": PilotNet}


def available() -> list[str]:
    """Names accepted by :func:`load` for the bundled models."""
    return sorted(_BUNDLED)


def _bundled_path(name: str) -> Path:
    return Path(str(resources.files(__package__).joinpath("weights", _BUNDLED[name])))


def save(model: PilotNet, path: str | os.PathLike, **metadata: str) -> Path:
    """Write ``model``'s weights and preprocessing to a safetensors file.

    The file is written under a temporary name and renamed when complete, so an interrupted
    save never leaves a truncated weights file. Extra ``metadata`` (strings) is stored too,
    e.g. validation figures.

    Returns
    -------
    pathlib.Path
        The path written.

    Raises
    ------
    InputError
        For a model of an architecture :func:`load` does not know.
    InputFileNotFoundError
        If the folder does not exist.
    OSError
        If the file cannot be written (nothing is left behind).
    """
    path = Path(path)
    arch = type(model).__name__
    if arch not in _ARCHITECTURES:
        raise InputError(f"cannot save a {arch}: known architectures are {sorted(_ARCHITECTURES)}")
    meta = {
        "architecture": arch,
        "input_size": json.dumps(list(model.transform.size)),
        "crop": json.dumps(list(model.transform.crop)),
        **{k: str(v) for k, v in metadata.items()},
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    if not path.parent.is_dir():
        raise InputFileNotFoundError(f"cannot write {path}: folder {path.parent} does not exist")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)
    except SafetensorError as exc:
        raise OSError(f"cannot write {path}: {exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def metadata(name_or_path: str | os.PathLike) -> dict[str, str]:
    """The string metadata stored in a bundled model's or a weights file's header.

    Raises
    ------
    UnknownNameError, InputFileNotFoundError
        As :func:`load`.
    InputError
        If the file is not a readable safetensors file.
    """
    path = _resolve(name_or_path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"cannot read model weights {path}: {exc}") from None


def _resolve(name_or_path: str | os.PathLike) -> Path:
    if isinstance(name_or_path, str) and name_or_path in _BUNDLED:
        return _bundled_path(name_or_path)
    path = Path(name_or_path)
    if path.suffix != ".safetensors":
        raise UnknownNameError(
            f"unknown model {str(name_or_path)!r}: give a bundled name ({', '.join(available())}) "
            "or a path to a .safetensors weights file"
        )
    if not path.is_file():
        raise InputFileNotFoundError(f"model weights file not found: {path}")
    return path


def load(name_or_path: str | os.PathLike = "pilotnet-carracing", device: torch.device | str = "cpu") -> PilotNet:
    """Load a bundled model by name, or a safetensors weights file written by :func:`save`.

    Loading reads tensors and string metadata only; no code is unpickled.

    Parameters
    ----------
    name_or_path : str or path
        A name from :func:`available` (default ``"pilotnet-carracing"``, PilotNet trained on
        CarRacing-v3 drive logs; output: steering angle in radians, positive = right) or a
        ``.safetensors`` file.
    device : torch device
        Where the model's parameters are put.

    Returns
    -------
    PilotNet
        The model in eval mode, with ``.preprocess(frames)``: uint8 ``(N, H, W, 3)`` RGB ->
        float32 ``(N, 3, 66, 200)`` in [0, 1].

    Raises
    ------
    UnknownNameError
        For a name that is neither bundled nor a ``.safetensors`` path.
    InputFileNotFoundError
        If the weights file does not exist.
    InputError
        If the file is not a readable safetensors file of a known architecture.
    """
    path = _resolve(name_or_path)
    meta = metadata(path)
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"cannot read model weights {path}: {exc}") from None
    arch = meta.get("architecture", "PilotNet")
    if arch not in _ARCHITECTURES:
        raise InputError(f"{path}: unknown architecture {arch!r} (known: {sorted(_ARCHITECTURES)})")
    try:
        transform = FramePreprocess(
            size=tuple(json.loads(meta.get("input_size", "[66, 200]"))),
            crop=tuple(json.loads(meta.get("crop", "[0, 1, 0, 1]"))),
        )
    except (json.JSONDecodeError, TypeError, ValueError) as exc:
        raise InputError(f"{path}: malformed preprocessing metadata: {exc}") from None
    model = _ARCHITECTURES[arch](preprocess=transform)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise InputError(f"{path}: weights do not fit {arch}: {first}") from None
    return model.to(device).eval()
