"""The concurrent overlay/live pipeline: saliency maps of a stream of frames, as they come.

:func:`stream` is a generator of results for use inside a loop of the user's own (a ROS node, a
car's drive loop, a web page's update)::

    source --decode thread--> [frames queue] --method thread--> [results] --sink thread--> consumer

* **decode** (thread ``fastviz-stream-N-decode``): reads the source. A camera, a URL or a
  simulator paces itself; a file or an array is read as fast as possible, or with
  ``realtime=True`` at its frame rate (frame ``i`` is released at ``start + i / fps``, which is
  its capture time).
* **method** (thread ``fastviz-stream-N-method``): takes micro-batches from the frames queue,
  runs ``model.preprocess``, the method (:func:`fastviz.explain`) and the model's prediction on
  the model's device, smooths the maps in frame order (:class:`fastviz.postprocess.Smoother`)
  and passes the results on in order.
* **sink** (optional, thread ``fastviz-stream-N-sink``): calls ``sink(result)`` for each result
  in order (drawing, publishing, writing a file); the consumer receives a result after the sink
  has handled it.

All queues are bounded and share one lock and condition (no busy waiting). Everything that can
be checked is checked before any thread starts: the settings, the method's options, the source
(it is opened and its first frame read), and the first frame goes through the model. That first
frame's result is frame 0's result.

Micro-batches by latency budget
-------------------------------
The method stage keeps an online estimate of the compute time of a batch of ``b`` frames,
``t(b) = a + c * b`` (:class:`BatchCost`: exponentially weighted least squares over the batches
measured, each weighing ``0.8`` times as much as the next newer one). When it takes frames
from the queue (oldest first) it takes the largest ``b`` such that::

    age(oldest frame taken) + t(b) <= max_latency_ms,    1 <= b <= min(queued, max_batch)

It never waits for more frames. Two guards keep the estimate honest:

* the linear model is trusted only up to twice the largest batch measured so far, so ``b``
  grows by at most a factor of two per step while the slope is still unknown (the first batch
  is one frame; while every batch measured had the same size, ``t(b)`` is taken as
  proportional to ``b``, an upper bound when the fixed cost ``a`` is positive). Frame 0's
  synchronous check is not measured: it carries the first call's one-off costs;
* when even ``b = 1`` cannot meet the budget (the oldest frame is already late), the stage is
  behind: it takes as many frames as one batch can compute within a whole budget
  (``max b with t(b) <= max_latency_ms``, at least 1), the batch with the best throughput that
  does not itself hold the next frames for longer than the budget.

The frames queue holds at most that budget batch size (at least one frame; one before the
first measurement): more frames could never go into one batch within the budget, they would
only wait. With ``policy="drop"``, when a new frame finds the queue full the oldest queued frame
is dropped (counted in :attr:`StreamStats.dropped` and listed in :attr:`Stream.dropped_indices`),
so a slow method drops frames rather than building a backlog, and the newest frame wins. With
``policy="block"`` the decode thread waits for room: every frame is processed, and latency
grows when the method is slower than the source.

Time
----
The stream starts when frame 0 is read (``time_s = 0``); a frame's capture time is when it was
read. A file or array read with ``realtime=True`` is a replay whose clock starts once frame 0
has been checked (so one-off costs of the first call do not make the first frames late): frame
``i`` is due at ``start + i / fps``, which is its capture time (``time_s = i / fps``). Latency is
measured from the capture time to the moment the result is shown: handed to the consumer, or,
with a sink, handled by the sink.

Shutdown and errors
-------------------
:meth:`Stream.close` stops every stage, joins the threads and then closes the source (a camera
or file is released); it runs when iteration ends, when a ``for`` loop over the stream breaks
or raises (``KeyboardInterrupt`` too), on ``with`` exit, and when a stage raises. An exception
in the source, the method or the sink stops the stream at once (results not yet yielded are
discarded) and is raised in the consumer: the same object, with its traceback.

>>> import fastviz as fv
>>> from fastviz.stream import stream
>>> model = fv.models.load("pilotnet-carracing")
>>> with stream(model, max_frames=6, policy="block") as s:
...     results = list(s)
>>> [r.index for r in results], results[0].saliency_map.shape, s.stats.processed
([0, 1, 2, 3, 4, 5], (66, 200), 6)
"""

from __future__ import annotations

import itertools
import math
import numbers
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

import cv2
import numpy as np
import torch

from .errors import InputError, positive_number
from .hooks import model_lock
from .methods.backprojection import backprojection_maps
from .overlay import BACKPROJECTION, DEFAULT_METHOD, _predict, check_method_options
from .postprocess import Smoother

__all__ = [
    "ArraySource",
    "BatchCost",
    "CaptureSource",
    "LiveSource",
    "RecordedSource",
    "Stream",
    "StreamResult",
    "StreamStats",
    "open_live_source",
    "stream",
]

#: Policies for a method slower than the source.
POLICIES = ("drop", "block")
#: End-to-end latencies kept for the percentiles in :class:`StreamStats` (the newest ones).
LATENCY_WINDOW = 10_000
#: Dropped frame numbers kept in :attr:`Stream.dropped_indices` (the newest ones).
DROPPED_WINDOW = 10_000
#: The recent frame rate in :class:`StreamStats` counts the frames shown in this many seconds.
FPS_WINDOW_S = 2.0

_STREAM_NUMBERS = itertools.count(1)


# --------------------------------------------------------------------------- results


class StreamResult(NamedTuple):
    """One frame's result.

    Attributes
    ----------
    index : int
        The frame's number in the source, from 0; dropped frames leave gaps.
    time_s : float
        Its capture time in seconds since the stream started: the time it was read, since frame
        0 was read; for a file or array read with ``realtime=True``, ``index / fps`` (see the
        module docstring, Time).
    frame : numpy.ndarray
        uint8 ``(H, W, 3)`` RGB, as decoded.
    saliency_map : numpy.ndarray
        float32 ``(h, w)`` in the model's input space, as :func:`fastviz.explain` returns it, after
        ``smooth`` (``method="backprojection"``: ``(H, W)`` over the frame, in [0, 1]).
    prediction : float or None
        The model's single output for the frame (PilotNet: the steering angle in radians,
        positive = right); ``None`` for models with several outputs and for backprojection.
    """

    index: int
    time_s: float
    frame: np.ndarray
    saliency_map: np.ndarray
    prediction: float | None


@dataclass(frozen=True)
class StreamStats:
    """A snapshot of a stream's counters (:attr:`Stream.stats`).

    Attributes
    ----------
    frames_in : int
        Frames read from the source so far.
    processed : int
        Frames the method has computed.
    shown : int
        Results handed on: to the consumer, after the sink handled them when there is a sink.
    dropped : int
        Frames dropped unprocessed (``policy="drop"``). At the end of a stream
        ``frames_in == processed + dropped``.
    elapsed_s : float
        Seconds since the stream started (see :attr:`StreamResult.time_s`), until it was closed.
    fps : float
        Results shown per second over the last :data:`FPS_WINDOW_S` seconds (before the close,
        once closed).
    fps_overall : float
        Results shown per second from the start to now (or the close).
    latency_ms_p50, latency_ms_p95, latency_ms_p99 : float
        Percentiles of the end-to-end latency in milliseconds, from a frame's capture to its
        result being shown, over the last :data:`LATENCY_WINDOW` results; NaN before any.
    batch_size : int
        The size of the micro-batch the method stage took last.
    mean_batch_size : float
        Frames per micro-batch so far (frame 0, checked alone before the threads start, counts
        as a batch of one).
    batches : int
        Micro-batches computed.
    queue_capacity : int
        The frames queue's current capacity.
    batch_fixed_ms, batch_per_frame_ms : float or None
        The current estimate ``t(b) = batch_fixed_ms + batch_per_frame_ms * b`` of a batch's
        compute time in milliseconds; ``None`` before a batch was measured.
    """

    frames_in: int
    processed: int
    shown: int
    dropped: int
    elapsed_s: float
    fps: float
    fps_overall: float
    latency_ms_p50: float
    latency_ms_p95: float
    latency_ms_p99: float
    batch_size: int
    mean_batch_size: float
    batches: int
    queue_capacity: int
    batch_fixed_ms: float | None
    batch_per_frame_ms: float | None

    def as_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (NaN becomes ``None``)."""
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


# --------------------------------------------------------------------------- batch cost


class BatchCost:
    """Online estimate of a micro-batch's compute time, ``t(b) = a + c * b`` seconds.

    Exponentially weighted least squares: each measurement ``(b, t)`` weighs ``forget`` times as
    much as the next newer one (0.8: about the last five batches count), so the estimate follows
    a device that warms up or slows down. While the batch sizes measured hardly differ (weighted
    variance below 0.1 frames²) the slope cannot be told from the fixed cost, and ``t(b)`` is
    taken as proportional to ``b`` (``a = 0``), an upper bound for the larger batches when the
    true fixed cost is positive. A fit with a negative fixed cost is replaced by the
    proportional one; a negative slope by zero. The model is trusted up to
    :meth:`trusted_limit`, twice the largest batch measured.

    Parameters
    ----------
    forget : float in (0, 1]
        The weight decay per newer measurement.

    Examples
    --------
    >>> cost = BatchCost()
    >>> for b in (1, 2, 4, 8):
    ...     cost.add(b, 0.010 + 0.005 * b)
    >>> [round(v, 6) for v in cost.coefficients()]
    [0.01, 0.005]
    >>> cost.largest(0.050, limit=64)  # 10 ms + 5 ms * 8 <= 50 ms
    8
    """

    def __init__(self, forget: float = 0.8) -> None:
        self.forget = float(forget)
        self._w = self._b = self._t = self._bb = self._bt = 0.0
        self.largest_seen = 0

    def add(self, batch: int, seconds: float) -> None:
        """Record that a batch of ``batch`` frames took ``seconds``."""
        f = self.forget
        b, t = float(batch), float(seconds)
        self._w = f * self._w + 1.0
        self._b = f * self._b + b
        self._t = f * self._t + t
        self._bb = f * self._bb + b * b
        self._bt = f * self._bt + b * t
        self.largest_seen = max(self.largest_seen, int(batch))

    def coefficients(self) -> tuple[float, float] | None:
        """``(a, c)`` in seconds and seconds per frame; ``None`` before any measurement."""
        if self._w == 0.0:
            return None
        mean_b, mean_t = self._b / self._w, self._t / self._w
        var = self._bb / self._w - mean_b * mean_b
        if var >= 0.1:
            c = (self._bt / self._w - mean_b * mean_t) / var
            a = mean_t - c * mean_b
            if c < 0.0:
                return max(mean_t, 0.0), 0.0
            if a >= 0.0:
                return a, c
        return 0.0, max(self._bt / self._bb, 0.0)

    def time(self, batch: int) -> float | None:
        """Estimated seconds for a batch of ``batch`` frames; ``None`` before any measurement."""
        coef = self.coefficients()
        return None if coef is None else coef[0] + coef[1] * batch

    def trusted_limit(self) -> int:
        """The largest batch the estimate extrapolates to: twice the largest measured (>= 1)."""
        return max(1, 2 * self.largest_seen)

    def largest(self, budget_s: float, limit: int) -> int:
        """The largest ``b`` in ``1 .. limit`` with ``t(b) <= budget_s``; 0 if none (or no estimate)."""
        coef = self.coefficients()
        if coef is None or limit < 1:
            return 0
        a, c = coef
        if a + c > budget_s:
            return 0
        if c <= 0.0:
            return int(limit)
        return int(max(1, min(limit, math.floor((budget_s - a) / c))))


# --------------------------------------------------------------------------- sources


@runtime_checkable
class LiveSource(Protocol):
    """What :func:`stream` reads frames from.

    Attributes
    ----------
    fps : float or None
        Frames per second if known; ``None`` for a capture paced by itself.
    live : bool
        True for cameras, URLs and simulators: frames arrive in real time by themselves (their
        capture time is when they are read, and ``realtime`` does not apply).

    Methods
    -------
    frames() -> Iterator[numpy.ndarray]
        uint8 ``(H, W, 3)`` RGB frames, all of one size. Called once; iterated by the decode
        thread (the first frame by the caller of :func:`stream`).
    close() -> None
        Releases the camera or file; idempotent. Called once the stream's threads have ended.
    feedback(index, prediction) -> None, optional
        For closed-loop sources (a simulator driven by the model): called by the method stage
        for each result, in frame order, as soon as its prediction is known.
    """

    fps: float | None
    live: bool

    def frames(self) -> Iterator[np.ndarray]: ...

    def close(self) -> None: ...


class ArraySource:
    """Frames from an array in memory.

    Parameters
    ----------
    frames : numpy.ndarray
        uint8 ``(N, H, W, 3)`` RGB, ``N >= 1``; the frames yielded are views of it.
    fps : float, optional
        Frames per second for ``realtime=True``; default :data:`fastviz.video.DEFAULT_FPS` (25).

    Raises
    ------
    InputError
        For another dtype or shape.
    """

    live = False

    def __init__(self, frames: np.ndarray, fps: float | None = None) -> None:
        from .video import DEFAULT_FPS

        if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3:
            got = (frames.dtype, frames.shape) if isinstance(frames, np.ndarray) else type(frames).__name__
            raise InputError(f"an array source must be uint8 RGB frames of shape (N, H, W, 3), got {got}")
        if frames.shape[0] == 0:
            raise InputError("the array source holds no frame (N = 0)")
        self.array = frames
        self.fps = DEFAULT_FPS if fps is None else positive_number("fps", fps)

    def frames(self) -> Iterator[np.ndarray]:
        return iter(self.array)

    def close(self) -> None:
        """Nothing to release."""

    def __repr__(self) -> str:
        return f"ArraySource(shape={self.array.shape}, fps={self.fps})"


class RecordedSource:
    """Frames of a video file, an image folder or an image (a :class:`fastviz.video.FrameSource`,
    decoded with PyAV or OpenCV one frame at a time).

    Parameters
    ----------
    source : fastviz.video.FrameSource
        E.g. from :func:`fastviz.video.open_source`.
    fps : float, optional
        Frames per second instead of the source's own.
    """

    live = False

    def __init__(self, source, fps: float | None = None) -> None:
        self.source = source
        self.fps = float(source.fps) if fps is None else positive_number("fps", fps)
        self._iterator = None

    def frames(self) -> Iterator[np.ndarray]:
        self._iterator = iter(self.source)
        return self._iterator

    def close(self) -> None:
        """Closes the decoder (and its file) if frames are still being read; idempotent."""
        iterator, self._iterator = self._iterator, None
        close = getattr(iterator, "close", None)
        if close is not None:
            close()

    def __repr__(self) -> str:
        return f"RecordedSource({self.source!r})"


class CaptureSource:
    """Frames from OpenCV's ``cv2.VideoCapture``: a camera (by index) or a stream URL FFmpeg or
    OpenCV can open (``rtsp://``, ``http://``, ``udp://``, ``file://``, ...; a plain video file
    path works too).

    Opening reads the first frame, so a camera or URL that does not deliver fails now.

    Parameters
    ----------
    target : int or str
        Camera index or URL.
    fps : float, optional
        Frames per second to report; default the capture's own (``CAP_PROP_FPS``), ``None`` if
        it does not say.

    Attributes
    ----------
    capture : cv2.VideoCapture
        Released by :meth:`close` (``capture.isOpened()`` is then False).

    Raises
    ------
    InputError
        Naming the camera or URL, if it cannot be opened or yields no first frame.
    """

    live = True

    def __init__(self, target: int | str, fps: float | None = None) -> None:
        self.target = target
        self.what = f"camera {target}" if isinstance(target, int) else f"stream {target!r}"
        self._lock = threading.Lock()
        self.capture = cv2.VideoCapture(target)
        try:
            if not self.capture.isOpened():
                raise InputError(f"cannot open {self.what} with OpenCV (no such device, unreachable or unsupported)")
            ok, first = self.capture.read()
            if not ok or first is None:
                raise InputError(f"{self.what} opened but yields no frame")
        except BaseException:
            self.capture.release()
            raise
        self._first: np.ndarray | None = first
        reported = float(self.capture.get(cv2.CAP_PROP_FPS) or 0.0)
        if fps is not None:
            self.fps: float | None = positive_number("fps", fps)
        else:
            self.fps = reported if math.isfinite(reported) and reported > 0 else None

    @staticmethod
    def _rgb(bgr: np.ndarray) -> np.ndarray:
        if bgr.ndim == 2:
            return cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB)
        if bgr.shape[2] == 4:
            return cv2.cvtColor(bgr, cv2.COLOR_BGRA2RGB)
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def frames(self) -> Iterator[np.ndarray]:
        """RGB frames until the capture ends (a URL or file); a camera that stops delivering
        raises :class:`~fastviz.errors.InputError`."""
        first, self._first = self._first, None
        if first is not None:
            yield self._rgb(first)
        while True:
            with self._lock:
                ok, bgr = self.capture.read() if self.capture.isOpened() else (False, None)
            if not ok or bgr is None:
                if isinstance(self.target, int) and self.capture.isOpened():
                    raise InputError(f"{self.what} stopped delivering frames")
                return
            yield self._rgb(bgr)

    def close(self) -> None:
        """Release the capture; idempotent."""
        with self._lock:
            self.capture.release()

    def __repr__(self) -> str:
        return f"CaptureSource({self.target!r}, fps={self.fps})"


def _is_live_source(obj) -> bool:
    return callable(getattr(obj, "frames", None)) and callable(getattr(obj, "close", None))


def open_live_source(source=None, fps: float | None = None) -> LiveSource:
    """Open what :func:`stream` reads.

    Parameters
    ----------
    source
        One of:

        * ``None``: the bundled example drive log;
        * a path (``str`` or ``os.PathLike``): a video file, an image folder or an image
          (:func:`fastviz.video.open_source`), or an opened :class:`fastviz.video.FrameSource`;
        * an ``int`` or a string of digits: a camera index (``cv2.VideoCapture(index)``);
        * a string containing ``"://"``: a stream URL (``cv2.VideoCapture(url)``);
        * a numpy uint8 array ``(N, H, W, 3)`` RGB (or such a CPU tensor);
        * any object with ``frames()`` and ``close()`` (:class:`LiveSource`): returned as is.
    fps : float, optional
        Frames per second to use instead of the source's own (files, arrays, captures).

    Returns
    -------
    LiveSource
        :class:`RecordedSource`, :class:`CaptureSource`, :class:`ArraySource` or ``source``.

    Raises
    ------
    InputFileNotFoundError
        For a path that does not exist.
    InputError
        For an input that cannot be read (see :func:`fastviz.video.open_source`), a camera or
        URL that cannot be opened or yields no frame, a bad array, a bad ``fps``, or a
        ``source`` of another type.
    """
    from .video import FrameSource, open_source

    if fps is not None:
        fps = positive_number("fps", fps)
    if isinstance(source, np.ndarray):
        return ArraySource(source, fps)
    if isinstance(source, torch.Tensor):
        if source.device.type != "cpu":
            raise InputError(f"an array source must be in host memory, got a tensor on {source.device}")
        return ArraySource(source.numpy(), fps)
    if isinstance(source, FrameSource):
        return RecordedSource(source, fps)
    if isinstance(source, bool):
        raise InputError(f"source must be a path, camera index, URL, array or frame source, got {source!r}")
    if isinstance(source, numbers.Integral):
        if source < 0:
            raise InputError(f"a camera index must be >= 0, got {source}")
        return CaptureSource(int(source), fps)
    if isinstance(source, str) and source.isdigit():
        return CaptureSource(int(source), fps)
    if isinstance(source, str) and "://" in source:
        return CaptureSource(source, fps)
    if source is None or isinstance(source, (str, os.PathLike)):
        return RecordedSource(open_source(None if source is None else Path(source), fps=fps))
    if _is_live_source(source):
        return source
    raise InputError(
        "source must be None, a path, a camera index, a URL, a uint8 (N, H, W, 3) array or an object with "
        f"frames() and close(); got {type(source).__name__}"
    )


# --------------------------------------------------------------------------- the pipeline


class _Frame(NamedTuple):
    index: int
    time_s: float
    captured: float  # time.perf_counter() of the capture
    frame: np.ndarray


def _whole(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise InputError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return int(value)


class _Pipeline:
    """The stages' shared state and loops. The threads reference this object, not the
    :class:`Stream`, so a stream dropped unclosed can still be collected and closed."""

    def __init__(self, *, model, method, options, source, policy, budget_s, pace_fps, max_frames, smoother,
                 sink, max_batch, predict=True) -> None:
        self.model = model
        self.predict = predict
        self.method = method
        self.options = options
        self.source = source
        self.policy = policy
        self.budget_s = budget_s
        self.pace_fps = pace_fps
        self.max_frames = max_frames
        self.smoother = smoother
        self.sink = sink
        self.max_batch = max_batch
        self.feedback = getattr(source, "feedback", None)
        if self.feedback is not None and not callable(self.feedback):
            self.feedback = None
        self.name = f"fastviz-stream-{next(_STREAM_NUMBERS)}"

        self.cond = threading.Condition()
        # everything below is guarded by self.cond
        self.stopping = False  # stages must end (close() or a stage failed)
        self.closing = False  # close() was called
        self.error: BaseException | None = None  # the first stage failure
        self.error_delivered = False
        self.cleanup_errors: list[BaseException] = []
        self.queue: deque[_Frame] = deque()
        self.capacity = 1  # the frames queue's; follows the budget batch size
        self.decoded_all = False
        self.results: deque[StreamResult] = deque()
        self.computed_all = False
        self.shown_queue: deque[StreamResult] = deque()
        self.sunk_all = False
        self.out_capacity = max_batch
        self.cost = BatchCost()
        self.frames_in = self.processed = self.shown = self.dropped = 0
        self.batches = self.batch_frames = self.batch_size = 0
        self.latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.shown_times: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.dropped_indices: deque[int] = deque(maxlen=DROPPED_WINDOW)

        self.iterator = None
        self.shape: tuple[int, ...] | None = None
        self.t0 = 0.0
        self.ended: float | None = None  # when close() was called: the stats stop there
        self.threads: list[threading.Thread] = []
        self.source_closed = False
        self.close_lock = threading.Lock()

    # ---- compute (the method stage's work, also the synchronous check of frame 0)

    def compute(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """uint8 ``(b, H, W, 3)`` -> (float32 maps ``(b, h, w)`` after smoothing, predictions ``(b,)`` or None)."""
        if self.method == BACKPROJECTION:
            maps = torch.from_numpy(backprojection_maps(frames, **self.options))
            prediction = None
        else:
            x = self.model.preprocess(frames)
            import fastviz  # looked up at call time, as write_overlay always did (tests wrap fastviz.explain)

            maps = fastviz.explain(self.model, x, method=self.method, **self.options).detach()
            prediction = None
            if self.predict:
                with model_lock(self.model):
                    prediction = _predict(self.model, x)
        if self.smoother.active:
            maps = self.smoother(maps)
        return maps.float().cpu().numpy(), prediction

    def checked(self, frame, index: int) -> np.ndarray:
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            got = (frame.dtype, frame.shape) if isinstance(frame, np.ndarray) else type(frame).__name__
            raise InputError(f"source frame {index} must be uint8 RGB of shape (H, W, 3), got {got}")
        if self.shape is not None and frame.shape != self.shape:
            raise InputError(f"source frame {index} has shape {frame.shape} but frame 0 has {self.shape}")
        return frame

    def start(self) -> None:
        """Read and check frame 0 synchronously, then start the threads."""
        self.iterator = iter(self.source.frames())
        first = next(self.iterator, None)
        self.t0 = time.perf_counter()
        if first is None:
            raise InputError(f"the source {self.source!r} yields no frame")
        first = self.checked(first, 0)
        self.shape = first.shape
        self.frames_in = 1
        maps, prediction = self.compute(first[None])
        pred = None if prediction is None else float(prediction[0])
        if self.feedback is not None:
            self.feedback(0, pred)
        if self.pace_fps is not None:
            # a paced replay starts when the pipeline is ready: one-off costs of the first call
            # (plans, lazy layers) do not make the first frames late
            self.t0 = time.perf_counter()
        self.results.append(StreamResult(0, 0.0, first, maps[0], pred))
        self.processed = self.batches = self.batch_frames = self.batch_size = 1
        stages = [("decode", self.decode_loop), ("method", self.method_loop)]
        if self.sink is not None:
            stages.append(("sink", self.sink_loop))
        for stage, loop in stages:
            thread = threading.Thread(target=loop, name=f"{self.name}-{stage}", daemon=True)
            self.threads.append(thread)
            thread.start()

    # ---- failure and shutdown

    def fail(self, exc: BaseException) -> None:
        with self.cond:
            if self.error is None and not self.closing:
                self.error = exc
            elif self.closing and self.error is None:
                self.cleanup_errors.append(exc)
            self.stopping = True
            self.cond.notify_all()

    def close_iterator(self) -> None:
        iterator, self.iterator = self.iterator, None
        close = getattr(iterator, "close", None)
        if close is not None:
            close()

    def close_source(self) -> None:
        with self.close_lock:
            if self.source_closed:
                return
            self.source_closed = True
        self.source.close()

    def close(self) -> None:
        """Stop every stage, join the threads, close the source; raise what failed unseen."""
        with self.cond:
            if self.ended is None:
                self.ended = time.perf_counter()
            self.closing = True
            self.stopping = True
            self.cond.notify_all()
        current = threading.current_thread()
        for thread in self.threads:
            if thread is not current:
                thread.join()
        problems: list[BaseException] = []
        if not any(t.is_alive() for t in self.threads if t is not current):
            # (called from the decode thread itself, the iterator is closed as that thread ends)
            steps = [self.close_source] if current.name.endswith("-decode") and current in self.threads else [
                self.close_iterator, self.close_source]
            for step in steps:
                try:
                    step()
                except BaseException as exc:  # noqa: BLE001 - raised below, after the other steps
                    problems.append(exc)
        with self.cond:
            undelivered = self.error if self.error is not None and not self.error_delivered else None
            self.error_delivered = True
            problems = ([undelivered] if undelivered is not None else []) + self.cleanup_errors + problems
            self.cleanup_errors = []
        if problems:
            raise problems[0]

    # ---- decode stage

    def decode_loop(self) -> None:
        try:
            index = 1
            while self.max_frames is None or index < self.max_frames:
                with self.cond:
                    if self.stopping:
                        return
                try:
                    frame = next(self.iterator)
                except StopIteration:
                    break
                read = time.perf_counter()
                with self.cond:
                    self.frames_in += 1
                frame = self.checked(frame, index)
                if self.pace_fps is not None:
                    time_s = index / self.pace_fps
                    captured = self.t0 + time_s
                    with self.cond:
                        self.cond.wait_for(lambda: self.stopping, timeout=max(0.0, captured - time.perf_counter()))
                        if self.stopping:
                            return
                else:
                    captured, time_s = read, read - self.t0
                if not self.put(_Frame(index, time_s, captured, frame)):
                    return
                index += 1
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            self.fail(exc)
        finally:
            try:
                self.close_iterator()  # in the thread that iterated it
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                self.fail(exc)
            with self.cond:
                self.decoded_all = True
                self.cond.notify_all()

    def put(self, item: _Frame) -> bool:
        """Queue a frame under the policy; False when the stream is stopping."""
        with self.cond:
            if self.policy == "drop":
                self.trim(self.capacity - 1)
            else:
                self.cond.wait_for(lambda: self.stopping or len(self.queue) < self.capacity)
            if self.stopping:
                return False
            self.queue.append(item)
            self.cond.notify_all()
            return True

    def trim(self, size: int) -> None:
        """Drop the oldest queued frames until at most ``size`` remain (lock held)."""
        while len(self.queue) > max(size, 0):
            old = self.queue.popleft()
            self.dropped += 1
            self.dropped_indices.append(old.index)

    # ---- method stage

    def choose_batch(self, now: float) -> int:
        """The micro-batch size (lock held, queue not empty); see the module docstring."""
        available = min(len(self.queue), self.max_batch)
        if self.cost.coefficients() is None:
            return 1
        limit = min(available, self.cost.trusted_limit())
        age = now - self.queue[0].captured
        fits = self.cost.largest(self.budget_s - age, limit)
        if fits >= 1:
            return fits
        return max(1, self.cost.largest(self.budget_s, limit))  # behind: a whole budget's batch

    def method_loop(self) -> None:
        try:
            while True:
                with self.cond:
                    self.cond.wait_for(lambda: self.stopping or self.queue or self.decoded_all)
                    if self.stopping:
                        return
                    if not self.queue:
                        return  # the source ended and every frame is done
                    size = self.choose_batch(time.perf_counter())
                    batch = [self.queue.popleft() for _ in range(size)]
                    self.batch_size = size
                    self.cond.notify_all()
                started = time.perf_counter()
                maps, prediction = self.compute(np.stack([f.frame for f in batch]))
                elapsed = time.perf_counter() - started
                with self.cond:
                    self.cost.add(size, elapsed)
                    self.processed += size
                    self.batches += 1
                    self.batch_frames += size
                    budget_batch = self.cost.largest(self.budget_s, min(self.max_batch, self.cost.trusted_limit()))
                    self.capacity = max(1, budget_batch)
                    if self.policy == "drop":
                        self.trim(self.capacity)
                preds = [None] * size if prediction is None else [float(p) for p in prediction]
                if self.feedback is not None:
                    for f, p in zip(batch, preds):
                        self.feedback(f.index, p)
                for f, m, p in zip(batch, maps, preds):
                    if not self.hand_on(self.results, StreamResult(f.index, f.time_s, f.frame, m, p)):
                        return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            self.fail(exc)
        finally:
            with self.cond:
                self.computed_all = True
                self.cond.notify_all()

    def hand_on(self, queue: deque, result: StreamResult) -> bool:
        """Put ``result`` into an output queue, waiting for room; False when stopping."""
        with self.cond:
            self.cond.wait_for(lambda: self.stopping or len(queue) < self.out_capacity)
            if self.stopping:
                return False
            queue.append(result)
            self.cond.notify_all()
            return True

    # ---- sink stage

    def sink_loop(self) -> None:
        try:
            while True:
                with self.cond:
                    self.cond.wait_for(lambda: self.stopping or self.results or self.computed_all)
                    if self.stopping or not self.results:
                        return
                    result = self.results.popleft()
                    self.cond.notify_all()
                self.sink(result)
                with self.cond:
                    self.record_shown(result, time.perf_counter())
                if not self.hand_on(self.shown_queue, result):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            self.fail(exc)
        finally:
            with self.cond:
                self.sunk_all = True
                self.cond.notify_all()

    def record_shown(self, result: StreamResult, now: float) -> None:
        """Count a result as shown (lock held)."""
        self.shown += 1
        self.latencies.append((now - self.t0 - result.time_s) * 1e3)
        self.shown_times.append(now)

    # ---- consumer

    def next_result(self) -> StreamResult:
        """The next result in frame order; StopIteration at the end; a stage's exception."""
        queue = self.shown_queue if self.sink is not None else self.results

        def ended() -> bool:
            return self.sunk_all if self.sink is not None else self.computed_all

        with self.cond:
            self.cond.wait_for(lambda: (self.error is not None and not self.error_delivered) or queue or ended()
                               or self.closing)
            if self.error is not None and not self.error_delivered:
                self.error_delivered = True
                raise self.error
            if queue and not self.closing:
                result = queue.popleft()
                if self.sink is None:
                    self.record_shown(result, time.perf_counter())
                self.cond.notify_all()
                return result
        raise StopIteration

    def stats(self) -> StreamStats:
        with self.cond:
            now = time.perf_counter() if self.ended is None else self.ended
            elapsed = now - self.t0
            recent = sum(1 for t in self.shown_times if t >= now - FPS_WINDOW_S)
            window = min(FPS_WINDOW_S, elapsed)
            if self.latencies:
                p50, p95, p99 = (float(v) for v in np.percentile(np.fromiter(self.latencies, float), [50, 95, 99]))
            else:
                p50 = p95 = p99 = math.nan
            coef = self.cost.coefficients()
            return StreamStats(
                frames_in=self.frames_in,
                processed=self.processed,
                shown=self.shown,
                dropped=self.dropped,
                elapsed_s=elapsed,
                fps=recent / window if window > 0 else 0.0,
                fps_overall=self.shown / elapsed if elapsed > 0 else 0.0,
                latency_ms_p50=p50,
                latency_ms_p95=p95,
                latency_ms_p99=p99,
                batch_size=self.batch_size,
                mean_batch_size=self.batch_frames / self.batches if self.batches else 0.0,
                batches=self.batches,
                queue_capacity=self.capacity,
                batch_fixed_ms=None if coef is None else coef[0] * 1e3,
                batch_per_frame_ms=None if coef is None else coef[1] * 1e3,
            )


class Stream:
    """A running stream (see :func:`stream`): an iterator of :class:`StreamResult` in frame order
    and a context manager.

    Iterating with ``for`` closes the stream when the loop ends, breaks or raises (the
    iterator is a generator that closes the stream when it is closed); ``next(stream)`` works
    too. :meth:`close` is also called on ``with`` exit, when a stage raises (the consumer gets
    the original exception, with its traceback) and on ``KeyboardInterrupt`` in the consumer.

    Attributes
    ----------
    source : LiveSource
        What the frames come from.
    fps : float or None
        The source's frames per second (after the ``fps`` override), if known.
    """

    def __init__(self, pipeline: _Pipeline) -> None:
        self._pipeline = pipeline
        self.source = pipeline.source
        self.fps = pipeline.pace_fps or getattr(pipeline.source, "fps", None)
        # a safety net only: a stream dropped without close() (or iterating to its end) is closed
        # when collected (the threads hold the pipeline, not this object); not at interpreter exit,
        # where a source stuck in a read would hold up the exit
        self._finalizer = weakref.finalize(self, _Pipeline.close, pipeline)
        self._finalizer.atexit = False

    @property
    def stats(self) -> StreamStats:
        """A snapshot of the counters (thread-safe, any time)."""
        return self._pipeline.stats()

    @property
    def dropped_indices(self) -> list[int]:
        """The frame numbers dropped so far (the last :data:`DROPPED_WINDOW`), ascending."""
        with self._pipeline.cond:
            return list(self._pipeline.dropped_indices)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called (explicitly or automatically)."""
        return self._pipeline.closing

    def __next__(self) -> StreamResult:
        try:
            return self._pipeline.next_result()
        except StopIteration:
            self.close()
            raise
        except BaseException as exc:
            self._close_for(exc)
            raise

    def __iter__(self) -> Iterator[StreamResult]:
        return self._results()

    def _results(self) -> Iterator[StreamResult]:
        try:
            while True:
                try:
                    result = self.__next__()
                except StopIteration:
                    return
                yield result
        finally:
            self.close()

    def close(self) -> None:
        """Stop every stage, join the threads and close the source (the camera or file is
        released); idempotent.

        Raises
        ------
        Exception
            A stage's exception not yet seen by the consumer, or what closing the source raised.
        """
        self._finalizer.detach()
        self._pipeline.close()

    def _close_for(self, exc: BaseException) -> None:
        """Close on the way out of ``exc``; a failure to close is noted on ``exc``."""
        try:
            self.close()
        except BaseException as err:  # noqa: BLE001 - ``exc`` propagates, carrying this note
            if err is not exc:
                exc.add_note(f"fastviz: closing the stream also failed: {type(err).__name__}: {err}")

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None:
            self.close()
        else:
            self._close_for(exc)
        return False

    def __repr__(self) -> str:
        state = "closed" if self.closed else "running"
        return f"<Stream {self._pipeline.name} {self._pipeline.method!r} from {self.source!r}, {state}>"


def stream(
    model: torch.nn.Module | None,
    source=None,
    method: str = DEFAULT_METHOD,
    *,
    max_latency_ms: float = 100.0,
    policy: str = "drop",
    realtime: bool | None = None,
    max_frames: int | None = None,
    fps: float | None = None,
    smooth: str | None = "none",
    smooth_alpha: float = 0.5,
    sink: Callable[[StreamResult], None] | None = None,
    max_batch: int = 64,
    predict: bool = True,
    **options,
) -> Stream:
    """Saliency maps of a stream of frames as they come: decode, method and sink run concurrently.

    Parameters
    ----------
    model : nn.Module or None
        With ``.preprocess(frames)`` (uint8 ``(B, H, W, 3)`` RGB -> float ``(B, C, h, w)`` on
        the model's device), e.g. :func:`fastviz.models.load`. ``None`` only for
        ``method="backprojection"`` (model-free).
    source : optional
        See :func:`open_live_source`: ``None`` (the bundled drive log), a path, a camera index,
        a URL (``"rtsp://..."``), a uint8 ``(N, H, W, 3)`` RGB array, or a :class:`LiveSource`.
    method : str
        A registered method (:func:`fastviz.methods`) or ``"backprojection"``.
    max_latency_ms : float
        The latency budget in milliseconds (> 0) that sizes the micro-batches: see the module
        docstring.
    policy : {"drop", "block"}
        When the method is slower than the source: ``"drop"`` drops the oldest queued frame (the
        newest frame wins); ``"block"`` processes every frame (the decode thread waits; latency
        grows).
    realtime : bool, optional
        ``True``: read a file or array at its frame rate (frame ``i`` at ``start + i / fps``, its
        capture time); ``False``/``None``: as fast as possible. Live sources pace themselves.
    max_frames : int, optional
        Stop after this many frames read from the source (processed or not).
    fps : float, optional
        Frames per second instead of the source's own (the pace of ``realtime=True``, and so the
        ``time_s`` of its frames).
    smooth : {"none", "ema", "mumford-shah", "mumford-shah+ema"}, optional
        Post-filter of the maps, in frame order (:class:`fastviz.postprocess.Smoother`).
    smooth_alpha : float in (0, 1]
        The moving average's weight of the newest map.
    sink : callable, optional
        ``sink(result) -> None``, run in its own thread for each result in frame order
        (drawing, publishing, writing); results reach the consumer after it. An exception in
        it stops the stream and is raised in the consumer.
    max_batch : int
        The largest micro-batch, >= 1.
    predict : bool
        Run the model for its prediction (one more forward pass per micro-batch); ``False``:
        every result's ``prediction`` is None (``write_overlay`` without the gauge or saved maps).
    **options
        The method's own keywords (``layer``, ``windows``, ``target``, ...).

    Returns
    -------
    Stream
        Iterate it (``for result in stream(...)``) for :class:`StreamResult` s in increasing
        ``index`` order: every frame not dropped. ``.stats`` gives :class:`StreamStats`.

    Raises
    ------
    InputError
        Before any thread starts: an unknown policy, ``max_latency_ms <= 0``, a bad
        ``max_batch``, ``max_frames``, ``fps``, ``realtime``, ``sink`` or smoothing setting,
        options the method does not take, no model for a model-based method, a source that
        cannot be opened or yields no frame, ``realtime=True`` without a frame rate, and frames
        the model cannot take (frame 0 goes through the model first).
    InputFileNotFoundError
        For a source path that does not exist.
    UnknownNameError
        For an unknown method (or layer).
    Exception
        While iterating: whatever the source, the method or the sink raised (the same object,
        with its traceback), after the stream was closed.

    Examples
    --------
    >>> import fastviz as fv
    >>> model = fv.models.load("pilotnet-carracing")
    >>> for r in stream(model, max_frames=3, policy="block"):
    ...     print(r.index, r.frame.shape, r.saliency_map.dtype, type(r.prediction).__name__)
    0 (96, 96, 3) float32 float
    1 (96, 96, 3) float32 float
    2 (96, 96, 3) float32 float
    """
    if policy not in POLICIES:
        raise InputError(f"unknown policy {policy!r}: use 'drop' (the newest frame wins) or 'block' (every frame)")
    budget_ms = positive_number("max_latency_ms", max_latency_ms)
    max_batch = _whole("max_batch", max_batch)
    if max_frames is not None:
        max_frames = _whole("max_frames", max_frames)
    if realtime is not None and not isinstance(realtime, bool):
        raise InputError(f"realtime must be True, False or None, got {realtime!r}")
    if sink is not None and not callable(sink):
        raise InputError(f"sink must be a callable sink(result), got {type(sink).__name__}")
    if fps is not None:
        fps = positive_number("fps", fps)
    if method != BACKPROJECTION:
        if model is None:
            raise InputError(f"method {method!r} needs a model")
        if not callable(getattr(model, "preprocess", None)):
            raise InputError(f"the model ({type(model).__name__}) has no preprocess(frames) to turn frames into input; "
                             "see fastviz.models.load")
    check_method_options(method, options)
    smoother = Smoother(smooth, smooth_alpha)

    source = open_live_source(source, fps=fps)
    pipeline = None
    try:
        pace_fps = None
        if realtime and not getattr(source, "live", False):
            pace_fps = fps or getattr(source, "fps", None)
            if pace_fps is None:
                raise InputError(f"realtime=True needs a frame rate: the source {source!r} has none; give fps=")
        pipeline = _Pipeline(model=model, method=method, options=options, source=source, policy=policy,
                             budget_s=budget_ms / 1e3, pace_fps=pace_fps, max_frames=max_frames, smoother=smoother,
                             sink=sink, max_batch=max_batch, predict=bool(predict))
        pipeline.start()
    except BaseException as exc:
        try:
            if pipeline is not None:
                pipeline.close()  # joins any thread started, closes the frames and the source
            else:
                source.close()
        except BaseException as err:  # noqa: BLE001 - ``exc`` propagates, carrying this note
            if err is not exc:
                exc.add_note(f"fastviz: closing the source also failed: {type(err).__name__}: {err}")
        raise
    return Stream(pipeline)
