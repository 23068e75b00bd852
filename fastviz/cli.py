"""The ``fastviz`` command line.

``fastviz bench``: what each saliency method costs on a model (:mod:`fastviz.costs`, :func:`fastviz.bench`).

``fastviz audit [INPUT ...] -o STORE.zarr``: a resumable audit store of maps, predictions,
faithfulness metrics and the sanity check (:mod:`fastviz.audit.cli`, :func:`fastviz.audit`).

``fastviz report STORE.zarr -o report.html``: the audit's self-contained HTML report
(:mod:`fastviz.audit.report`).

``fastviz overlay [INPUT] -o OUTPUT``: saliency video (or PNG images) of a drive log, video file
or image folder (default: the bundled held-out CarRacing log) through a model (default: the
bundled ``pilotnet-carracing``) with a saliency method (default:
:data:`fastviz.overlay.DEFAULT_METHOD`); the work is :func:`fastviz.overlay.write_overlay`.
``--method backprojection`` is model-free (:mod:`fastviz.methods.backprojection`, OpenCV colour
rarity): no model is loaded (``--model`` and ``--device`` are ignored), the map covers the whole
frame, and the model methods' options (``--layer``, ``--target``, ...) are errors.

Everything that can be checked is checked before the output is created: the model loads, the
method exists and takes the options given, the input opens (a truncated video is reported when
opened) and its first batch goes through the model. Bad input, and an output that cannot be
written (read-only or full file system), end with one line ``fastviz: error: ...`` on stderr,
exit status 2 and no output file; Ctrl-C, SIGTERM and SIGHUP end with 130, 143 and 129, also
without output (``--keep-partial``: the frames done are kept, and the message says so).
Warnings (grayscale frames converted, frames squashed to the model's aspect ratio) are one line
``fastviz: warning: ...``.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import threading
import warnings
from pathlib import Path

import torch

import fastviz

from . import render as rd
from .errors import FastvizError, InputError
from .scheduler import parse_device
from .overlay import AUTO_SCALE_TARGET, BACKPROJECTION, DEFAULT_METHOD, MAX_PICTURE_SIDE
from .postprocess import SMOOTHING

__all__ = ["build_parser", "main"]

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

#: Largest ``--scale`` the parser takes; the picture is also bounded by ``MAX_PICTURE_SIDE``.
MAX_SCALE = 64


def _method_names() -> list[str]:
    """``--method`` choices: the registry's names, then the model-free ``backprojection``."""
    names = list(fastviz.methods())
    return names if BACKPROJECTION in names else [*names, BACKPROJECTION]


class _UsageError(Exception):
    """Raised instead of argparse's print-usage-and-exit, so every error is one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        raise _UsageError(message)


# --------------------------------------------------------------------------- argument types


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
    return value


def _positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def _non_negative_int(text: str) -> int:
    return _int_at_least(text, 0)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _unit_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers like 8,16,32, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"window sizes must be >= 1, got {text!r}")
    return values


def _percentiles(text: str) -> tuple[float, float] | None:
    if text == "none":
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two percentiles LO,HI like 1,99, got {text!r}") from None
    if not 0.0 <= lo < hi <= 100.0:
        raise argparse.ArgumentTypeError(f"need 0 <= LO < HI <= 100, got {text!r}")
    return lo, hi


def _baseline(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def _target(text: str) -> fastviz.targets.Target:
    """``output`` | ``output:I`` | ``steering`` | ``steering:DEG`` | ``class:K`` | ``top``."""
    name, _, arg = text.partition(":")
    try:
        if name == "output":
            return fastviz.targets.Output(int(arg) if arg else 0)
        if name == "steering":
            return fastviz.targets.Steering(float(arg) if arg else 5.0)
        if name == "class" and arg:
            return fastviz.targets.Class(int(arg))
        if name == "top" and not arg:
            return fastviz.targets.TopClass()
    except (ValueError, fastviz.errors.FastvizError):
        pass
    raise argparse.ArgumentTypeError(f"unknown target {text!r}: use output[:I], steering[:DEG], class:K or top")


def _memory_budget(text: str) -> str | int | float:
    """``512MiB`` / ``8GiB`` / a byte count / a fraction of free memory such as ``0.8``."""
    value: str | int | float = text
    try:
        value = int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            pass
    try:
        fastviz.scheduler.parse_budget(value)
    except fastviz.errors.FastvizError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _colormap_name(text: str) -> str:
    if text.lower() not in rd.COLORMAP_CHOICES:
        raise argparse.ArgumentTypeError(f"unknown colormap {text!r} (known: {', '.join(sorted(rd.COLORMAP_CHOICES))})")
    return text.lower()


def _display_scale(text: str) -> int:
    value = _positive_int(text)
    if value > MAX_SCALE:
        raise argparse.ArgumentTypeError(f"must be <= {MAX_SCALE}, got {value}")
    return value


def _value_range(text: str) -> str | tuple[float, float]:
    if text in ("frame", "first"):
        return text
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected frame, first or LO,HI like -0.1,0.1, got {text!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise argparse.ArgumentTypeError(f"need finite LO < HI, got {text!r}")
    return lo, hi


def _codec_name(text: str) -> str:
    from .video import check_codec

    try:
        return check_codec(text)
    except FastvizError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _input_size(text: str) -> tuple[int, int]:
    from .costs import parse_input_size

    try:
        return parse_input_size(text)
    except fastviz.errors.FastvizError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _method_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated method names, got {text!r}")
    unknown = [n for n in names if n not in fastviz.methods()]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown method {', '.join(map(repr, unknown))}; registered methods: {', '.join(fastviz.methods())}"
        )
    return list(dict.fromkeys(names))


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The ``fastviz`` argument parser (choices of ``--method`` read from the method registry)."""
    parser = _Parser(
        prog="fastviz",
        description="Saliency maps for PyTorch CNNs, fast: which pixels of each frame drove the output?",
    )
    parser.add_argument("--version", action="version", version=f"fastviz {fastviz.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ov = commands.add_parser(
        "overlay",
        help="render a saliency video of a video file, image folder or the bundled drive log",
        description=(
            "Compute a saliency map for every frame and write a video (or PNG images) of the frames with their "
            "maps and a legend. INPUT is a video file, a drive log (video + .csv of steering_rad beside it) or a "
            "folder of images (png/jpg/bmp, natural name order); without INPUT the bundled held-out CarRacing "
            "drive log is used. Outputs are written under an exclusive temporary name, checked, then renamed; "
            "on an error, Ctrl-C, SIGTERM or SIGHUP nothing is left (--keep-partial keeps the frames done)."
        ),
    )
    ov.add_argument("input", nargs="?", metavar="INPUT", help="video file or image folder (default: bundled drive log)")
    ov.add_argument(
        "-o", "--output", required=True, metavar="OUTPUT",
        help="output: .mp4 (H.264, plays in browsers), .mkv (FFV1, lossless), .avi (Motion JPEG), or a folder "
        "DIR/ (new or empty) for PNG images frame_000000.png, ...",
    )
    ov.add_argument(
        "--model",
        default="pilotnet-carracing",
        metavar="NAME|PATH",
        help=f"bundled model ({', '.join(fastviz.models.available())}) or a .safetensors file "
        "(default: %(default)s)",
    )
    ov.add_argument(
        "--method",
        default=DEFAULT_METHOD,
        choices=_method_names(),
        metavar="NAME",
        help=f"saliency method: {', '.join(_method_names())} (default: %(default)s, chosen by measurement: see the "
        "README; occlusion costs 1,873 model evaluations per frame with the default windows; backprojection "
        "is model-free: --model and --device are ignored)",
    )
    ov.add_argument("--layout", default="overlay", choices=rd.LAYOUTS, help="display (default: %(default)s)")
    ov.add_argument("--batch", type=_positive_int, default=16, metavar="N", help="frames per batch (default: %(default)s)")
    ov.add_argument("--device", default="cpu", metavar="cpu|cuda", help="torch device (default: %(default)s)")
    ov.add_argument("--max-frames", type=_positive_int, metavar="N", help="stop after N frames")
    ov.add_argument(
        "--scale",
        type=_display_scale,
        metavar="K",
        help=f"enlarge frames K times for display, 1..{MAX_SCALE}, at most {MAX_PICTURE_SIDE} px a side "
        f"(default: a whole factor up to ~{AUTO_SCALE_TARGET} px)",
    )
    ov.add_argument("--alpha", type=_unit_float, default=0.8, metavar="A",
                    help="heatmap opacity where the map is highest (default: %(default)s)")
    ov.add_argument(
        "--opacity", choices=rd.OPACITIES, default="value",
        help="value: each pixel's opacity grows with |map| (zero shows the frame as it is); constant: alpha "
        "everywhere; auto: value for signed maps, constant otherwise (default: %(default)s)",
    )
    ov.add_argument(
        "--colormap", type=_colormap_name, default="auto", metavar="NAME",
        help="auto (blue-white-red centred on zero for signed maps such as occlusion's, inferno for non-negative "
        "ones), rdbu_r, or an OpenCV colormap name (default: %(default)s)",
    )
    ov.add_argument(
        "--clip", type=_percentiles, default=(0.0, 99.0), metavar="LO,HI|none",
        help="clip each map to these percentiles before colouring: the top 1%% of a map saturates by default, so a "
        "few extreme pixels do not leave the rest dark (none: no clipping; default: 0,99)",
    )
    ov.add_argument(
        "--vrange", type=_value_range, default="frame", metavar="frame|first|LO,HI",
        help="values the colours span: each frame's own range (frame), fixed from the first batch (first), or "
        "fixed numbers in the map's units (default: %(default)s)",
    )
    ov.add_argument("--no-legend", action="store_true", help="no colour bar below the picture")
    ov.add_argument(
        "--gauge", action="store_true",
        help="draw a steering gauge: the prediction and, for a drive log, the recorded steering (degrees, + = right)",
    )
    ov.add_argument(
        "--save-maps", metavar="FILE.npz",
        help="also save the raw maps: float16 maps (N, H, W) at the model's input resolution, int64 frame index, "
        "float32 prediction (one-output models)",
    )
    ov.add_argument("--codec", type=_codec_name, metavar="NAME",
                    help="FFmpeg video encoder instead of the extension's default (libx264, ffv1, mjpeg), e.g. libx265")
    ov.add_argument(
        "--keep-partial", action="store_true",
        help="on an error or interrupt, keep the frames finished so far under the final name (stated in the message)",
    )
    ov.add_argument("--fps", type=_positive_float, help="output frames per second (default: the input's)")
    ov.add_argument("--smooth", choices=SMOOTHING, default="none",
                    help="post-filter of the drawn maps: Mumford-Shah edge-preserving smoothing and/or a moving "
                         "average over frames (default: %(default)s; --save-maps keeps the raw maps)")
    ov.add_argument("--smooth-alpha", type=_unit_float, default=0.5, metavar="A",
                    help="moving average: weight of the newest map, in (0, 1] (default: %(default)s)")
    ov.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    _add_method_options(ov)
    ov.set_defaults(run=_overlay)

    bn = commands.add_parser(
        "bench",
        help="measure what each saliency method costs on a model: table, JSON, CSV, PNG",
        description=(
            "Run every method (or --methods) on --frames random inputs, warm-up then timed runs, and print "
            "one row per method: ms per frame (median, p10, p90), frames/s, batched forward calls and model "
            "evaluations (rows) per frame, and peak memory; a progress bar per method on stderr. Methods that "
            'do not apply to the model are listed as skipped. JSON: {"schema": "fastviz.bench/2", "machine": '
            "{cpu, gpu, torch, numba}, \"records\": [{method, device, batch, frames, ms_per_frame, "
            "ms_per_frame_p10, ms_per_frame_p90, frames_per_s, forward_calls_per_frame, "
            "model_evaluations_per_frame, peak_memory_bytes, skipped}, ...]} (null where not measured); CSV: the "
            "same record columns then cpu, gpu, torch, numba, one row per method."
        ),
    )
    bn.add_argument(
        "--model", default="pilotnet", metavar="NAME|PATH",
        help="pilotnet (bundled pilotnet-carracing, 66x200), resnet50 (ResNet-50-sized, random weights, "
        "224x224), a .safetensors file, or an import path package.module:ClassName, imported from the "
        "installed environment, never from the current folder (PYTHONPATH=. for a module of your own) "
        "(default: %(default)s)",
    )
    bn.add_argument("--weights", metavar="FILE",
                    help="weights for an import-path model: .safetensors, .pt or .pth state dict, loaded weights-only")
    bn.add_argument("--input-size", type=_input_size, metavar="HxW",
                    help="input height x width in the model's input space (default: the model's own)")
    bn.add_argument("--methods", type=_method_list, metavar="A,B,...",
                    help=f"methods to measure (default: all: {', '.join(fastviz.methods())})")
    bn.add_argument("--frames", type=_positive_int, default=8, metavar="N", help="random frames per run (default: %(default)s)")
    bn.add_argument("--batch", type=_positive_int, metavar="B", help="frames per call (default: all frames at once)")
    bn.add_argument("--device", default="cpu", metavar="cpu|cuda", help="torch device (default: %(default)s)")
    bn.add_argument("--memory-budget", type=_memory_budget, metavar="X",
                    help="memory budget passed to every method that takes one: 512MiB, 8GiB, bytes or a fraction")
    bn.add_argument("--repeats", type=_positive_int, default=5, metavar="N", help="timed runs (default: %(default)s)")
    bn.add_argument("--warmup", type=_positive_int, default=1, metavar="N", help="untimed runs first (default: %(default)s)")
    bn.add_argument("--json", metavar="FILE", help="write the records and the machine as JSON")
    bn.add_argument("--csv", metavar="FILE", help="write one CSV row per method")
    bn.add_argument("--plot", metavar="FILE.png", help="write a bar chart of ms per frame (log scale) as PNG")
    bn.add_argument("-q", "--quiet", action="store_true", help="no progress bars on stderr")
    bn.set_defaults(run=_bench)

    from .audit import cli as audit_cli

    audit_cli.add_parser(commands, sys.modules[__name__])
    audit_cli.add_report_parser(commands, sys.modules[__name__])
    from . import live

    live.add_parser(commands, sys.modules[__name__])
    return parser


# --------------------------------------------------------------------------- helpers

#: CLI option -> keyword of the saliency method.
_METHOD_OPTIONS = {
    "layer": "layer", "windows": "windows", "stride": "stride", "baseline": "baseline", "target": "target",
    "memory_budget": "memory_budget",
}




def _add_method_options(parser: argparse.ArgumentParser) -> None:
    """The method keywords of ``overlay`` and ``live`` (read back by :func:`_method_options`)."""
    opts = parser.add_argument_group("method options (passed on only when given)")
    opts.add_argument(
        "--layer", metavar="NAME", help="grad_cam: target layer by dotted name (default: the model's cam_layer, "
        "features.5 for PilotNet, else the activation after the last conv)"
    )
    opts.add_argument("--windows", type=_int_list, metavar="S,S,...", help="occlusion: window sizes, e.g. 8,16,32")
    opts.add_argument("--stride", type=_positive_int, metavar="N", help="occlusion: window stride in pixels")
    opts.add_argument("--baseline", type=_baseline, metavar="VALUE", help="occlusion: fill value, or mean / blur")
    opts.add_argument(
        "--memory-budget", type=_memory_budget, metavar="X",
        help="memory a chunk of work may use: 512MiB, 8GiB, a byte count, or a fraction of free memory "
        "such as 0.8 (default: a safe fraction of free memory; chunks halve on out-of-memory)",
    )
    opts.add_argument(
        "--target", type=_target, metavar="T",
        help="what the map explains: output[:I], steering[:DEG] (the steering-direction target, "
        "threshold in degrees), class:K or top (default: the single output, or the top class)",
    )


def _method_options(args: argparse.Namespace) -> dict:
    """The method keywords given on the command line, checked against the method's signature
    (:func:`fastviz.overlay.method_option_names`)."""
    from .overlay import method_option_names

    accepted = method_option_names(args.method)  # None: the method takes any keyword
    opts = {}
    for option, keyword in _METHOD_OPTIONS.items():
        value = getattr(args, option)
        if value is None:
            continue
        if accepted is not None and keyword not in accepted:
            raise InputError(f"--{option.replace('_', '-')} does not apply to method {args.method!r}")
        opts[keyword] = value
    return opts


def _one_line(message: str) -> str:
    lines = [line.strip() for line in str(message).strip().splitlines() if line.strip()]
    return "; ".join(lines) if lines else "unknown error"


def _quiet_opencv() -> None:
    """Keep FFmpeg's and OpenCV's own console messages off stderr: fastviz reports errors itself."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET; read when FFmpeg starts
    import cv2

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings (grayscale frames converted, frames squashed to the model's aspect ratio, ...) as one
    line ``fastviz: warning: ...`` on stderr, without Python's source-line echo."""
    print(f"fastviz: warning: {_one_line(str(message))}", file=sys.stderr)


# --------------------------------------------------------------------------- overlay


def _overlay(args: argparse.Namespace) -> int:
    from .overlay import write_overlay

    model = None  # --method backprojection: model-free, no model loaded
    if args.method != BACKPROJECTION:
        device = parse_device(args.device)
        model = fastviz.models.load(args.model, device)
    result = write_overlay(
        args.output, args.input, model=model, method=args.method, options=_method_options(args),
        layout=args.layout, batch=args.batch, max_frames=args.max_frames, scale=args.scale, alpha=args.alpha,
        colormap=args.colormap, opacity=args.opacity, clip=args.clip, vrange=args.vrange, fps=args.fps, legend=not args.no_legend,
        gauge=args.gauge, save_maps=args.save_maps, codec=args.codec, keep_partial=args.keep_partial,
        progress=not args.quiet, smooth=args.smooth, smooth_alpha=args.smooth_alpha,
    )
    maps = f" and maps -> {result.maps}" if result.maps is not None else ""
    print(
        f"fastviz: {result.frames} frames ({args.method}, {args.layout}) in {result.seconds:.1f} s "
        f"({result.frames_per_s:.1f} frames/s) -> {result.output}{maps}"
    )
    return 0


# --------------------------------------------------------------------------- bench


def _check_output(path_text: str | None, suffix: str | None = None) -> Path | None:
    if path_text is None:
        return None
    path = Path(path_text)
    if suffix is not None and path.suffix.lower() != suffix:
        raise InputError(f"cannot write {path}: the plot is a PNG file, name it *{suffix}")
    if path.is_dir():
        raise InputError(f"cannot write {path}: it is a folder")
    folder = path.parent
    if not folder.is_dir():
        raise InputError(f"cannot write {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise InputError(f"cannot write {path}: permission denied")
    return path


def _bench(args: argparse.Namespace) -> int:
    from . import costs as fb

    outputs = {"json": _check_output(args.json), "csv": _check_output(args.csv), "plot": _check_output(args.plot, ".png")}
    given = [p.resolve() for p in outputs.values() if p is not None]
    if len(set(given)) < len(given):
        raise InputError("--json, --csv and --plot must name different files")
    if outputs["plot"] is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise InputError("--plot needs matplotlib: pip install matplotlib") from None
    device = parse_device(args.device)
    model, default_size = fb.load_model(args.model, args.weights, device)
    size = args.input_size or default_size
    if size is None:
        raise InputError(f"--input-size HxW is needed for model {args.model}")
    info = fb.machine(device)
    names = args.methods or fastviz.methods()
    options = {k: v for k, v in fb.BENCH_MODEL_OPTIONS.get(args.model, {}).items() if k in names}
    records = fb.bench(model, size, methods=names, frames=args.frames, device=device, batch=args.batch,
                       memory_budget=args.memory_budget, repeats=args.repeats, warmup=args.warmup,
                       method_options=options, progress=not args.quiet)
    if outputs["plot"] is not None and all(r.skipped is not None for r in records):
        raise InputError("nothing to plot: every method was skipped")
    # Each file is written all or nothing. One that was written before another failed is complete
    # and is kept (it may have replaced an earlier file: removing it would lose both); the error
    # line says which were written.
    written: list[Path] = []
    try:
        for key, write in (("json", fb.to_json), ("csv", fb.to_csv)):
            if outputs[key] is not None:
                written.append(write(records, outputs[key], info))
        if outputs["plot"] is not None:
            written.append(fb.plot(records, outputs["plot"], title=f"fastviz bench: {args.model} {size[0]}x{size[1]} on {device}"))
    except (OSError, FastvizError) as exc:
        done = f" ({', '.join(map(str, written))} written)" if written else ""
        raise InputError(f"cannot write output: {_one_line(str(exc))}{done}") from None
    print(fb.table(records, info))
    return 0


# --------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> int:
    """Run the ``fastviz`` command line; returns the exit status.

    0: done; 1: out of memory; 2: bad usage, bad input or an output that cannot be written (one
    line ``fastviz: error: ...`` on stderr, no output file); 130: interrupted (Ctrl-C), 143:
    SIGTERM, 129: SIGHUP (no output file; with ``--keep-partial`` the frames done are kept and the
    message says where).
    """
    _quiet_opencv()
    fastviz.scheduler.tune_cpu_allocator()  # our own process: keep activation buffers for reuse
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if not argv:  # bare `fastviz`: say what it can do
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        print(f"fastviz: error: {_one_line(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else 0
    from . import tempfiles

    restore = tempfiles.install_signal_handlers() if threading.current_thread() is threading.main_thread() else None
    # fastviz's log warnings (a budget below the need, ...) as one line each, like Python warnings
    logger = logging.getLogger("fastviz")
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("fastviz: warning: %(message)s"))
    logger.addHandler(handler)
    propagate, logger.propagate = logger.propagate, False
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return args.run(args)
    except FastvizError as exc:
        print(f"fastviz: error: {_one_line(_with_notes(exc))}{_kept(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except (torch.OutOfMemoryError, MemoryError, RuntimeError) as exc:
        if not (isinstance(exc, MemoryError) or fastviz.scheduler.is_out_of_memory(exc)):
            raise
        print(f"fastviz: error: out of memory on {args.device} ({_one_line(str(exc))[:200]}): try a smaller "
              f"--batch or --memory-budget{_kept(exc)}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, tempfiles.Terminated) as exc:
        what = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"stopped by {exc.signal_name}"
        kept = _kept(exc) + "".join(f"; {_one_line(str(n))}" for n in getattr(exc, "__notes__", ()))
        print(f"fastviz: {what}{kept if kept else '; no output written'}", file=sys.stderr)
        return tempfiles.exit_code(exc)
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
        if restore is not None:
            restore()


def _with_notes(exc: BaseException) -> str:
    """The message and its notes (``add_note``: e.g. why a partial output could not be kept)."""
    notes = [str(n) for n in getattr(exc, "__notes__", ())]
    return "; ".join([str(exc), *notes])


def _kept(exc: BaseException) -> str:
    """``"; kept N frames in PATH (--keep-partial)"`` for the partial outputs an error left, by request,
    and ``"; PATH was written (N frames)"`` for a complete output written before a companion failed."""
    kept = getattr(exc, "fastviz_kept", None) or []
    written = getattr(exc, "fastviz_written", None) or []
    parts = [f"kept {n} frames in {path} (--keep-partial)" for path, n in kept]
    parts += [f"{path} was written ({n} frames)" for path, n in written]
    return "".join(f"; {p}" for p in parts)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
