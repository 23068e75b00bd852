"""The masked batch of occlusion: copies of frames with one window each filled by a baseline.

Given frames ``x (B, C, H, W)``, a per-row frame index ``frame (M,)`` and a window table
``boxes (M, 4)`` of rows ``(y0, x0, y1, x1)`` (end-exclusive), row ``i`` of the result is
``x[frame[i]]`` with the pixels ``y0 <= y < y1, x0 <= x < x1`` of ``boxes[i]`` taken from the
baseline instead (a constant, or ``baseline[frame[i]]`` of a ``(B, C, 1|H, 1|W)`` tensor).
Windows reaching past the frame are clipped to it; an empty window (``y1 <= y0`` or
``x1 <= x0``) leaves the row a plain copy.

Three implementations side by side (see :mod:`fastviz.kernels._backend`):

- :func:`masked_batch_torch`: the plain-torch reference (a gather, a 0/1 window mask and a
  ``where``), on whatever device the tensors are on;
- :func:`masked_batch_cpu`: a ``numba.njit(parallel=True, cache=True)`` twin, one pass over
  the output rows, in ``out``'s memory order;
- :func:`masked_batch_cuda`: a ``numba.cuda`` kernel, a grid-stride loop over the output
  elements in ``out``'s memory order (coalesced writes, also for channels-last), launched on
  torch's current stream; the kernel lives in :mod:`._masking_cuda`, imported on first launch.

:func:`masked_batch` checks its arguments and runs the implementation that ``backend`` names,
``"auto"``: :data:`DEFAULTS` for the tensors' device, decided at call time.

The kernels write each output element exactly once (a copy or a fill, no arithmetic), so every
implementation gives bit-identical results.
"""

from __future__ import annotations

import math
import numbers

import numba
import torch
from numba import prange, types

from . import _backend

__all__ = ["DEFAULTS", "masked_batch", "masked_batch_cpu", "masked_batch_cuda", "masked_batch_torch"]

#: Device type -> the implementation ``backend="auto"`` runs, from
#: benchmarks/test_bench_kernel_masking.py (PilotNet: one channels-last 66x200 frame, 1,872
#: windows, rows written into a channels-last buffer; 2 shared cores, medians). CPU: the Numba
#: twin beats the torch reference, 0.20 vs 0.57 ms per 16-row chunk (0.21 vs 0.82 with a blurred
#: baseline) and 23 vs 141 ms for all 1,872 rows at once. CUDA: no GPU was available to benchmark
#: the kernel, so the reference stays the default there until a GPU run shows the kernel faster.
DEFAULTS: dict[str, str] = {"cpu": "cpu", "cuda": "torch"}

_DTYPES = (torch.float32, torch.float64)

#: Grid-stride launches use at most this many blocks (enough to fill a large GPU; more work
#: loops inside the threads). Tests lower it so the stride loop runs in the simulator.
_MAX_BLOCKS = 4096


# ---------------------------------------------------------------------------------------------
# public entry point


def masked_batch(
    x: torch.Tensor,
    frame: torch.Tensor,
    boxes: torch.Tensor,
    baseline: float | torch.Tensor,
    out: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Masked copies of frames, one window filled by the baseline in each, in one pass.

    Parameters
    ----------
    x : Tensor (B, C, H, W)
        float32 or float64 frames, any strides.
    frame : int64 Tensor (M,)
        Which frame each row copies, in ``[0, B)``; on ``x``'s device.
    boxes : int64 Tensor (M, 4)
        Each row's window ``(y0, x0, y1, x1)`` in pixels, end-exclusive; on ``x``'s device.
        Coordinates outside the frame are clipped; an empty window masks nothing.
    baseline : float or Tensor (B, C, 1 | H, 1 | W)
        What fills the windows: a constant, or per-frame values on ``x``'s device and dtype
        (per-channel means, a blurred image; expanded stride-0 views are fine), exactly as
        :func:`fastviz.methods.perturbation.make_baseline` returns.
    out : Tensor (M2, C, H, W), optional
        Buffer with ``M2 >= M`` rows, ``x``'s dtype and device, any memory format
        (channels-last included); ``out[:M]`` is written and returned. It must not overlap
        ``x`` or ``baseline``. Default: a new tensor in ``x``'s memory format.
    backend : {"auto", "torch", "cpu", "cuda"}
        ``"auto"``: :data:`DEFAULTS` for ``x``'s device type.

    Returns
    -------
    Tensor (M, C, H, W)
        Row ``i`` is ``x[frame[i]]`` with the window ``boxes[i]`` filled by the baseline.

    Raises
    ------
    ValueError
        For wrong ranks, dtypes or devices, ``M`` differing between ``frame`` and ``boxes``,
        frame indices outside ``[0, B)``, a baseline of the wrong shape, an ``out`` too small or
        of the wrong shape, dtype or device, or a backend that cannot run on ``x``'s device.

    Notes
    -----
    The frame-index range check reads one value back from the device (a synchronisation on
    CUDA); the implementations themselves do not check their arguments.

    Examples
    --------
    >>> x = torch.arange(12.0).view(1, 1, 3, 4)
    >>> masked_batch(x, torch.tensor([0]), torch.tensor([[1, 1, 3, 3]]), -1.0, backend="torch")[0, 0]
    tensor([[ 0.,  1.,  2.,  3.],
            [ 4., -1., -1.,  7.],
            [ 8., -1., -1., 11.]])
    """
    baseline = _check(x, frame, boxes, baseline, out)
    impl = _backend.resolve(backend, x.device, DEFAULTS)
    if impl == "cpu":
        return masked_batch_cpu(x, frame, boxes, baseline, out)
    if impl == "cuda":
        return masked_batch_cuda(x, frame, boxes, baseline, out)
    return masked_batch_torch(x, frame, boxes, baseline, out)


def _check(x, frame, boxes, baseline, out) -> float | torch.Tensor:
    """Raise ValueError naming the first problem; return the baseline as a float or tensor."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(f"x must be a (B, C, H, W) tensor, got {_backend.describe(x)}")
    if x.dtype not in _DTYPES:
        raise ValueError(f"x must be float32 or float64, got {x.dtype}")
    b, c, h, w = x.shape
    dev = x.device
    if not isinstance(frame, torch.Tensor) or frame.ndim != 1:
        raise ValueError(f"frame must be a 1-D (M,) tensor of frame indices, got {_backend.describe(frame)}")
    if not isinstance(boxes, torch.Tensor) or boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be an (M, 4) tensor of (y0, x0, y1, x1) rows, got {_backend.describe(boxes)}")
    for name, t in (("frame", frame), ("boxes", boxes)):
        if t.dtype != torch.int64:
            raise ValueError(f"{name} must be int64, got {t.dtype}")
        if t.device != dev:
            raise ValueError(f"{name} is on {t.device} but x is on {dev}")
    m = frame.shape[0]
    if boxes.shape[0] != m:
        raise ValueError(f"frame has {m} rows but boxes has {boxes.shape[0]}: one window per row")
    _backend.check_frame_indices(frame, b, "x")
    if isinstance(baseline, torch.Tensor):
        if baseline.dtype != x.dtype or baseline.device != dev:
            raise ValueError(f"baseline must have x's dtype and device ({x.dtype}, {dev}), got {baseline.dtype} on {baseline.device}")
        s = tuple(baseline.shape)
        if len(s) != 4 or s[0] != b or s[1] != c or s[2] not in (1, h) or s[3] not in (1, w):
            raise ValueError(f"baseline must have shape ({b}, {c}, 1 or {h}, 1 or {w}) for x of shape {tuple(x.shape)}, got {s}")
    elif isinstance(baseline, numbers.Real) and not isinstance(baseline, bool):
        baseline = float(baseline)
    else:
        raise ValueError(f"baseline must be a float or a (B, C, 1|H, 1|W) tensor, got {type(baseline).__name__}")
    if out is not None:
        if not isinstance(out, torch.Tensor) or out.ndim != 4 or tuple(out.shape[1:]) != (c, h, w):
            raise ValueError(f"out must be an (M2, {c}, {h}, {w}) tensor with M2 >= {m}, got {_backend.describe(out)}")
        if out.shape[0] < m:
            raise ValueError(f"out has {out.shape[0]} rows, too few for {m} masked rows")
        if out.dtype != x.dtype or out.device != dev:
            raise ValueError(f"out must have x's dtype and device ({x.dtype}, {dev}), got {out.dtype} on {out.device}")
    return baseline



def _destination(x: torch.Tensor, m: int, out: torch.Tensor | None) -> torch.Tensor:
    """``out[:m]``, or a new ``(m, C, H, W)`` tensor in ``x``'s memory format."""
    if out is not None:
        return out[:m]
    fmt = torch.contiguous_format
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        fmt = torch.channels_last
    return torch.empty((m, *x.shape[1:]), dtype=x.dtype, device=x.device, memory_format=fmt)


def _squeeze_broadcast(baseline: torch.Tensor) -> torch.Tensor:
    """``baseline`` with every stride-0 (broadcast) dimension narrowed to size 1, so the kernels
    see no zero strides: they index a size-1 dimension at 0."""
    for d in range(baseline.ndim):
        if baseline.stride(d) == 0 and baseline.shape[d] > 1:
            baseline = baseline.narrow(d, 0, 1)
    return baseline


# ---------------------------------------------------------------------------------------------
# plain-torch reference


def masked_batch_torch(
    x: torch.Tensor, frame: torch.Tensor, boxes: torch.Tensor, baseline: float | torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Plain-torch reference of :func:`masked_batch` (arguments not checked): a gather of the
    rows, a 0/1 window mask and one ``where``, on the tensors' device."""
    h, w = x.shape[-2:]
    ys = torch.arange(h, device=x.device)
    xs = torch.arange(w, device=x.device)
    in_y = (ys >= boxes[:, 0:1]) & (ys < boxes[:, 2:3])  # (M, H)
    in_x = (xs >= boxes[:, 1:2]) & (xs < boxes[:, 3:4])  # (M, W)
    mask = (in_y.unsqueeze(2) & in_x.unsqueeze(1)).unsqueeze(1)  # (M, 1, H, W)
    rows = x[frame]  # advanced indexing keeps x's memory format (index_select would not)
    fill = baseline if isinstance(baseline, float) else baseline.index_select(0, frame)
    if out is None:
        if isinstance(fill, float):
            return rows.masked_fill_(mask, fill)
        return torch.where(mask, fill, rows)
    if isinstance(fill, float):
        fill = torch.full((), fill, dtype=x.dtype, device=x.device)  # where(out=) takes no Python scalar
    return torch.where(mask, fill, rows, out=out[: frame.shape[0]])


# ---------------------------------------------------------------------------------------------
# CPU twin (Numba, parallel over output lines)

#: The CPU twin runs its parallel driver only from this many output elements per call; smaller
#: calls run on one thread, where waking Numba's thread pool (tens of microseconds on idle
#: cores, milliseconds when its threads wait for busy ones) would cost more than it saves.
#: A 16-row PilotNet chunk (633,600 elements) runs in parallel: 0.22 ms vs 0.44 ms on one thread
#: (2 cores), and 0.39 vs 0.56 ms between PilotNet forward passes.
_PARALLEL_MIN_ELEMENTS = 1 << 16


@numba.njit(cache=True, nogil=True)
def _masked_line(x, frame, boxes, base, fill, use_fill, out, t):  # pragma: no cover - compiled by Numba
    """Write line ``t`` = (row ``i``, pixel row ``y``) of ``out``: ``x[frame[i], :, y]`` with the
    window's columns filled, in ``out``'s memory order."""
    m, c, h, w = out.shape
    i = t // h
    y = t - i * h
    f = frame[i]
    lo = 0
    hi = 0  # window columns [lo, hi) on this line, clipped to the frame
    if boxes[i, 0] <= y and y < boxes[i, 2]:
        lo = min(max(boxes[i, 1], 0), w)
        hi = min(max(boxes[i, 3], lo), w)
    fb = f if base.shape[0] > 1 else 0
    yb = y if base.shape[2] > 1 else 0
    bx = base.shape[3] > 1
    if out.strides[1] < out.strides[3]:  # channels-last: channels innermost
        for col in range(lo):
            for ch in range(c):
                out[i, ch, y, col] = x[f, ch, y, col]
        for col in range(lo, hi):
            xb = col if bx else 0
            for ch in range(c):
                out[i, ch, y, col] = fill if use_fill else base[fb, ch, yb, xb]
        for col in range(hi, w):
            for ch in range(c):
                out[i, ch, y, col] = x[f, ch, y, col]
    else:
        for ch in range(c):
            for col in range(lo):
                out[i, ch, y, col] = x[f, ch, y, col]
            if use_fill:
                for col in range(lo, hi):
                    out[i, ch, y, col] = fill
            else:
                for col in range(lo, hi):
                    out[i, ch, y, col] = base[fb, ch, yb, col if bx else 0]
            for col in range(hi, w):
                out[i, ch, y, col] = x[f, ch, y, col]


def _masked_lines_parallel(x, frame, boxes, base, fill, use_fill, out):  # pragma: no cover - compiled by Numba
    for t in prange(out.shape[0] * out.shape[2]):
        _masked_line(x, frame, boxes, base, fill, use_fill, out, t)


def _masked_lines_serial(x, frame, boxes, base, fill, use_fill, out):  # pragma: no cover - compiled by Numba
    for t in range(out.shape[0] * out.shape[2]):
        _masked_line(x, frame, boxes, base, fill, use_fill, out, t)


_host_kernels: dict[tuple[torch.dtype, bool], object] = {}


def _host_kernel(dtype: torch.dtype, parallel: bool):
    """The compiled CPU twin for ``dtype``, parallel over output lines or on one thread.

    One explicit signature with any-stride ('A') arrays, so every memory format of ``x``,
    ``baseline`` and ``out`` shares one compiled (and cached) function; compiled, or loaded
    from Numba's cache, on first use.
    """
    kernel = _host_kernels.get((dtype, parallel))
    if kernel is None:
        real = types.float32 if dtype == torch.float32 else types.float64
        arr4 = types.Array(real, 4, "A")
        sig = types.void(arr4, types.Array(types.int64, 1, "A"), types.Array(types.int64, 2, "A"), arr4,
                         types.float64, types.boolean, arr4)
        if parallel:
            kernel = numba.njit(sig, parallel=True, cache=True, nogil=True)(_masked_lines_parallel)
        else:
            kernel = numba.njit(sig, cache=True, nogil=True)(_masked_lines_serial)
        _host_kernels[(dtype, parallel)] = kernel
    return kernel


def masked_batch_cpu(
    x: torch.Tensor, frame: torch.Tensor, boxes: torch.Tensor, baseline: float | torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """CPU twin of :func:`masked_batch` (CPU tensors; arguments not checked): a Numba
    ``njit(parallel=True, cache=True)`` loop over ``(row, y)`` lines, any strides; calls below
    :data:`_PARALLEL_MIN_ELEMENTS` output elements run the same loop on one thread."""
    dst = _destination(x, frame.shape[0], out)
    if dst.numel() == 0:
        return dst
    use_fill = isinstance(baseline, float)
    base = x if use_fill else _squeeze_broadcast(baseline)  # x: a placeholder, never read
    h = _backend.host_array
    kernel = _host_kernel(x.dtype, dst.numel() >= _PARALLEL_MIN_ELEMENTS)
    kernel(h(x), h(frame), h(boxes), h(base), float(baseline) if use_fill else 0.0, use_fill, h(dst))
    return dst


# ---------------------------------------------------------------------------------------------
# CUDA kernel (numba.cuda; CPU tensors under the simulator). The kernel itself is in
# kernels/_masking_cuda.py, imported on first launch: CPU-only runs never load numba.cuda.


def masked_batch_cuda(
    x: torch.Tensor, frame: torch.Tensor, boxes: torch.Tensor, baseline: float | torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """CUDA kernel of :func:`masked_batch` (CUDA tensors, or CPU tensors under the simulator;
    arguments not checked): one grid-stride pass over the output elements, on torch's current
    stream, reading and writing the tensors in place through ``__cuda_array_interface__``."""
    dst = _destination(x, frame.shape[0], out)
    n = dst.numel()
    if n == 0:
        return dst  # a launch with no blocks is an error
    use_fill = isinstance(baseline, float)
    base = x if use_fill else _squeeze_broadcast(baseline)  # x: a placeholder, never read
    channels_inner = dst.stride(1) < dst.stride(3)
    tpb = _backend.threads_per_block()
    blocks = min(math.ceil(n / tpb), _MAX_BLOCKS)
    from ._masking_cuda import masked_batch_device  # loads numba.cuda: only on this backend

    d = _backend.device_array
    with _backend.launch_stream(x) as stream:
        masked_batch_device[blocks, tpb, stream](
            d(x), d(frame), d(boxes), d(base), float(baseline) if use_fill else 0.0, use_fill, d(dst), channels_inner
        )
    return dst
