"""PilotNet, NVIDIA's end-to-end steering network, and the frame preprocessing that feeds it."""

from __future__ import annotations

import math
import threading
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError

__all__ = ["ASPECT_TOLERANCE", "MAX_FRAME_SIDE", "MAX_INPUT_SIDE", "FramePreprocess", "PilotNet"]

#: Largest model input side in pixels that :class:`FramePreprocess` accepts (a bound on what a
#: weights file's metadata can make :func:`fastviz.models.load` allocate).
MAX_INPUT_SIDE = 4096
#: Largest recorded frame side in pixels accepted as ``frame_size`` (16K video is 15360 wide).
MAX_FRAME_SIDE = 16384
#: Relative difference of aspect ratios (width / height) above which frames count as shaped
#: unlike the training frames and a warning is given.
ASPECT_TOLERANCE = 0.02

_WARNED_LOCK = threading.Lock()  # guards FramePreprocess._warned (a module lock: transforms stay deep-copyable)


def _sides(value, what: str, bound: int) -> tuple[int, int]:
    """``value`` as ``(height, width)``, two ints in ``1 .. bound``; else InputError."""
    try:
        ok = len(value) == 2 and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)
    except TypeError:
        ok = False
    if not ok or not all(1 <= int(v) <= bound for v in value):
        raise InputError(f"{what} must be (height, width), two positive ints of at most {bound}, got {value!r}")
    return int(value[0]), int(value[1])


@dataclass(frozen=True)
class FramePreprocess:
    """Frames as recorded -> the model's input space.

    Crops a region of interest given as fractions of the frame (so one setting fits any frame
    size), resizes it to ``size`` with antialiased bilinear interpolation and scales to [0, 1].

    Parameters
    ----------
    size : (int, int)
        Output ``(height, width)`` in pixels, each in ``1 ..`` :data:`MAX_INPUT_SIDE`; PilotNet
        takes ``(66, 200)``.
    crop : (float, float, float, float)
        ``(top, bottom, left, right)`` as fractions of the frame height and width, each in
        [0, 1]; ``(0, 1, 0, 1)`` keeps the whole frame.
    frame_size : (int, int), optional
        ``(height, width)`` in pixels of the frames the model was trained on (the bundled
        CarRacing model: ``(96, 96)``), each in ``1 ..`` :data:`MAX_FRAME_SIDE`. Frames whose
        aspect ratio differs from it by more than :data:`ASPECT_TOLERANCE` are still processed,
        with a warning (once per transform and frame size): the resize squashes or stretches
        them. ``None`` (unknown): no such warning. Stored in a weights file's metadata by
        :func:`fastviz.models.save`.
    """

    size: tuple[int, int] = (66, 200)
    crop: tuple[float, float, float, float] = (0.0, 1.0, 0.0, 1.0)
    frame_size: tuple[int, int] | None = None
    _warned: set = field(default_factory=set, init=False, repr=False, compare=False)  # frame sizes warned about

    def __post_init__(self) -> None:
        if (
            not isinstance(self.crop, (tuple, list))
            or len(self.crop) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in self.crop)
        ):
            raise InputError(f"crop must be 4 numbers (top, bottom, left, right), got {self.crop!r}")
        top, bottom, left, right = self.crop
        if not (0.0 <= top < bottom <= 1.0 and 0.0 <= left < right <= 1.0):
            raise InputError(f"crop must satisfy 0 <= top < bottom <= 1 and 0 <= left < right <= 1, got {self.crop}")
        object.__setattr__(self, "crop", tuple(self.crop))
        object.__setattr__(self, "size", _sides(self.size, "size", MAX_INPUT_SIDE))
        if self.frame_size is not None:
            object.__setattr__(self, "frame_size", _sides(self.frame_size, "frame_size", MAX_FRAME_SIDE))

    def region(self, height: int, width: int) -> tuple[int, int, int, int]:
        """Pixel box ``(y0, y1, x0, x1)`` of a ``height x width`` frame that the model sees."""
        top, bottom, left, right = self.crop
        y0, y1 = int(round(top * height)), int(round(bottom * height))
        x0, x1 = int(round(left * width)), int(round(right * width))
        return y0, max(y1, y0 + 1), x0, max(x1, x0 + 1)

    def __call__(self, frames: np.ndarray | torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
        """Turn RGB frames into model input.

        Parameters
        ----------
        frames : uint8 array or tensor, shape (N, H, W, 3)
            RGB frames, values 0..255. Grayscale frames ``(N, H, W)`` or ``(N, H, W, 1)`` are
            converted to RGB by repeating the gray value, with a one-line ``UserWarning``
            (Python shows it once per call site: its text names the frame size, not ``N``).
        device : torch device, optional
            Where the result lives; default: where ``frames`` are (CPU for numpy).

        Returns
        -------
        torch.Tensor
            float32, shape (N, 3, size[0], size[1]), values in [0, 1].

        Warns
        -----
        UserWarning
            For grayscale frames; and, where ``frame_size`` is known, for frames whose aspect
            ratio differs from it by more than :data:`ASPECT_TOLERANCE` (once per transform and
            frame size).

        Raises
        ------
        InputError
            If ``frames`` is not uint8 of shape (N, H, W, 3), (N, H, W, 1) or (N, H, W).
        """
        return self._convert(frames, device, stacklevel=3)

    def _convert(self, frames, device, stacklevel: int) -> torch.Tensor:
        """:meth:`__call__`; warnings point ``stacklevel`` frames up (to the user's call)."""
        if isinstance(frames, np.ndarray):
            frames = torch.from_numpy(np.ascontiguousarray(frames))
        if not isinstance(frames, torch.Tensor):
            raise InputError(f"frames must be a numpy array or torch tensor, got {type(frames).__name__}")
        if frames.dtype != torch.uint8:
            raise InputError(f"frames must be uint8 RGB, got dtype {frames.dtype}")
        if frames.ndim == 3 and frames.shape[-1] in (3, 4):
            raise InputError(
                f"frames must have shape (N, H, W, 3), got {tuple(frames.shape)}: one RGB frame? add the batch "
                "axis (frames[None]); grayscale frames (N, H, W) of width 3 or 4 are not told apart from it"
            )
        if frames.ndim == 3 or (frames.ndim == 4 and frames.shape[-1] == 1):
            gray = frames if frames.ndim == 3 else frames[..., 0]
            warnings.warn(
                f"grayscale frames of {gray.shape[2]}x{gray.shape[1]} converted to RGB by repeating the gray value; "
                "the model expects colour frames",
                UserWarning,
                stacklevel=stacklevel,
            )
            frames = gray.unsqueeze(-1).expand(*gray.shape, 3)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise InputError(f"frames must have shape (N, H, W, 3), got {tuple(frames.shape)}")
        if frames.shape[0] == 0:
            raise InputError("frames is empty (N = 0)")
        if 0 in frames.shape[1:3]:
            raise InputError(f"frames have no pixels: shape {tuple(frames.shape)}")
        self._check_aspect(frames.shape[1], frames.shape[2], stacklevel + 1)
        if device is not None:
            frames = frames.to(device, non_blocking=True)
        y0, y1, x0, x1 = self.region(frames.shape[1], frames.shape[2])
        x = frames[:, y0:y1, x0:x1].permute(0, 3, 1, 2).float().div_(255.0)
        if tuple(x.shape[-2:]) != tuple(self.size):
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        return x.clamp_(0.0, 1.0).contiguous()

    def _check_aspect(self, height: int, width: int, stacklevel: int) -> None:
        """Warn (once per transform and frame size) if ``height x width`` frames are shaped
        unlike the training frames (``frame_size``)."""
        if self.frame_size is None:
            return
        th, tw = self.frame_size
        if abs((width / height) / (tw / th) - 1.0) <= ASPECT_TOLERANCE:
            return
        with _WARNED_LOCK:
            if (height, width) in self._warned:
                return
            self._warned.add((height, width))
        y0, y1, x0, x1 = self.region(height, width)
        warnings.warn(
            f"frames of {width}x{height} (aspect {width / height:.2f}) are squashed into the model's "
            f"{self.size[1]}x{self.size[0]} input (region {x1 - x0}x{y1 - y0} resized), but the model was trained on "
            f"{tw}x{th} frames (aspect {tw / th:.2f}): shapes look distorted to it and its output may be off",
            UserWarning,
            stacklevel=stacklevel,
        )


class PilotNet(nn.Module):
    """NVIDIA's PilotNet steering regressor (Bojarski et al., "End to End Learning for
    Self-Driving Cars", arXiv 1604.07316, 2016).

    A fixed normalisation layer (``x * 2 - 1``), five convolutions (24, 36, 48 filters of 5x5 at
    stride 2; 64, 64 filters of 3x3), each followed by ReLU, and fully connected layers of 100,
    50, 10 and 1 units.

    Input: float32 ``(B, 3, 66, 200)``, RGB in [0, 1]. Output: float32 ``(B, 1)``, the steering
    angle in radians (for the bundled CarRacing model: the front-wheel target angle, positive =
    steer right, within the simulator's +-0.4 rad limit).

    Layer names: ``features.0`` .. ``features.8`` are the convolutions (``features.1``, ``.3``,
    ``.5``, ``.7``, ``.9`` their ReLUs); ``regressor`` holds the fully connected part.

    ``cam_layer = "features.5"`` is the default Grad-CAM target layer: the third conv's ReLU,
    5x22 at 66x200. The last conv's output is 1x18, and a steering regressor weighs its columns
    with opposite signs (road on the left vs. on the right), so Grad-CAM's spatially averaged
    channel weights cancel there: on the bundled held-out log, ``features.9`` gave a blank map
    (ReLU of a negative sum everywhere) on 100 of 100 sampled frames, ``features.5`` on 1.

    Parameters
    ----------
    preprocess : FramePreprocess, optional
        How recorded frames map into the input space; used by :meth:`preprocess`.
    """

    input_size = (66, 200)
    cam_layer = "features.5"
    #: Units of the output (and of occlusion's score deltas): the steering angle in radians.
    output_units = "rad"

    def __init__(self, preprocess: FramePreprocess | None = None) -> None:
        super().__init__()
        self.transform = preprocess if preprocess is not None else FramePreprocess(size=self.input_size)
        self.features = nn.Sequential(
            nn.Conv2d(3, 24, kernel_size=5, stride=2),
            nn.ReLU(),
            nn.Conv2d(24, 36, kernel_size=5, stride=2),
            nn.ReLU(),
            nn.Conv2d(36, 48, kernel_size=5, stride=2),
            nn.ReLU(),
            nn.Conv2d(48, 64, kernel_size=3),
            nn.ReLU(),
            nn.Conv2d(64, 64, kernel_size=3),
            nn.ReLU(),
        )
        self.regressor = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * 1 * 18, 100),
            nn.ReLU(),
            nn.Linear(100, 50),
            nn.ReLU(),
            nn.Linear(50, 10),
            nn.ReLU(),
            nn.Linear(10, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.regressor(self.features(x * 2.0 - 1.0))

    def feature_size(self, height: int, width: int) -> tuple[int, int]:
        """``(h, w)`` of the last conv's output for a ``height x width`` input (conv arithmetic, no
        forward pass); the regressor takes exactly 1 x 18, i.e. inputs of 66 x 200 (and the few sizes
        that round to the same)."""
        for conv in self.features:
            if isinstance(conv, nn.Conv2d):
                (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
                height = (height + 2 * ph - kh) // sh + 1
                width = (width + 2 * pw - kw) // sw + 1
        return height, width

    def preprocess(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 RGB frames ``(N, H, W, 3)`` -> float32 ``(N, 3, 66, 200)`` in [0, 1] on the
        model's device. See :class:`FramePreprocess` (grayscale frames are converted with a
        warning; frames shaped unlike the training frames are warned about)."""
        device = next(self.parameters()).device
        return self.transform._convert(frames, device, stacklevel=3)
