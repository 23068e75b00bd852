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


def mp4_top_level_boxes(path: Path) -> list[str]:
    """The types of an MP4 file's top-level boxes, in file order (ISO/IEC 14496-12 §4.2: a 32-bit
    big-endian size, a 4-character type; size 1: a 64-bit size follows; size 0: to the end)."""
    data = Path(path).read_bytes()
    boxes, pos = [], 0
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8].decode("latin-1")
        if size == 1:
            size = int.from_bytes(data[pos + 8 : pos + 16], "big")
        elif size == 0:
            size = len(data) - pos
        if size < 8:
            raise ValueError(f"{path}: bad box size {size} at byte {pos}")
        boxes.append(kind)
        pos += size
    return boxes
