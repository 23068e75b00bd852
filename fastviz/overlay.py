"""Overlay videos: a saliency method over every frame of a source, rendered and written out.

This is the file-to-file driver behind ``fastviz overlay``: frames are read in batches
(:mod:`fastviz.video`), turned into model input (``model.preprocess``), explained by a
registered method (:func:`fastviz.explain`), drawn (:func:`fastviz.render.render`) and written
to a sink — a video file, a folder of PNG images, and optionally the raw maps as ``.npz``. Every
output is created exclusively under a temporary name in its own folder, checked, and renamed
only when complete; on an error, an interrupt or SIGTERM/SIGHUP nothing is left behind (or,
with ``keep_partial=True``, the frames finished so far under the final name).

Everything that can be checked is checked before any output is created: the method takes the
options given, the input opens (a truncated video is reported when opened), and the first batch
goes through the model.

>>> import fastviz as fv
>>> model = fv.models.load("pilotnet-carracing")
>>> result = fv.write_overlay("/tmp/fastviz-doc.mp4", model=model, max_frames=4, progress=False)
>>> result.frames, result.output.name
(4, 'fastviz-doc.mp4')
"""

from __future__ import annotations

import collections
import inspect
import itertools
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import render as rd
from .errors import InputError
from .postprocess import Smoother

__all__ = [
    "AUTO_SCALE_TARGET",
    "BACKPROJECTION",
    "DEFAULT_METHOD",
    "MAX_PICTURE_SIDE",
    "OverlayResult",
    "check_method_options",
    "is_folder_output",
    "method_option_names",
    "write_overlay",
]

#: The method ``fastviz overlay`` uses when none is given; chosen by measurement on the bundled
#: log (``scripts/compare_methods.py``, ``docs/method-choice.md``).
DEFAULT_METHOD = "saliency"

#: The model-free method: frames -> maps with OpenCV, no model forward (not in the registry).
BACKPROJECTION = "backprojection"

#: The latency budget of the pipeline under ``write_overlay`` (ms): large, so its micro-batches
#: grow to ``batch`` frames; a file converter wants throughput, not a deadline.
PIPELINE_LATENCY_MS = 600_000.0

#: Frames are enlarged by a whole factor up to about this many pixels on their long side, unless
#: ``scale`` is given (CarRacing's 96 x 96 frames: x4).
AUTO_SCALE_TARGET = 384

#: The longest side, in pixels, of a rendered picture (H.264 level 6.2 allows 8,192 x 4,320).
MAX_PICTURE_SIDE = 8192


@dataclass
class OverlayResult:
    """What :func:`write_overlay` wrote.

    Attributes
    ----------
    output : pathlib.Path
        The video file or image folder written.
    frames : int
        Frames rendered and written.
    seconds : float
        Wall-clock time from the call to the last frame written, in seconds.
    maps : pathlib.Path or None
        The ``.npz`` of raw maps, when asked for.
    method : str
        The method used.
    """

    output: Path
    frames: int
    seconds: float
    maps: Path | None = None
    method: str = DEFAULT_METHOD

    @property
    def frames_per_s(self) -> float:
        """Frames written per second of wall-clock time."""
        return self.frames / max(self.seconds, 1e-9)


def is_folder_output(path: str | Path) -> bool:
    """Whether an output path names a folder of images: it ends with a path separator, or it is an
    existing folder."""
    text = str(path)
    return text.endswith(("/", "\\")) or Path(text).is_dir()


def _method_function(method: str):
    if method == BACKPROJECTION:
        from .methods.backprojection import backprojection_maps

        return backprojection_maps
    from .methods.registry import get

    return get(method)


def method_option_names(method: str) -> set[str] | None:
    """Keywords ``method`` takes; ``None`` when it takes any (``**kwargs``).

    Raises
    ------
    UnknownNameError
        For an unregistered method.
    """
    fn = _method_function(method)
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # no signature to check against
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return {n for n in params if n not in ("model", "x", "frames")}


def check_method_options(method: str, options) -> set[str] | None:
    """Check that ``method`` takes every keyword in ``options``; returns
    :func:`method_option_names`.

    Raises
    ------
    InputError
        Naming the options the method does not take.
    UnknownNameError
        For an unregistered method.
    """
    accepted = method_option_names(method)
    if accepted is not None:
        unknown = sorted(set(options) - accepted)
        if unknown:
            raise InputError(f"method {method!r} takes no option {', '.join(map(repr, unknown))}")
    return accepted


def _check_scale(scale, height: int, width: int, layout: str) -> int:
    if scale is None:
        scale = max(1, AUTO_SCALE_TARGET // max(height, width))
    elif isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise InputError(f"scale must be a whole number >= 1, got {scale!r}")
    panels = 3 if layout == "side-by-side" else 1
    longest = max(height * scale, width * scale * panels)
    if longest > MAX_PICTURE_SIDE:
        largest = max(1, MAX_PICTURE_SIDE // max(height, width * panels))
        raise InputError(
            f"scale {scale} makes {width}x{height} frames a {width * scale * panels}x{height * scale} picture; "
            f"the limit is {MAX_PICTURE_SIDE} px a side (largest scale for this input and layout: {largest})"
        )
    return int(scale)


def _predict(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray | None:
    """The model's single output per frame (float32 (B,)), or ``None`` for other models."""
    with torch.no_grad():
        out = model(x)
    if not isinstance(out, torch.Tensor) or out.ndim == 0 or out.shape[0] != x.shape[0]:
        return None
    out = out.reshape(out.shape[0], -1)
    if out.shape[1] != 1:
        return None
    return out[:, 0].float().cpu().numpy()


def _units(method: str, options: dict, model: torch.nn.Module | None) -> str:
    """What a map's values are measured in, for the legend."""
    if method == "occlusion":
        return getattr(model, "output_units", None) or "output units"
    if method in ("visual_backprop", "hypercolumns", BACKPROJECTION):
        return "relative"
    if method == "saliency" and getattr(model, "output_units", None):
        return f"{model.output_units}/unit"  # |d output / d input|, the input in [0, 1] per channel
    return "a.u."


def _signed(method: str, options: dict) -> bool | None:
    """Whether the method's maps are signed (a diverging colour map centred on zero); ``None``: by
    each map's sign."""
    if method == "occlusion":
        return options.get("score", "delta") == "delta"
    if method == "cam":
        return True  # the raw class-weighted sum, no ReLU
    return None


def _recorded_steering(source) -> np.ndarray | None:
    """The drive log's recorded steering (radians) for a video input with a ``.csv`` beside it."""
    from .data import read_steering

    if not source.path.is_file():
        return None
    return read_steering(source.path, source.frame_count)


def _keep_note(exc: BaseException, sinks) -> None:
    """Attach ``(path, frames)`` of every partial output kept under its final name to ``exc``."""
    kept = [(s.path, s.kept_frames) for s in sinks if s is not None and s.kept_frames]
    if kept:
        exc.fastviz_kept = kept  # type: ignore[attr-defined]


def write_overlay(
    output: str | Path,
    source: str | Path | None = None,
    *,
    model: torch.nn.Module | None = None,
    method: str = DEFAULT_METHOD,
    options: dict | None = None,
    layout: str = "overlay",
    batch: int = 16,
    max_frames: int | None = None,
    scale: int | None = None,
    alpha: float = 0.8,
    colormap: str | None = "auto",
    opacity: str = "value",
    clip: tuple[float, float] | None = (0.0, 99.0),
    vrange: tuple[float, float] | str | None = "frame",
    fps: float | None = None,
    legend: bool = True,
    gauge: bool = False,
    save_maps: str | Path | None = None,
    codec: str | None = None,
    keep_partial: bool = False,
    progress: bool = True,
    smooth: str | None = None,
    smooth_alpha: float = 0.5,
) -> OverlayResult:
    """Explain every frame of a video, image folder or drive log and write the rendered overlay.

    Parameters
    ----------
    output : path
        A video file (``.mp4``: H.264, plays in browsers; ``.mkv``: FFV1, lossless; ``.avi``:
        Motion JPEG) or, ending with ``/`` or naming an existing empty folder, a folder of PNG
        images ``frame_000000.png``, ... Its parent folder must exist.
    source : path, optional
        A video file, an image folder or one image (:func:`fastviz.video.open_source`); ``None``:
        the bundled held-out drive log. A video with a drive-log ``.csv`` beside it (column
        ``steering_rad``) gives the recorded steering for the gauge.
    model : nn.Module
        With ``.preprocess(frames)`` (uint8 ``(N, H, W, 3)`` RGB -> float ``(N, C, h, w)``) and
        ``.transform.region(H, W)``, e.g. :func:`fastviz.models.load`. Not used (may be ``None``)
        for ``method="backprojection"``, which is model-free.
    method : str
        A registered method (:func:`fastviz.methods`) or ``"backprojection"``.
    options : dict, optional
        The method's own keywords (``layer``, ``windows``, ``target``, ``memory_budget``, ...).
    layout : {"overlay", "focus", "side-by-side"}
        See :func:`fastviz.render.render`.
    batch : int
        Frames per call of the method, >= 1.
    max_frames : int, optional
        Stop after this many frames.
    scale : int, optional
        Whole display enlargement; default: up to about :data:`AUTO_SCALE_TARGET` px on the long
        side. The picture may be at most :data:`MAX_PICTURE_SIDE` px a side.
    alpha, colormap, opacity, clip
        See :func:`fastviz.render.render`. ``colormap="auto"``: diverging blue-white-red centred
        on zero for signed maps such as occlusion's deltas, inferno for non-negative ones.
        ``opacity="value"``: a pixel's opacity is ``alpha * |u|`` (``u`` the map scaled to
        [-1, 1] or [0, 1]), so where the map is zero the frame shows as recorded. ``clip``: the
        percentiles each map is clipped to before colouring; by default the top 1% saturate, so
        a few extreme pixels (gradient maps have them) do not leave the rest dark.
    vrange : "frame", "first" or (float, float)
        The values the colours span: ``"frame"`` each frame's own range (the legend's numbers
        change with the frame); ``"first"`` fixed for the whole video from the first batch's maps
        (the 1st-99th percentile, or ``clip``); or fixed numbers in the map's units.
    fps : float, optional
        Output frames per second; default the input's.
    legend : bool
        Draw the colour bar with its units below each picture.
    gauge : bool
        Draw the steering gauge: the model's prediction (radians in, degrees shown, positive =
        right) and, where the input is a drive log, the recorded steering. Needs a model with one
        output.
    save_maps : path, optional
        Also write the raw maps (float16 ``(N, h, w)`` at the model's input resolution), the frame
        numbers (int64 ``(N,)``) and, for one-output models, the predictions (float32 ``(N,)``) to
        this ``.npz`` (:class:`fastviz.video.MapsSink`).
    codec : str, optional
        Another FFmpeg video encoder for the output video (``libx265``, ``mpeg4``, ...).
    keep_partial : bool
        When the run fails or is interrupted, keep the frames finished so far under the final
        names (the exception still propagates; its ``fastviz_kept`` attribute lists
        ``(path, frames)``). Default: nothing is left behind.
    progress : bool
        A tqdm progress bar (frames/s, ETA) on stderr.
    smooth : {"none", "ema", "mumford-shah", "mumford-shah+ema"}, optional
        Post-filter of the drawn maps (:class:`fastviz.postprocess.Smoother`): edge-preserving
        Mumford-Shah smoothing of each map (Ambrosio-Tortorelli), then an exponential moving
        average over frames against flicker. ``save_maps`` keeps the raw maps.
    smooth_alpha : float in (0, 1]
        The moving average's weight of the newest map (default 0.5: one frame of mean delay).

    Returns
    -------
    OverlayResult

    Raises
    ------
    InputError
        For bad options, an input that cannot be read (a truncated video is reported when opened),
        frames the model cannot take, an output that would overwrite the input.
    fastviz.tempfiles.OutputError
        When an output cannot be written (missing folder, read-only file system, disk full): nothing
        is left behind.
    UnknownNameError
        For an unknown method, layer or layout.
    """
    from tqdm import tqdm

    import fastviz

    from .stream import stream
    from .video import ImageFolderSink, MapsSink, VideoSink, codec_for, open_source

    started = time.perf_counter()
    options = dict(options or {})
    folder_output = is_folder_output(output)
    output = Path(output)
    if not folder_output:
        codec_for(output)  # an unknown extension fails before any work
    if not output.parent.is_dir():
        raise InputError(f"cannot write {output}: folder {output.parent} does not exist")
    if folder_output and output.is_dir():
        # the images are written into a new folder renamed onto this one at the end, which cannot
        # replace a mount point or the current folder: say so now, before any work
        if os.path.ismount(output) or output.resolve() == Path.cwd().resolve():
            what = "a mount point" if os.path.ismount(output) else "the current folder"
            raise InputError(f"cannot write images to {output}: it is {what}; name a new folder inside it, "
                             f"e.g. {output / 'frames'}/")
    if layout not in rd.LAYOUTS:
        raise InputError(f"unknown layout {layout!r} (known: {', '.join(rd.LAYOUTS)})")
    if method != BACKPROJECTION and model is None:
        raise InputError(f"method {method!r} needs a model")
    check_method_options(method, options)
    if gauge and model is None:
        raise InputError("the steering gauge needs a model's prediction; backprojection has none")
    maps_path = None if save_maps is None else Path(save_maps)
    smoother = Smoother(smooth, smooth_alpha)  # a bad setting fails before the source is opened

    source = open_source(source, fps=fps)
    targets = [output] + ([maps_path] if maps_path is not None else [])
    if source.path.resolve() in {t.resolve() for t in targets}:
        raise InputError(f"output {source.path} would overwrite the input")
    if maps_path is not None and maps_path.resolve() == output.resolve():
        raise InputError(f"the maps file and the output are the same file: {output}")
    height, width = source.shape[:2]
    region = (0, height, 0, width) if model is None else model.transform.region(height, width)
    scale = _check_scale(scale, height, width, layout)
    recorded = _recorded_steering(source) if gauge else None
    want_prediction = gauge or maps_path is not None

    def shown(maps: np.ndarray) -> np.ndarray:
        """What the pictures draw: the maps after ``smooth`` (the saved maps stay raw)."""
        return smoother(torch.from_numpy(maps)).numpy() if smoother.active else maps

    # decoding and the method run in the pipeline's threads (fastviz.stream, every frame in
    # order: policy "block", no pacing) while this thread draws and encodes
    first_started = time.time()
    pipeline = stream(model, source, method, policy="block", realtime=False, max_frames=max_frames,
                      max_latency_ms=PIPELINE_LATENCY_MS, max_batch=batch, predict=want_prediction, **options)
    sinks: list = [None, None]
    written = 0
    pictures_committed = False
    try:
        # the first batch fixes the colour scale ("first") and, with the first picture, the sinks
        results = iter(pipeline)  # one iterator: closing an iterator of a stream closes the stream
        head = list(itertools.islice(results, batch))
        first_maps, first_shown, first_prediction = _one(head, shown)
        if gauge and first_prediction is None:
            raise InputError("the steering gauge needs a model with a single output (a steering angle)")
        signed = _signed(method, options)
        if vrange == "frame" or vrange is None:
            fixed = None
        elif vrange == "first":
            lo, hi = rd.value_range(first_shown, signed=signed, clip=clip or (1.0, 99.0))
            fixed = (lo, hi) if lo < hi else None
        else:
            fixed = vrange
        look = dict(region=region, scale=scale, alpha=alpha, colormap=colormap, opacity=opacity, clip=clip,
                    signed=signed,
                    vrange=fixed, legend=legend, units=_units(method, options, model))

        def picture(i: int, frame: np.ndarray, m: np.ndarray, prediction) -> np.ndarray:
            dial = None
            if gauge:
                rec = float(recorded[i]) if recorded is not None and i < len(recorded) else None
                dial = (float(prediction), rec)
            return rd.render(frame, m, layout, gauge=dial, **look)

        shape = picture(0, head[0].frame, first_shown[0], None if first_prediction is None else first_prediction[0]).shape
        total = source.frame_count
        if max_frames is not None:
            total = max_frames if total is None else min(total, max_frames)
        if folder_output:
            sinks[0] = ImageFolderSink(output, size=shape[:2], keep_partial=keep_partial)
        else:
            sinks[0] = VideoSink(output, fps=source.fps, size=shape[:2], codec=codec, keep_partial=keep_partial,
                                 threads=encoder_threads())
        if maps_path is not None:
            sinks[1] = MapsSink(maps_path, keep_partial=keep_partial)
        # the maps sink is outermost: the picture sink commits first, and if that fails the maps are
        # discarded with it; if the maps then fail to commit, the pictures stay (complete and checked,
        # they may have replaced an earlier file: removing them would lose both) and the error says so
        with sinks[1] if sinks[1] is not None else _Nothing() as maps_sink:
            with sinks[0] as sink, tqdm(
                total=total, unit="frame", file=sys.stderr, disable=not progress, dynamic_ncols=True, desc=method
            ) as bar:
                # the bar appears only once the input is known good; count the first batch's time too
                bar.start_t = bar.last_print_t = first_started
                groups = itertools.chain([(head, first_maps, first_shown, first_prediction)],
                                         ((g, *_one(g, shown)) for g in _grouped(results, batch)))
                # drawing runs in its own thread, a group ahead of this one, which encodes and writes
                # each group's pictures, then its maps: both outputs always hold the same frames
                pending: collections.deque = collections.deque()

                def flush(keep: int) -> None:
                    nonlocal written
                    while len(pending) > keep:
                        group, pictures, maps, prediction = pending.popleft()
                        for future in pictures:
                            sink.write(future.result())
                        if maps_sink is not None:
                            index = np.array([r.index for r in group], dtype=np.int64)
                            maps_sink.write(maps, index=index, prediction=prediction)
                        written += len(group)
                        bar.update(len(group))

                with ThreadPoolExecutor(1, thread_name_prefix="fastviz-overlay-render") as draw:
                    try:
                        while True:
                            try:
                                group, maps, drawn, prediction = next(groups)
                            except StopIteration:
                                break
                            except BaseException:
                                # the source or the method failed (or Ctrl-C): the groups already
                                # computed are finished first, so --keep-partial keeps them
                                flush(keep=0)
                                raise
                            pictures = [draw.submit(picture, r.index, r.frame, m,
                                                    None if prediction is None else prediction[j])
                                        for j, (r, m) in enumerate(zip(group, drawn))]
                            pending.append((group, pictures, maps, prediction))
                            flush(keep=1)
                        flush(keep=0)
                    except BaseException:
                        draw.shutdown(wait=True, cancel_futures=True)
                        raise
            pictures_committed = True
    except BaseException as exc:
        if pictures_committed:  # only the maps' commit can fail after this
            exc.fastviz_written = [(sinks[0].path, written)]  # type: ignore[attr-defined]
        _keep_note(exc, sinks)
        pipeline._close_for(exc)
        raise
    finally:
        pipeline.close()
    return OverlayResult(output=output, frames=written, seconds=time.perf_counter() - started, maps=maps_path,
                         method=method)


def encoder_threads() -> int:
    """Threads for the overlay's video encoder: the cores this process may use, less two for the
    pipeline's other busy stages (the method and the drawing thread), at least one.

    On the 2-core development VM, libx264 with its default 3 threads encoded the bundled log's
    overlay at 251-291 frames/s end to end and with 1 thread at 295-308 (interleaved runs,
    2026-12-05): its threads only competed with the method and the drawing for the two cores.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores - 2)


def _grouped(results, size: int):
    """The stream's results in lists of ``size`` (the last may be shorter)."""
    return iter(lambda: list(itertools.islice(results, size)), [])


def _one(results, shown) -> tuple:
    """``(maps, drawn maps, predictions or None)`` of a list of stream results."""
    maps = np.stack([r.saliency_map for r in results])
    prediction = None if results[0].prediction is None else np.array([r.prediction for r in results], np.float32)
    return maps, shown(maps), prediction


class _Nothing:
    """A context manager that gives ``None`` (no maps sink)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info) -> bool:
        return False
