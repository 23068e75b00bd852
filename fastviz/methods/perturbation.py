"""Perturbation family: multi-scale sliding-window occlusion.

The occlusion map of the seeds ("Visualizations for regressing wheel steering angles in
self driving cars", 2016) after Zeiler & Fergus, "Visualizing and Understanding Convolutional
Networks" (ECCV 2014): mask many windows of several sizes, run the model, and score each
window by how much the target changed.

The engine: the windows of all scales and all frames form one table of rows
``(frame, window)``; rows (and the clean frames) go through the model in chunks planned by
:mod:`fastviz.scheduler`, which backs off on out-of-memory; each chunk's masked inputs are
built on the model's device in one pass (:func:`fastviz.kernels.masked_batch`, no Python loop
per window, no host round trip); window scores become per-scale coverage means and the
multi-scale map in :func:`fastviz.kernels.occlusion_map` (or, on the torch backend, two matrix
products with 0/1 coverage matrices per scale). Pixels that no scoring window touches stay
exactly zero.
"""

from __future__ import annotations

import logging
import math
import numbers
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels, scheduler
from ..errors import InputError, fraction
from ..hooks import check_input, model_guard
from ..targets import Target, as_target, bind, evaluate, for_rows
from . import incremental as _incremental
from ._concurrency import parallel_kernels
from .registry import register

log = logging.getLogger(__name__)

__all__ = ["WindowGrid", "blur", "combine_scales", "make_baseline", "masked_batch", "occlusion", "scale_maps", "window_grids"]


@dataclass(frozen=True)
class WindowGrid:
    """The occlusion windows of one scale: every ``(top, left)`` pair of ``tops x lefts``.

    Attributes
    ----------
    height, width : int
        Window size in pixels (clipped to the frame).
    tops, lefts : tuple of int
        Top and left pixel coordinates; the last of each sits flush with the bottom/right edge.
    """

    height: int
    width: int
    tops: tuple[int, ...]
    lefts: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.tops) * len(self.lefts)

    def boxes(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """Windows as int64 ``(N, 4)`` rows ``(y0, x0, y1, x1)`` (end-exclusive), row-major."""
        t = torch.tensor(self.tops, dtype=torch.long, device=device)
        l = torch.tensor(self.lefts, dtype=torch.long, device=device)
        y0 = t.repeat_interleave(len(self.lefts))
        x0 = l.repeat(len(self.tops))
        return torch.stack([y0, x0, y0 + self.height, x0 + self.width], dim=1)

    def coverage(self, frame_height: int, frame_width: int, dtype: torch.dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
        """0/1 matrices ``Ry (H, n_tops)`` and ``Rx (W, n_lefts)``: pixel row/column covered by window row/column."""
        ys = torch.arange(frame_height, device=device).unsqueeze(1)
        xs = torch.arange(frame_width, device=device).unsqueeze(1)
        t = torch.tensor(self.tops, device=device).unsqueeze(0)
        l = torch.tensor(self.lefts, device=device).unsqueeze(0)
        ry = ((ys >= t) & (ys < t + self.height)).to(dtype)
        rx = ((xs >= l) & (xs < l + self.width)).to(dtype)
        return ry, rx


def _pair(value, what: str) -> tuple[int, int]:
    if isinstance(value, bool):
        raise InputError(f"{what} must be a positive int or (height, width), got {value!r}")
    if isinstance(value, numbers.Integral):
        value = (value, value)
    try:
        h, w = (operator.index(v) for v in value)  # ints, numpy ints; not floats
        if isinstance(h, bool) or isinstance(w, bool):
            raise TypeError
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a positive int or (height, width), got {value!r}") from None
    if h < 1 or w < 1:
        raise InputError(f"{what} must be positive, got {value!r}")
    return h, w


def _positions(extent: int, size: int, step: int) -> tuple[int, ...]:
    pos = list(range(0, extent - size + 1, step))
    if pos[-1] != extent - size:
        pos.append(extent - size)  # flush with the far edge: every pixel is covered
    return tuple(pos)


def window_grids(height: int, width: int, windows: Sequence | int, stride) -> list[WindowGrid]:
    """The window grid of every scale for a ``height x width`` frame.

    Parameters
    ----------
    windows : int or a sequence of int or (h, w)
        Window sizes in pixels, one per scale: ``(8, 16, 32)`` is three square scales,
        ``[(8, 16)]`` one rectangular scale. A size larger than the frame is clipped to it.
    stride : int or (sy, sx)
        Pixels between the top-left corners of neighbouring windows.
    """
    if isinstance(windows, numbers.Integral) and not isinstance(windows, bool):
        windows = [windows]  # one square scale; a tuple of ints is several square scales
    try:
        windows = list(windows)  # lists, tuples, numpy arrays
    except TypeError:
        windows = []
    if not windows or isinstance(windows[0], str):
        raise InputError(f"windows must be a non-empty sequence of sizes, got {windows!r}")
    sy, sx = _pair(stride, "stride")
    grids = []
    for size in windows:
        wh, ww = _pair(size, "window size")
        wh, ww = min(wh, height), min(ww, width)
        grids.append(WindowGrid(wh, ww, _positions(height, wh, sy), _positions(width, ww, sx)))
    return grids


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of ``(B, C, H, W)`` with standard deviation ``sigma`` pixels (separable,
    kernel radius ``ceil(3 sigma)``, reflected borders)."""
    if sigma <= 0:
        return x.clone()
    radius = max(1, int(math.ceil(3.0 * sigma)))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    pad_h, pad_w = min(radius, x.shape[2] - 1), min(radius, x.shape[3] - 1)
    kh = k[radius - pad_h: radius + pad_h + 1]
    kw = k[radius - pad_w: radius + pad_w + 1]
    kh, kw = kh / kh.sum(), kw / kw.sum()
    out = x
    if pad_w > 0:
        out = F.conv2d(F.pad(out, (pad_w, pad_w, 0, 0), mode="reflect"), kw.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    if pad_h > 0:
        out = F.conv2d(F.pad(out, (0, 0, pad_h, pad_h), mode="reflect"), kh.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return out


def make_baseline(baseline, x: torch.Tensor, blur_sigma: float | None = None) -> float | torch.Tensor:
    """What fills an occluded window.

    Parameters
    ----------
    baseline : float, "mean", "blur" or Tensor
        A constant; ``"mean"``: each frame's per-channel mean; ``"blur"``: a Gaussian-blurred
        copy of the frame (``blur_sigma`` pixels, default: a quarter of the frame's shorter
        side); or a tensor broadcastable to ``x`` (e.g. ``(C,)`` per-channel values or an image).

    Returns
    -------
    float or Tensor
        A float, or a tensor of shape ``(B, C, 1 | H, 1 | W)`` on ``x``'s device and dtype.
    """
    b, c, h, w = x.shape
    if isinstance(baseline, bool):
        raise InputError(f"baseline must be a number, 'mean', 'blur' or a tensor, got {baseline!r}")
    if isinstance(baseline, (int, float)):
        if not math.isfinite(baseline):
            raise InputError(f"baseline must be a finite number, got {baseline!r}")
        return float(baseline)
    if isinstance(baseline, str):
        if baseline == "mean":
            return x.mean(dim=(2, 3), keepdim=True)
        if baseline == "blur":
            sigma = blur_sigma if blur_sigma is not None else min(h, w) / 4.0
            if not sigma > 0:
                raise InputError(f"blur_sigma must be > 0 pixels, got {blur_sigma!r}")
            return blur(x, float(sigma))
        raise InputError(f"unknown baseline {baseline!r}: use a number, 'mean', 'blur' or a tensor")
    if isinstance(baseline, torch.Tensor):
        t = baseline.to(device=x.device, dtype=x.dtype)
        if t.ndim == 1 and t.shape[0] == c:
            t = t.view(1, c, 1, 1)
        try:
            shape = torch.broadcast_shapes(t.shape, x.shape)
        except RuntimeError:
            shape = None
        if shape != x.shape:
            raise InputError(f"baseline of shape {tuple(baseline.shape)} does not broadcast to the input {tuple(x.shape)}")
        while t.ndim < 4:
            t = t.unsqueeze(0)
        return t.expand(b, c, t.shape[2], t.shape[3])
    raise InputError(f"baseline must be a number, 'mean', 'blur' or a tensor, got {type(baseline).__name__}")


#: Occlusion's masked batch (see :func:`fastviz.kernels.masked_batch`).
masked_batch = kernels.masked_batch

_MASKING = {"torch": kernels.masking.masked_batch_torch, "cpu": kernels.masking.masked_batch_cpu,
            "cuda": kernels.masking.masked_batch_cuda}


def resolve_backend(backend: str, device: torch.device, defaults) -> str:
    """:func:`fastviz.kernels._backend.resolve`, with its errors as :class:`InputError`."""
    try:
        return kernels._backend.resolve(backend, device, defaults)
    except ValueError as exc:
        raise InputError(str(exc)) from None


def scale_maps(scores: torch.Tensor, grids: Sequence[WindowGrid], height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-scale occlusion maps from window scores.

    For each scale, a pixel's value is the mean score of the windows of that scale covering it:
    ``(Ry S Rx^T) / (cy cx^T)`` with ``S`` the ``(n_tops, n_lefts)`` score grid and ``Ry``,
    ``Rx`` the 0/1 coverage matrices. A pixel whose covering windows all score exactly zero is
    exactly zero; a pixel no window of the scale covers (stride larger than the window) is 0
    and marked uncovered.

    Parameters
    ----------
    scores : Tensor (B, N)
        Window scores, scales concatenated in ``grids`` order, each grid row-major.

    Returns
    -------
    maps : Tensor (B, S, H, W)
        One map per scale.
    covered : bool Tensor (S, H, W)
        Where some window of the scale covers the pixel.
    """
    b = scores.shape[0]
    maps = scores.new_empty(b, len(grids), height, width)
    covered = torch.empty(len(grids), height, width, dtype=torch.bool, device=scores.device)
    offset = 0
    for i, g in enumerate(grids):
        s = scores[:, offset: offset + len(g)].reshape(b, len(g.tops), len(g.lefts))
        offset += len(g)
        ry, rx = g.coverage(height, width, scores.dtype, scores.device)
        total = ry @ s @ rx.T  # (B, H, W)
        count = ry.sum(1).unsqueeze(1) * rx.sum(1).unsqueeze(0)  # (H, W)
        covered[i] = count > 0
        maps[:, i] = total / count.clamp_min(1)
    return maps, covered


def combine_scales(maps: torch.Tensor, covered: torch.Tensor) -> torch.Tensor:
    """Multi-scale map ``(B, H, W)``: per pixel, the mean over the scales that cover it (all
    scales whenever stride <= window size); 0 where no scale covers the pixel."""
    n = covered.sum(dim=0).clamp_min(1).to(maps.dtype)
    return maps.sum(dim=1) / n


def _fast_layout(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` in the memory layout the clean pass and every chunk will use.

    On the CPU, channels-last input runs oneDNN's convolutions about twice as fast as the
    standard layout (PilotNet: 0.21 vs 0.40 ms per row in chunks of 16; benchmarks/RESULTS.md).
    Models whose forward calls ``.view`` on activations reject channels-last tensors, so a
    one-row probe decides: if the model raises a ``RuntimeError`` (other than out-of-memory) on
    one channels-last row, the standard layout is used, and any real error then surfaces from
    the clean pass. The clean and masked passes share one layout, so a window that changes
    nothing scores zero up to the batch-size dependence of the convolution library (about
    1e-8 for oneDNN in float32; exactly zero for models whose arithmetic does not depend on
    the batch size).
    """
    if x.device.type == "cpu":
        fast = x.contiguous(memory_format=torch.channels_last)
        try:
            model(fast[:1])
            return fast
        except RuntimeError as exc:
            if scheduler.is_out_of_memory(exc):
                raise
    return x.contiguous()


@register("occlusion")
def occlusion(
    model: nn.Module,
    x: torch.Tensor,
    windows: Sequence[int | tuple[int, int]] | int = (8, 16, 32),
    stride: int | tuple[int, int] = 4,
    baseline: float | str | torch.Tensor = 0.0,
    target: Target | Callable[[torch.Tensor], torch.Tensor] | int | None = None,
    score: str = "delta",
    memory_budget: str | int | float | None = None,
    chunk_size: int | None = None,
    blur_sigma: float | None = None,
    backend: str = "auto",
    check_finite: bool = True,
    incremental: bool | str = "auto",
    tau: float | None = None,
    drill_down: float | None = None,
    coarse_stride: int | tuple[int, int] | None = None,
) -> torch.Tensor:
    """Multi-scale sliding-window occlusion map.

    For every window size ``s`` in ``windows``, windows sit at top-left corners every
    ``stride`` pixels, and the last row and column of windows sit flush with the bottom and
    right edges, so every pixel is covered at every scale. Each window is scored::

        score(w) = target(f(x)) - target(f(x with w filled by the baseline))

    (``score="abs"``: its absolute value). Per scale, a pixel's value is the mean score over the
    windows covering it; the map is the mean of the per-scale maps (with a stride larger than
    a window, a pixel in a gap takes the mean over the scales that do cover it, 0 if none). Windows of all scales and
    all frames go through the model in as few forward passes as the memory budget allows.

    Source: the seeds' occlusion maps for steering regression (2016), after Zeiler & Fergus,
    ECCV 2014.

    Parameters
    ----------
    model : nn.Module
        Used as it is (call ``model.eval()`` first); left unchanged.
    x : Tensor (B, C, H, W)
        Float input in the model's input space, on the model's device.
    windows : int or a sequence of int or (h, w)
        Window sizes in pixels, one per scale; default ``(8, 16, 32)`` (three square scales;
        ``[(8, 16)]`` is one rectangular scale). Sizes above the frame are clipped.
    stride : int or (sy, sx)
        Pixels between neighbouring windows' corners; default 4.
    baseline : float, "mean", "blur" or Tensor
        What fills a window: a constant (default 0.0), each frame's per-channel mean, a
        Gaussian-blurred copy of the frame (``blur_sigma`` px), or a tensor broadcastable to
        ``x``.
    target : Target, callable, int or None
        The scalar explained (see :mod:`fastviz.targets`); ``None``: the single output of a
        one-output model, or the top class of the clean input for a classifier. Choices a
        target makes from the output (class, steering branch) are made on the clean input.
    score : "delta" or "abs"
        Signed change, or its absolute value.
    memory_budget : str, int, float or None
        Bytes the chunks may use (``"512MiB"``, a byte count, a fraction of free memory);
        default: :func:`fastviz.scheduler.default_budget`. On the CPU, chunks are also kept
        cache-sized (:data:`fastviz.scheduler.CPU_CHUNK_BYTES`), which is faster there than the
        largest chunk the budget allows. On out-of-memory the chunk is halved and retried;
        finished chunks are kept (:func:`fastviz.scheduler.run_chunks`).
    chunk_size : int, optional
        Rows per forward pass, overriding the plan.
    blur_sigma : float, optional
        Standard deviation in pixels of the ``"blur"`` baseline.
    backend : {"auto", "torch", "cpu", "cuda"}
        Implementation of the masking and window-scoring kernels (:mod:`fastviz.kernels`):
        ``"auto"`` picks by device (the Numba CPU twins on the CPU, torch on CUDA);
        ``"torch"`` is the plain-torch reference path.
    check_finite : bool
        Check ``x`` for NaN and Inf before any forward pass (default); ``False`` skips that
        pass over ``x`` for speed.
    incremental : "auto", True or False
        Exact incremental inference (Krypton, Nakandala et al., SIGMOD 2019; see
        :mod:`fastviz.methods.incremental`): each layer recomputes only the box a window
        changes, from the clean frame's activations, until the box covers most of the map.
        ``"auto"`` (default) uses it on the CPU where the model can be traced with ``torch.fx``
        and is in eval mode, else runs full forward passes (logged at debug level; on a GPU the
        many small launches of the incremental pass cost more than the FLOPs they save);
        ``True`` requires it (on any device); ``False`` always runs full forward passes. The
        map is the same up to float rounding (about 1e-7 of the target's value in float32 on
        the CPU; CUDA convolutions in TF32 differ by about 1e-3).
    tau : float in (0, 1], optional
        Approximate: Krypton's projective-field threshold; every layer's changed box is capped
        at ``ceil(tau * size)`` of its map's height and width (centred), the rest taken from
        the clean activations. ``None`` (default): exact. Needs incremental inference.
    drill_down : float in (0, 1], or {window size: float in [0, 1]}, optional
        Approximate, adaptive drill-down: first score the windows at ``coarse_stride``, then
        at ``stride`` only the fraction ``drill_down`` of each frame's windows (per scale) whose
        estimate — the coarse scores linearly interpolated to the fine window's position — is
        largest in magnitude; the other fine windows keep their estimate (windows at a coarse
        window's position take its score). A mapping gives each scale its own fraction, keyed
        by the window sizes as given in ``windows`` (0: that scale keeps the interpolated
        estimate everywhere). ``None`` (default): every window is scored.
    coarse_stride : int, (sy, sx), "checkerboard", or {window size: one of those}, optional
        The first pass of ``drill_down``, for every scale or per scale (keyed like
        ``drill_down``): a stride (default ``3 * stride``), or ``"checkerboard"``: every other
        window of the fine grid in a checkerboard (quincunx) pattern, each other window
        estimated as the mean of its scored neighbours one stride away. On the bundled log the
        largest windows carry the combined map and a checkerboard estimates them best:
        ``coarse_stride={8: 12, 16: 8, 32: "checkerboard"}`` with
        ``drill_down={8: 0, 16: 0, 32: 0}`` scores a third of the exact pass's
        multiply-accumulates at SSIM >= 0.96 (``benchmarks/RESULTS.md``).

    Returns
    -------
    Tensor (B, H, W)
        float32 on ``x``'s device, in the target's units (e.g. radians for steering);
        positive where occluding lowers the target.

    Raises
    ------
    InputError
        For a malformed ``x`` (NaN or Inf: naming the frames; a channel count or size the
        model does not take: naming the expected and the given shape, before any forward
        pass), windows, stride, baseline, score, target or budget, a backend unavailable
        for the device, an ``incremental`` or ``tau`` out of range, or ``incremental=True``
        (or a ``tau``) for a model that cannot run incrementally (naming why).
    OutOfBudgetError
        If one row per forward pass still runs out of memory.

    Notes
    -----
    On the CPU, the chunks are fed to the model channels-last (the model itself is not
    converted; see ``_fast_layout``), and :func:`fastviz.scheduler.reserve_working_set` lets
    glibc's malloc keep the chunk's working set between forward passes — a process-wide
    effect (at most 64 MiB retained) that any program freeing a block of that size gets.

    Thread-safe: calls on one model from several threads are serialised by the model's lock
    (:func:`fastviz.hooks.model_lock`); calls on different models run in parallel.

    Examples
    --------
    >>> import torch, fastviz as fv
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 1, 3), torch.nn.Flatten(), torch.nn.LazyLinear(1))
    >>> maps = fv.occlusion(net.eval(), torch.rand(2, 3, 16, 16), windows=(4, 8), stride=2)
    >>> maps.shape
    torch.Size([2, 16, 16])
    """
    check_input(model, x, finite=check_finite)
    if score not in ("delta", "abs"):
        raise InputError(f"score must be 'delta' or 'abs', got {score!r}")
    b, _c, h, w = x.shape
    grids = window_grids(h, w, windows, stride)
    boxes, scale = (t.to(x.device) for t in kernels.window_table(grids))
    n = boxes.shape[0]
    fill = _MASKING[resolve_backend(backend, x.device, kernels.masking.DEFAULTS)]
    reduce = resolve_backend(backend, x.device, kernels.scoring.DEFAULTS)
    assemble = resolve_backend(backend, x.device, kernels.patches.DEFAULTS)
    coarse = fractions = None
    if drill_down is not None:
        sy, sx = _pair(stride, "stride")
        fractions = _per_scale(drill_down, windows, "drill_down", _drill_fraction)
        coarse = _per_scale((3 * sy, 3 * sx) if coarse_stride is None else coarse_stride, windows, "coarse_stride",
                            lambda v, name: CHECKERBOARD if v == CHECKERBOARD else _pair(v, name))
    elif coarse_stride is not None:
        raise InputError("coarse_stride is the first pass of drill_down: pass drill_down=<fraction> too")
    if incremental not in ("auto", True, False):
        raise InputError(f"incremental must be 'auto', True or False, got {incremental!r}")
    if tau is not None:
        fraction("tau", tau, "Krypton's projective-field threshold")
    with model_guard(model), torch.no_grad():
        graph = _incremental_graph(model, incremental, tau, x.device)
        x = _fast_layout(model, x)
        # the clean pass goes through the model in planned chunks of frames as well
        clean: dict[str, torch.Tensor] = {}
        targets: list = []

        def clean_step(r0: int, r1: int) -> None:
            out = model(x[r0:r1])
            if not targets:
                targets.append(as_target(target, out))
            part = for_rows(targets[0], r0, r1)
            choice_part = bind(part, out)  # per-sample choices (class, steering branch) on the clean input
            score_part = evaluate(part, out, choice_part, r1 - r0)
            clean.setdefault("score", score_part.new_empty(b))[r0:r1] = score_part
            if choice_part is not None:
                clean.setdefault("choice", choice_part.new_empty(b))[r0:r1] = choice_part

        scheduler.run_chunks(
            scheduler.plan(model, x[:1], rows=b, memory_budget=memory_budget, cache_sized=True), clean_step, x.device
        )
        tgt, clean_score, choice = targets[0], clean["score"], clean.get("choice")
        base = make_baseline(baseline, x, blur_sigma)
        tau_ = None if tau is None else float(tau)

        def score_rows(out, frames: torch.Tensor) -> torch.Tensor:
            picked = None if choice is None else choice[frames]
            return clean_score[frames] - evaluate(tgt, out, picked, frames.shape[0])

        def window_scores(grids_, select=None, into=None) -> torch.Tensor:
            """Scores ``(B * n)`` of the windows of ``grids_`` (those ``select`` marks)."""
            boxes_ = boxes if grids_ is grids else kernels.window_table(grids_)[0].to(x.device)
            n_ = boxes_.shape[0]
            into = torch.empty(b * n_, device=x.device, dtype=clean_score.dtype) if into is None else into
            if graph is not None:
                _incremental.window_scores(graph, x, grids_, base, score_rows, into, memory_budget, chunk_size,
                                           assemble, tau_, select)
            else:
                _full_scores(model, x, n_, boxes_, base, fill, tgt, clean_score, choice, into, memory_budget,
                             chunk_size, select)
            return into

        if drill_down is None:
            scores = window_scores(grids)
        else:
            scores = _drill_down(window_scores, grids, coarse, fractions, b, h, w, clean_score.dtype, x.device)
    if score == "abs":
        scores.abs_()
    if reduce == "torch":  # plain torch: two 0/1 coverage matmuls per scale on the grid
        return combine_scales(*scale_maps(scores.view(b, n), grids, h, w)).float()
    with parallel_kernels():
        return kernels.occlusion_map(scores.view(b, n), boxes, scale, len(grids), h, w, backend=reduce).float()


#: ``coarse_stride`` value of a scale whose first pass scores every other window of the fine
#: grid, in a checkerboard (quincunx) pattern; each other window's estimate is the mean of its
#: (up to four) scored neighbours, one fine stride away.
CHECKERBOARD = "checkerboard"


def checkerboard(grid: WindowGrid) -> np.ndarray:
    """bool ``(len(tops), len(lefts))``: the windows of a checkerboard first pass (top-left kept)."""
    i, j = np.meshgrid(np.arange(len(grid.tops)), np.arange(len(grid.lefts)), indexing="ij")
    return (i + j) % 2 == 0


def checkerboard_estimate(scores: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """The checkerboard pass's estimate of every window of one scale.

    Parameters
    ----------
    scores : Tensor (B, T, L)
        Window scores on the scale's grid (``T`` tops x ``L`` lefts), valid where ``known``.
    known : bool Tensor (T, L)
        The windows scored (:func:`checkerboard`).

    Returns
    -------
    Tensor (B, T, L)
        The scores where known; elsewhere the mean of the known edge neighbours (up, down,
        left, right), one fine stride away.
    """
    k = known.to(scores.dtype)
    v = torch.where(known, scores, torch.zeros((), dtype=scores.dtype, device=scores.device))
    total = torch.zeros_like(v)
    count = torch.zeros_like(k)
    total[:, 1:] += v[:, :-1]
    total[:, :-1] += v[:, 1:]
    total[:, :, 1:] += v[:, :, :-1]
    total[:, :, :-1] += v[:, :, 1:]
    count[1:] += k[:-1]
    count[:-1] += k[1:]
    count[:, 1:] += k[:, :-1]
    count[:, :-1] += k[:, 1:]
    return torch.where(known, scores, total / count.clamp(min=1))


def _drill_down(window_scores, grids, coarse, fractions, b: int, h: int, w: int, dtype, device) -> torch.Tensor:
    """Adaptive drill-down's scores ``(B * n)``: the first pass per scale (a coarse grid, or
    the fine grid's checkerboard), the estimates, then the chosen fine windows scored."""
    n = sum(len(g) for g in grids)
    offsets = np.cumsum([0] + [len(g) for g in grids])
    estimate = torch.zeros(b, n, dtype=dtype, device=device)
    select = torch.zeros(b, n, dtype=torch.bool, device=device)
    on_grid = [k for k, c in enumerate(coarse) if c != CHECKERBOARD]
    on_board = [k for k, c in enumerate(coarse) if c == CHECKERBOARD]
    if on_grid:
        fine = [grids[k] for k in on_grid]
        coarse_grids = [window_grids(h, w, [(g.height, g.width)], coarse[k])[0] for k, g in zip(on_grid, fine)]
        est, sel = drill_down_plan(window_scores(coarse_grids).view(b, -1), coarse_grids, fine,
                                   [fractions[k] for k in on_grid])
        m0 = 0
        for k, g in zip(on_grid, fine):
            estimate[:, offsets[k]:offsets[k + 1]] = est[:, m0:m0 + len(g)]
            select[:, offsets[k]:offsets[k + 1]] = sel[:, m0:m0 + len(g)]
            m0 += len(g)
    if on_board:
        boards = {k: torch.as_tensor(checkerboard(grids[k]), device=device) for k in on_board}
        first = torch.zeros(b, n, dtype=torch.bool, device=device)
        for k, board in boards.items():
            first[:, offsets[k]:offsets[k + 1]] = board.reshape(-1)
        window_scores(grids, first, into=estimate.view(-1))
        for k, board in boards.items():
            g = grids[k]
            part = estimate[:, offsets[k]:offsets[k + 1]].view(b, len(g.tops), len(g.lefts))
            est = checkerboard_estimate(part, board)
            estimate[:, offsets[k]:offsets[k + 1]] = est.reshape(b, -1)
            unknown = ~board.reshape(-1)
            count = min(int(math.ceil(fractions[k] * len(g))), int(unknown.sum()))
            if count > 0:
                priority = est.reshape(b, -1).abs().masked_fill(~unknown, -1.0)
                order = torch.argsort(priority, dim=1, descending=True, stable=True)[:, :count]
                part_sel = torch.zeros(b, len(g), dtype=torch.bool, device=device)
                part_sel.scatter_(1, order, True)
                select[:, offsets[k]:offsets[k + 1]] = part_sel
    scores = estimate.reshape(-1).contiguous()
    if bool(select.any()):
        window_scores(grids, select, into=scores)
    return scores


def _drill_fraction(value, name: str) -> float:
    """A drill-down fraction: in (0, 1] for every scale at once, in [0, 1] for one scale."""
    if name == "drill_down":
        return fraction(name, value, "the share of windows scored at the fine stride")
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) <= 1.0:
        raise InputError(f"{name} must be a number in [0, 1] (the share of the scale's windows scored at the fine "
                         f"stride), got {value!r}")
    return float(value)


def _per_scale(value, windows, name: str, check) -> list:
    """``value`` for each scale of ``windows``: one setting for all, or a mapping keyed by the
    window sizes as given (an int or ``(h, w)``), every scale present and no other key."""
    sizes = [windows] if isinstance(windows, numbers.Integral) else list(windows)
    if not isinstance(value, Mapping):
        return [check(value, name)] * len(sizes)
    keyed = {}
    for key, v in value.items():
        keyed[_pair(key, f"{name} key")] = check(v, f"{name}[{key!r}]")
    wanted = [_pair(size, "window size") for size in sizes]
    missing = [size for size, p in zip(sizes, wanted) if p not in keyed]
    extra = [k for k in value if _pair(k, f"{name} key") not in wanted]
    if missing or extra:
        raise InputError(f"{name} per scale must have one entry per window size {tuple(sizes)}: "
                         + (f"missing {missing}" if missing else f"no window of size {extra}"))
    return [keyed[p] for p in wanted]


def _interpolation(fine: Sequence[int], coarse: Sequence[int]) -> np.ndarray:
    """``(len(fine), len(coarse))`` weights of linear interpolation from positions ``coarse``
    to positions ``fine`` (constant beyond the ends); rows sum to 1, a fine position equal to a
    coarse one takes exactly that value."""
    eye = np.eye(len(coarse))
    return np.stack([np.interp(fine, coarse, eye[j]) for j in range(len(coarse))], axis=1)


def drill_down_plan(coarse_scores: torch.Tensor, coarse_grids: Sequence[WindowGrid], grids: Sequence[WindowGrid],
                    fraction: float | Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """The fine windows' estimates and which fine windows to score (adaptive drill-down, after
    Krypton's: Nakandala, Kumar and Papakonstantinou, SIGMOD 2019, a coarse stride everywhere,
    the fine stride only where the coarse result is large).

    Parameters
    ----------
    coarse_scores : Tensor (B, n_coarse)
        Window scores at the coarse stride, scales in ``coarse_grids`` order.
    coarse_grids, grids : the coarse and the fine windows; same window sizes, in the same order.
    fraction : float in [0, 1], or one per scale
        Share of each frame's fine windows, per scale, to score (largest ``|estimate|`` first).

    Returns
    -------
    estimate : Tensor (B, n_fine)
        Coarse scores interpolated (separably, linearly in the window's top and left) to each
        fine window; exact where a fine window sits at a coarse window's position.
    select : bool Tensor (B, n_fine)
        The fine windows to score: the top ``ceil(fraction * n)`` by ``|estimate|`` among those
        not at a coarse position.
    """
    b = coarse_scores.shape[0]
    dtype, device = coarse_scores.dtype, coarse_scores.device
    estimates, selects = [], []
    fractions = [fraction] * len(grids) if isinstance(fraction, numbers.Real) else list(fraction)
    c0 = 0
    for cg, fg, share in zip(coarse_grids, grids, fractions):
        sc = coarse_scores[:, c0: c0 + len(cg)].reshape(b, len(cg.tops), len(cg.lefts))
        c0 += len(cg)
        wy = torch.as_tensor(_interpolation(fg.tops, cg.tops), dtype=dtype, device=device)
        wx = torch.as_tensor(_interpolation(fg.lefts, cg.lefts), dtype=dtype, device=device)
        # at a coarse position the weights are one 1 and zeros: the estimate is that score exactly
        est = (wy @ sc @ wx.T).reshape(b, -1)
        known_y = torch.as_tensor(np.isin(fg.tops, cg.tops), device=device)
        known_x = torch.as_tensor(np.isin(fg.lefts, cg.lefts), device=device)
        known = (known_y[:, None] & known_x[None, :]).reshape(-1)
        priority = est.abs().masked_fill(known, -1.0)
        k = min(int(math.ceil(share * len(fg))), int((~known).sum()))
        sel = torch.zeros_like(known).expand(b, -1).clone()
        if k > 0:
            order = torch.argsort(priority, dim=1, descending=True, stable=True)[:, :k]
            sel.scatter_(1, order, True)
        estimates.append(est)
        selects.append(sel)
    return torch.cat(estimates, dim=1), torch.cat(selects, dim=1)


def _incremental_graph(model: nn.Module, incremental, tau, device: torch.device) -> _incremental.Graph | None:
    """The model's traced graph if occlusion runs incrementally, else None."""
    if incremental is False:
        if tau is not None:
            raise InputError("tau (projective-field threshold) needs incremental inference: pass incremental='auto' or True")
        return None
    if incremental == "auto" and tau is None and device.type != "cpu":
        # measured on an H200 (benchmarks/RESULTS.md, issue 13): the many small launches of
        # the incremental pass cost more than the FLOPs they save (PilotNet, one frame: 33 ms
        # incremental vs 12.4 ms full)
        log.debug("occlusion runs full forward passes: incremental='auto' applies on the CPU only")
        return None
    try:
        return _incremental.trace(model)
    except _incremental.Unsupported as exc:
        if incremental is True or tau is not None:
            raise InputError(f"incremental occlusion is not possible for this model: {exc}") from None
        log.debug("occlusion runs full forward passes: %s", exc)
        return None


def _full_scores(model, x, n, boxes, base, fill, tgt, clean_score, choice, scores, memory_budget, chunk_size,
                 select: torch.Tensor | None = None) -> None:
    """Every window's score (or those ``select (B, n)`` marks) by full forward passes of masked
    copies of the frames; fills ``scores (B * n,)``."""
    b = x.shape[0]
    todo = None if select is None else select.reshape(-1).nonzero().view(-1).to(x.device)
    total = b * n if todo is None else int(todo.numel())
    if total == 0:
        return
    plan = scheduler.plan(model, x[:1], rows=total, memory_budget=memory_budget, chunk=chunk_size, cache_sized=True)
    scheduler.reserve_working_set(plan.predicted_peak_bytes, x.device)
    layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    buffers = [torch.empty((plan.chunk, *x.shape[1:]), dtype=x.dtype, device=x.device, memory_format=layout)]

    def step(r0: int, r1: int) -> None:
        rows = torch.arange(r0, r1, device=x.device) if todo is None else todo[r0:r1]
        frame = torch.div(rows, n, rounding_mode="floor")
        # the chunk is scored before the next one overwrites the buffer
        if buffers[0].shape[0] < r1 - r0:  # a larger chunk (while the plan is tuned)
            buffers[0] = torch.empty((r1 - r0, *x.shape[1:]), dtype=x.dtype, device=x.device, memory_format=layout)
        with parallel_kernels():
            masked = fill(x, frame, boxes[rows - frame * n], base, out=buffers[0])
        out = model(masked)
        scores[rows] = clean_score[frame] - evaluate(tgt, out, None if choice is None else choice[frame], r1 - r0)

    key = ("occlusion", scheduler.model_signature(model), tuple(x.shape[1:]), str(x.dtype), layout == torch.channels_last)
    scheduler.run_chunks(scheduler.tune(plan, step, x.device, key, fixed=chunk_size is not None), step, x.device)
