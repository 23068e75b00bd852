"""The audit driver: every frame of the inputs through the methods, the faithfulness metrics and
the sanity check, into a resumable Zarr store (:mod:`fastviz.audit.store`).

Frames stream in store-chunk units (never the whole dataset in memory): for each chunk not yet
done, its frames are read (:class:`~fastviz.audit.sources.FrameReader`), explained by each
method in batches of ``batch`` frames, scored by deletion and insertion
(:mod:`fastviz.audit.metrics`: the maps' orders and a random order, all through the scheduler in
one planned run per batch), and written; then the chunk is marked done. When every chunk is
done, the model-randomisation test (:mod:`fastviz.audit.sanity`) runs on a sample of frames and
the store is marked complete.

**Reproducible.** The arrays depend only on the store's ``spec``: a chunk is always computed as
the same batches (a chunk's frames split from its first frame), the memory budget is fixed in
bytes when the store is created (it decides how occlusion's windows are grouped into forward
passes, and a convolution's result can differ in the last bit with the batch it runs in), the
random pixel orders are seeded by frame number, and the random weights of the sanity check by
fixed seeds. So a run killed at any point and resumed with the same command writes the same
arrays as one that was never interrupted, on the same machine and software. (Another
machine, BLAS or thread count can change the last bits of float32 results; the store does not
record them.)
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import scheduler
from ..errors import InputError
from ..hooks import model_device
from . import metrics as fm
from . import sanity as fs
from .sources import AuditSource, FrameReader, describe, expand_inputs
from .store import AuditStore, chunk_seconds, chunk_sizes, is_store, is_url, now

__all__ = ["DEFAULT_BATCH", "DEFAULT_CHUNK", "DEFAULT_METHODS", "AuditResult", "audit", "summary", "tainted_chunks",
           "until_clean", "weights_sha256"]

log = logging.getLogger("fastviz.audit")

#: Methods audited when none are named.
DEFAULT_METHODS = ("occlusion", "grad_cam", "visual_backprop")
#: Frames per store chunk: the unit of work committed at once (and lost at most on a kill).
DEFAULT_CHUNK = 64
#: Frames per call of a method.
DEFAULT_BATCH = 16
#: Largest magnitude float16 holds (65,504).
FLOAT16_MAX = float(np.finfo(np.float16).max)


@dataclass
class AuditResult:
    """What :func:`audit` did.

    Attributes
    ----------
    path : pathlib.Path
        The store.
    frames : int
        Frames in the store.
    computed : int
        Frames computed by this call (0 when the store was already complete).
    seconds : float
        Wall-clock seconds of this call.
    complete : bool
        Every chunk done and the sanity check recorded.
    sanity : dict
        Per method: the model-randomisation result (:class:`fastviz.audit.sanity.SanityResult`
        as a dict).
    failed : list of dict
        The sources that failed (path, error).
    """

    path: Path
    frames: int
    computed: int
    seconds: float
    complete: bool
    sanity: dict = field(default_factory=dict)
    failed: list = field(default_factory=list)

    def summary(self) -> str:
        """The summary table of the store (:func:`summary`)."""
        return summary(self.path)


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 of a model's parameters and buffers: for each entry of ``state_dict()`` in order,
    its name, dtype, shape and bytes (little-endian, contiguous)."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _jsonable(value):
    """A method option as JSON: numbers, strings, lists as they are; targets and other objects by
    ``repr``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, nn.Module):
        raise InputError("pass layers to the audit by name (\"features.5\"), not as modules: the store records them")
    return repr(value)


def _resolve_model(model, device) -> tuple[nn.Module, str]:
    from .. import models

    if isinstance(model, (str, Path)):
        name = str(model)
        return models.load(model, scheduler.parse_device(device) if device is not None else "cpu"), name
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be an nn.Module or a bundled model's name, got {type(model).__name__}")
    if device is not None:
        want = scheduler.parse_device(device)
        have = model_device(model) or torch.device("cpu")
        if have.type != want.type or (want.index is not None and have.index != want.index):
            raise InputError(f"the model is on {have}, not {want}: move it first (the audit does not change the model)")
    return model, type(model).__name__


def _check_methods(methods: Sequence[str], options: Mapping[str, Mapping] | None, budget: int) -> dict[str, dict]:
    from ..methods.registry import methods as registered
    from ..overlay import check_method_options

    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    methods = list(dict.fromkeys(methods))
    if not methods:
        raise InputError("the audit needs at least one method")
    unknown = [m for m in methods if m not in registered()]
    if unknown:
        raise InputError(f"unknown method {', '.join(map(repr, unknown))}; registered methods: {', '.join(registered())}")
    options = dict(options or {})
    stray = sorted(set(options) - set(methods))
    if stray:
        raise InputError(f"options given for method {', '.join(map(repr, stray))}, which is not audited")
    out: dict[str, dict] = {}
    for m in methods:
        opts = dict(options.get(m, {}))
        accepted = check_method_options(m, opts)
        if "memory_budget" in opts:
            raise InputError("give the memory budget to the audit (memory_budget=), not to one method")
        if accepted is None or "memory_budget" in accepted:
            opts["memory_budget"] = budget
        out[m] = opts
    return out


def _frame_seed(base: int, g: int) -> int:
    """The random pixel order's seed of frame ``g`` (a 63-bit integer)."""
    digest = hashlib.sha256(f"{base}:{g}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def audit(
    store: str | Path,
    inputs: Sequence[str | Path] | str | Path | None = None,
    *,
    model: nn.Module | str = "pilotnet-carracing",
    methods: Sequence[str] | str = DEFAULT_METHODS,
    options: Mapping[str, Mapping] | None = None,
    batch: int = DEFAULT_BATCH,
    chunk: int = DEFAULT_CHUNK,
    device: str | torch.device | None = None,
    memory_budget=None,
    max_frames: int | None = None,
    steps: int = fm.DEFAULT_STEPS,
    random_seed: int = 0,
    sanity_frames: int = fs.DEFAULT_SAMPLE,
    sanity_seeds: Sequence[int] = fs.RANDOM_SEEDS,
    sanity_threshold: float = fs.DEFAULT_THRESHOLD,
    overwrite: bool = False,
    progress: bool = True,
    on_chunk: Callable[[int, int], None] | None = None,
    engine: str = "local",
    address: str | None = None,
    workers: int | None = None,
) -> AuditResult:
    """Audit a model over drive logs, videos or image folders into a resumable Zarr store.

    Every frame gets each method's raw saliency map, the model's prediction, deletion and
    insertion AUCs (Petsiuk et al., BMVC 2018, adapted to regression: :mod:`fastviz.audit.metrics`)
    and map statistics; at the end the model-parameter randomisation test (Adebayo et al.,
    NeurIPS 2018: :mod:`fastviz.audit.sanity`) runs on ``sanity_frames`` frames. The layout is
    documented in :mod:`fastviz.audit.store`. Calling again with the same arguments resumes an
    interrupted audit (only unfinished chunks are computed) and gives the same arrays.

    Parameters
    ----------
    store : path or str
        The store folder (``.zarr`` by convention), or a URL fsspec knows (``s3://bucket/a.zarr``,
        ``file:///shared/a.zarr``; its protocol's package installed). Created if absent; resumed
        if it is an audit store with the same settings; refused if its settings differ (unless
        ``overwrite``) or it is anything else. At a URL, creation is not atomic and the store is
        not locked against a second writer.
    inputs : path or list of paths, optional
        Drive logs (a video with a ``frame,time_s,steering_rad`` ``.csv`` beside it: the recorded
        steering is the truth), video files, image folders, or text files listing them (one per
        line); ``None``: the bundled held-out log. A source that is corrupt or truncated is
        recorded in the store's ``sources`` attribute and skipped.
    model : nn.Module or str
        A model in eval mode with ``.preprocess(frames)`` (uint8 ``(N, H, W, 3)`` RGB -> float
        ``(N, C, h, w)``), or a name/weights file for :func:`fastviz.models.load`.
    methods : sequence of str or comma-separated str
        Registered methods; default occlusion, Grad-CAM and VisualBackProp.
    options : mapping method -> mapping, optional
        Each method's own keywords, e.g. ``{"grad_cam": {"layer": "features.5"}}``; layers by
        name. Recorded in the store.
    batch : int
        Frames per method call, >= 1.
    chunk : int
        Frames per store chunk, >= 1: the unit committed at once.
    device : torch device, optional
        Where a model given by name is loaded; a model given as a module must already be there.
    memory_budget : str, int or float, optional
        See :func:`fastviz.scheduler.parse_budget`; resolved to bytes when the store is created
        and kept (it decides the forward-pass grouping, so results do not depend on free memory).
    max_frames : int, optional
        Audit at most this many frames (the first of the inputs, in order).
    steps : int
        Points of the deletion and insertion curves minus one.
    random_seed : int
        Seed of the random pixel orders (each frame's order is seeded by it and the frame number).
    sanity_frames : int
        Frames in the randomisation test's sample, spread evenly over the readable frames; 0
        skips the test.
    sanity_seeds : sequence of int
        Seeds of the randomly re-initialised copies of the model.
    sanity_threshold : float
        A method passes the test when the magnitude of its mean rank correlation is below this.
    overwrite : bool
        Start again when ``store`` is an audit store with other settings (or complete).
    progress : bool
        A tqdm progress bar (frames/s, ETA) on stderr.
    on_chunk : callable, optional
        ``on_chunk(chunk, frames_done)`` after each chunk is committed.
    engine : {"local", "ray"}
        ``"local"``: this process computes every chunk. ``"ray"``: Ray workers do
        (:mod:`fastviz.audit.distributed`; extra ``dist``), one per GPU for a CUDA audit, else one
        per CPU of the cluster; the store must be on a file system every worker reaches. The
        store is the same either way, and either engine resumes the other's.
    address : str, optional
        The Ray cluster to join (``"auto"``: the one this machine belongs to); default a local
        Ray started for the audit. Ray engine only.
    workers : int, optional
        Ray workers to start (default: the cluster's GPUs or CPUs). Ray engine only.

    Returns
    -------
    AuditResult

    Raises
    ------
    InputError
        For bad arguments, an input that does not exist, no readable frame, a model in training
        mode or without ``preprocess``, or a store started with other settings.
    InputFileNotFoundError
        For an input that does not exist.
    fastviz.tempfiles.OutputError
        When the store cannot be written.
    """
    from tqdm import tqdm

    started = time.perf_counter()
    for name, value, low in (("batch", batch, 1), ("chunk", chunk, 1), ("steps", steps, 1),
                             ("sanity_frames", sanity_frames, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise InputError(f"{name} must be a whole number >= {low}, got {value!r}")
    if max_frames is not None and (isinstance(max_frames, bool) or not isinstance(max_frames, (int, np.integer))
                                   or max_frames < 1):
        raise InputError(f"max_frames must be a whole number >= 1, got {max_frames!r}")
    if not (isinstance(sanity_threshold, (int, float)) and 0 < sanity_threshold <= 1):
        raise InputError(f"sanity_threshold must lie in (0, 1], got {sanity_threshold!r}")
    from .distributed import check_engine

    check_engine(engine, address, workers)
    by_name = isinstance(model, (str, Path))
    if not is_url(store):
        store = Path(store)
        if not store.parent.is_dir():
            raise InputError(f"cannot write audit store {store}: folder {store.parent} does not exist")
        if store.exists() and not store.is_dir():
            raise InputError(f"{store} is a file; an audit store is a folder")
    model, model_name = _resolve_model(model, device)
    if model.training:
        raise InputError("the model is in training mode: call model.eval() first (batch norm and dropout "
                         "would make the maps depend on the batch)")
    if not callable(getattr(model, "preprocess", None)):
        raise InputError("the model needs .preprocess(frames): uint8 (N, H, W, 3) RGB -> model input")
    dev = model_device(model) or torch.device("cpu")
    budget = scheduler.parse_budget(memory_budget, dev)
    method_options = _check_methods(methods, options, budget)
    names = list(method_options)

    # ---------------------------------------------------------------- inputs and the spec
    sources = [describe(p) for p in expand_inputs(inputs)]
    remaining = max_frames
    for src in sources:
        if remaining is not None:
            src.frames = min(src.frames, remaining)
            remaining -= src.frames
        if src.error is not None:
            warnings.warn(f"input {src.path} is skipped: {src.error}", stacklevel=2)
    total = sum(s.frames for s in sources)
    if total == 0:
        reasons = "; ".join(f"{s.path}: {s.error}" for s in sources if s.error)
        raise InputError(f"no frames to audit{(': ' + reasons) if reasons else ''}")
    first = _read_frames(model, sources, np.zeros(1, dtype=np.int64))  # sources that failed give no frames
    size = int(first.shape[-2]), int(first.shape[-1])
    weights = weights_sha256(model)
    spec = {
        "inputs": [{"path": s.path, "sha256": s.sha256} for s in sources],
        "frames": total,
        "model": {"name": model_name, "weights_sha256": weights},
        "input_size": list(size),
        "methods": names,
        "options": {m: {k: _jsonable(v) for k, v in o.items() if k != "memory_budget"}
                    for m, o in method_options.items()},
        "metrics": {"steps": int(steps), "baseline": "blur", "order": "abs", "random_seed": int(random_seed)},
        "chunk": int(chunk),
        "batch": int(batch),
        "device": dev.type,
        "memory_budget": int(budget),
        "max_frames": None if max_frames is None else int(max_frames),
        "sanity": {"frames": int(sanity_frames), "seeds": [int(s) for s in sanity_seeds],
                   "threshold": float(sanity_threshold)},
    }
    model_attrs = {"name": model_name, "class": type(model).__name__, "weights_sha256": weights,
                   "output_units": getattr(model, "output_units", None),
                   # the part of each frame the model sees, (top, bottom, left, right) as fractions: the
                   # report places maps back onto frames with it
                   "crop": list(getattr(getattr(model, "transform", None), "crop", (0.0, 1.0, 0.0, 1.0)))}

    if is_store(store) and not overwrite:
        st = AuditStore.resume(store, spec)
        # failures found while reading (part-way through a source) were recorded: keep them
        recorded = st.attrs.get("sources") or []
        for src, rec in zip(sources, recorded):
            if rec.get("frames_read") is not None and src.frames_read is None:
                src.error, src.frames_read = rec.get("error"), rec.get("frames_read")
    else:
        # every method must work on this model before a store is made for it (CAM on a model
        # without a global-average-pooling head, a layer name that does not exist, ...)
        for m, opts in method_options.items():
            maps = _explain(model, first, method=m, options=opts)
            if maps.shape != (1, *size):
                raise InputError(f"{m} gives maps of shape {tuple(maps.shape[1:])}, not the model's input size {size}: "
                                 "the audit stores maps at the input resolution")
        st = AuditStore.create(store, spec=spec, sources=[s.as_dict() for s in sources], frames=total, size=size,
                               methods=names, steps=steps, chunk=chunk, model=model_attrs, overwrite=overwrite)

    with st:
        done = st.done()
        # chunks marked done that read a failed source past its failure (a Ray worker could not know
        # of it yet when the audit was stopped) are computed again, like the chunks not done
        todo = sorted(set(np.flatnonzero(~done).tolist()) | set(tainted_chunks(st, sources)))
        redo = set(todo)

        def record_failure(_k: int, _src: AuditSource) -> None:
            warnings.warn(f"input {_src.path} failed at frame {_src.frames_read}: {_src.error}", stacklevel=2)
            st.update(sources=[s.as_dict() for s in sources])

        fns = {m: functools.partial(_explain, method=m, options=method_options[m]) for m in names}
        kept = done.copy()
        kept[list(redo)] = False
        tally = _Tally(done_frames=int(chunk_sizes(st.frames, st.chunk)[kept].sum()), chunks_done=int(kept.sum()))
        try:
            with tqdm(total=total, initial=tally.done_frames, unit="frame", file=sys.stderr, disable=not progress,
                      dynamic_ncols=True, desc="audit") as bar:

                def commit(c: int, seconds: np.ndarray, shown: int = 0) -> None:
                    """The driver's half of a chunk's commit, and the counts."""
                    st.mark_done(c, seconds)
                    g0, g1 = st.chunk_range(c)
                    if c not in tally.committed:
                        tally.committed.add(c)
                        tally.chunks_done += 1
                        tally.computed += g1 - g0
                        tally.done_frames += g1 - g0
                        bar.update(g1 - g0 - shown)
                    if on_chunk is not None:
                        on_chunk(c, tally.done_frames)

                def again() -> list[int]:
                    # a failure met in a pass may show that chunks done before it read past it
                    return tainted_chunks(st, sources)

                if engine == "ray":
                    from .distributed import RayPlan, run_on_ray

                    plan = RayPlan(store=store if is_url(store) else str(store.absolute()),
                                   model=model_name if by_name else model, device=str(dev), sources=sources,
                                   methods=method_options, batch=batch, steps=steps, random_seed=random_seed,
                                   budget=budget, size=size)
                    run_on_ray(todo, plan, sources, address=address, workers=workers, on_commit=commit,
                               on_failure=lambda k: record_failure(k, sources[k]), again=again)
                else:
                    def local_pass(chunks: list[int]) -> None:
                        with FrameReader(sources, model.preprocess, on_failure=record_failure) as reader:
                            for c in chunks:
                                g0, g1 = st.chunk_range(c)
                                shown = [0]

                                def advance(n: int) -> None:  # the bar moves batch by batch
                                    if c not in tally.committed:
                                        shown[0] += n
                                        bar.update(n)

                                arrays = _chunk(model, reader.read(g0, g1), fns, names, batch=batch, steps=steps,
                                                random_seed=random_seed, budget=budget, size=size, advance=advance)
                                seconds = arrays.pop("progress/seconds")
                                st.write_arrays(c, arrays)
                                commit(c, seconds, shown[0])

                    until_clean(todo, local_pass, again, limit=len(sources) + 1)

            sanity = st.attrs.get("sanity")
            if sanity is None and sanity_frames > 0:
                sanity = _sanity(st, model, sources, fns, names, sanity_frames, sanity_seeds, sanity_threshold)
                st.update(sanity=sanity)
            if not st.attrs.get("complete"):
                st.update(complete=True, completed=now())
        except BaseException as exc:
            n_chunks = len(done)
            chunks_done = tally.chunks_done
            if chunks_done < n_chunks:
                what = f"{chunks_done} of {n_chunks} chunks are done and kept"
            else:
                what = "every chunk is done; the sanity check is not recorded yet"
            exc.add_note(f"audit store {store}: {what}; run the same command again to resume")
            raise
    failed = [{"path": s.path, "error": s.error} for s in sources if s.error is not None]
    return AuditResult(path=store, frames=total, computed=tally.computed, seconds=time.perf_counter() - started,
                       complete=True, sanity=(sanity or {}).get("methods", {}), failed=failed)


@dataclass
class _Tally:
    """The driver's counts while chunks are committed."""

    done_frames: int
    chunks_done: int
    computed: int = 0
    committed: set = field(default_factory=set)


def until_clean(todo: list[int], run_pass: Callable[[list[int]], None], again: Callable[[], list[int]],
                limit: int) -> None:
    """Run ``run_pass`` on chunks ``todo``, then on what ``again()`` names (chunks that read a
    failed source past its failure), until nothing is left; more than ``limit`` passes is a bug
    (each pass learns of one failure at least), raised as ``RuntimeError``."""
    passes = 0
    while todo:
        run_pass(todo)
        passes += 1
        todo = again()
        if todo and passes > limit:
            raise RuntimeError(f"chunks {todo} keep reading past a failed source")


def tainted_chunks(st: AuditStore, sources: Sequence[AuditSource]) -> list[int]:
    """Chunks marked done whose ``frames/ok`` says a source that failed part-way was read past its
    failure (``frames_read``): computed before the failure was known, they are computed again.

    Only the Ray engine makes them (a worker starting its chunk after the failure point cannot
    know of it); the single-process audit reads each source in order and stops at its failure.
    """
    failed = [(k, s.frames_read) for k, s in enumerate(sources) if s.frames_read is not None]
    if not failed:
        return []
    done = st.done()
    ok = np.asarray(st.group["frames/ok"][:], dtype=bool)
    source = np.asarray(st.group["frames/source"][:])
    index = np.asarray(st.group["frames/index"][:])
    bad = np.zeros(ok.shape, dtype=bool)
    for k, frames_read in failed:
        bad |= ok & (source == k) & (index >= frames_read)
    chunks = np.unique(np.flatnonzero(bad) // st.chunk)
    return [int(c) for c in chunks if done[c]]


def _explain(model: nn.Module, x: torch.Tensor, *, method: str, options: Mapping) -> torch.Tensor:
    from ..methods.registry import explain

    return explain(model, x, method=method, **options)


def _to_float16(maps: np.ndarray, method: str) -> np.ndarray:
    big = np.abs(maps) > FLOAT16_MAX
    if big.any():
        warnings.warn(f"{method}: {int(big.sum())} map values exceed float16's range (|v| > {FLOAT16_MAX:g}) and "
                      "are stored clipped", stacklevel=3)
        maps = np.clip(maps, -FLOAT16_MAX, FLOAT16_MAX)
    return maps.astype(np.float16)


def _chunk(model, frames, fns, names, **kwargs) -> dict[str, np.ndarray]:
    """Every array of one store chunk, with deterministic chunk plans: measured plans
    (:func:`fastviz.scheduler.tune`) differ between machines and runs, and a convolution's last
    bits change with the chunk size, so a resumed or distributed audit would not equal an
    uninterrupted one."""
    with scheduler.tuning(False):
        return _chunk_arrays(model, frames, fns, names, **kwargs)


def _chunk_arrays(model, frames, fns, names, *, batch, steps, random_seed, budget, size, advance=None) -> dict[str, np.ndarray]:
    """Every array of one store chunk."""
    n = frames.g1 - frames.g0
    h, w = size
    ok = np.flatnonzero(frames.ok)
    seconds = np.zeros(len(names) + 1)
    maps = {m: np.full((n, h, w), np.nan, dtype=np.float32) for m in names}
    curves_del = np.full((len(names) + 1, n, steps + 1), np.nan, dtype=np.float32)
    curves_ins = np.full_like(curves_del, np.nan)
    prediction = np.full(n, np.nan, dtype=np.float32)
    centroid = {m: np.full((n, 2), np.nan, dtype=np.float32) for m in names}
    entropy = {m: np.full(n, np.nan, dtype=np.float32) for m in names}
    for b0 in range(0, len(ok), batch):
        rows = ok[b0:b0 + batch]
        x = frames.x[b0:b0 + batch]
        ranks = []
        for i, m in enumerate(names):
            t = time.perf_counter()
            out = fns[m](model, x).detach()
            seconds[i] += time.perf_counter() - t
            if out.shape != (len(rows), h, w):
                raise InputError(f"{m} gave maps of shape {tuple(out.shape)}, not ({len(rows)}, {h}, {w})")
            maps[m][rows] = out.float().cpu().numpy()
            cen, ent = fm.map_statistics(out)
            centroid[m][rows], entropy[m][rows] = cen.cpu().numpy(), ent.cpu().numpy()
            ranks.append(fm.pixel_ranks(out.abs()))
        t = time.perf_counter()
        seeds = [_frame_seed(random_seed, frames.g0 + int(r)) for r in rows]
        ranks.append(fm.random_ranks(seeds, h, w, x.device))
        curves = fm.perturbation_curves(model, x, torch.stack(ranks), steps=steps, memory_budget=budget)
        seconds[-1] += time.perf_counter() - t
        curves_del[:, rows] = curves.deletion.cpu().numpy()
        curves_ins[:, rows] = curves.insertion.cpu().numpy()
        prediction[rows] = curves.clean.cpu().numpy()
        if advance is not None:
            advance(len(rows))
    arrays: dict[str, np.ndarray] = {
        "frames/source": frames.source,
        "frames/index": frames.index,
        "frames/time_s": frames.time_s,
        "frames/prediction": prediction,
        "frames/truth": frames.truth,
        "frames/ok": frames.ok,
        "metrics/random/deletion_curve": curves_del[-1],
        "metrics/random/insertion_curve": curves_ins[-1],
        "progress/seconds": seconds,
    }
    auc_del = fm.area_under_curve(torch.from_numpy(curves_del)).numpy()
    auc_ins = fm.area_under_curve(torch.from_numpy(curves_ins)).numpy()
    for i, m in enumerate(names):
        arrays[f"maps/{m}"] = _to_float16(maps[m], m)
        arrays[f"metrics/{m}/deletion_curve"] = curves_del[i]
        arrays[f"metrics/{m}/insertion_curve"] = curves_ins[i]
        arrays[f"metrics/{m}/deletion_auc"] = auc_del[i]
        arrays[f"metrics/{m}/insertion_auc"] = auc_ins[i]
        arrays[f"metrics/{m}/random_deletion_auc"] = auc_del[-1]
        arrays[f"metrics/{m}/random_insertion_auc"] = auc_ins[-1]
        arrays[f"metrics/{m}/centroid"] = centroid[m]
        arrays[f"metrics/{m}/entropy"] = entropy[m]
    return arrays


def _read_frames(model, sources: list[AuditSource], frames: np.ndarray) -> torch.Tensor:
    """The model inputs of the given global frames (ascending), read afresh from the sources."""
    parts = []
    with FrameReader(sources, model.preprocess) as reader:
        for g in frames:
            batch = reader.read(int(g), int(g) + 1)
            if not batch.ok.all():
                raise InputError(f"frame {int(g)} of the audit could not be read")
            parts.append(batch.x)
    return torch.cat(parts)


def _sanity(st: AuditStore, model, sources, fns, names, k, seeds, threshold) -> dict:
    """Run the randomisation test on ``k`` frames spread over the readable ones; its attribute."""
    ok = np.flatnonzero(st.group["frames/ok"][:])
    frames = ok[fs.sample_indices(len(ok), k)]
    x = _read_frames(model, sources, frames)
    stored = {m: torch.from_numpy(np.asarray(st.group[f"maps/{m}"].oindex[frames],
                                             dtype=np.float32)) for m in names}
    results = fs.model_randomization(model, x, fns, maps=stored, seeds=seeds, threshold=threshold,
                                     frames=frames.tolist())
    return {
        "test": "model-parameter randomisation (Adebayo et al., NeurIPS 2018), all layers re-initialised",
        "statistic": "mean Spearman rank correlation of |map|, trained vs random weights, over frames and seeds",
        "threshold": float(threshold),
        "frames": frames.tolist(),
        "seeds": [int(s) for s in seeds],
        "methods": {m: r.as_dict() for m, r in results.items()},
    }


# --------------------------------------------------------------------------- summary


def _fmt(value: float, digits: int = 4) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}g}"


def summary(path: str | Path) -> str:
    """A plain-text summary of an audit store: frames and sources, prediction against the truth,
    and per method its cost, mean faithfulness against the random order and the sanity check.

    Reads the per-frame ``(N,)`` arrays of the store; never the maps. AUCs are in the model's
    output units (radians for the bundled model), costs in milliseconds per frame.

    Raises
    ------
    InputFileNotFoundError, InputError
        If ``path`` does not exist or is not an audit store.
    """
    from .store import open_store

    g = open_store(path)
    attrs = g.attrs
    spec = attrs.get("spec", {})
    names = spec.get("methods", [])
    ok = np.asarray(g["frames/ok"][:], dtype=bool)
    done = np.asarray(g["progress/done"][:], dtype=bool)
    n = ok.size
    sources = attrs.get("sources", [])
    failed = [s for s in sources if s.get("error")]
    lines = [
        f"audit store {path}: {n} frames from {len(sources)} source{'s' if len(sources) != 1 else ''}"
        f" ({int(ok.sum())} read, {len(failed)} failed), {int(done.sum())}/{done.size} chunks done, "
        f"{'complete' if attrs.get('complete') else 'incomplete'}",
        f"model {attrs.get('model', {}).get('name')} (weights SHA-256 {str(attrs.get('model', {}).get('weights_sha256'))[:12]}...)",
    ]
    for s in failed:
        lines.append(f"  failed: {s.get('path')}: {s.get('error')}")
    prediction = np.asarray(g["frames/prediction"][:], dtype=np.float64)
    truth = np.asarray(g["frames/truth"][:], dtype=np.float64)
    units = attrs.get("model", {}).get("output_units") or "output units"
    r2, rmse, known = fm.fit_r2(prediction, truth)
    if known >= 2:
        lines.append(f"prediction vs recorded truth on {known} frames: RMSE {_fmt(rmse)} {units}, R² {_fmt(r2, 3)}")
    seconds, frames_timed = chunk_seconds(g)
    sanity = (attrs.get("sanity") or {}).get("methods", {})
    header = (f"{'method':<18}{'ms/frame':>10}{'deletion↑':>11}{'random':>9}{'insertion↓':>12}{'random':>9}"
              f"{'beats random':>14}{'sanity ρ':>10}  check")
    lines += ["", header, "-" * len(header)]
    for i, m in enumerate(names):
        ms = 1e3 * seconds[:, i].sum() / max(frames_timed, 1) if len(seconds) else float("nan")
        d = np.asarray(g[f"metrics/{m}/deletion_auc"][:], dtype=np.float64)
        rd = np.asarray(g[f"metrics/{m}/random_deletion_auc"][:], dtype=np.float64)
        ins = np.asarray(g[f"metrics/{m}/insertion_auc"][:], dtype=np.float64)
        ri = np.asarray(g[f"metrics/{m}/random_insertion_auc"][:], dtype=np.float64)
        valid = np.isfinite(d) & np.isfinite(rd)
        beats = f"{100 * np.mean(d[valid] > rd[valid]):.0f}%" if valid.any() else "-"
        s = sanity.get(m) or {}
        rho = s.get("rank_correlation")
        check = "-" if not s else ("n/a" if s.get("passed") is None else ("pass" if s["passed"] else "FAIL"))
        lines.append(f"{m:<18}{_fmt(ms, 3):>10}{_fmt(np.nanmean(d) if valid.any() else float('nan')):>11}"
                     f"{_fmt(np.nanmean(rd) if valid.any() else float('nan')):>9}"
                     f"{_fmt(np.nanmean(ins) if valid.any() else float('nan')):>12}"
                     f"{_fmt(np.nanmean(ri) if valid.any() else float('nan')):>9}{beats:>14}"
                     f"{_fmt(rho, 2) if rho is not None else '-':>10}  {check}")
    if len(seconds):
        ms = 1e3 * seconds[:, -1].sum() / max(frames_timed, 1)
        lines.append(f"{'(metrics)':<18}{_fmt(ms, 3):>10}")
    lines.append("")
    lines.append(f"AUCs: mean output change in {units} as the map's top pixels are deleted (higher: more faithful) or "
                 "restored (lower: more faithful); random: a random pixel order.")
    if sanity:
        thr = (attrs.get("sanity") or {}).get("threshold")
        failing = [m for m in names if (sanity.get(m) or {}).get("passed") is False]
        lines.append(f"sanity: model-parameter randomisation (Adebayo et al. 2018): Spearman ρ of |map| between the "
                     f"trained and re-initialised model; FAIL when |ρ| >= {thr}"
                     + (f"; failing: {', '.join(failing)} (their maps barely change when the weights are random: they show "
                    "the input more than what the model learned)" if failing else ""))
    return "\n".join(lines)
