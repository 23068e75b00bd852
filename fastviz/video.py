"""Frame sources and sinks (OpenCV): video files and image folders in, videos out.

Sources stream: :func:`open_source` checks the input (it exists, it decodes, its first frame)
and reads one frame at a time while iterated, so a long video never sits in memory.
:class:`VideoSink` writes a video under a temporary name and gives it its final name only when
the writing block ends without an exception, so no half-written output is ever left behind.

>>> import numpy as np
>>> from fastviz.video import VideoSink, open_source
>>> with VideoSink("/tmp/fastviz-doc.mkv", fps=25, size=(8, 8)) as sink:
...     sink.write(np.zeros((8, 8, 3), np.uint8))
>>> source = open_source("/tmp/fastviz-doc.mkv")
>>> source.shape, source.fps, [b.shape for b in source.batches(4)]
((8, 8, 3), 25.0, [(1, 8, 8, 3)])
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from .errors import InputError, InputFileNotFoundError

__all__ = [
    "CODECS",
    "DEFAULT_FPS",
    "IMAGE_SUFFIXES",
    "FrameSource",
    "ImageFolderSource",
    "VideoFileSource",
    "VideoSink",
    "codec_for",
    "natural_key",
    "open_source",
    "read_video",
]

#: Image file types read from a folder (compared case-insensitively).
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp")

#: Output container (file extension) -> FourCC of the codec :class:`VideoSink` writes with.
CODECS: dict[str, str] = {".mp4": "mp4v", ".avi": "MJPG", ".mkv": "FFV1"}

#: Frames per second assumed for image folders, and for videos whose container does not say.
DEFAULT_FPS = 25.0


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
        Frames per second from the container (25 if it does not say).

    Raises
    ------
    InputFileNotFoundError
        If ``path`` does not exist.
    InputError
        If ``path`` is not a video OpenCV can decode, holds no frame, changes frame size, or
        ends well before the frame count its container announces (truncated).
    """
    path = Path(path)
    if not path.exists():
        raise InputFileNotFoundError(f"video not found: {path}")
    if not path.is_file():
        raise InputError(f"not a video file: {path}")
    source = VideoFileSource(path)  # one decoder, with its frame-size and truncation checks
    with contextlib.closing(iter(source)) as frames:
        stack = np.stack(list(itertools.islice(frames, max_frames)))
    return stack, source.fps


# --------------------------------------------------------------------------- sources


def natural_key(name: str) -> tuple:
    """Sort key that orders embedded numbers by value: ``frame2`` before ``frame10``.

    >>> sorted(["frame10.png", "frame2.png", "Frame1.png"], key=natural_key)
    ['Frame1.png', 'frame2.png', 'frame10.png']
    """
    parts = re.split(r"(\d+)", name)
    return tuple(int(p) if i % 2 else p.lower() for i, p in enumerate(parts)), name


def _check_fps(fps: float | None) -> float | None:
    if fps is None:
        return None
    fps = float(fps)
    if not (math.isfinite(fps) and fps > 0):
        raise InputError(f"fps must be a positive number, got {fps}")
    return fps


class FrameSource:
    """A stream of uint8 RGB frames of one size.

    Attributes
    ----------
    path : pathlib.Path
        The video file, folder or image the frames come from.
    fps : float
        Frames per second (of the container, or the default/override for images).
    frame_count : int or None
        Number of frames if known in advance (a video container's count may be an estimate).
    shape : (int, int, int)
        ``(H, W, 3)`` of every frame.

    Iterating yields frames, numpy uint8 ``(H, W, 3)`` RGB, read one at a time; each new
    iteration starts again from the first frame.
    """

    path: Path
    fps: float
    frame_count: int | None
    shape: tuple[int, int, int]

    def __iter__(self) -> Iterator[np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    def batches(self, size: int, max_frames: int | None = None) -> Iterator[np.ndarray]:
        """Yield the frames in batches.

        Parameters
        ----------
        size : int
            Frames per batch, >= 1; the last batch may be smaller.
        max_frames : int, optional
            Stop after this many frames in total.

        Yields
        ------
        numpy.ndarray
            uint8, shape (n, H, W, 3), RGB, ``1 <= n <= size``.
        """
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise InputError(f"batch size must be an integer >= 1, got {size!r}")
        if max_frames is not None and (isinstance(max_frames, bool) or max_frames < 1):
            raise InputError(f"max_frames must be >= 1, got {max_frames!r}")
        batch: list[np.ndarray] = []
        seen = 0
        frames = iter(self)
        try:
            for frame in frames:
                batch.append(frame)
                seen += 1
                if len(batch) == size:
                    yield np.stack(batch)
                    batch = []
                if max_frames is not None and seen >= max_frames:
                    break
        finally:
            close = getattr(frames, "close", None)
            if close is not None:
                close()
        if batch:
            yield np.stack(batch)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(path={str(self.path)!r}, shape={self.shape}, fps={self.fps}, "
            f"frame_count={self.frame_count})"
        )


class VideoFileSource(FrameSource):
    """Frames of a video file, decoded with ``cv2.VideoCapture``; see :func:`open_source`."""

    def __init__(self, path: Path, fps: float | None = None) -> None:
        self.path = path
        cap = self._open()
        try:
            ok, bgr = cap.read()
            if not ok or bgr is None:
                raise InputError(f"video {path} holds no decodable frame (empty or corrupt)")
            container_fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
            count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
        finally:
            cap.release()
        self.shape = (int(bgr.shape[0]), int(bgr.shape[1]), 3)
        if fps is None:
            fps = container_fps if math.isfinite(container_fps) and container_fps > 0 else DEFAULT_FPS
        self.fps = float(fps)
        self.frame_count = int(count) if math.isfinite(count) and count >= 1 else None

    def _open(self) -> cv2.VideoCapture:
        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            cap.release()
            raise InputError(f"cannot open video {self.path}: not a video OpenCV can decode (corrupt or unknown format)")
        return cap

    def __iter__(self) -> Iterator[np.ndarray]:
        cap = self._open()
        n = 0
        try:
            while True:
                ok, bgr = cap.read()
                if not ok or bgr is None:
                    break
                if bgr.shape[:2] != self.shape[:2]:
                    raise InputError(
                        f"video {self.path}: frame {n} is {bgr.shape[1]}x{bgr.shape[0]} (WxH) but the first frame "
                        f"is {self.shape[1]}x{self.shape[0]}"
                    )
                n += 1
                yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        finally:
            cap.release()
        if n == 0:
            raise InputError(f"video {self.path} holds no decodable frame (empty or corrupt)")
        # A container's frame count can be an estimate off by a frame or two; a stream that ends
        # much earlier than announced is truncated or corrupt.
        if self.frame_count is not None and n < self.frame_count - max(2, self.frame_count // 100):
            raise InputError(
                f"video {self.path} ended after {n} of {self.frame_count} frames (truncated or corrupt)"
            )


class ImageFolderSource(FrameSource):
    """Frames from image files (png, jpg, jpeg, bmp) in natural name order; see :func:`open_source`."""

    def __init__(self, path: Path, files: list[Path], fps: float | None = None) -> None:
        self.path = path
        self.files = files
        self.fps = DEFAULT_FPS if fps is None else float(fps)
        self.frame_count = len(files)
        first = self._read(files[0])
        self.shape = (int(first.shape[0]), int(first.shape[1]), 3)

    @staticmethod
    def _read(file: Path) -> np.ndarray:
        bgr = cv2.imread(str(file), cv2.IMREAD_COLOR)
        if bgr is None:
            raise InputError(f"cannot read image {file}: not an image OpenCV can decode (corrupt or unreadable)")
        return bgr

    def __iter__(self) -> Iterator[np.ndarray]:
        height, width = self.shape[:2]
        for file in self.files:
            bgr = self._read(file)
            if bgr.shape[:2] != (height, width):
                raise InputError(
                    f"image {file} is {bgr.shape[1]}x{bgr.shape[0]} (WxH) but {self.files[0].name} is "
                    f"{width}x{height}: all images of a folder must have the same size"
                )
            yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def open_source(path: str | os.PathLike | None = None, *, fps: float | None = None) -> FrameSource:
    """Open a stream of frames.

    Parameters
    ----------
    path : path, optional
        One of: a video file OpenCV can decode (.mkv, .mp4, .avi, ...); a folder of images
        (``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, read in natural name order, so ``frame2``
        comes before ``frame10``; other files are ignored); a single image file (one frame);
        ``None``: the bundled example drive log (:func:`fastviz.data.example_log_path`).
    fps : float, optional
        Frames per second to report; default: the container's for videos (25 if it does not
        say), 25 for images.

    Returns
    -------
    FrameSource
        With ``.fps``, ``.frame_count``, ``.shape`` (H, W, 3); iterating yields uint8
        (H, W, 3) RGB frames, ``.batches(n)`` stacks of them. Frames are decoded lazily; the
        first is decoded now to check the input.

    Raises
    ------
    InputFileNotFoundError
        If ``path`` does not exist.
    InputError
        For a folder without images, an image OpenCV cannot read, a file that is not a
        decodable video or holds no frame. While iterating: an image of another size than the
        first, or a video that ends well before its announced frame count (truncated).
    """
    fps = _check_fps(fps)
    if path is None:
        from .data import example_log_path

        path = example_log_path()
        if not path.is_file():
            raise InputFileNotFoundError(f"the bundled example drive log is missing: {path}")
    path = Path(path)
    if not path.exists():
        raise InputFileNotFoundError(f"input not found: {path}")
    if path.is_dir():
        files = [p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
        if not files:
            raise InputError(f"folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        files.sort(key=lambda p: natural_key(p.name))
        return ImageFolderSource(path, files, fps)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return ImageFolderSource(path, [path], fps)
    return VideoFileSource(path, fps)


# --------------------------------------------------------------------------- sink


def codec_for(path: str | os.PathLike) -> str:
    """FourCC that :class:`VideoSink` uses for ``path``'s extension (see :data:`CODECS`).

    Raises
    ------
    InputError
        For an extension not in :data:`CODECS`.
    """
    suffix = Path(path).suffix.lower()
    if suffix not in CODECS:
        raise InputError(
            f"cannot write video {path}: unknown extension {suffix or '(none)'!r} "
            f"(use {', '.join(sorted(CODECS))})"
        )
    return CODECS[suffix]


class VideoSink:
    """Write RGB frames to a video file, all or nothing.

    A context manager. On entering, a ``cv2.VideoWriter`` opens a temporary file beside the
    output (``NAME.tmp-<pid>.EXT``: the extension stays last so OpenCV picks the container);
    when the block ends normally the file is renamed to ``path`` (replacing any file there);
    when it ends with an exception (``KeyboardInterrupt`` included) the temporary file is
    deleted and ``path`` is left as it was.

    Parameters
    ----------
    path : path
        Output file; its extension picks the codec: ``.mp4`` -> MPEG-4 (``mp4v``), ``.avi`` ->
        Motion JPEG (``MJPG``), ``.mkv`` -> FFV1 (lossless).
    fps : float
        Frames per second, > 0.
    size : (int, int)
        ``(height, width)`` of the frames that will be written (numpy order, like
        ``frame.shape[:2]``). Encoders need even sizes, so an odd height or width is padded
        with one black row or column at the bottom or right; ``.frame_size`` is the size in
        the file.

    Attributes
    ----------
    frames_written : int
        Frames written so far.

    Raises
    ------
    InputError
        For an unknown extension, a missing output folder, a bad ``fps`` or ``size``, or when
        OpenCV cannot open a writer for the file.

    Examples
    --------
    >>> with VideoSink("/tmp/fastviz-doc.mp4", fps=10, size=(4, 6)) as sink:
    ...     sink.write(np.zeros((4, 6, 3), np.uint8))
    >>> sink.frames_written
    1
    """

    def __init__(self, path: str | os.PathLike, fps: float, size: tuple[int, int]) -> None:
        self.path = Path(path)
        self.fourcc = codec_for(self.path)
        fps = _check_fps(fps)
        assert fps is not None
        self.fps = fps
        try:
            height, width = (int(v) for v in size)
        except (TypeError, ValueError):
            raise InputError(f"size must be (height, width), got {size!r}") from None
        if height < 1 or width < 1:
            raise InputError(f"size must be positive, got {(height, width)}")
        self.size = (height, width)
        self.frame_size = (height + height % 2, width + width % 2)
        parent = self.path.parent
        if not parent.is_dir():
            raise InputError(f"cannot write video {self.path}: folder {parent} does not exist")
        if self.path.is_dir():
            raise InputError(f"cannot write video {self.path}: it is a folder")
        self.tmp_path = self.path.with_name(f"{self.path.stem}.tmp-{os.getpid()}{self.path.suffix}")
        self.frames_written = 0
        self._writer: cv2.VideoWriter | None = None

    def __enter__(self) -> VideoSink:
        if self._writer is not None:
            raise RuntimeError("VideoSink is already open")
        height, width = self.frame_size
        writer = cv2.VideoWriter(str(self.tmp_path), cv2.VideoWriter_fourcc(*self.fourcc), self.fps, (width, height), True)
        if not writer.isOpened():
            writer.release()
            self.tmp_path.unlink(missing_ok=True)
            raise InputError(f"cannot write video {self.path}: OpenCV cannot open a {self.fourcc} writer for it")
        self._writer = writer
        self.frames_written = 0
        return self

    def write(self, frame: np.ndarray) -> None:
        """Append one frame: numpy uint8 ``(H, W, 3)`` RGB of the sink's ``size``.

        Raises
        ------
        InputError
            For a frame of another dtype or shape (OpenCV would silently drop it).
        """
        if self._writer is None:
            raise RuntimeError("VideoSink.write outside its `with` block")
        height, width = self.size
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.shape != (height, width, 3):
            got = (frame.dtype, frame.shape) if isinstance(frame, np.ndarray) else type(frame).__name__
            raise InputError(f"VideoSink({self.path.name}) takes uint8 frames of shape {(height, width, 3)}, got {got}")
        bgr = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR)
        if self.frame_size != self.size:
            bgr = cv2.copyMakeBorder(
                bgr, 0, self.frame_size[0] - height, 0, self.frame_size[1] - width, cv2.BORDER_CONSTANT, value=0
            )
        self._writer.write(bgr)
        self.frames_written += 1

    def __exit__(self, exc_type, exc, tb) -> bool:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.release()
        if exc_type is not None:
            self.tmp_path.unlink(missing_ok=True)
            return False
        try:
            os.replace(self.tmp_path, self.path)
        except OSError as err:
            self.tmp_path.unlink(missing_ok=True)
            raise InputError(f"cannot write video {self.path}: {err.strerror or err}") from None
        return False
