"""Model zoo: PilotNet and the bundled trained weights; a ResNet-50-sized net for cost tables.

Weights are stored as safetensors files, which hold tensors and string metadata only, so loading
them never runs code (no unpickling). The metadata records the architecture and the frame
preprocessing the weights were trained with, so a weights file describes itself.
"""

from __future__ import annotations

import json
import os
import struct
from importlib import resources
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from safetensors.torch import save as save_bytes

from ..errors import InputError, InputFileNotFoundError, UnknownNameError
from ..tempfiles import atomic_output
from .pilotnet import FramePreprocess, PilotNet
from .resnet import ResNet50, resnet50_random

__all__ = [
    "MAX_HEADER_BYTES",
    "FramePreprocess",
    "PilotNet",
    "ResNet50",
    "available",
    "build",
    "load",
    "metadata",
    "resnet50_random",
    "save",
]

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

    The file is written all or nothing (:func:`fastviz.tempfiles.atomic_output`): under an
    exclusive, unpredictable temporary name beside ``path`` (never following a planted link),
    synced and renamed onto ``path`` when complete (a link at ``path`` is replaced, not
    followed), so an interrupted save never leaves a truncated weights file. Extra ``metadata``
    (strings) is stored too, e.g. validation figures.

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
    fastviz.tempfiles.OutputError
        (an ``InputError`` and an ``OSError``) If the file cannot be written: disk full,
        read-only file system, permission denied; one line naming ``path``, nothing left behind.
    """
    path = Path(path)
    arch = type(model).__name__
    if arch not in _ARCHITECTURES:
        raise InputError(f"cannot save a {arch}: known architectures are {sorted(_ARCHITECTURES)}")
    meta = {
        "architecture": arch,
        "input_size": json.dumps(list(model.transform.size)),
        "crop": json.dumps(list(model.transform.crop)),
        **({"frame_size": json.dumps(list(model.transform.frame_size))} if model.transform.frame_size else {}),
        **{k: str(v) for k, v in metadata.items()},
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if not path.parent.is_dir():
        raise InputFileNotFoundError(f"cannot write {path}: folder {path.parent} does not exist")
    try:
        data = save_bytes(tensors, metadata=meta)
    except SafetensorError as exc:
        raise InputError(f"cannot save {arch} to {path}: {exc}") from None
    # an exclusive temporary beside ``path``, written through its descriptor, renamed when complete
    with atomic_output(path, what="model weights") as out:
        out.write(data)
    return path


#: Largest safetensors header (tensor table and metadata) accepted, in bytes; the bundled
#: PilotNet file's header is under 4 KiB, a ResNet-50's tensor table about 30 KiB.
MAX_HEADER_BYTES = 8 * 2**20


def _check_header(path: Path) -> None:
    """Fail fast on a header whose declared length is absurd, before the safetensors reader
    allocates it (the file starts with the header length, a little-endian uint64)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise InputError(f"cannot read model weights {path}: {exc}") from None
    if len(head) < 8:
        raise InputError(f"cannot read model weights {path}: {size} bytes, too short for a safetensors header")
    (n,) = struct.unpack("<Q", head)
    if n > MAX_HEADER_BYTES:
        raise InputError(
            f"cannot read model weights {path}: its header length field says {n} bytes, above the limit of "
            f"{MAX_HEADER_BYTES // 2**20} MiB (not a safetensors file, or a corrupt one)"
        )
    if 8 + n > size:
        raise InputError(f"cannot read model weights {path}: its header length field says {n} bytes but the file has {size}")


def _preprocess_from(path: Path, meta: dict[str, str]) -> FramePreprocess:
    """The :class:`FramePreprocess` a weights file's metadata describes, each key validated.

    ``input_size``: JSON ``[height, width]``, ints in 1..MAX_INPUT_SIDE (4096); ``crop``: JSON
    ``[top, bottom, left, right]`` fractions with ``0 <= top < bottom <= 1`` and
    ``0 <= left < right <= 1``; ``frame_size`` (optional): JSON ``[height, width]``, ints in
    1..MAX_FRAME_SIDE (16384). Absent keys take PilotNet's defaults.

    Raises
    ------
    InputError
        Naming the file and the key, for a value that is not JSON or out of its range.
    """
    values: dict[str, object] = {}
    for key, default in (("input_size", [66, 200]), ("crop", [0.0, 1.0, 0.0, 1.0]), ("frame_size", None)):
        text = meta.get(key)
        if text is None:
            values[key] = default
            continue
        try:
            value = json.loads(text)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError; ints past Python's digit limit
            raise InputError(f"{path}: malformed preprocessing metadata {key!r}: not JSON ({exc}): {text[:80]!r}") from None
        values[key] = tuple(value) if isinstance(value, list) else value
    for key, arg in (("input_size", "size"), ("crop", "crop"), ("frame_size", "frame_size")):
        try:
            FramePreprocess(**{arg: values[key]})
        except InputError as exc:
            raise InputError(f"{path}: metadata {key!r}: {exc}") from None
    return FramePreprocess(size=values["input_size"], crop=values["crop"], frame_size=values["frame_size"])


def metadata(name_or_path: str | os.PathLike) -> dict[str, str]:
    """The string metadata stored in a bundled model's or a weights file's header, validated.

    The header's length is bounded (:data:`MAX_HEADER_BYTES`) and checked before it is read;
    the keys fastviz uses are checked: ``architecture`` must be known (absent: PilotNet),
    ``input_size`` two ints in 1..4096, ``crop`` four fractions, ``frame_size`` (optional) two
    ints in 1..16384.

    Raises
    ------
    UnknownNameError, InputFileNotFoundError
        As :func:`load`.
    InputError
        If the file is not a readable safetensors file, or a key above is malformed or out of
        range (naming the file and the key).
    """
    path = _resolve(name_or_path)
    _check_header(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"cannot read model weights {path}: {exc}") from None
    arch = meta.get("architecture", "PilotNet")
    if arch not in _ARCHITECTURES:
        raise InputError(f"{path}: metadata 'architecture' is {arch[:80]!r}, not a known architecture ({sorted(_ARCHITECTURES)})")
    _preprocess_from(path, meta)
    return meta


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
        If the file is not a readable safetensors file of a known architecture, or its
        metadata is malformed or out of range (see :func:`metadata`; checked before any tensor
        is read, naming the file and the key).
    """
    path = _resolve(name_or_path)
    meta = metadata(path)  # validated: bounded sizes, known architecture
    transform = _preprocess_from(path, meta)
    arch = meta.get("architecture", "PilotNet")
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"cannot read model weights {path}: {exc}") from None
    model = _ARCHITECTURES[arch](preprocess=transform)
    if hasattr(model, "feature_size") and model.feature_size(*transform.size) != (1, 18):
        h, w = transform.size
        raise InputError(
            f"{path}: metadata 'input_size': {arch} cannot take {h}x{w} inputs (its regressor needs the last "
            f"conv to give 1x18, as 66x200 does; {h}x{w} gives {'x'.join(map(str, model.feature_size(h, w)))})"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        detail = "; ".join(lines[1:] or lines)  # the first line only says "Error(s) in loading state_dict"
        raise InputError(f"{path}: weights do not fit {arch}: {detail}") from None
    return model.to(device).eval()
