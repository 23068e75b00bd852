"""Frame sources and sinks: video files (PyAV, FFmpeg's libraries) and image folders in; videos,
image folders and saliency-map files out.

Sources stream: :func:`open_source` checks the input when it opens it and then decodes one
frame at a time while iterated, so a long video never sits in memory. A video file is checked
by decoding its first frame and by a demux-only pass over its packets (no decoding; about 10 ms
for the bundled 4 MB, 1,500-frame log), which finds a truncated or damaged file before any frame
is computed.

Sinks write all or nothing (:mod:`fastviz.tempfiles`): an exclusive temporary in the output's
own folder, written through its file descriptor, checked when the block ends, then renamed onto
the final name. :class:`VideoSink` writes H.264 ``.mp4`` (browser-ready), FFV1 ``.mkv``
(lossless) or Motion JPEG ``.avi``; :class:`ImageFolderSink` a folder of PNG files;
:class:`MapsSink` the raw maps as an ``.npz`` file. OpenCV is used for image files only.

FFmpeg's own console messages stay off: PyAV routes them to Python's :mod:`logging` only when
``av.logging.set_level`` asks for it, and fastviz does not.

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
import errno
import io
import itertools
import math
import os
import re
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from .errors import FastvizError, InputError, InputFileNotFoundError
from .tempfiles import AtomicFile, AtomicFolder, OutputError, deferred_signals

__all__ = [
    "CODECS",
    "DEFAULT_FPS",
    "IMAGE_SUFFIXES",
    "FrameSource",
    "ImageFolderSink",
    "ImageFolderSource",
    "MapsSink",
    "OutputError",
    "VideoFileSource",
    "VideoSink",
    "check_codec",
    "codec_for",
    "natural_key",
    "open_source",
    "read_video",
]

#: Image file types read from a folder (compared case-insensitively).
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp")

#: Output container (file extension) -> FFmpeg encoder :class:`VideoSink` writes with by default:
#: ``.mp4`` H.264 (libx264, yuv420p, ``movflags=+faststart``: plays in browsers), ``.mkv`` FFV1
#: (lossless, bgr0: RGB frames round-trip exactly), ``.avi`` Motion JPEG (yuvj420p, quality 2).
CODECS: dict[str, str] = {".mp4": "libx264", ".mkv": "ffv1", ".avi": "mjpeg"}

#: Output extension -> FFmpeg muxer.
_CONTAINERS: dict[str, str] = {".mp4": "mp4", ".mkv": "matroska", ".avi": "avi"}

#: Muxer options: MP4's index (moov atom) before the data, so browsers start playing at once.
_CONTAINER_OPTIONS: dict[str, dict[str, str]] = {"mp4": {"movflags": "+faststart"}}

#: Encoder -> (pixel format, encoder options) for the encoders fastviz chooses by default.
_ENCODER_SETTINGS: dict[str, tuple[str, dict[str, str]]] = {
    "libx264": ("yuv420p", {"preset": "veryfast"}),  # 2x faster than "medium", ~6% larger (measured)
    "ffv1": ("bgr0", {}),  # packed RGB: lossless for RGB frames (yuv would round)
    "mjpeg": ("yuvj420p", {"qmin": "2", "qmax": "2"}),  # like `ffmpeg -q:v 2`
    # x265 prints its own banner and statistics on stderr unless told otherwise
    "libx265": ("yuv420p", {"x265-params": "log-level=error"}),
}

#: Frames per second assumed for image folders, and for videos whose container does not say.
DEFAULT_FPS = 25.0
#: :meth:`VideoSource.frames_at` decodes forward to a frame at most this many frames ahead, and
#: seeks to one further on.
SEEK_GAP = 48

#: Largest magnitude a float16 holds; maps beyond it are refused by :class:`MapsSink`.
FLOAT16_MAX = float(np.finfo(np.float16).max)

_AVIO_FLAG_WRITE = 2


def _reason(exc: BaseException) -> str:
    """One line saying why an FFmpeg/OS call failed, starting lower-case."""
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    text = " ".join(str(text).split())
    return text[:1].lower() + text[1:]


def read_video(path: str | os.PathLike, max_frames: int | None = None) -> tuple[np.ndarray, float]:
    """Decode a whole video file into memory.

    Parameters
    ----------
    path : path
        A video file FFmpeg can decode (FFV1 .mkv, H.264/MPEG-4 .mp4, MJPEG .avi, ...).
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
        If ``path`` is not a video FFmpeg can decode, holds no frame, is truncated or damaged
        (found when opened), changes frame size, or a frame cannot be decoded.
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

    def _wanted(self, indices) -> list[int]:
        want = sorted({int(i) for i in np.asarray(indices, dtype=np.int64).ravel()})
        if want and (want[0] < 0 or (self.frame_count is not None and want[-1] >= self.frame_count)):
            raise InputError(f"{self.path}: frame numbers must lie in 0 .. {self.frame_count - 1 if self.frame_count else '?'}, "
                             f"got {want[0] if want[0] < 0 else want[-1]}")
        return want

    def frames_at(self, indices) -> Iterator[tuple[int, np.ndarray]]:
        """Only the frames numbered ``indices`` (any order, repeats ignored), in ascending order.

        Yields
        ------
        (int, numpy.ndarray)
            The frame number and the frame, uint8 ``(H, W, 3)`` RGB.

        Raises
        ------
        InputError
            For a number outside ``0 .. frame_count - 1``, or a frame that cannot be read.
        """
        want = self._wanted(indices)
        if not want:
            return
        wanted = set(want)
        for i, frame in enumerate(self):
            if i in wanted:
                yield i, frame
            if i >= want[-1]:
                return

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
    """Frames of a video file, decoded with PyAV (FFmpeg); see :func:`open_source`.

    Opening checks the file: a demux-only pass counts its video packets (no decoding), which must
    be as many as the container announces (its frame count, else its duration times its frame
    rate; a shortfall beyond max(2, 1 %) means a truncated file), none may be flagged damaged,
    and the first frame must decode. ``frame_count`` is the number of packets counted, one per
    frame. Iterating decodes one frame at a time; a frame that cannot be decoded raises
    :class:`~fastviz.errors.InputError` at once, naming its number.
    """

    def __init__(self, path: Path, fps: float | None = None) -> None:
        self.path = path
        with self._open() as container:
            stream = self._stream(container)
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            announced = int(stream.frames) if stream.frames and stream.frames > 0 else None
            announced_s = None if announced is not None else self._announced_seconds(container, stream)
            packets, end_s, self._pts = self._count_packets(container, stream)
        if packets == 0:
            raise InputError(f"video {path} holds no decodable frame (empty or corrupt)")
        # A container's frame index is exact; a duration is not (rounding, a last frame's length),
        # so a time-based check allows two frame periods or 1%, whichever is more.
        if announced is not None and packets < announced - max(2, announced // 100):
            raise InputError(
                f"video {path}: holds {packets} of the {announced} frames its container announces "
                "(truncated or corrupt)"
            )
        if announced_s is not None and end_s is not None:
            period = 1.0 / float(rate) if rate and rate > 0 else 0.04
            if end_s < announced_s - max(2 * period, 0.01 * announced_s):
                raise InputError(
                    f"video {path}: its frames end at {end_s:.2f} s of the {announced_s:.2f} s its container "
                    "announces (truncated or corrupt)"
                )
        with self._open() as container:
            stream = self._stream(container)
            try:
                first = next(iter(container.decode(stream)), None)
            except av.error.FFmpegError as exc:
                raise InputError(f"video {path}: frame 0 cannot be decoded ({_reason(exc)}; corrupt file)") from None
        if first is None:
            raise InputError(f"video {path} holds no decodable frame (empty or corrupt)")
        self.shape = (int(first.height), int(first.width), 3)
        if str(first.format.name).startswith(("gray", "ya8", "ya16")):
            warnings.warn(f"video {path} is grayscale ({first.format.name}): its frames are converted to RGB",
                          stacklevel=2)
        container_fps = float(rate) if rate else 0.0
        if fps is None:
            fps = container_fps if math.isfinite(container_fps) and container_fps > 0 else DEFAULT_FPS
        self.fps = float(fps)
        self.frame_count = packets

    def _open(self) -> av.container.InputContainer:
        try:
            return av.open(str(self.path), "r")
        except FileNotFoundError:
            raise InputFileNotFoundError(f"video not found: {self.path}") from None
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            raise InputError(
                f"cannot open video {self.path}: not a video FFmpeg can decode ({_reason(exc)}; "
                "corrupt, truncated or of an unknown format)"
            ) from None

    def _stream(self, container: av.container.InputContainer):
        if not container.streams.video:
            raise InputError(f"{self.path} holds no video stream")
        return container.streams.video[0]

    @staticmethod
    def _announced_seconds(container, stream) -> float | None:
        """How long the container says the video stream lasts, in seconds; ``None`` if it does not
        say. The container's own duration is that of its longest stream, so it is used only when
        the video is the file's only stream (an audio track may outlast the video)."""
        if stream.duration and stream.time_base:
            return float(stream.duration * stream.time_base)
        if len(container.streams) == 1 and container.duration and container.duration > 0:
            return container.duration / av.time_base
        return None

    def _count_packets(self, container, stream) -> tuple[int, float | None, np.ndarray | None]:
        """Demux (no decoding): the video packets, the time their last one ends, in seconds from
        the stream's start (``None`` without timestamps), and the packets' presentation timestamps
        sorted (frame ``i``'s is the ``i``-th; ``None`` when a packet has none or two are equal)."""
        n = 0
        end = None
        pts: list[int] | None = []
        start = stream.start_time or 0
        try:
            for packet in container.demux(stream):
                if packet.size == 0:  # the end-of-stream marker PyAV adds
                    continue
                if packet.is_corrupt:
                    raise InputError(f"video {self.path}: frame {n} is damaged (truncated or corrupt file)")
                n += 1
                if packet.pts is not None and packet.time_base:
                    stop = float((packet.pts - start + (packet.duration or 0)) * packet.time_base)
                    end = stop if end is None else max(end, stop)
                if pts is not None:
                    if packet.pts is None:
                        pts = None
                    else:
                        pts.append(int(packet.pts))
        except av.error.FFmpegError as exc:
            raise InputError(
                f"video {self.path}: unreadable after frame {n} ({_reason(exc)}; truncated or corrupt)"
            ) from None
        order = None
        if pts:
            order = np.sort(np.asarray(pts, dtype=np.int64))
            if np.any(np.diff(order) == 0):
                order = None
        return n, end, order

    def __iter__(self) -> Iterator[np.ndarray]:
        container = self._open()
        n = 0
        try:
            stream = self._stream(container)
            stream.thread_type = "AUTO"
            packets = container.demux(stream)
            while True:
                try:
                    packet = next(packets, None)
                except av.error.FFmpegError as exc:
                    raise InputError(f"video {self.path}: unreadable at frame {n} ({_reason(exc)}; corrupt)") from None
                if packet is None:
                    break
                try:
                    frames = packet.decode()
                except av.error.FFmpegError as exc:
                    raise InputError(
                        f"video {self.path}: frame {n} cannot be decoded ({_reason(exc)}; corrupt file)"
                    ) from None
                for frame in frames:
                    if (frame.height, frame.width) != self.shape[:2]:
                        raise InputError(
                            f"video {self.path}: frame {n} is {frame.width}x{frame.height} (WxH) but the first "
                            f"frame is {self.shape[1]}x{self.shape[0]}"
                        )
                    rgb = frame.to_ndarray(format="rgb24")
                    n += 1
                    yield rgb
        finally:
            container.close()
        if n < self.frame_count:
            raise InputError(
                f"video {self.path}: only {n} of its {self.frame_count} frames could be decoded (corrupt)"
            )


    def frames_at(self, indices) -> Iterator[tuple[int, np.ndarray]]:
        """Only the frames numbered ``indices``, in ascending order (see
        :meth:`FrameSource.frames_at`), without converting the frames in between.

        A frame more than :data:`SEEK_GAP` frames past the decoder's position is reached by seeking
        to the keyframe at or before it (by its presentation timestamp, counted when the file was
        opened) and decoding from there: intra-only codecs (FFV1, MJPEG) land on it exactly, others
        decode at most one group of pictures. Where a video has no usable timestamps, or a seek
        lands past the frame, frames are decoded from the start.
        """
        want = self._wanted(indices)
        if not want:
            return
        pts = self._pts
        index_of = None if pts is None else {int(p): i for i, p in enumerate(pts)}
        container = self._open()
        try:
            stream = self._stream(container)
            stream.thread_type = "AUTO"
            frames = None  # the decoder's frame iterator
            pos = 0  # frame number of the next frame it yields (None: unknown, after a seek)
            for target in want:
                if frames is None or (index_of is not None and (pos is None or not 0 <= target - pos <= SEEK_GAP)):
                    if index_of is not None and target > 0:
                        container.seek(int(pts[target]), stream=stream, backward=True, any_frame=False)
                        pos = None  # known again from the first frame's timestamp
                    else:  # the first frame wanted, from the start of the file
                        pos = 0
                    frames = self._decoded(container, stream, target)
                for frame in frames:
                    if index_of is not None and frame.pts is not None:
                        k = index_of.get(int(frame.pts))
                        if k is None:
                            raise InputError(f"video {self.path}: a frame with a timestamp not in the file's index "
                                             f"({frame.pts}) near frame {target}")
                    elif pos is not None:
                        k = pos
                    else:  # a frame without a timestamp after a seek: its number is unknown
                        yield from FrameSource.frames_at(self, [t for t in want if t >= target])
                        return
                    pos = k + 1
                    if k < target:
                        continue
                    if k > target:  # the seek landed past it: decode from the start instead
                        yield from FrameSource.frames_at(self, [t for t in want if t >= target])
                        return
                    if (frame.height, frame.width) != self.shape[:2]:
                        raise InputError(
                            f"video {self.path}: frame {k} is {frame.width}x{frame.height} (WxH) but the first "
                            f"frame is {self.shape[1]}x{self.shape[0]}"
                        )
                    yield k, frame.to_ndarray(format="rgb24")
                    break
                else:
                    raise InputError(f"video {self.path}: frame {target} could not be decoded (corrupt or truncated)")
        finally:
            container.close()

    def _decoded(self, container, stream, target: int):
        try:
            for packet in container.demux(stream):
                yield from packet.decode()
        except av.error.FFmpegError as exc:
            raise InputError(f"video {self.path}: frame {target} or one before it cannot be decoded "
                             f"({_reason(exc)}; corrupt file)") from None


class ImageFolderSource(FrameSource):
    """Frames from image files (png, jpg, jpeg, bmp) in natural name order; see :func:`open_source`."""

    def __init__(self, path: Path, files: list[Path], fps: float | None = None) -> None:
        self.path = path
        self.files = files
        self.fps = DEFAULT_FPS if fps is None else float(fps)
        self.frame_count = len(files)
        first = self._read(files[0])
        self.shape = (int(first.shape[0]), int(first.shape[1]), 3)
        raw = cv2.imread(str(files[0]), cv2.IMREAD_UNCHANGED)
        if raw is not None and (raw.ndim == 2 or raw.shape[2] == 1):
            warnings.warn(f"grayscale images ({files[0].name}, ...) in {path} are converted to RGB", stacklevel=2)

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

    def frames_at(self, indices) -> Iterator[tuple[int, np.ndarray]]:
        """Only the images numbered ``indices``, in ascending order; the others are not read."""
        height, width = self.shape[:2]
        for i in self._wanted(indices):
            bgr = self._read(self.files[i])
            if bgr.shape[:2] != (height, width):
                raise InputError(
                    f"image {self.files[i]} is {bgr.shape[1]}x{bgr.shape[0]} (WxH) but {self.files[0].name} is "
                    f"{width}x{height}: all images of a folder must have the same size"
                )
            yield i, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def open_source(path: str | os.PathLike | None = None, *, fps: float | None = None) -> FrameSource:
    """Open a stream of frames.

    Parameters
    ----------
    path : path, optional
        One of: a video file FFmpeg can decode (.mkv, .mp4, .avi, ...); a folder of images
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
        first is decoded now to check the input, and a video's packets are counted (no
        decoding) to find a truncated file now.

    Raises
    ------
    InputFileNotFoundError
        If ``path`` does not exist.
    InputError
        For a folder without images, an image OpenCV cannot read, a file that is not a
        decodable video, holds no frame, or is truncated or damaged (fewer frames than its
        container announces, a damaged packet). While iterating: an image of another size than
        the first, a video frame that cannot be decoded (the message names the frame).
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
        # hidden files (macOS's "._x.png" resource forks, editors' backups) are not frames
        files = [p for p in path.iterdir()
                 if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()]
        if not files:
            raise InputError(f"folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        files.sort(key=lambda p: natural_key(p.name))
        return ImageFolderSource(path, files, fps)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return ImageFolderSource(path, [path], fps)
    return VideoFileSource(path, fps)


# --------------------------------------------------------------------------- sinks


def codec_for(path: str | os.PathLike) -> str:
    """FFmpeg encoder that :class:`VideoSink` uses by default for ``path``'s extension (see
    :data:`CODECS`): ``"libx264"`` for .mp4, ``"ffv1"`` for .mkv, ``"mjpeg"`` for .avi.

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


def _video_encoders() -> list[str]:
    """Names of the video encoders this PyAV build has (for error messages)."""
    names = []
    for name in sorted(av.codecs_available):
        try:
            codec = av.Codec(name, "w")
        except (av.error.FFmpegError, ValueError):
            continue
        if codec.type == "video" and codec.name == name:
            names.append(name)
    return names


def check_codec(codec: str) -> str:
    """The canonical name of FFmpeg video encoder ``codec`` (``"h264"`` -> ``"libx264"``).

    Checked against ``av.codecs_available``: for a ``--codec`` option, before any work.

    Raises
    ------
    InputError
        For a name that is not a video encoder of this FFmpeg build (the message names some
        that are).

    >>> check_codec("h264"), check_codec("ffv1")
    ('libx264', 'ffv1')
    """
    if not isinstance(codec, str) or not codec:
        raise InputError(f"codec must be an FFmpeg encoder name such as 'libx264', got {codec!r}")
    try:
        encoder = av.Codec(codec, "w") if codec in av.codecs_available else None
    except (av.error.FFmpegError, ValueError):
        encoder = None
    if encoder is None or encoder.type != "video":
        common = [n for n in ("libx264", "libx265", "libvpx-vp9", "ffv1", "mjpeg", "mpeg4") if n in _video_encoders()]
        raise InputError(f"unknown video codec {codec!r} (this FFmpeg build encodes e.g. {', '.join(common)})")
    return encoder.name


_check_encoder = check_codec  # the name fastviz.cli used first


def _pixel_format(encoder: str) -> tuple[str, dict[str, str]]:
    if encoder in _ENCODER_SETTINGS:
        pix_fmt, options = _ENCODER_SETTINGS[encoder]
        return pix_fmt, dict(options)
    formats = [f.name for f in (av.Codec(encoder, "w").video_formats or ())]
    if not formats or "yuv420p" in formats:
        return "yuv420p", {}
    return formats[0], {}


def _padding_multiple(pix_fmt: str) -> tuple[int, int]:
    """(rows, columns) the frame size must be a multiple of for ``pix_fmt``'s chroma planes."""
    fmt = av.VideoFormat(pix_fmt)
    return 4 // max(1, fmt.chroma_height(4)), 4 // max(1, fmt.chroma_width(4))


def _check_size(size) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in size)
    except (TypeError, ValueError):
        raise InputError(f"size must be (height, width), got {size!r}") from None
    if height < 1 or width < 1:
        raise InputError(f"size must be positive, got {(height, width)}")
    return height, width


def _check_frame(frame, size: tuple[int, int] | None, who: str) -> np.ndarray:
    """A uint8 (H, W, 3) frame (of ``size`` when given), or InputError naming what is wrong."""
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3 or (
        size is not None and frame.shape[:2] != tuple(size)
    ):
        want = (*size, 3) if size is not None else "(H, W, 3)"
        got = (frame.dtype, frame.shape) if isinstance(frame, np.ndarray) else type(frame).__name__
        raise InputError(f"{who} takes uint8 RGB frames of shape {want}, got {got}")
    return frame


def _check_output_folder(what: str, path: Path) -> None:
    if not path.parent.is_dir():
        raise OutputError(f"cannot write {what} {path}: folder {path.parent} does not exist", errno.ENOENT)


class _MuxerFile:
    """The file object FFmpeg's muxer writes to (through PyAV's I/O callbacks).

    Forwards to the temporary's file. After the first error it accepts and drops everything:
    FFmpeg goes on writing and seeking after a failed write, and PyAV prints every further
    exception it has to drop. A ``BaseException`` (``KeyboardInterrupt``) met inside a callback,
    which PyAV would not pass on, is raised there as ``OSError(EINTR)`` and kept in
    :attr:`interrupted` for the sink to raise again.
    """

    def __init__(self, file: io.BufferedRandom) -> None:
        self._file = file
        self._pos = 0
        self.error: BaseException | None = None
        self.interrupted: BaseException | None = None

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def _call(self, method, *args):
        try:
            return method(*args)
        except Exception as exc:
            self.error = exc
            raise
        except BaseException as exc:
            self.error = self.interrupted = exc
            raise OSError(errno.EINTR, "interrupted") from exc

    def write(self, data) -> int:
        n = len(data)
        if self.error is None:
            self._call(self._file.write, data)
        self._pos += n
        return n

    def read(self, size: int = -1) -> bytes:
        if self.error is not None:
            return b""
        data = self._call(self._file.read, size)
        self._pos += len(data)
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if self.error is None:
            self._pos = self._call(self._file.seek, offset, whence)
        elif whence == io.SEEK_SET:
            self._pos = offset
        elif whence == io.SEEK_CUR:
            self._pos += offset
        return self._pos

    def tell(self) -> int:
        return self._pos


class VideoSink:
    """Write RGB frames to a video file with PyAV, all or nothing.

    A context manager. Entering removes temporaries left by dead processes for the same output,
    creates an exclusive temporary beside it (:class:`fastviz.tempfiles.AtomicFile`) and opens
    the encoder and muxer on its file descriptor, so a bad codec/container pair fails before any
    work. When the block ends normally the encoder is flushed, the file closed, read back (a
    demux-only count of its video packets must equal :attr:`frames_written`), synced and renamed
    onto ``path`` (replacing a file or symbolic link there, never following it). When the block
    ends with an exception (``KeyboardInterrupt`` and SIGTERM/SIGHUP's
    :class:`~fastviz.tempfiles.Terminated` included) the temporary is removed and ``path`` left
    as it was; with ``keep_partial=True`` the frames written so far are finalised and kept under
    ``path`` instead (:attr:`kept_frames`), and the exception still propagates.

    The output is never opened by name: the muxer writes through the temporary's descriptor and
    MP4's faststart pass reads it back through the same descriptor (``os.pread``).

    Parameters
    ----------
    path : path
        Output file; its extension picks the container and the default codec: ``.mp4`` ->
        H.264 (``libx264``, ``yuv420p``, ``movflags=+faststart``: the index first, plays in
        browsers), ``.mkv`` -> FFV1 (``bgr0``: lossless, RGB frames round-trip exactly),
        ``.avi`` -> Motion JPEG (``yuvj420p``, quality 2).
    fps : float
        Frames per second, > 0.
    size : (int, int)
        ``(height, width)`` of the frames that will be written (numpy order, like
        ``frame.shape[:2]``). Chroma-subsampled pixel formats (yuv420p, yuvj420p) need even
        sizes, so there an odd height or width is padded with one black row or column at the
        bottom or right; ``.frame_size`` is the size in the file.
    codec : str, optional
        Another FFmpeg video encoder (``"libx265"``, ``"libvpx-vp9"``, ``"mpeg4"``, ...),
        checked against ``av.codecs_available``; it is written in its first pixel format, or
        yuv420p when it takes that.
    keep_partial : bool
        On an exception, keep the frames written so far under ``path`` (see above).
    threads : int, optional
        Threads the encoder may use (FFmpeg's ``threads`` option), >= 1; default: the encoder's
        own choice (libx264: 1.5 per core).

    Attributes
    ----------
    frames_written : int
        Frames written so far.
    kept_frames : int or None
        After a block that raised with ``keep_partial=True``: the frames in the file kept under
        ``path`` (0 when nothing could be kept); else ``None``.
    codec, pix_fmt : str
        The encoder and pixel format used.
    frame_size : (int, int)
        ``(height, width)`` in the file.
    tmp_path : pathlib.Path or None
        The temporary file while the block runs.

    Raises
    ------
    InputError
        For an unknown extension or codec, a bad ``fps``, ``size`` or ``threads``, a frame of
        another dtype or shape.
    OutputError
        (an ``InputError`` and an ``OSError``) For a missing output folder, a folder at
        ``path``, a codec the container cannot hold, and every failed write (disk full,
        read-only file system, ...) or failed check: one line naming the output; nothing is
        left behind.

    Examples
    --------
    >>> with VideoSink("/tmp/fastviz-doc.mp4", fps=10, size=(4, 6)) as sink:
    ...     sink.write(np.zeros((4, 6, 3), np.uint8))
    >>> sink.frames_written, sink.codec, sink.pix_fmt
    (1, 'libx264', 'yuv420p')
    """

    def __init__(
        self,
        path: str | os.PathLike,
        fps: float,
        size: tuple[int, int],
        codec: str | None = None,
        keep_partial: bool = False,
        threads: int | None = None,
    ) -> None:
        self.path = Path(path)
        default = codec_for(self.path)
        self.container_format = _CONTAINERS[self.path.suffix.lower()]
        self.codec = default if codec is None else check_codec(codec)
        self.pix_fmt, self._codec_options = _pixel_format(self.codec)
        if threads is not None:
            if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
                raise InputError(f"encoder threads must be an int >= 1, got {threads!r}")
            self._codec_options["threads"] = str(threads)
        fps = _check_fps(fps)
        assert fps is not None
        self.fps = fps
        self._rate = Fraction(fps).limit_denominator(100_000)
        self.size = _check_size(size)
        rows, cols = _padding_multiple(self.pix_fmt)
        height, width = self.size
        self.frame_size = (-(-height // rows) * rows, -(-width // cols) * cols)
        _check_output_folder("video", self.path)
        if self.path.is_dir() and not self.path.is_symlink():
            raise OutputError(f"cannot write video {self.path}: it is a folder", errno.EISDIR)
        self.keep_partial = bool(keep_partial)
        self.frames_written = 0
        self.kept_frames: int | None = None
        self._out: AtomicFile | None = None
        self._container = None
        self._stream = None
        self._readers: list = []
        self._checked = 0
        self._failed: str | None = None  # why a write failed: the sink takes no more frames
        self._muxer_file: _MuxerFile | None = None

    @property
    def tmp_path(self) -> Path | None:
        return None if self._out is None else self._out.path

    # ---- opening

    def __enter__(self) -> VideoSink:
        if self._out is not None:
            raise RuntimeError("VideoSink is already open")
        self.frames_written = 0
        self.kept_frames = None
        self._failed = None
        self._out = AtomicFile(self.path, what="video")
        try:
            with deferred_signals():
                self._muxer_file = _MuxerFile(self._out.file)
                self._container = av.open(
                    self._muxer_file,
                    "w",
                    format=self.container_format,
                    container_options=_CONTAINER_OPTIONS.get(self.container_format, {}),
                    io_open=self._io_open,
                )
                stream = self._container.add_stream(self.codec, rate=self._rate, options=self._codec_options)
                stream.height, stream.width = self.frame_size
                stream.pix_fmt = self.pix_fmt
                self._stream = stream
                self._container.start_encoding()
        except BaseException as exc:
            io_error = None if self._muxer_file is None else self._muxer_file.error
            self._abandon()
            if isinstance(exc, FastvizError):
                raise
            if io_error is not None:  # the file refused the header (disk full, ...), or an interrupt
                raise self._write_error(io_error) from None
            if isinstance(exc, (av.error.FFmpegError, OSError, ValueError)):
                raise OutputError(
                    f"cannot write video {self.path}: codec {self.codec} ({self.pix_fmt}) cannot be written to "
                    f"{self.path.suffix} ({self.container_format}): {_reason(exc)}"
                ) from None
            raise
        return self

    def _io_open(self, url: str, flags: int, options: dict):
        """Files the muxer opens besides the output: MP4's faststart pass reads the output back."""
        if flags & _AVIO_FLAG_WRITE or self._out is None:
            raise OSError(errno.EPERM, f"the {self.container_format} muxer asked to write another file ({url})")
        self._out.file.flush()  # FFmpeg flushed its own buffer; the reader must see Python's too
        reader = self._out.reader()
        self._readers.append(reader)
        return reader

    # ---- writing

    def write(self, frame: np.ndarray) -> None:
        """Append one frame: numpy uint8 ``(H, W, 3)`` RGB of the sink's ``size``.

        Raises
        ------
        InputError
            For a frame of another dtype or shape.
        OutputError
            When the encoder or the file refuses it (disk full, ...), naming the output.
        """
        if self._out is None or self._stream is None:
            raise RuntimeError("VideoSink.write outside its `with` block")
        frame = _check_frame(frame, self.size, f"VideoSink({self.path.name})")
        if self.frame_size != self.size:
            padded = np.zeros((*self.frame_size, 3), np.uint8)
            padded[: self.size[0], : self.size[1]] = frame
            frame = padded
        picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        picture.pts = self.frames_written
        picture.time_base = 1 / self._rate
        if self._failed is not None:
            raise OutputError(f"cannot write video {self.path}: an earlier write failed ({self._failed})")
        try:
            with deferred_signals():
                for packet in self._stream.encode(picture):
                    self._container.mux(packet)
        except (av.error.FFmpegError, OSError) as exc:
            error = self._write_error(exc)
            self._failed = _reason(exc)
            raise error from None
        self.frames_written += 1

    def _write_error(self, exc: BaseException) -> BaseException:
        """The error to raise for a failed encoder/muxer call: a KeyboardInterrupt met inside
        PyAV's I/O callbacks as itself, else one line naming the output."""
        if self._muxer_file is not None and self._muxer_file.interrupted is not None:
            return self._muxer_file.interrupted
        if isinstance(exc, OutputError):
            return exc
        return OutputError(
            f"cannot write video {self.path}: {_reason(exc)} (after {self.frames_written} frames)",
            getattr(exc, "errno", None),
        )

    # ---- closing

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._out is None:
            return False
        if exc_type is None:
            if self.frames_written == 0:
                self._abandon()
                raise OutputError(f"cannot write video {self.path}: no frame was written")
            self._finish(strict=True)
            return False
        if self.keep_partial and self.frames_written > 0:
            try:
                self.kept_frames = self._finish(strict=False)
            except BaseException as err:  # the original exception goes on; say why nothing was kept
                self.kept_frames = 0
                if hasattr(exc, "add_note"):  # Python >= 3.11
                    exc.add_note(f"fastviz: the partial video {self.path} could not be kept: {_reason(err)}")
        else:
            self._abandon()
        return False

    def _finish(self, strict: bool) -> int:
        """Flush, close, check, rename; return the frames in the file. Everything is removed if
        any step fails."""
        out = self._out
        assert out is not None
        try:
            try:
                with deferred_signals():
                    for packet in self._stream.encode(None):
                        self._container.mux(packet)
                    container, self._container = self._container, None
                    container.close()
            except (av.error.FFmpegError, OSError) as exc:
                raise self._write_error(exc) from None
            self._raise_interrupted()
            out.check = lambda atomic: self._check(atomic, strict)
            out.commit()  # removes the temporary itself when the check or the rename fails
        except BaseException:
            self._abandon()
            raise
        self._out = None
        self._stream = None
        return self._checked

    def _check(self, out: AtomicFile, strict: bool) -> None:
        """Demux the file written (no decoding) and count its video packets."""
        reader = out.reader()
        try:
            with deferred_signals(), av.open(reader, "r", format=self.container_format) as container:
                stream = container.streams.video[0]
                count = sum(1 for packet in container.demux(stream) if packet.size)
        except (av.error.FFmpegError, OSError, IndexError) as exc:
            if reader.interrupted is not None:
                raise reader.interrupted from None
            raise OutputError(
                f"cannot write video {self.path}: the file written cannot be read back ({_reason(exc)})"
            ) from None
        if strict and count != self.frames_written:
            raise OutputError(
                f"cannot write video {self.path}: the file written holds {count} frames, {self.frames_written} were given"
            )
        if count < 1:
            raise OutputError(f"cannot write video {self.path}: the file written holds no frame")
        self._checked = count

    def _raise_interrupted(self) -> None:
        for reader in self._readers:
            if reader.interrupted is not None:
                raise reader.interrupted
        self._readers.clear()

    def _abandon(self) -> None:
        """Close the muxer without keeping anything and remove the temporary (an exception is
        already on its way: a failure to close is part of the same failure)."""
        container, self._container = self._container, None
        self._stream = None
        self._readers.clear()
        out, self._out = self._out, None
        if container is not None:
            if out is not None:
                # the muxer's trailer goes nowhere: no second error (and no PyAV message on
                # stderr) from a full or failing disk
                out.redirect_to_null()
            with contextlib.suppress(av.error.FFmpegError, OSError, ValueError):
                container.close()
        if out is not None:
            out.discard()


class ImageFolderSink:
    """Write RGB frames as numbered PNG files into a new folder, all or nothing.

    A context manager. Entering creates an exclusive temporary folder beside ``path``
    (:class:`fastviz.tempfiles.AtomicFolder`); :meth:`write` adds ``frame_000000.png``,
    ``frame_000001.png``, ... (lossless, 8-bit RGB); when the block ends normally the folder's
    file count is checked and the temporary folder is renamed onto ``path``. When it ends with an
    exception the temporary folder is removed (``keep_partial=True``: the frames so far are kept
    under ``path``, :attr:`kept_frames`).

    Parameters
    ----------
    path : path
        The folder to create; it must not exist, or be an empty folder. Its parent must exist.
    size : (int, int), optional
        ``(height, width)`` of every frame; default: the first frame's.
    keep_partial : bool
        On an exception, keep the frames written so far.

    Attributes
    ----------
    frames_written : int
    kept_frames : int or None
        As :class:`VideoSink`.
    files : list of str
        The file names written, in order.

    Raises
    ------
    InputError
        For a frame that is not uint8 ``(H, W, 3)`` or not of the size of the others.
    OutputError
        For a missing parent folder, a non-empty folder, a file or a symbolic link at ``path``,
        and every failed write (disk full, read-only file system, ...); nothing is left behind.

    Examples
    --------
    >>> import shutil; shutil.rmtree("/tmp/fastviz-doc-frames", ignore_errors=True)
    >>> with ImageFolderSink("/tmp/fastviz-doc-frames") as sink:
    ...     sink.write(np.zeros((4, 6, 3), np.uint8))
    >>> sorted(os.listdir("/tmp/fastviz-doc-frames"))
    ['frame_000000.png']
    """

    #: Name of frame ``i``.
    NAME_FORMAT = "frame_{:06d}.png"

    def __init__(self, path: str | os.PathLike, size: tuple[int, int] | None = None, *, keep_partial: bool = False) -> None:
        self.path = Path(path)
        self.size = None if size is None else _check_size(size)
        self.keep_partial = bool(keep_partial)
        self.frames_written = 0
        self.kept_frames: int | None = None
        self.files: list[str] = []
        self._out: AtomicFolder | None = None
        _check_output_folder("image folder", self.path)

    @property
    def tmp_path(self) -> Path | None:
        return None if self._out is None else self._out.path

    def __enter__(self) -> ImageFolderSink:
        if self._out is not None:
            raise RuntimeError("ImageFolderSink is already open")
        self.frames_written = 0
        self.kept_frames = None
        self.files = []
        self._out = AtomicFolder(self.path, what="image folder", check=self._check)
        return self

    def write(self, frame: np.ndarray) -> None:
        """Add one frame: numpy uint8 ``(H, W, 3)`` RGB, written as the next PNG file.

        Raises
        ------
        InputError, OutputError
            See the class.
        """
        if self._out is None:
            raise RuntimeError("ImageFolderSink.write outside its `with` block")
        frame = _check_frame(frame, self.size, f"ImageFolderSink({self.path.name})")
        if self.size is None:
            self.size = (int(frame.shape[0]), int(frame.shape[1]))
        ok, png = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR))
        if not ok:  # pragma: no cover - OpenCV encodes any uint8 3-channel image
            raise OutputError(f"cannot write image folder {self.path}: PNG encoding failed")
        name = self.NAME_FORMAT.format(self.frames_written)
        self._out.write_file(name, png.tobytes())
        self.files.append(name)
        self.frames_written += 1

    def _check(self, out: AtomicFolder) -> None:
        present = sorted(os.listdir(out.path))
        if present != sorted(self.files):
            raise OutputError(
                f"cannot write image folder {self.path}: it holds {len(present)} files, {len(self.files)} were written"
            )

    def __exit__(self, exc_type, exc, tb) -> bool:
        out, self._out = self._out, None
        if out is None:
            return False
        if exc_type is None:
            if self.frames_written == 0:
                out.discard()
                raise OutputError(f"cannot write image folder {self.path}: no frame was written")
            out.commit()
            return False
        if self.keep_partial and self.frames_written > 0:
            try:
                out.commit()
                self.kept_frames = self.frames_written
            except BaseException as err:
                self.kept_frames = 0
                if hasattr(exc, "add_note"):
                    exc.add_note(f"fastviz: the partial image folder {self.path} could not be kept: {_reason(err)}")
        else:
            out.discard()
        return False


class MapsSink:
    """Stream saliency maps to an ``.npz`` file, all or nothing, without holding them in memory.

    The file holds ``maps``: float16 ``(N, H, W)`` (the raw maps, as given, rounded to float16),
    ``index``: int64 ``(N,)`` (the frame number of each map) and, when predictions were given,
    ``prediction``: float32 ``(N,)``. It loads with ``np.load(path)`` (no pickling needed:
    ``allow_pickle=False`` works).

    Maps are appended as raw little-endian float16 to an unnamed scratch file in the output's
    folder (``O_TMPFILE``: nothing to clean up even after ``kill -9``); when the block ends
    normally the ``.npz`` is written from it through an exclusive temporary
    (:class:`fastviz.tempfiles.AtomicFile`), checked (every member's CRC, shapes and dtypes) and
    renamed onto ``path``. On an exception nothing is left (``keep_partial=True``: the maps so far
    are kept, :attr:`kept_frames`).

    Parameters
    ----------
    path : path
        Output file, ending in ``.npz``; its folder must exist.
    size : (int, int), optional
        ``(H, W)`` of every map; default: the first map's.
    keep_partial : bool
        On an exception, keep the maps written so far.
    compress : bool
        Deflate the members (``np.savez_compressed``'s format); default stored, like
        ``np.savez``.

    Attributes
    ----------
    frames_written : int
        Maps written so far.
    kept_frames : int or None
        As :class:`VideoSink`.

    Raises
    ------
    InputError
        For a path not ending in ``.npz``; maps that are not real numbers of shape ``(n, H, W)``
        or ``(H, W)``, or whose finite values exceed float16's range (65504: normalise first);
        an index that is not ``n`` integers; predictions given for some batches only, or not
        ``n`` numbers.
    OutputError
        For a missing folder and every failed write (disk full, ...); nothing is left behind.

    Examples
    --------
    >>> with MapsSink("/tmp/fastviz-doc.npz") as sink:
    ...     sink.write(np.ones((2, 3, 4)), index=[0, 1], prediction=[0.5, -0.5])
    >>> data = np.load("/tmp/fastviz-doc.npz", allow_pickle=False)
    >>> data["maps"].shape, data["maps"].dtype, data["index"].tolist(), data["prediction"].tolist()
    ((2, 3, 4), dtype('float16'), [0, 1], [0.5, -0.5])
    """

    #: Bytes copied at a time from the scratch file into the ``.npz``.
    COPY_CHUNK = 1 << 20

    def __init__(
        self,
        path: str | os.PathLike,
        size: tuple[int, int] | None = None,
        *,
        keep_partial: bool = False,
        compress: bool = False,
    ) -> None:
        self.path = Path(path)
        if self.path.suffix.lower() != ".npz":
            raise InputError(f"cannot write maps {self.path}: the maps file is a NumPy .npz file, name it *.npz")
        self.size = None if size is None else _check_size(size)
        self.keep_partial = bool(keep_partial)
        self.compress = bool(compress)
        _check_output_folder("maps file", self.path)
        if self.path.is_dir() and not self.path.is_symlink():
            raise OutputError(f"cannot write maps file {self.path}: it is a folder", errno.EISDIR)
        self.frames_written = 0
        self.kept_frames: int | None = None
        self._out: AtomicFile | None = None
        self._scratch = None
        self._index: list[np.ndarray] = []
        self._prediction: list[np.ndarray] | None = None

    @property
    def tmp_path(self) -> Path | None:
        return None if self._out is None else self._out.path

    def __enter__(self) -> MapsSink:
        if self._out is not None:
            raise RuntimeError("MapsSink is already open")
        self.frames_written = 0
        self.kept_frames = None
        self._index = []
        self._prediction = None
        self._out = AtomicFile(self.path, what="maps file", check=self._check)
        try:
            # unbuffered: a write error shows at once, and closing has nothing left to flush
            self._scratch = tempfile.TemporaryFile(dir=self.path.parent, buffering=0)
        except OSError as exc:
            self._out.discard()
            self._out = None
            raise OutputError(f"cannot write maps file {self.path}: {_reason(exc)}", exc.errno) from None
        except BaseException:
            self._out.discard()
            self._out = None
            raise
        return self

    def write(self, maps, index, prediction=None) -> None:
        """Append maps.

        Parameters
        ----------
        maps : array-like
            Real numbers, ``(n, H, W)`` or one ``(H, W)`` map (a CPU tensor works too).
        index : int or array-like
            The ``n`` frame numbers, integers.
        prediction : array-like, optional
            The model's output for each of the ``n`` frames; give it for every batch or none.

        Raises
        ------
        InputError, OutputError
            See the class.
        """
        if self._out is None or self._scratch is None:
            raise RuntimeError("MapsSink.write outside its `with` block")
        who = f"MapsSink({self.path.name})"
        maps = np.asarray(maps)
        if maps.ndim == 2:
            maps = maps[None]
        if maps.ndim != 3 or maps.shape[0] < 1 or not (
            np.issubdtype(maps.dtype, np.floating) or np.issubdtype(maps.dtype, np.integer)
        ):
            raise InputError(f"{who} takes real maps of shape (n, H, W) or (H, W), got {maps.dtype} {maps.shape}")
        if self.size is not None and maps.shape[1:] != self.size:
            raise InputError(f"{who}: maps of shape {maps.shape[1:]} but the others are {self.size}")
        n = maps.shape[0]
        index = np.asarray(index)
        if index.ndim == 0:
            index = index.reshape(1)
        if index.shape != (n,) or not np.issubdtype(index.dtype, np.integer):
            raise InputError(f"{who}: index must be {n} integers (one per map), got {index.dtype} {index.shape}")
        if prediction is not None:
            prediction = np.asarray(prediction)
            if prediction.ndim == 0:
                prediction = prediction.reshape(1)
            if prediction.shape != (n,) or not (
                np.issubdtype(prediction.dtype, np.floating) or np.issubdtype(prediction.dtype, np.integer)
            ):
                raise InputError(f"{who}: prediction must be {n} numbers (one per map), got {prediction.dtype} {prediction.shape}")
        if self.frames_written and (prediction is None) != (self._prediction is None):
            raise InputError(f"{who}: give predictions with every batch of maps or with none")
        finite = np.isfinite(maps)
        if np.issubdtype(maps.dtype, np.integer) or finite.all():
            peak = float(np.abs(maps).max())
        else:
            peak = float(np.abs(maps[finite]).max()) if finite.any() else 0.0
        if peak > FLOAT16_MAX:
            raise InputError(f"{who}: map values up to {peak:.6g} exceed float16's range ({FLOAT16_MAX:.0f}); normalise them first")
        data = np.ascontiguousarray(maps, dtype="<f2").tobytes()
        try:
            view = memoryview(data)
            while view:  # an unbuffered write may write part of the data
                view = view[self._scratch.write(view) :]
        except BaseException as exc:
            # back to the maps written so far, so the file stays consistent (keep_partial)
            with contextlib.suppress(OSError):
                self._scratch.truncate(self._scratch.seek(self.frames_written * int(np.prod(maps.shape[1:])) * 2))
            if isinstance(exc, OSError):
                raise OutputError(f"cannot write maps file {self.path}: {_reason(exc)}", exc.errno) from None
            raise
        if self.size is None:
            self.size = (int(maps.shape[1]), int(maps.shape[2]))
        self._index.append(index.astype(np.int64))
        if prediction is not None:
            if self._prediction is None:
                self._prediction = []
            self._prediction.append(prediction.astype(np.float32))
        self.frames_written += n

    # ---- closing

    def _members(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        n = self.frames_written
        members = {"maps": ("<f2", (n, *self.size)), "index": ("<i8", (n,))}
        if self._prediction is not None:
            members["prediction"] = ("<f4", (n,))
        return members

    def _write_npz(self, out: AtomicFile) -> None:
        n = self.frames_written
        members = self._members()
        arrays = {"index": np.concatenate(self._index)[:n].astype("<i8")}
        if self._prediction is not None:
            arrays["prediction"] = np.concatenate(self._prediction)[:n].astype("<f4")
        compression = zipfile.ZIP_DEFLATED if self.compress else zipfile.ZIP_STORED
        self._scratch.seek(0)
        with zipfile.ZipFile(out.file, "w", compression=compression, allowZip64=True) as archive:
            for name, (descr, shape) in members.items():
                with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array_header_1_0(
                        member, {"descr": descr, "fortran_order": False, "shape": shape}
                    )
                    if name == "maps":
                        left = n * int(np.prod(shape[1:])) * 2
                        while left:
                            chunk = self._scratch.read(min(left, self.COPY_CHUNK))
                            if not chunk:
                                raise OutputError(f"cannot write maps file {self.path}: its scratch data ended early")
                            member.write(chunk)
                            left -= len(chunk)
                    else:
                        member.write(arrays[name].tobytes())

    def _check(self, out: AtomicFile) -> None:
        """Every member's CRC, and each array's header (shape, dtype) read back from the file."""
        try:
            with zipfile.ZipFile(io.BufferedReader(out.reader()), "r") as archive:
                bad = archive.testzip()
                if bad is not None:
                    raise OutputError(f"cannot write maps file {self.path}: member {bad} is damaged")
                found = {}
                for name in archive.namelist():
                    with archive.open(name) as member:
                        version = np.lib.format.read_magic(member)
                        read_header = (
                            np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                        )
                        shape, _, dtype = read_header(member)
                    found[name.removesuffix(".npy")] = (np.dtype(dtype).str, tuple(shape))
        except (zipfile.BadZipFile, ValueError, OSError) as exc:
            if isinstance(exc, OutputError):
                raise
            raise OutputError(f"cannot write maps file {self.path}: the file written cannot be read back ({_reason(exc)})") from None
        expected = {k: (np.dtype(d).str, s) for k, (d, s) in self._members().items()}
        if found != expected:
            raise OutputError(f"cannot write maps file {self.path}: the file written holds {found}, expected {expected}")

    def _finish(self) -> None:
        out = self._out
        assert out is not None
        try:
            try:
                self._write_npz(out)
            except OSError as exc:
                if isinstance(exc, OutputError):
                    raise
                raise OutputError(f"cannot write maps file {self.path}: {_reason(exc)}", exc.errno) from None
            out.commit()
        except BaseException:
            out.discard()
            raise
        finally:
            self._close_scratch()
            self._out = None

    def _close_scratch(self) -> None:
        scratch, self._scratch = self._scratch, None
        if scratch is not None:
            scratch.close()  # unnamed: closing frees it

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._out is None:
            return False
        if exc_type is None:
            if self.frames_written == 0:
                self._out.discard()
                self._out = None
                self._close_scratch()
                raise OutputError(f"cannot write maps file {self.path}: no map was written")
            self._finish()
            return False
        if self.keep_partial and self.frames_written > 0:
            try:
                self._finish()
                self.kept_frames = self.frames_written
            except BaseException as err:
                self.kept_frames = 0
                if hasattr(exc, "add_note"):
                    exc.add_note(f"fastviz: the partial maps file {self.path} could not be kept: {_reason(err)}")
        else:
            self._out.discard()
            self._out = None
            self._close_scratch()
        return False
