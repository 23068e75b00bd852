"""PilotNet, NVIDIA's end-to-end steering network, and the frame preprocessing that feeds it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError

__all__ = ["FramePreprocess", "PilotNet"]


@dataclass(frozen=True)
class FramePreprocess:
    """Frames as recorded -> the model's input space.

    Crops a region of interest given as fractions of the frame (so one setting fits any frame
    size), resizes it to ``size`` with antialiased bilinear interpolation and scales to [0, 1].

    Parameters
    ----------
    size : (int, int)
        Output ``(height, width)`` in pixels; PilotNet takes ``(66, 200)``.
    crop : (float, float, float, float)
        ``(top, bottom, left, right)`` as fractions of the frame height and width, each in
        [0, 1]; ``(0, 1, 0, 1)`` keeps the whole frame.
    """

    size: tuple[int, int] = (66, 200)
    crop: tuple[float, float, float, float] = (0.0, 1.0, 0.0, 1.0)

    def __post_init__(self) -> None:
        if len(self.crop) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in self.crop):
            raise InputError(f"crop must be 4 numbers (top, bottom, left, right), got {self.crop!r}")
        top, bottom, left, right = self.crop
        if not (0.0 <= top < bottom <= 1.0 and 0.0 <= left < right <= 1.0):
            raise InputError(f"crop must satisfy 0 <= top < bottom <= 1 and 0 <= left < right <= 1, got {self.crop}")
        if len(self.size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in self.size):
            raise InputError(f"size must be (height, width), two positive ints, got {self.size!r}")

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
            RGB frames, values 0..255.
        device : torch device, optional
            Where the result lives; default: where ``frames`` are (CPU for numpy).

        Returns
        -------
        torch.Tensor
            float32, shape (N, 3, size[0], size[1]), values in [0, 1].

        Raises
        ------
        InputError
            If ``frames`` is not uint8 of shape (N, H, W, 3).
        """
        if isinstance(frames, np.ndarray):
            frames = torch.from_numpy(np.ascontiguousarray(frames))
        if not isinstance(frames, torch.Tensor):
            raise InputError(f"frames must be a numpy array or torch tensor, got {type(frames).__name__}")
        if frames.dtype != torch.uint8:
            raise InputError(f"frames must be uint8 RGB, got dtype {frames.dtype}")
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise InputError(f"frames must have shape (N, H, W, 3), got {tuple(frames.shape)}")
        if frames.shape[0] == 0:
            raise InputError("frames is empty (N = 0)")
        if device is not None:
            frames = frames.to(device, non_blocking=True)
        y0, y1, x0, x1 = self.region(frames.shape[1], frames.shape[2])
        x = frames[:, y0:y1, x0:x1].permute(0, 3, 1, 2).float().div_(255.0)
        if tuple(x.shape[-2:]) != tuple(self.size):
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        return x.clamp_(0.0, 1.0).contiguous()


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

    def preprocess(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 RGB frames ``(N, H, W, 3)`` -> float32 ``(N, 3, 66, 200)`` in [0, 1] on the
        model's device. See :class:`FramePreprocess`."""
        device = next(self.parameters()).device
        return self.transform(frames, device=device)
