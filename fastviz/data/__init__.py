"""Drive logs: frames recorded from a simulator with the steering applied at each frame.

A drive log is two files side by side:

* ``NAME.mkv`` — the frames, losslessly encoded (FFV1), exactly as the simulator rendered them;
* ``NAME.csv`` — one row per frame: ``frame,time_s,steering_rad``; ``steering_rad`` is the
  steering command applied at that frame, in radians (CarRacing-v3: the front-wheel target
  angle, positive = steer right, limited to +-0.4 rad by the simulator).

The bundled example is a held-out CarRacing-v3 track, not used in training the bundled model.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from ..errors import InputError, InputFileNotFoundError

__all__ = ["DriveLog", "EXAMPLE_LOG", "example_log_path", "load_drive_log", "read_steering"]

#: File name (inside the ``fastviz.data`` package) of the bundled held-out drive log's video.
EXAMPLE_LOG = "carracing_heldout.mkv"


@dataclass(frozen=True)
class DriveLog:
    """A recorded drive.

    Attributes
    ----------
    frames : numpy.ndarray
        uint8, shape (N, H, W, 3), RGB.
    steering : numpy.ndarray
        float32, shape (N,), steering applied at each frame, radians, positive = right.
    fps : float
        Frames per second of the recording.
    path : pathlib.Path
        The video file the log was read from.
    """

    frames: np.ndarray
    steering: np.ndarray
    fps: float
    path: Path

    def __len__(self) -> int:
        return int(self.frames.shape[0])


def example_log_path() -> Path:
    """Path of the bundled example drive log's video file."""
    return Path(str(resources.files(__package__).joinpath(EXAMPLE_LOG)))


def read_steering(video: str | os.PathLike, n_frames: int | None = None) -> np.ndarray | None:
    """The recorded steering of a drive log's video, from the ``.csv`` beside it (same stem).

    Parameters
    ----------
    video : path
        The log's video file.
    n_frames : int, optional
        The video's frame count, when known: the file must have that many rows.

    Returns
    -------
    numpy.ndarray or None
        float32 ``(N,)``, radians, positive = right; ``None`` when there is no ``.csv`` beside
        the video (not a drive log).

    Raises
    ------
    InputError
        For a ``.csv`` without a ``steering_rad`` column, with non-numeric values, or with another
        row count than ``n_frames``.
    """
    path = Path(video).with_suffix(".csv")
    if not path.is_file():
        return None
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read steering file {path}: {exc}") from None
    if not rows:
        raise InputError(f"steering file {path} holds no rows")
    if "steering_rad" not in rows[0]:
        raise InputError(f"steering file {path} has no 'steering_rad' column")
    try:
        with np.errstate(over="ignore"):  # 1e308 becomes inf in float32: reported below
            steering = np.array([float(r["steering_rad"]) for r in rows], dtype=np.float64).astype(np.float32)
    except (TypeError, ValueError) as exc:
        raise InputError(f"steering file {path}: non-numeric steering value ({exc})") from None
    bad = np.flatnonzero(~np.isfinite(steering))
    if bad.size:
        rows = ", ".join(str(i + 2) for i in bad[:5]) + (", ..." if bad.size > 5 else "")
        raise InputError(f"steering file {path}: {bad.size} steering values are not finite numbers (lines {rows})")
    if n_frames is not None and steering.shape[0] != n_frames:
        raise InputError(f"steering file {path} has {steering.shape[0]} rows but the video has {n_frames} frames")
    return steering


def load_drive_log(path: str | os.PathLike | None = None) -> DriveLog:
    """Read a drive log (video + per-frame steering).

    Parameters
    ----------
    path : path, optional
        The log's video file; its steering file is the ``.csv`` beside it with the same stem.
        ``None`` loads the bundled held-out example log.

    Returns
    -------
    DriveLog
        ``.frames`` uint8 (N, H, W, 3) RGB, ``.steering`` float32 (N,) in radians, ``.fps``.

    Raises
    ------
    InputFileNotFoundError
        If the video or its steering file does not exist.
    InputError
        If the video cannot be decoded or the steering file does not match it.
    """
    from ..video import read_video

    video = example_log_path() if path is None else Path(path)
    steering_path = video.with_suffix(".csv")
    if not steering_path.is_file():
        if not video.exists():
            raise InputFileNotFoundError(f"drive log video not found: {video}")
        raise InputFileNotFoundError(f"steering file not found beside the video: {steering_path}")
    frames, fps = read_video(video)
    steering = read_steering(video, frames.shape[0])
    return DriveLog(frames=frames, steering=steering, fps=fps, path=video)
