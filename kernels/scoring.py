"""Window scores -> occlusion maps: the per-scale coverage mean and the multi-scale map.

The reduction at the end of multi-scale occlusion (:mod:`fastviz.methods.perturbation`; the
seeds' steering-regression maps, 2016, after Zeiler & Fergus, ECCV 2014). Given per-window
scores ``(B, N)`` and a window table (boxes ``(N, 4)``, scale ``(N,)``):

- per scale ``s``, a pixel's value is the mean score of the windows of scale ``s`` that cover it
  (sum / count), 0 where no window of the scale covers it;
- the multi-scale map is, per pixel, the mean over the scales whose windows cover it (all scales
  whenever stride <= window); 0 where no scale covers the pixel.

A pixel whose covering windows all score exactly 0 is exactly 0 in every backend: the sums are
sums of exact zeros (no difference-array or cumulative-sum tricks that leave rounding residue).

Three implementations side by side (:mod:`._backend`): :func:`scale_maps_torch`, the reference,
which works for any window table (0/1 coverage masks built on the device and one matrix product
per scale); :func:`scale_maps_cpu`, a ``numba.njit(parallel=True, cache=True)`` twin (window
edges cut the frame into row and column bands on which every map is constant; one task per row
band sums each window's score into the column bands it spans, for every frame, then expands the
band to pixels; small work runs on the calling thread); :func:`scale_maps_cuda`, a ``numba.cuda``
kernel (one thread per pixel and group of up to 8 frames, in a grid-stride loop, scanning the
windows of each scale once for the group; in :mod:`._scoring_cuda`, imported on first launch).
The numba paths accumulate in float64 and write the scores' dtype (float16/bfloat16 scores are
computed in float32).

Example
-------
>>> import torch
>>> from fastviz.methods.perturbation import window_grids
>>> boxes, scale = window_table(window_grids(1, 4, (2,), 2))   # [0, 2) and [2, 4)
>>> occlusion_map(torch.tensor([[3.0, 5.0]]), boxes, scale, 1, 1, 4, backend="torch")
tensor([[[3., 3., 5., 5.]]])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numba
import numpy as np
import torch

from ._backend import (
    device_array,
    host_array,
    launch_stream,
    resolve,
    threads_per_block,
)

__all__ = [
    "DEFAULTS",
    "occlusion_map",
    "scale_maps",
    "scale_maps_cpu",
    "scale_maps_cuda",
    "scale_maps_torch",
    "window_table",
]

#: Device type -> the backend ``backend="auto"`` runs (benchmarks/test_bench_kernel_scoring.py).
#: CPU: on PilotNet's 1,872 windows the Numba twin beats the plain-torch reference by two orders
#: of magnitude and fastviz's regular-grid matmul path by about 1.5x (0.18 vs 0.29 ms for one
#: frame; 2-core VM). CUDA: "torch" until the CUDA kernel has been measured on a GPU (none was
#: available when these were chosen).
DEFAULTS: dict[str, str] = {"cpu": "cpu", "cuda": "torch"}

#: Frames one CUDA thread accumulates at once (its window scan is shared by them).
_FRAMES_PER_THREAD = 8
#: Output elements (B * H * W * (S + 1)) from which the CPU twin runs on Numba's thread pool.
_PARALLEL_WORK = 1 << 18
#: Upper bound on CUDA blocks per launch; larger problems go round the grid-stride loop.
_MAX_BLOCKS = 2048


# --------------------------------------------------------------------------------------------
# window table, validation, dispatch


def window_table(grids: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
    """The window table of a list of :class:`fastviz.methods.perturbation.WindowGrid`.

    Returns
    -------
    boxes : int64 Tensor (N, 4)
        ``(y0, x0, y1, x1)`` of each window, end-exclusive; scales in ``grids`` order, each
        row-major (the order of occlusion's window scores).
    scale : int64 Tensor (N,)
        The index in ``grids`` of each window's scale.
    """
    grids = list(grids)
    if not grids:
        return torch.zeros(0, 4, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    boxes = torch.cat([g.boxes() for g in grids])
    scale = torch.cat([torch.full((len(g),), i, dtype=torch.long) for i, g in enumerate(grids)])
    return boxes, scale


def _check(scores, boxes, scale, n_scales, height, width) -> None:
    """Shapes, dtypes and values at the public boundary (one host sync for the value checks)."""
    if not isinstance(scores, torch.Tensor) or scores.ndim != 2 or not scores.is_floating_point():
        what = f"{scores.dtype} tensor of shape {tuple(scores.shape)}" if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(f"scores must be a floating-point tensor (B, N), got a {what}")
    for name, t, ndim in (("boxes", boxes, 2), ("scale", scale, 1)):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.int64 or t.ndim != ndim:
            what = f"{t.dtype} tensor of shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
            shape = "(N, 4)" if ndim == 2 else "(N,)"
            raise ValueError(f"{name} must be an int64 tensor {shape}, got a {what}")
    if boxes.shape[1] != 4:
        raise ValueError(f"boxes must be (N, 4) rows (y0, x0, y1, x1), got shape {tuple(boxes.shape)}")
    n = scores.shape[1]
    if boxes.shape[0] != n or scale.shape[0] != n:
        raise ValueError(f"mismatched window counts: scores has {n} windows, boxes {boxes.shape[0]}, scale {scale.shape[0]}")
    for name, t in (("boxes", boxes), ("scale", scale)):
        if t.device != scores.device:
            raise ValueError(f"{name} is on {t.device} but scores are on {scores.device}")
    for name, v, low in (("n_scales", n_scales, 0), ("height", height, 1), ("width", width, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
            raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
    if n == 0:
        return
    # one host sync: the extremes of every column, of the box sizes and of the scales
    summary = torch.cat([boxes.amin(0), boxes.amax(0), (boxes[:, 2:] - boxes[:, :2]).amin(0), torch.stack(scale.aminmax())]).tolist()
    lo, hi, size, smin, smax = summary[0:4], summary[4:8], summary[8:10], summary[10], summary[11]
    if min(lo) < 0 or hi[2] > height or hi[3] > width or min(size) <= 0:
        y0, x0, y1, x1 = boxes.unbind(1)
        bad = (y0 < 0) | (x0 < 0) | (y1 > height) | (x1 > width) | (y1 <= y0) | (x1 <= x0)
        i = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"window {i} has box {tuple(boxes[i].tolist())}: boxes must be non-empty (y0, x0, y1, x1) "
            f"with 0 <= y0 < y1 <= {height} and 0 <= x0 < x1 <= {width}"
        )
    if smin < 0 or smax >= n_scales:
        i = int(((scale < 0) | (scale >= n_scales)).nonzero()[0, 0])
        raise ValueError(f"window {i} has scale {int(scale[i])}: scales must be in [0, {n_scales})")


def scale_maps(scores, boxes, scale, n_scales, height, width, backend="auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-scale occlusion maps: each pixel's mean score over the windows of each scale covering it.

    Parameters
    ----------
    scores : float Tensor (B, N)
        Window scores (any units: the target's change).
    boxes : int64 Tensor (N, 4)
        ``(y0, x0, y1, x1)`` of each window, end-exclusive, inside the frame, non-empty.
    scale : int64 Tensor (N,)
        Each window's scale, in ``[0, n_scales)``; any order (see :func:`window_table`).
    n_scales : int
        ``S``, the number of scales.
    height, width : int
        Frame size ``H x W`` in pixels.
    backend : {"auto", "torch", "cpu", "cuda"}
        Implementation (``"auto"``: :data:`DEFAULTS` for the scores' device), chosen at call time.

    Returns
    -------
    maps : Tensor (B, S, H, W)
        Scores' dtype and device; 0 where no window of the scale covers the pixel. A pixel whose
        covering windows all score exactly 0 is exactly 0.
    covered : bool Tensor (S, H, W)
        Where some window of the scale covers the pixel.

    Raises
    ------
    ValueError
        Bad shapes, dtypes, devices or values (boxes outside the frame, scales out of range), or
        a backend unavailable for the scores' device.
    """
    _check(scores, boxes, scale, n_scales, height, width)
    n_scales, height, width = int(n_scales), int(height), int(width)
    impl = _IMPLS[resolve(backend, scores.device, DEFAULTS)]
    return impl(scores, boxes, scale, n_scales, height, width)


def occlusion_map(scores, boxes, scale, n_scales, height, width, backend="auto") -> torch.Tensor:
    """The multi-scale occlusion map ``(B, H, W)``.

    Per pixel, the mean over the scales whose windows cover it of the per-scale mean score (see
    :func:`scale_maps`; all scales whenever stride <= window); 0 where no scale covers the pixel.
    Same parameters and errors as :func:`scale_maps`; scores' dtype and device.
    """
    _check(scores, boxes, scale, n_scales, height, width)
    n_scales, height, width = int(n_scales), int(height), int(width)
    kind = resolve(backend, scores.device, DEFAULTS)
    if kind == "torch":
        return _combine(*scale_maps_torch(scores, boxes, scale, n_scales, height, width))
    run = _run_cpu if kind == "cpu" else _run_cuda
    return run(scores, boxes, scale, n_scales, height, width, want_maps=False)[2]


def _combine(maps: torch.Tensor, covered: torch.Tensor) -> torch.Tensor:
    n = covered.sum(dim=0).clamp_min(1).to(maps.dtype)
    return maps.sum(dim=1) / n


# --------------------------------------------------------------------------------------------
# plain-torch reference


def scale_maps_torch(scores, boxes, scale, n_scales, height, width) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference :func:`scale_maps` in plain torch, for any window table.

    Per scale: 0/1 masks ``(N_s, H*W)`` built from the boxes on the scores' device, sums =
    ``scores_s @ masks`` (products with 0 are exact zeros), counts = ``masks.sum(0)``.
    """
    b, dev = scores.shape[0], scores.device
    dtype = scores.dtype
    maps = torch.zeros(b, n_scales, height, width, dtype=dtype, device=dev)
    covered = torch.zeros(n_scales, height, width, dtype=torch.bool, device=dev)
    ys = torch.arange(height, device=dev)
    xs = torch.arange(width, device=dev)
    for s in range(n_scales):
        pick = (scale == s).nonzero().squeeze(1)
        bx = boxes.index_select(0, pick)
        in_y = (ys >= bx[:, 0:1]) & (ys < bx[:, 2:3])  # (N_s, H)
        in_x = (xs >= bx[:, 1:2]) & (xs < bx[:, 3:4])  # (N_s, W)
        masks = (in_y.unsqueeze(2) & in_x.unsqueeze(1)).reshape(-1, height * width).to(dtype)
        sums = scores.index_select(1, pick) @ masks  # (B, H*W)
        counts = masks.sum(0)
        maps[:, s] = (sums / counts.clamp_min(1)).view(b, height, width)
        covered[s] = (counts > 0).view(height, width)
    return maps, covered


# --------------------------------------------------------------------------------------------
# shared preparation of the numba paths


def _by_scale(scale: torch.Tensor, n_scales: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``order`` (N,): window indices grouped by scale (stable); ``offsets`` (S + 1,): scale ``s``
    is ``order[offsets[s]:offsets[s + 1]]``. On the scales' device, no host sync."""
    ordered, order = torch.sort(scale, stable=True)
    offsets = torch.searchsorted(ordered, torch.arange(n_scales + 1, device=scale.device, dtype=scale.dtype))
    return order.contiguous(), offsets.contiguous()


def _kernel_scores(scores: torch.Tensor) -> torch.Tensor:
    """Scores as the numba kernels take them: C-contiguous float32/float64 (half types go up to
    float32; results are cast back)."""
    if scores.dtype not in (torch.float32, torch.float64):
        scores = scores.float()
    return scores.contiguous()


# --------------------------------------------------------------------------------------------
# CPU twin


@numba.njit(cache=True)
def _bands(starts, ends, extent):  # pragma: no cover - compiled
    """Coordinate compression of one axis: the pixels between consecutive window edges form a
    band, and every map is constant along it. Returns ``band`` (extent,): each pixel's band,
    and ``first`` (n_bands + 1,): each band's first pixel, then ``extent``."""
    mark = np.zeros(extent + 1, dtype=np.bool_)
    mark[0] = True
    for i in range(starts.shape[0]):
        mark[starts[i]] = True
        mark[ends[i]] = True
    band = np.empty(extent, dtype=np.int64)
    k = -1
    for p in range(extent):
        if mark[p]:
            k += 1
        band[p] = k
    first = np.empty(k + 2, dtype=np.int64)
    for p in range(extent):
        if mark[p]:
            first[band[p]] = p
    first[k + 1] = extent
    return band, first


@numba.njit(cache=True)
def _compress(boxes, height, width):  # pragma: no cover - compiled
    """Each window's box on the compressed grid of row bands x column bands (end-exclusive);
    ``yfirst``: each row band's first pixel row, then ``height``; ``xbands``: each pixel
    column's band; the number of column bands."""
    n = boxes.shape[0]
    ybands, yfirst = _bands(boxes[:, 0], boxes[:, 2], height)
    xbands, xfirst = _bands(boxes[:, 1], boxes[:, 3], width)
    cells = np.empty((n, 4), dtype=np.int64)
    for w in range(n):
        cells[w, 0] = ybands[boxes[w, 0]]
        cells[w, 1] = xbands[boxes[w, 1]]
        cells[w, 2] = ybands[boxes[w, 2] - 1] + 1
        cells[w, 3] = xbands[boxes[w, 3] - 1] + 1
    return cells, yfirst, xbands, xfirst.shape[0] - 1


@numba.njit(cache=True)
def _row_band(r, scores, cells, order, offsets, yfirst, xbands, n_cols, maps, covered, out, want_maps):  # pragma: no cover - compiled
    """Row band ``r``: per scale, the windows covering the band and their count per column band;
    then per frame each window's score summed into the column bands it spans (float64; sums of
    exact zeros stay exactly zero), the per-scale means and their mean over the covering scales,
    written to the band's pixel rows of ``maps`` (if ``want_maps``), ``covered`` and ``out``."""
    b = scores.shape[0]
    n_scales = offsets.shape[0] - 1
    width = xbands.shape[0]
    picked = np.empty(order.shape[0], dtype=np.int64)  # covering windows, scale by scale
    pstart = np.empty(n_scales + 1, dtype=np.int64)
    count = np.zeros((n_scales, n_cols), dtype=np.float64)
    n_cover = np.zeros(n_cols, dtype=np.float64)
    m = 0
    for s in range(n_scales):
        pstart[s] = m
        for k in range(offsets[s], offsets[s + 1]):
            w = order[k]
            if cells[w, 0] <= r < cells[w, 2]:
                picked[m] = w
                m += 1
                for c in range(cells[w, 1], cells[w, 3]):
                    count[s, c] += 1.0
        for c in range(n_cols):
            if count[s, c] > 0.0:
                n_cover[c] += 1.0
    pstart[n_scales] = m
    y0, y1 = yfirst[r], yfirst[r + 1]  # the band's pixel rows: the first is computed, the rest copied
    for s in range(n_scales):
        for x in range(width):
            covered[s, y0, x] = count[s, xbands[x]] > 0.0
        for y in range(y0 + 1, y1):
            covered[s, y, :] = covered[s, y0, :]
    for s in range(n_scales):
        for c in range(n_cols):
            if count[s, c] == 0.0:
                count[s, c] = 1.0  # uncovered: 0 / 1 = 0
    for c in range(n_cols):
        if n_cover[c] == 0.0:
            n_cover[c] = 1.0
    acc = np.empty(n_cols, dtype=np.float64)
    total = np.empty(n_cols, dtype=np.float64)
    for f in range(b):
        total[:] = 0.0
        for s in range(n_scales):
            acc[:] = 0.0
            for j in range(pstart[s], pstart[s + 1]):
                w = picked[j]
                v = scores[f, w]
                for c in range(cells[w, 1], cells[w, 3]):
                    acc[c] += v
            for c in range(n_cols):
                acc[c] /= count[s, c]
                total[c] += acc[c]
            if want_maps:
                for x in range(width):
                    maps[f, s, y0, x] = acc[xbands[x]]
                for y in range(y0 + 1, y1):
                    maps[f, s, y, :] = maps[f, s, y0, :]
        for c in range(n_cols):
            total[c] /= n_cover[c]
        for x in range(width):
            out[f, y0, x] = total[xbands[x]]
        for y in range(y0 + 1, y1):
            out[f, y, :] = out[f, y0, :]


@numba.njit(parallel=True, cache=True)
def _scale_maps_parallel(scores, boxes, order, offsets, height, width, maps, covered, out, want_maps):  # pragma: no cover - compiled
    """The maps on the compressed grid of row bands x column bands (window edges cut the frame
    into cells on which every map is constant), expanded to pixels; one task per row band
    (:func:`_row_band`; tasks write disjoint pixel rows)."""
    cells, yfirst, xbands, n_cols = _compress(boxes, height, width)
    for r in numba.prange(yfirst.shape[0] - 1):
        _row_band(r, scores, cells, order, offsets, yfirst, xbands, n_cols, maps, covered, out, want_maps)


@numba.njit(cache=True)
def _scale_maps_serial(scores, boxes, order, offsets, height, width, maps, covered, out, want_maps):  # pragma: no cover - compiled
    """:func:`_scale_maps_parallel` on the calling thread, for small work (waking the thread pool
    costs more than it saves, and far more when the cores are busy)."""
    cells, yfirst, xbands, n_cols = _compress(boxes, height, width)
    for r in range(yfirst.shape[0] - 1):
        _row_band(r, scores, cells, order, offsets, yfirst, xbands, n_cols, maps, covered, out, want_maps)


def _run_cpu(scores, boxes, scale, n_scales, height, width, want_maps=True):
    src = _kernel_scores(scores)
    b = src.shape[0]
    order, offsets = _by_scale(scale, n_scales)
    maps = torch.empty((b, n_scales, height, width) if want_maps else (1, 1, 1, 1), dtype=src.dtype)
    covered = torch.empty(n_scales, height, width, dtype=torch.bool)
    out = torch.empty(b, height, width, dtype=src.dtype)
    run = _scale_maps_parallel if b * height * width * (n_scales + 1) >= _PARALLEL_WORK else _scale_maps_serial
    run(
        host_array(src), host_array(boxes.contiguous()), host_array(order), host_array(offsets),
        height, width, host_array(maps), host_array(covered), host_array(out), want_maps,
    )
    return maps.to(scores.dtype), covered, out.to(scores.dtype)


def scale_maps_cpu(scores, boxes, scale, n_scales, height, width) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`scale_maps` by the Numba CPU twin (CPU tensors; parallel over pixel rows)."""
    maps, covered, _ = _run_cpu(scores, boxes, scale, n_scales, height, width)
    return maps, covered


# --------------------------------------------------------------------------------------------
# CUDA kernel (kernels/_scoring_cuda.py, imported on first launch: CPU-only runs never load
# numba.cuda)


def _run_cuda(scores, boxes, scale, n_scales, height, width, want_maps=True):
    src = _kernel_scores(scores)
    b, dev = src.shape[0], src.device
    order, offsets = _by_scale(scale, n_scales)
    maps = torch.empty((b, n_scales, height, width) if want_maps else (1, 1, 1, 1), dtype=src.dtype, device=dev)
    covered = torch.empty(n_scales, height, width, dtype=torch.bool, device=dev)
    out = (torch.empty if n_scales > 0 else torch.zeros)(b, height, width, dtype=src.dtype, device=dev)  # S = 0: no launch, 0
    n_items = height * width * max(1, math.ceil(b / _FRAMES_PER_THREAD))
    if n_scales > 0:
        from ._scoring_cuda import scale_maps_kernel  # loads numba.cuda: only on this backend

        tpb = threads_per_block()
        blocks = min(math.ceil(n_items / tpb), _MAX_BLOCKS)
        with launch_stream(src) as stream:
            scale_maps_kernel[blocks, tpb, stream](
                device_array(src), device_array(boxes.contiguous()), device_array(order), device_array(offsets),
                height, width, device_array(maps), device_array(covered), device_array(out), want_maps,
            )
    return maps.to(scores.dtype), covered, out.to(scores.dtype)


def scale_maps_cuda(scores, boxes, scale, n_scales, height, width) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`scale_maps` by the Numba CUDA kernel (CUDA tensors, or CPU tensors under
    ``NUMBA_ENABLE_CUDASIM=1``); launched on torch's current stream, results on the device."""
    maps, covered, _ = _run_cuda(scores, boxes, scale, n_scales, height, width)
    return maps, covered


_IMPLS = {"torch": scale_maps_torch, "cpu": scale_maps_cpu, "cuda": scale_maps_cuda}
