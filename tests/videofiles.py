"""Plain OpenCV reference writer and reader for tests, independent of fastviz.video."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def write_ffv1(path: Path, frames: np.ndarray, fps: float = 25.0) -> Path:
    """RGB frames (N, H, W, 3) uint8 -> a lossless FFV1 video at ``path``."""
    h, w = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), fps, (w, h))
    assert writer.isOpened()
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def decode_all(path: Path) -> np.ndarray:
    """Every frame of a video, RGB (N, H, W, 3); an empty array for no frame."""
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    return np.stack(frames) if frames else np.zeros((0,), np.uint8)
