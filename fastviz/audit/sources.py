"""The inputs of an audit: drive logs, videos and image folders, laid end to end as one sequence
of frames.

Each input is described once (:func:`describe`: its kind, SHA-256, frame count, fps) before any
work, so the audit knows its total and a resumed run can tell whether its inputs changed. An
input that cannot be opened (a truncated or corrupt video, an unreadable image folder, a drive
log whose steering file does not match) is recorded with its error and contributes no frames;
the rest of the audit goes on. An input that does not exist is a usage error.

:class:`FrameReader` reads the global frame range of a store chunk, in order, already in the
model's input space; a frame that fails to decode part-way through a source ends that source (the
failure is recorded, its remaining frames are marked not ok), and because reading is sequential
and deterministic, a resumed run meets the same failure at the same frame.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import FastvizError, InputError, InputFileNotFoundError

__all__ = ["AuditSource", "FrameReader", "describe", "expand_inputs", "file_sha256"]

#: Suffixes of a text file that lists inputs, one per line.
LIST_SUFFIXES = (".txt", ".list")


@dataclass
class AuditSource:
    """One input of an audit.

    Attributes
    ----------
    path : str
        Absolute path of the video file, image folder or image.
    kind : str
        ``"drive_log"`` (a video with a ``.csv`` of recorded steering beside it), ``"video"`` or
        ``"images"``.
    sha256 : str
        SHA-256 of the file's bytes; for a drive log of the video's, then the ``.csv``'s; for a
        folder of the sorted list of ``name`` and SHA-256 of each image.
    frames : int
        Frames the audit takes from it (0 for a source that failed when opened).
    fps : float
        Frames per second (the container's, or 25 for images).
    error : str or None
        Why the source failed (when opened, or at the frame named), or ``None``.
    frames_read : int or None
        For a source that failed part-way: the frames read before the failure.
    """

    path: str
    kind: str
    sha256: str
    frames: int
    fps: float = 25.0
    error: str | None = None
    frames_read: int | None = None
    truth: np.ndarray | None = field(default=None, repr=False, compare=False)
    times: np.ndarray | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict:
        """JSON-ready fields, without the per-frame arrays."""
        d = asdict(self)
        d.pop("truth")
        d.pop("times")
        return d


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes, hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def expand_inputs(inputs: Sequence[str | os.PathLike] | str | os.PathLike | None) -> list[Path]:
    """The audit's input paths, in order.

    ``None`` or empty: the bundled held-out drive log. A text file (``.txt``, ``.list``) lists
    inputs, one per line, relative to its own folder; blank lines and lines starting with ``#``
    are skipped; a list may not name another list.

    Raises
    ------
    InputFileNotFoundError
        For an input or a listed input that does not exist.
    InputError
        For a list file that cannot be read or names another list.
    """
    from ..data import example_log_path

    if inputs is None or (not isinstance(inputs, (str, os.PathLike)) and len(inputs) == 0):
        return [example_log_path()]
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.suffix.lower() in LIST_SUFFIXES and path.is_file():
            try:
                lines = path.read_text().splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                raise InputError(f"cannot read input list {path}: {exc}") from None
            for number, line in enumerate(lines, 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                listed = Path(line) if Path(line).is_absolute() else path.parent / line
                if listed.suffix.lower() in LIST_SUFFIXES:
                    raise InputError(f"input list {path}, line {number}: names another list ({line}); lists do not nest")
                if not listed.exists():
                    raise InputFileNotFoundError(f"input list {path}, line {number}: {listed} not found")
                paths.append(listed)
        elif not path.exists():
            raise InputFileNotFoundError(f"input not found: {path}")
        else:
            paths.append(path)
    if not paths:
        raise InputError("the input lists name no inputs")
    return [p.absolute() for p in paths]


def _folder_sha256(files: Iterable[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(b"\0")
        h.update(file_sha256(f).encode())
        h.update(b"\n")
    return h.hexdigest()


def _log_times(csv_path: Path, n: int) -> np.ndarray | None:
    """The ``time_s`` column of a drive log's ``.csv`` (float64 ``(n,)``), or ``None``."""
    try:
        with open(csv_path, newline="") as f:
            rows = list(csv.DictReader(f))
        if len(rows) != n or not rows or "time_s" not in rows[0]:
            return None
        times = np.array([float(r["time_s"]) for r in rows], dtype=np.float64)
    except (OSError, ValueError, TypeError, UnicodeDecodeError, csv.Error):
        return None
    return times if np.isfinite(times).all() else None


def describe(path: Path) -> AuditSource:
    """Open ``path`` once: its kind, hash, frame count and, for a drive log, the recorded steering
    (the truth) and times. A source that cannot be opened comes back with ``frames=0`` and its
    ``error``; it is not raised.

    Raises
    ------
    InputError
        When a file of the input cannot be read at all to hash it (permissions, I/O error).
    """
    from ..data import read_steering
    from ..video import ImageFolderSource, open_source

    path = Path(path).absolute()
    steering_csv = path.with_suffix(".csv")
    kind = "images" if path.is_dir() else ("drive_log" if steering_csv.is_file() else "video")
    sha = ""
    try:
        if not path.is_dir():
            sha = file_sha256(path)
            if kind == "drive_log":
                sha = hashlib.sha256((sha + file_sha256(steering_csv)).encode()).hexdigest()
        source = open_source(path)
        if isinstance(source, ImageFolderSource) and path.is_dir():
            sha = _folder_sha256(source.files)
        frames = source.frame_count
        if frames is None:  # a container that does not say: count by reading
            frames = sum(1 for _ in source)
        truth = times = None
        if kind == "drive_log":
            truth = read_steering(path, frames)
            times = _log_times(steering_csv, frames)
        return AuditSource(path=str(path), kind=kind, sha256=sha, frames=int(frames), fps=float(source.fps),
                           truth=truth, times=times)
    except OSError as exc:
        raise InputError(f"cannot read input {path}: {exc.strerror or exc}") from None
    except FastvizError as exc:
        return AuditSource(path=str(path), kind=kind, sha256=sha, frames=0, error=str(exc))


@dataclass
class Batch:
    """Frames ``g0 .. g1`` of the audit, ready for the model.

    ``x`` holds only the frames that were read (``ok``); ``source``, ``index``, ``time_s`` and
    ``truth`` cover the whole range.
    """

    g0: int
    g1: int
    x: torch.Tensor
    ok: np.ndarray
    source: np.ndarray
    index: np.ndarray
    time_s: np.ndarray
    truth: np.ndarray


class FrameReader:
    """Reads global frame ranges of the audit's sources, in ascending order, in the model's input
    space.

    Parameters
    ----------
    sources : list of AuditSource
        In audit order; a source's frames count from the previous ones' end.
    preprocess : callable
        uint8 ``(n, H, W, 3)`` RGB -> float ``(n, C, h, w)`` on the model's device.
    on_failure : callable, optional
        ``on_failure(source_number, AuditSource)`` when a source fails part-way (its ``error``
        and ``frames_read`` are set first).
    """

    def __init__(self, sources: list[AuditSource], preprocess, on_failure=None) -> None:
        self.sources = sources
        self.preprocess = preprocess
        self.on_failure = on_failure
        self.offsets = np.concatenate([[0], np.cumsum([s.frames for s in sources])]).astype(np.int64)
        self.total = int(self.offsets[-1])
        self._open: tuple[int, Iterator[np.ndarray]] | None = None  # (source number, frame iterator)
        self._next = 0  # the next frame number the open iterator yields

    def close(self) -> None:
        if self._open is not None:
            close = getattr(self._open[1], "close", None)
            if close is not None:
                close()
        self._open = None

    def __enter__(self) -> FrameReader:
        return self

    def __exit__(self, *exc_info) -> bool:
        self.close()
        return False

    def _frames(self, k: int, start: int, stop: int) -> list[np.ndarray]:
        """Frames ``start .. stop`` of source ``k`` (fewer if it fails; the failure is recorded)."""
        from ..video import open_source

        src = self.sources[k]
        if src.frames_read is not None:  # failed part-way (now or in an earlier run): nothing from there on
            stop = min(stop, src.frames_read)
            if start >= stop:
                return []
        if self._open is None or self._open[0] != k or self._next > start:
            self.close()
            source = open_source(src.path)
            if start > 0:  # seek (a resumed audit, a Ray worker's chunk): the same frames as decoding from 0
                frames_from = (frame for _, frame in source.frames_at(range(start, src.frames)))
                self._open, self._next = (k, frames_from), start
            else:
                self._open, self._next = (k, iter(source)), 0
        frames: list[np.ndarray] = []
        it = self._open[1]
        try:
            while self._next < stop:
                frame = next(it)
                if self._next >= start:
                    frames.append(frame)
                self._next += 1
        except StopIteration:
            self._fail(k, f"ended after {self._next} of its {src.frames} frames")
        except FastvizError as exc:
            self._fail(k, str(exc))
        return frames

    def _fail(self, k: int, message: str) -> None:
        src = self.sources[k]
        src.error, src.frames_read = message, self._next
        self.close()
        if self.on_failure is not None:
            self.on_failure(k, src)

    def read(self, g0: int, g1: int) -> Batch:
        """Frames ``g0 .. g1`` (global numbers; reading on from the previous call decodes forward,
        anything else reopens the source at ``g0``'s frame, seeking where the container allows).

        Returns
        -------
        Batch
            ``x``: float ``(n_ok, C, h, w)`` on the model's device, the frames that were read;
            ``ok`` bool, ``source`` int32, ``index`` int64, ``time_s`` float64 (seconds),
            ``truth`` float32 (radians for a drive log, else NaN), each ``(g1 - g0,)``.
        """
        n = g1 - g0
        source = np.searchsorted(self.offsets, np.arange(g0, g1), side="right").astype(np.int32) - 1
        index = np.arange(g0, g1, dtype=np.int64) - self.offsets[source]
        ok = np.zeros(n, dtype=bool)
        time_s = np.full(n, np.nan)
        truth = np.full(n, np.nan, dtype=np.float32)
        parts: list[torch.Tensor] = []
        for k in np.unique(source):
            sel = np.flatnonzero(source == k)
            src = self.sources[k]
            start, stop = int(index[sel[0]]), int(index[sel[-1]]) + 1
            frames = self._frames(int(k), start, stop)
            got = sel[: len(frames)]
            ok[got] = True
            if src.times is not None:
                time_s[sel] = src.times[index[sel]]
            else:
                time_s[sel] = index[sel] / src.fps
            if src.truth is not None:
                truth[sel] = src.truth[index[sel]]
            if frames:
                parts.append(self.preprocess(np.stack(frames)))
        x = torch.cat(parts) if parts else torch.empty(0)
        return Batch(g0=g0, g1=g1, x=x, ok=ok, source=source, index=index, time_s=time_s, truth=truth)
