"""Frame sources and sinks (OpenCV): video files and image folders in, videos out."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from .errors import InputError, InputFileNotFoundError

__all__ = ["read_video"]


def read_video(path: str | os.PathLike, max_frames: int | None = None) -> tuple[np.ndarray, float]:
    """Decode a whole video file into memory.

    Parameters
    ----------
    path : path
        A video file OpenCV can decode (FFV1 .mkv, H.264/MPEG-4 .mp4, MJPEG .avi, ...).
    max_frames : int, optional
        Stop after this many frames.

    Returns
    -------
    frames : numpy.ndarray
        uint8, shape (N, H, W, 3), RGB.
    fps : float
        Frames per second from the container (0.0 if it does not say).

    Raises
    ------
    InputFileNotFoundError
        If ``path`` does not exist.
    InputError
        If ``path`` is not a video OpenCV can decode, or holds no frame.
    """
    path = Path(path)
    if not path.exists():
        raise InputFileNotFoundError(f"video not found: {path}")
    if not path.is_file():
        raise InputError(f"not a video file: {path}")
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise InputError(f"cannot open video {path}: not a video format OpenCV can decode")
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        frames = []
        while max_frames is None or len(frames) < max_frames:
            ok, bgr = cap.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    finally:
        cap.release()
    if not frames:
        raise InputError(f"video {path} holds no decodable frame (empty or corrupt)")
    return np.stack(frames), fps
