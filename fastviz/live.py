"""``fastviz live``: saliency overlays as frames arrive, in a browser, a window or a file.

The command-line driver of :func:`fastviz.stream.stream`: a source (a video file or drive log
played at its own frame rate, a camera, an FFmpeg/OpenCV stream URL, or Gymnasium's CarRacing
driven by the model itself) goes through the concurrent pipeline; the sink stage draws each
result (:func:`fastviz.render.render`, with the steering gauge for one-output models) and shows
it: an MJPEG stream on a small HTTP page with live statistics (:class:`fastviz.serve.LiveServer`),
an OpenCV window, a video file. Statistics — frames in, shown, dropped; end-to-end latency from
capture to shown (p50, p95, p99); frames per second — go to stderr once a second and, at the end,
to a JSON file.

Ctrl-C (or ``--duration``, or the end of a file) is the normal way to stop: the stream is closed
(no thread left, the camera released), the video file and the statistics are committed, and the
exit status is 0. A ``-o`` video holds the frames shown, at the source's frame rate; with the
``drop`` policy it is shorter than the source by the frames dropped.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

from . import render as rd
from .errors import InputError
from .postprocess import SMOOTHING

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_SERVE", "LoopedSource", "add_parser", "run_live"]

#: Where ``--serve`` without an address, or no output at all, serves the page (loopback only).
DEFAULT_SERVE = "127.0.0.1:8000"

#: Seconds between two statistics lines on stderr.
STATS_EVERY_S = 1.0


class LoopedSource:
    """A file source played again from its first frame whenever it ends (``--loop``).

    Wraps a :class:`fastviz.stream.LiveSource`; frame indices keep counting up across the
    repeats, so the pipeline's pacing and its statistics run on. ``close`` closes the wrapped
    source. A source that yields no frame at all ends the loop (no busy spinning).

    Parameters
    ----------
    source : fastviz.stream.LiveSource
        With ``frames()`` (a new iterator from the first frame on each call), ``close()``,
        ``fps`` and ``live``.

    Raises
    ------
    Whatever the wrapped source raises while decoding (e.g. :class:`fastviz.errors.InputError`
    for a file that stops being readable); nothing of its own.
    """

    def __init__(self, source) -> None:
        self.source = source
        self.fps = source.fps
        self.live = source.live

    def frames(self):
        while True:
            n = 0
            for frame in self.source.frames():
                n += 1
                yield frame
            if n == 0:
                return

    def close(self) -> None:
        self.source.close()

    def __repr__(self) -> str:
        return f"LoopedSource({self.source!r})"


def _check_display() -> None:
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise InputError("--window needs a display (neither DISPLAY nor WAYLAND_DISPLAY is set); "
                         "use --serve to watch in a browser")


class _Shower:
    """The sink stage: draws each result and hands the picture to the outputs (server, window,
    video file); prints the statistics once a second. Runs in the pipeline's sink thread."""

    def __init__(self, model, method: str, options: dict, *, layout: str, scale, server, window: bool,
                 output: Path | None, fps: float, quiet: bool, codec: str | None = None) -> None:
        from .overlay import _signed, _units

        self.model, self.layout, self.scale_wanted = model, layout, scale
        self.server, self.window, self.output, self.fps, self.quiet = server, window, output, fps, quiet
        self.codec = codec
        self.look: dict | None = None
        self.signed = _signed(method, options)
        self.units = _units(method, options, model)
        self.sink = None  # the video file, opened at the first picture (its size is known then)
        self.written = 0
        self.stop_requested = threading.Event()
        self.stream = None  # set once the stream exists: its statistics are printed and published
        self.last_print = time.monotonic()

    def _first(self, frame: np.ndarray) -> None:
        from .overlay import _check_scale

        h, w = frame.shape[:2]
        self.look = dict(region=self.model.transform.region(h, w), scale=_check_scale(self.scale_wanted, h, w, self.layout),
                         signed=self.signed, legend=True, units=self.units, clip=(0.0, 99.0))

    def __call__(self, result) -> None:
        if self.look is None:
            self._first(result.frame)
        gauge = None if result.prediction is None else (float(result.prediction), None)
        picture = rd.render(result.frame, result.saliency_map, self.layout, gauge=gauge, **self.look)
        stats = self.stream.stats.as_dict() if self.stream is not None else None
        if self.server is not None:
            self.server.publish(picture, stats)
        if self.window:
            import cv2

            cv2.imshow("fastviz live", cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
            key = cv2.waitKey(1) & 0xFF
            if key in (ord("q"), 27) or cv2.getWindowProperty("fastviz live", cv2.WND_PROP_VISIBLE) < 1:
                self.stop_requested.set()
        if self.output is not None:
            if self.sink is None:
                from .video import VideoSink

                self.sink = VideoSink(self.output, fps=self.fps, size=picture.shape[:2], codec=self.codec)
                self.sink.__enter__()
            self.sink.write(picture)
            self.written += 1
        now = time.monotonic()
        if not self.quiet and now - self.last_print >= STATS_EVERY_S and stats:
            self.last_print = now
            print(f"fastviz live: {stats_line(stats)}", file=sys.stderr, flush=True)


def stats_line(stats: dict) -> str:
    """One line of the pipeline's statistics (:meth:`fastviz.stream.StreamStats.as_dict`): frames
    in, shown and dropped, frames per second shown, end-to-end latency p50 / p95 / p99 in
    milliseconds (``-`` before the first frame is shown). Missing keys read as 0; raises nothing.
    """
    def ms(key):
        v = stats.get(f"latency_ms_{key}")
        return "-" if v is None else f"{v:.0f}"

    return (f"{stats.get('frames_in', 0)} in, {stats.get('shown', 0)} shown, {stats.get('dropped', 0)} dropped, "
            f"{stats.get('fps', 0.0):.1f} fps, latency p50 {ms('p50')} / p95 {ms('p95')} / p99 {ms('p99')} ms")


def run_live(model, source=None, *, method: str, options: dict | None = None, serve: str | None = None,
             window: bool = False, output: str | os.PathLike | None = None, stats_path: str | os.PathLike | None = None,
             duration: float | None = None, policy: str = "drop", max_latency_ms: float = 100.0,
             realtime: bool = True, loop: bool = False, smooth: str = "none", smooth_alpha: float = 0.5,
             layout: str = "overlay", scale: int | None = None, seed: int = 0, max_frames: int | None = None,
             codec: str | None = None, quiet: bool = False, on_start=None) -> dict:
    """Run the live overlay until the source ends, ``duration`` passes or Ctrl-C; return the
    final statistics.

    Parameters
    ----------
    model : nn.Module
        A fastviz model (with ``preprocess`` and ``transform``), e.g. ``fastviz.models.load(...)``.
    source : None, path, int, URL or ``"sim"``
        None: the bundled drive log; a video file, drive log or image folder (played at its
        frame rate unless ``realtime=False``); a camera index; an FFmpeg/OpenCV URL; ``"sim"``:
        CarRacing-v3 driven in closed loop by the model's prediction (:mod:`fastviz.sim`,
        ``seed`` picks the track).
    serve : "HOST:PORT", optional
        Serve the page with the MJPEG stream and the statistics there (loopback by default;
        ``0.0.0.0`` exposes it to the network).
    window : bool
        Show an OpenCV window (``q`` or Esc closes it and stops).
    output : path, optional
        A video file of the pictures shown (written under an exclusive temporary name, renamed
        when complete).
    stats_path : path, optional
        A JSON file of the final statistics (written atomically).
    duration : float, optional
        Seconds to run.
    policy, max_latency_ms, realtime, smooth, smooth_alpha, max_frames
        As :func:`fastviz.stream.stream`.
    loop : bool
        Play a file source again from the start whenever it ends.
    on_start : callable, optional
        Called with the server's URL (or None) once the pipeline runs (tests, launchers).

    Returns
    -------
    dict
        The statistics (:meth:`fastviz.stream.StreamStats.as_dict`), with ``method``,
        ``source``, ``seconds``, and ``sim`` (the simulator's report) for ``"sim"``.

    Raises
    ------
    InputError
        For bad options, a source that cannot be opened, an address that cannot be served,
        ``--window`` without a display, an output that cannot be written.
    """
    from .stream import open_live_source, stream

    options = dict(options or {})
    if duration is not None and not duration > 0:
        raise InputError(f"duration must be a positive number of seconds, got {duration!r}")
    if layout not in rd.LAYOUTS:
        raise InputError(f"unknown layout {layout!r} (known: {', '.join(rd.LAYOUTS)})")
    if window:
        _check_display()
    out_path = None
    if output is not None:
        from .video import codec_for

        out_path = Path(output)
        codec_for(out_path)
        if not out_path.parent.is_dir():
            raise InputError(f"cannot write {out_path}: folder {out_path.parent} does not exist")
    if stats_path is not None:
        stats_path = Path(stats_path)
        if not stats_path.parent.is_dir():
            raise InputError(f"cannot write {stats_path}: folder {stats_path.parent} does not exist")
    if serve is None and not window and output is None and stats_path is None:
        serve = DEFAULT_SERVE
    address = None
    if serve is not None:
        from .serve import parse_address

        address = parse_address(serve)  # a bad address fails before the source is opened
    is_sim = isinstance(source, str) and source == "sim"
    if is_sim:
        from .sim import CarRacingSource

        live_source = CarRacingSource(seed=seed, realtime=realtime)
        described = f"sim (CarRacing-v3, seed {seed})"
    else:
        live_source = open_live_source(source)
        described = "the bundled drive log" if source is None else str(source)
        if loop:
            if live_source.live:
                live_source.close()
                raise InputError("--loop replays a file; a camera, URL or simulator runs on by itself")
            live_source = LoopedSource(live_source)
    server = None
    started = time.monotonic()
    shower = None
    try:
        if address is not None:
            from .serve import LiveServer

            server = LiveServer(*address, title=f"fastviz live: {method} on {described}").start()
        fps = live_source.fps or 25.0
        shower = _Shower(model, method, options, layout=layout, scale=scale, server=server, window=window,
                         output=out_path, fps=fps, quiet=quiet, codec=codec)
        st = stream(model, live_source, method, max_latency_ms=max_latency_ms, policy=policy, realtime=realtime,
                    max_frames=max_frames, smooth=smooth, smooth_alpha=smooth_alpha, sink=shower, **options)
        shower.stream = st
        if not quiet:
            where = f"serving {server.url}" if server is not None else "running"
            print(f"fastviz live: {method} on {described}: {where} (Ctrl-C to stop)", file=sys.stderr, flush=True)
        if on_start is not None:
            on_start(None if server is None else server.url)
        interrupted = False
        try:
            with st:
                for _ in st:
                    if shower.stop_requested.is_set():
                        break
                    if duration is not None and time.monotonic() - started >= duration:
                        break
        except KeyboardInterrupt:
            interrupted = True  # the normal stop of a live view: commit what was shown
        stats = st.stats.as_dict()
        stats.update(method=method, source=described, seconds=round(time.monotonic() - started, 3),
                     interrupted=interrupted)
        if is_sim:
            stats["sim"] = live_source.report()
        if shower.sink is not None:
            sink, shower.sink = shower.sink, None
            sink.__exit__(None, None, None)
            stats["output"] = {"path": str(out_path), "frames": shower.written}
        if stats_path is not None:
            from .tempfiles import atomic_output

            with atomic_output(stats_path, what="live statistics") as out:
                out.write((json.dumps(stats, indent=2) + "\n").encode())
        if not quiet:
            print(f"fastviz live: {stats_line(stats)}", file=sys.stderr, flush=True)
            if is_sim:
                sim = stats["sim"]
                print(f"fastviz live: sim: {sim['tiles_visited']} of {sim['tiles_total']} track tiles visited, "
                      f"{sim['off_track_s']:.1f} s off track, ended by {sim['ended_by']}", file=sys.stderr, flush=True)
        return stats
    except BaseException as exc:
        if shower is not None and shower.sink is not None:
            shower.sink.__exit__(type(exc), exc, exc.__traceback__)
        raise
    finally:
        if server is not None:
            server.close()
        live_source.close()
        if window:
            import cv2

            cv2.destroyAllWindows()


# --------------------------------------------------------------------------- command line


def add_parser(commands, types) -> argparse.ArgumentParser:
    """Add the ``live`` subcommand to ``commands``; ``types`` is the CLI module (its argument
    types and the method options are shared with ``overlay``)."""
    import fastviz

    from .overlay import DEFAULT_METHOD

    lv = commands.add_parser(
        "live",
        help="saliency overlay as frames arrive: in a browser (MJPEG), a window or a file, with latency statistics",
        description=(
            "Run a saliency method over frames as they arrive, with bounded latency: decoding, the method (in "
            "micro-batches sized by --max-latency-ms) and drawing run concurrently; when the method is slower "
            "than the source, the oldest waiting frames are dropped (--policy drop) or every frame waits "
            "(--policy block). SOURCE: a video file or drive log played at its frame rate (default: the bundled "
            "log), a camera index (0), an FFmpeg/OpenCV stream URL (rtsp://..., http://...), or 'sim': the model "
            "drives Gymnasium's CarRacing-v3 (pip install 'fastviz[sim]'). Statistics (frames in, shown, dropped, "
            "latency p50/p95/p99 from capture to shown, fps) go to stderr once a second. Ctrl-C stops and commits "
            "the outputs (exit status 0)."
        ),
    )
    lv.add_argument("source", nargs="?", metavar="SOURCE", help="video file, camera index, URL or 'sim' (default: "
                    "the bundled drive log)")
    lv.add_argument("--model", default="pilotnet-carracing", metavar="NAME|PATH",
                    help=f"bundled model ({', '.join(fastviz.models.available())}) or a .safetensors file "
                    "(default: %(default)s)")
    lv.add_argument("--method", default=DEFAULT_METHOD, choices=fastviz.methods(), metavar="NAME",
                    help=f"saliency method: {', '.join(fastviz.methods())} (default: %(default)s)")
    lv.add_argument("--serve", nargs="?", const=DEFAULT_SERVE, metavar="HOST:PORT",
                    help=f"serve the overlay and its statistics on an HTTP page (default address {DEFAULT_SERVE}; "
                    "0.0.0.0:PORT exposes it to the network); the default when no other output is given")
    lv.add_argument("--window", action="store_true", help="show an OpenCV window (q or Esc stops)")
    lv.add_argument("-o", "--output", metavar="FILE", help="also write the pictures shown to a video file "
                    "(.mp4, .mkv, .avi)")
    lv.add_argument("--stats", metavar="FILE.json", help="write the final statistics as JSON")
    lv.add_argument("--duration", type=types._positive_float, metavar="S", help="stop after S seconds")
    lv.add_argument("--max-frames", type=types._positive_int, metavar="N", help="stop after N source frames")
    lv.add_argument("--policy", choices=("drop", "block"), default="drop",
                    help="when the method is slower than the source: drop the oldest waiting frames (newest wins) "
                    "or process every frame as latency grows (default: %(default)s)")
    lv.add_argument("--max-latency-ms", type=types._positive_float, default=100.0, metavar="MS",
                    help="latency budget that sizes the micro-batches (default: %(default)s)")
    lv.add_argument("--realtime", action=argparse.BooleanOptionalAction, default=True,
                    help="play files at their frame rate (--no-realtime: as fast as possible; the simulator "
                    "then steps in lockstep with the model)")
    lv.add_argument("--loop", action="store_true", help="play a file again from the start when it ends")
    lv.add_argument("--seed", type=int, default=0, metavar="N", help="sim: the track (default: %(default)s)")
    lv.add_argument("--device", default="cpu", metavar="cpu|cuda", help="torch device (default: %(default)s)")
    lv.add_argument("--layout", default="overlay", choices=rd.LAYOUTS, help="display (default: %(default)s)")
    lv.add_argument("--scale", type=types._display_scale, metavar="K", help="enlarge frames K times for display")
    lv.add_argument("--smooth", choices=SMOOTHING, default="none",
                    help="post-filter of the maps: Mumford-Shah edge-preserving smoothing and/or a moving average "
                    "over frames against flicker (default: %(default)s)")
    lv.add_argument("--smooth-alpha", type=types._unit_float, default=0.5, metavar="A",
                    help="moving average: weight of the newest map, in (0, 1] (default: %(default)s)")
    lv.add_argument("--codec", type=types._codec_name, metavar="NAME", help="FFmpeg encoder for -o")
    lv.add_argument("-q", "--quiet", action="store_true", help="no statistics on stderr")
    types._add_method_options(lv)
    lv.set_defaults(run=lambda args: _command(args, types))
    return lv


def _command(args: argparse.Namespace, types) -> int:
    import fastviz

    from .scheduler import parse_device

    source = args.source
    if source is not None and source != "sim" and source.isdigit():
        source = int(source)  # a camera index
    options = types._method_options(args)
    device = parse_device(args.device)
    model = fastviz.models.load(args.model, device)
    run_live(model, source, method=args.method, options=options, serve=args.serve, window=args.window,
             output=args.output, stats_path=args.stats, duration=args.duration, policy=args.policy,
             max_latency_ms=args.max_latency_ms, realtime=args.realtime, loop=args.loop, smooth=args.smooth,
             smooth_alpha=args.smooth_alpha, layout=args.layout, scale=args.scale, seed=args.seed,
             max_frames=args.max_frames, codec=args.codec, quiet=args.quiet)
    return 0
