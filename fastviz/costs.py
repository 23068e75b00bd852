"""What each saliency method costs on a model and a machine: ``fastviz bench`` and :func:`bench`.

For every method, :func:`bench` runs :func:`fastviz.explain` on ``frames`` random inputs (fixed
seed) in batches of ``batch`` frames: ``warmup`` untimed runs, then ``repeats`` timed runs (each
call synchronised on CUDA). A tqdm progress bar per method on stderr counts the frames of the
warm-up and timed runs (``progress=False`` turns it off). One :class:`BenchRecord` per method:

===============================  ==================================================================
``method``                       registered method name
``device``                       torch device the model ran on (``"cpu"``, ``"cuda:0"``)
``batch``                        frames per :func:`fastviz.explain` call
``frames``                       frames per timed run
``ms_per_frame``                 median over the timed runs of (run time / frames), milliseconds
``ms_per_frame_p10``/``p90``     10th / 90th percentile of the same
``frames_per_s``                 ``1000 / ms_per_frame``
``forward_calls_per_frame``      batched forward calls of the model in one run / frames: the
                                 ``passes`` of the plans as run
                                 (:func:`fastviz.scheduler.run_chunks`; attempts that ran out of
                                 memory and were retried are not counted). One-pass methods on
                                 16 frames in one batch: 1/16 = 0.0625.
``model_evaluations_per_frame``  input rows through the model in one run / frames: the ``rows``
                                 of the plans as run. Occlusion: one row per window plus the
                                 clean frame, which is evaluated once to score every window
                                 against (PilotNet's 66x200 input with the default windows 8, 16
                                 and 32 at stride 4: 16x49 + 14x47 + 10x43 = 1,872 windows, so
                                 1,873). One-pass methods: 1. For the gradient methods
                                 (``saliency``, ``guided_backprop``: a forward and a backward pass
                                 through the whole model; ``grad_cam``: a forward pass and a
                                 backward pass down to its layer) one evaluation is a forward and
                                 a backward pass of the row.
``peak_memory_bytes``            CUDA: ``torch.cuda.max_memory_allocated`` during the timed runs
                                 above what was allocated before; CPU: growth of the process's
                                 peak resident set (``VmHWM`` after resetting it through
                                 ``/proc/self/clear_refs``) over the resident set before;
                                 ``None`` where neither can be measured
``skipped``                      ``None``, or why the method does not apply to the model (an
                                 :class:`~fastviz.errors.FastvizError` of its first run, e.g.
                                 CAM on a model without a global-average-pool head); then every
                                 measured field is ``None``
===============================  ==================================================================

Neither count includes the one-row probes some methods make before their planned passes (the
scheduler's footprint probe, occlusion's memory-layout probe, the layer look-ups of Grad-CAM and
CAM): they are set-up, not work per frame. A method that makes no plan (``hypercolumns``) is
counted by a forward pre-hook on the model instead: every call, and the rows of its first
tensor argument.

:func:`machine` describes the machine once (CPU model, GPU name, torch and numba versions).

Files: :func:`to_json` writes ``{"schema": "fastviz.bench/2", "machine": {...}, "records":
[record, ...]}`` (records as :meth:`BenchRecord.as_dict`, ``null`` for ``None``);
:func:`to_csv` writes one row per method with the columns :data:`CSV_COLUMNS` (empty cell for
``None``; machine fields repeated on every row); :func:`plot` writes a PNG bar chart of
``ms_per_frame`` per method on a log scale (matplotlib, imported when called). Every file is
written under a temporary name and renamed when complete.

Schema history: ``fastviz.bench/1`` had one count, ``forward_passes_per_frame``, which was the
batched calls (the ``forward_calls_per_frame`` of ``/2``); ``/2`` replaces it with
``forward_calls_per_frame`` and ``model_evaluations_per_frame``.
"""

from __future__ import annotations

import csv
import importlib
import inspect
import io
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import scheduler
from .scheduler import parse_device
from .errors import FastvizError, InputError, InputFileNotFoundError, UnknownNameError
from .methods.registry import explain, get, methods as registered_methods

__all__ = [
    "BENCH_MODELS",
    "BENCH_MODEL_OPTIONS",
    "CSV_COLUMNS",
    "SCHEMA",
    "BenchRecord",
    "bench",
    "load_model",
    "machine",
    "parse_input_size",
    "plot",
    "table",
    "to_csv",
    "to_json",
]

#: The JSON files' schema tag.
SCHEMA = "fastviz.bench/2"

#: Models known by name to ``fastviz bench --model``: name -> (description, default input size).
BENCH_MODELS = {
    "pilotnet": ("bundled pilotnet-carracing", (66, 200)),
    "resnet50": ("ResNet-50-sized classifier, random weights (fastviz.models.build('resnet50-random'))", (224, 224)),
}

#: Method options ``fastviz bench`` uses for a named model: the ResNet's CAM layer is the output
#: of its last stage (the input of global average pooling), not the last convolution inside the
#: last block (followed by batch norm and the residual sum); Grad-CAM explains the same layer.
BENCH_MODEL_OPTIONS = {"resnet50": {"cam": {"layer": "stages"}, "grad_cam": {"layer": "stages"}}}

#: Fixed seed of the random inputs.
INPUT_SEED = 0


@dataclass(frozen=True)
class BenchRecord:
    """One method's cost on one model and device (see the module docstring for the fields)."""

    method: str
    device: str
    batch: int
    frames: int
    ms_per_frame: float | None
    ms_per_frame_p10: float | None
    ms_per_frame_p90: float | None
    frames_per_s: float | None
    forward_calls_per_frame: float | None
    model_evaluations_per_frame: float | None
    peak_memory_bytes: int | None
    skipped: str | None = None

    def as_dict(self) -> dict:
        """The fields as a plain dict (JSON-ready)."""
        return asdict(self)


#: CSV columns: the record fields, then the machine fields.
CSV_COLUMNS = [f.name for f in fields(BenchRecord)] + ["cpu", "gpu", "torch", "numba"]


# --------------------------------------------------------------------------- machine


def machine(device: torch.device | str = "cpu") -> dict:
    """``{"cpu", "gpu", "torch", "numba"}``: CPU model, GPU name (``None`` without CUDA or for a
    CPU run on a machine without one), torch and numba versions (``None`` if not installed)."""
    device = torch.device(device)
    gpu = None
    if torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(device if device.type == "cuda" else None)
    try:
        import numba

        numba_version = numba.__version__
    except ImportError:
        numba_version = None
    return {"cpu": scheduler.cpu_model(), "gpu": gpu, "torch": torch.__version__, "numba": numba_version}


# --------------------------------------------------------------------------- memory


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _malloc_trim() -> None:
    """Return malloc's free memory to the OS (glibc), so that buffers kept from earlier runs
    are allocated again, and counted, during the measured block."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_cpu_peak() -> bool:
    _malloc_trim()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident set
        return True
    except OSError:
        return False


class _PeakMemory:
    """Peak memory of a block, above what was in use when it started (see the module docstring)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.value: int | None = None

    def __enter__(self) -> "_PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self._before = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._ok = _reset_cpu_peak()
            self._before = _status_kib("VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.value = int(torch.cuda.max_memory_allocated(self.device) - self._before)
        elif self._ok and self._before is not None:
            peak = _status_kib("VmHWM")
            self.value = None if peak is None else max(0, peak - self._before) * 1024


# --------------------------------------------------------------------------- arguments


def parse_input_size(value) -> tuple[int, int]:
    """``"HxW"`` (or ``(H, W)``) -> ``(H, W)``, both >= 1.

    Raises
    ------
    InputError
        For anything else.
    """
    if isinstance(value, str):
        parts = value.lower().replace(" ", "").split("x")
        try:
            h, w = (int(p) for p in parts)
        except ValueError:
            raise InputError(f"malformed input size {value!r}: use HxW, e.g. 66x200") from None
    else:
        try:
            h, w = value
            if isinstance(h, bool) or isinstance(w, bool) or int(h) != h or int(w) != w:
                raise TypeError
            h, w = int(h), int(w)
        except (TypeError, ValueError):
            raise InputError(f"input size must be (height, width) or 'HxW', got {value!r}") from None
    if h < 1 or w < 1:
        raise InputError(f"input size must be positive, got {h}x{w}")
    from .models.pilotnet import MAX_INPUT_SIDE

    if max(h, w) > MAX_INPUT_SIDE:
        raise InputError(f"input size {h}x{w} is too large: at most {MAX_INPUT_SIDE} pixels a side")
    return h, w




def _count(value, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(f"{what} must be a whole number >= {minimum}, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------- models


def _load_weights(path: Path) -> dict:
    if not path.is_file():
        raise InputFileNotFoundError(f"weights file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise InputError(f"cannot read weights {path}: {_first_line(exc)}") from None
    if suffix in (".pt", ".pth"):
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - unpickling refused, corrupt file, ...: one line
            raise InputError(f"cannot load weights {path} weights-only: {_first_line(exc)}") from None
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise InputError(f"{path} does not hold a state dict (name -> tensor)")
        return state
    raise InputError(f"weights file {path} must be .safetensors, .pt or .pth")


def _local_hint(module_name: str, exc: BaseException) -> str:
    """``"; ... PYTHONPATH"`` when the missing top-level package exists in the current folder."""
    top = module_name.split(".")[0]
    if not isinstance(exc, ModuleNotFoundError) or exc.name != top:
        return ""
    here = Path.cwd()
    if (here / top).is_dir() or (here / f"{top}.py").is_file():
        return f" (fastviz does not import from the current folder {here}: run with PYTHONPATH={here})"
    return ""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_model(spec: str, weights: str | os.PathLike | None = None, device: torch.device | str = "cpu"):
    """The model ``fastviz bench --model`` names, in eval mode on ``device``, and its default
    input size ``(H, W)`` (``None`` if unknown).

    Parameters
    ----------
    spec : str
        ``"pilotnet"`` (the bundled ``pilotnet-carracing``, 66x200), ``"resnet50"``
        (:func:`fastviz.models.build` ``("resnet50-random")``, 224x224), another bundled name or
        a ``.safetensors`` file of :func:`fastviz.models.load`, or an import path
        ``package.module:ClassName`` (the class is called without arguments).
    weights : path, optional
        A ``.safetensors``, ``.pt`` or ``.pth`` state dict loaded weights-only (no code is
        unpickled) into an import-path model, strictly; without it the model keeps its random
        initialisation (seeded with 0).
    device : "cpu", "cuda", ...

    Notes
    -----
    An import path is imported with ``sys.path`` as it is: fastviz never adds the current
    folder, so a local folder named like an installed package (``torchvision/``) cannot shadow
    it. To import a module of your own, put its folder on the path yourself:
    ``PYTHONPATH=. fastviz bench --model mynet:Net``. (``python -m fastviz`` is different:
    Python itself puts the current folder first on ``sys.path`` for ``-m``; ``python -P -m
    fastviz`` or the ``fastviz`` command do not.)

    Raises
    ------
    InputError, InputFileNotFoundError, UnknownNameError
        One readable line for a bad import path, a module that cannot be imported (with a hint
        when it exists only in the current folder), a missing file or weights that do not fit.
    """
    from . import models

    dev = parse_device(device)
    if ":" not in spec or spec.endswith(".safetensors"):
        if weights is not None:
            raise InputError(f"--weights applies to a model given as an import path package.module:ClassName, not {spec!r}")
        if spec in BENCH_MODELS:
            size = BENCH_MODELS[spec][1]
            model = models.load("pilotnet-carracing", device=dev) if spec == "pilotnet" else models.build("resnet50-random", device=dev)
            return model, size
        try:
            model = models.load(spec, device=dev)
        except UnknownNameError:
            raise UnknownNameError(
                f"unknown model {spec!r}: use {', '.join(BENCH_MODELS)}, a bundled name ({', '.join(models.available())}), "
                "a .safetensors file or an import path package.module:ClassName"
            ) from None
        return model, tuple(model.transform.size)
    module_name, _, class_name = spec.partition(":")
    if not module_name or not all(part.isidentifier() for part in module_name.split(".")) or not class_name.isidentifier():
        raise InputError(f"malformed model import path {spec!r}: use package.module:ClassName")
    try:
        module = importlib.import_module(module_name)  # sys.path as it is: the current folder is never added
    except Exception as exc:  # noqa: BLE001 - ImportError or an error in the module: one line
        raise InputError(f"cannot import {module_name!r} for model {spec!r}: {_first_line(exc)}{_local_hint(module_name, exc)}") from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise InputError(f"module {module_name!r} has no attribute {class_name!r} (model {spec!r})")
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = cls()
    except Exception as exc:  # noqa: BLE001 - the user's constructor: one line
        raise InputError(f"cannot build {spec} without arguments: {_first_line(exc)}") from None
    if not isinstance(model, nn.Module):
        raise InputError(f"{spec} is not a torch.nn.Module (got {type(model).__name__})")
    if weights is not None:
        path = Path(weights)
        state = _load_weights(path)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise InputError(f"{path}: weights do not fit {spec}: {_first_line(exc)}") from None
    return model.to(dev).eval(), None


# --------------------------------------------------------------------------- measuring


def _as_run(plans: Sequence[scheduler.Plan]) -> list[scheduler.Plan]:
    """The plans as run, from the plans recorded during a run: those :func:`scheduler.run_chunks`
    published (``as_run``, the chunk and passes after any out-of-memory back-off); the plans
    :func:`scheduler.plan` published before running them are left out."""
    return [p for p in plans if p.as_run]


class _ForwardCount:
    """Forward calls of a model and the rows of their first tensor argument (a forward
    pre-hook, removed on exit) — the count for methods that make no plan."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.calls = 0
        self.rows = 0

    def _count(self, _module, args, kwargs) -> None:
        self.calls += 1
        first = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
        self.rows += int(first.shape[0]) if first is not None and first.ndim > 0 else 1

    def __enter__(self) -> "_ForwardCount":
        self._handle = self.model.register_forward_pre_hook(self._count, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> bool:
        self._handle.remove()
        return False


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _options(name: str, memory_budget, method_options: dict | None) -> dict:
    opts = dict((method_options or {}).get(name, {}))
    if memory_budget is not None and "memory_budget" in inspect.signature(get(name)).parameters:
        opts.setdefault("memory_budget", memory_budget)
    return opts


def bench(
    model: nn.Module,
    input_size=(66, 200),
    methods: Sequence[str] | None = None,
    frames: int = 8,
    device: torch.device | str = "cpu",
    batch: int | None = None,
    memory_budget=None,
    repeats: int = 5,
    warmup: int = 1,
    method_options: dict | None = None,
    channels: int = 3,
    progress: bool = True,
) -> list[BenchRecord]:
    """Measure what each saliency method costs on ``model``.

    Parameters
    ----------
    model : nn.Module
        In eval mode; moved to ``device`` (left there).
    input_size : (H, W) or "HxW"
        Input frames' size in the model's input space.
    methods : sequence of str, optional
        Registered method names; default: every registered method (those that do not apply to
        the model are reported as skipped).
    frames : int
        Random frames per run (seed :data:`INPUT_SEED`, uniform in [0, 1)).
    device : "cpu", "cuda", ...
    batch : int, optional
        Frames per :func:`fastviz.explain` call; default: all frames at once.
    memory_budget : optional
        Passed to every method that takes one (see :func:`fastviz.scheduler.parse_budget`).
    repeats, warmup : int
        Timed runs (>= 1) after untimed warm-up runs (>= 0). A first untimed run is always
        made, and counts as the first warm-up run: it checks that the method applies and
        counts the forward calls and model evaluations (see the module docstring).
    method_options : dict, optional
        ``{method: {option: value}}``, e.g. ``{"occlusion": {"chunk_size": 64}}``.
    channels : int
        Input channels (3).
    progress : bool
        Show a tqdm progress bar per method on stderr (``[3/7] occlusion``, frames of the
        warm-up and timed runs, then ``warm-up`` / ``timed`` / ``skipped``); default True.

    Returns
    -------
    list of BenchRecord
        One per method, in the order given.

    Raises
    ------
    InputError, UnknownNameError
        For an unknown method, malformed size, counts, budget or options, or an unavailable
        device; errors of a method's own run other than "does not apply" (a
        :class:`~fastviz.errors.FastvizError`) propagate.
    """
    h, w = parse_input_size(input_size)
    frames = _count(frames, "frames", 1)
    repeats = _count(repeats, "repeats", 1)
    warmup = _count(warmup, "warmup", 0)
    channels = _count(channels, "channels", 1)
    if not isinstance(progress, bool):
        raise InputError(f"progress must be True or False, got {progress!r}")
    batch = frames if batch is None else _count(batch, "batch", 1)
    batch = min(batch, frames)
    dev = parse_device(device)
    if memory_budget is not None:
        scheduler.parse_budget(memory_budget, dev)
    names = registered_methods() if methods is None else list(methods)
    if not names:
        raise InputError("no methods to benchmark")
    for name in names:
        get(name)  # UnknownNameError listing the registered ones
    if method_options:
        unknown = sorted(set(method_options) - set(names))
        if unknown:
            raise InputError(f"options given for methods not benchmarked: {', '.join(unknown)}")
        for name, opts in method_options.items():
            accepted = inspect.signature(get(name)).parameters
            bad = sorted(set(opts) - set(accepted) | set(opts) & {"model", "x"})
            if bad and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
                options = ", ".join(n for n in accepted if n not in ("model", "x"))
                raise InputError(f"method {name!r} takes no option {', '.join(map(repr, bad))}; its options are: {options}")
    model = model.to(dev).eval()
    gen = torch.Generator().manual_seed(INPUT_SEED)
    x = torch.rand(frames, channels, h, w, generator=gen).to(dev)
    chunks = [x[i: i + batch] for i in range(0, frames, batch)]
    device_name = str(dev) if dev.type == "cpu" else f"cuda:{dev.index if dev.index is not None else torch.cuda.current_device()}"

    from tqdm import tqdm

    runs = 1 + max(0, warmup - 1) + repeats
    records = []
    for index, name in enumerate(names, 1):
        opts = _options(name, memory_budget, method_options)

        def run(bar) -> float:
            """One run over all frames; returns its time in seconds (progress updates excluded)."""
            spent = 0.0
            _sync(dev)
            for part in chunks:
                t0 = time.perf_counter()
                explain(model, part, method=name, **opts)
                _sync(dev)
                spent += time.perf_counter() - t0
                bar.update(part.shape[0])
            return spent

        with tqdm(total=runs * frames, desc=f"[{index}/{len(names)}] {name}", unit="frame", file=sys.stderr,
                  disable=not progress, leave=True, dynamic_ncols=True) as bar:
            bar.set_postfix_str("warm-up", refresh=False)
            try:
                with scheduler.record_plans() as plans, _ForwardCount(model) as hooked:
                    run(bar)
            except FastvizError as exc:
                bar.set_postfix_str("skipped")
                records.append(BenchRecord(name, device_name, batch, frames, None, None, None, None, None, None, None,
                                           skipped=_first_line(exc)))
                continue
            ran = _as_run(plans)
            calls = sum(p.passes for p in ran) if ran else hooked.calls
            rows = sum(p.rows for p in ran) if ran else hooked.rows
            for _ in range(max(0, warmup - 1)):
                run(bar)
            bar.set_postfix_str("timed")
            times = []
            with _PeakMemory(dev) as peak:
                for _ in range(repeats):
                    times.append(run(bar) * 1000.0 / frames)
        ms = float(np.median(times))
        records.append(
            BenchRecord(
                method=name,
                device=device_name,
                batch=batch,
                frames=frames,
                ms_per_frame=ms,
                ms_per_frame_p10=float(np.percentile(times, 10)),
                ms_per_frame_p90=float(np.percentile(times, 90)),
                frames_per_s=1000.0 / ms if ms > 0 else None,
                forward_calls_per_frame=calls / frames,
                model_evaluations_per_frame=rows / frames,
                peak_memory_bytes=peak.value,
            )
        )
    return records


# --------------------------------------------------------------------------- output


def _replace_atomically(path: Path, data: bytes, what: str) -> Path:
    """Write ``data`` to ``path`` all or nothing, through an exclusive temporary
    (:func:`fastviz.tempfiles.atomic_output`); a failed write raises ``OutputError``."""
    from .tempfiles import atomic_output

    path = Path(path)
    with atomic_output(path, what=what) as out:
        out.write(data)
    return path


def to_json(records: Sequence[BenchRecord], path, machine_info: dict | None = None) -> Path:
    """Write ``{"schema", "machine", "records"}`` (see the module docstring) to ``path``."""
    doc = {"schema": SCHEMA, "machine": machine_info if machine_info is not None else machine(),
           "records": [r.as_dict() for r in records]}

    return _replace_atomically(Path(path), (json.dumps(doc, indent=2) + "\n").encode(), "bench JSON")


def to_csv(records: Sequence[BenchRecord], path, machine_info: dict | None = None) -> Path:
    """Write one row per record with the columns :data:`CSV_COLUMNS` to ``path``."""
    info = machine_info if machine_info is not None else machine()

    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for r in records:
        row = {**r.as_dict(), **{k: info.get(k) for k in ("cpu", "gpu", "torch", "numba")}}
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return _replace_atomically(Path(path), text.getvalue().encode(), "bench CSV")


def plot(records: Sequence[BenchRecord], path, title: str | None = None) -> Path:
    """A PNG bar chart of ``ms_per_frame`` per method (log scale; whiskers p10..p90; skipped
    methods left out).

    Raises
    ------
    InputError
        If matplotlib is not installed, or no record has a time.
    """
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        from matplotlib.figure import Figure
    except ImportError:
        raise InputError("plotting needs matplotlib: pip install 'fastviz[plot]'") from None
    timed = [r for r in records if r.ms_per_frame is not None]
    if not timed:
        raise InputError("nothing to plot: every method was skipped")
    fig = Figure(figsize=(max(4.0, 1.0 + 0.9 * len(timed)), 4.0), dpi=100)
    ax = fig.add_subplot()
    ms = [r.ms_per_frame for r in timed]
    lo = [max(0.0, r.ms_per_frame - r.ms_per_frame_p10) for r in timed]
    hi = [max(0.0, r.ms_per_frame_p90 - r.ms_per_frame) for r in timed]
    ax.bar([r.method for r in timed], ms, yerr=[lo, hi], capsize=3, color="tab:blue")
    ax.set_yscale("log")
    ax.set_ylabel("ms per frame (log)")
    ax.set_title(title or f"fastviz bench on {timed[0].device}, batch {timed[0].batch}")
    ax.tick_params(axis="x", labelrotation=30)
    fig.tight_layout()

    png = io.BytesIO()
    fig.savefig(png, format="png")
    return _replace_atomically(Path(path), png.getvalue(), "bench plot")


def _num(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _rate(value: float | None) -> str:
    """A per-frame count: whole numbers with thousands separators (``1,873``), else 2 decimals."""
    if value is None:
        return "-"
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"


def table(records: Sequence[BenchRecord], machine_info: dict | None = None) -> str:
    """The records as a fixed-width text table (with a machine line when given).

    Columns: method, device, batch, ms/frame (median), p10, p90, frames/s, ``calls/frame``
    (:attr:`BenchRecord.forward_calls_per_frame`), ``evals/frame``
    (:attr:`BenchRecord.model_evaluations_per_frame`) and peak MiB; a skipped method gets its
    reason instead of the measured columns.
    """
    head = ["method", "device", "batch", "ms/frame", "p10", "p90", "frames/s", "calls/frame", "evals/frame", "peak MiB"]
    rows = []
    for r in records:
        if r.skipped is not None:
            rows.append([r.method, r.device, str(r.batch), f"skipped: {r.skipped}"])
            continue
        rows.append([
            r.method, r.device, str(r.batch), _num(r.ms_per_frame, ".3f"), _num(r.ms_per_frame_p10, ".3f"),
            _num(r.ms_per_frame_p90, ".3f"), _num(r.frames_per_s, ".1f"), _rate(r.forward_calls_per_frame),
            _rate(r.model_evaluations_per_frame),
            "-" if r.peak_memory_bytes is None else f"{r.peak_memory_bytes / 2**20:.1f}",
        ])
    widths = [max([len(head[i]), *(len(row[i]) for row in rows if len(row) == len(head) or i < 3)])
              for i in range(len(head))]
    lines = []
    if machine_info:
        lines.append(f"# cpu: {machine_info.get('cpu')}; gpu: {machine_info.get('gpu')}; "
                     f"torch {machine_info.get('torch')}; numba {machine_info.get('numba')}")
    lines.append("  ".join(h.ljust(wd) if i == 0 else h.rjust(wd) for i, (h, wd) in enumerate(zip(head, widths))))
    for row in rows:
        if len(row) < len(head):
            lines.append("  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(row[:3]))
                         + "  " + row[3])
        else:
            lines.append("  ".join(c.ljust(wd) if i == 0 else c.rjust(wd) for i, (c, wd) in enumerate(zip(row, widths))))
    return "\n".join(lines)
