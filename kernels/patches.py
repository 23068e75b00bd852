"""Patch assembly for incremental occlusion: clean-map regions with each row's changed values
written in.

Incremental (Krypton-style) occlusion (Nakandala et al., "Incremental and Approximate Inference
for Faster Occlusion-based Deep CNN Explanations", SIGMOD 2019) does not run the whole network
on every occluded copy of a frame. It runs the clean frame once, keeps every layer's clean
activation map, and for each occluded row carries only the small *patch* of each map that the
occlusion changed: a layer's new patch is the layer applied to its input's receptive-field
region, which is the clean map with the row's changed values written in. This kernel builds
those inputs.

Given clean maps ``clean (B, C, H, W)``, a per-row frame index ``frame (N,)``, region corners
``region_at (N, 2)`` of rows ``(ry, rx)`` and a region size ``(rh, rw)``, and optionally changed
values ``patch (N, C, ph, pw)`` placed at ``patch_at (N, 2)`` rows ``(py, px)``, all in the
map's pixel coordinates, element ``(n, c, i, j)`` of the result, with ``(y, x) = (ry + i,
rx + j)``, is

- ``pad`` where ``(y, x)`` is outside the map (regions may start at negative coordinates or
  reach past the far edges: a convolution's zero padding, or ``-inf`` for max-pooling);
- ``patch[n, c, y - py, x - px]`` where ``(y, x)`` is inside the map and inside row ``n``'s
  patch (patch values outside the map are ignored; a patch may overlap its region partly, or
  not at all);
- ``clean[frame[n], c, y, x]`` elsewhere.

Two uses: (a) the input of a layer run with ``padding=0`` on the patch batch, a padded
receptive-field region per row with the row's changed values written in; (b) "write-back",
``region_at = (0, 0)`` and ``size = (H, W)``: each row's full map with its patch written in
(where the incremental pass hands over to full inference).

Three implementations side by side (see :mod:`fastviz.kernels._backend`):

- :func:`assemble_torch`: the plain-torch reference (two gathers with clamped indices, 0/1
  masks and ``where``), on whatever device the tensors are on;
- :func:`assemble_cpu`: a ``numba.njit(parallel=True, cache=True)`` twin, one pass over the
  output lines ``(row, i)``, each split once into column ranges (left padding, clean, patch,
  clean, right padding), in ``out``'s memory order;
- :func:`assemble_cuda`: a ``numba.cuda`` kernel, a grid-stride loop over the output elements
  in ``out``'s memory order (coalesced writes, also for channels-last), launched on torch's
  current stream; the kernel lives in :mod:`._patches_cuda`, imported on first launch.

:func:`assemble` checks its arguments and runs the implementation that ``backend`` names,
``"auto"``: :data:`DEFAULTS` for the tensors' device, decided at call time.

The kernels write each output element exactly once (a copy or the pad constant, no
arithmetic), so every implementation gives bit-identical results.
"""

from __future__ import annotations

import math
import numbers

import numba
import torch
from numba import prange, types

from . import _backend

__all__ = ["DEFAULTS", "assemble", "assemble_cpu", "assemble_cuda", "assemble_torch"]

#: Device type -> the implementation ``backend="auto"`` runs, from
#: benchmarks/test_bench_kernel_patches.py (PilotNet's second conv input, 1x24x31x98
#: channels-last; benchmarks/RESULTS.md, issue 13). CPU (2-core AMD EPYC, 2026-12-04, medians):
#: the Numba twin beats the torch reference 11.7x on 735 rows of 13x13 regions (0.88 vs 10.3 ms)
#: and 9.9x on whole-map write-backs in chunks of 16 (12.4 vs 123 ms for 735 rows). CUDA (H200,
#: 2026-12-04): the kernel equals the reference on regions (0.50 vs 0.48 ms for 735 rows) and
#: beats it on write-backs (1.05 vs 1.44 ms), so it is the default there.
DEFAULTS: dict[str, str] = {"cpu": "cpu", "cuda": "cuda"}

_DTYPES = (torch.float32, torch.float64)

#: Grid-stride launches use at most this many blocks (enough to fill a large GPU; more work
#: loops inside the threads). Tests lower it so the stride loop runs in the simulator.
_MAX_BLOCKS = 4096


# ---------------------------------------------------------------------------------------------
# public entry point


def assemble(
    clean: torch.Tensor,
    frame: torch.Tensor,
    region_at: torch.Tensor,
    size: tuple[int, int],
    patch: torch.Tensor | None = None,
    patch_at: torch.Tensor | None = None,
    pad: float = 0.0,
    out: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Regions of clean maps with each row's patch written in and padding outside the map.

    Parameters
    ----------
    clean : Tensor (B, C, H, W)
        float32 or float64 clean activation maps (one per frame), any strides; ``H, W >= 1``.
    frame : int64 Tensor (N,)
        Which map each row reads, in ``[0, B)``; on ``clean``'s device.
    region_at : int64 Tensor (N, 2)
        Each row's region corner ``(ry, rx)`` in the map's pixel coordinates; on ``clean``'s
        device. Any values: region positions outside the map are padding.
    size : (int, int)
        The region size ``(rh, rw)``, both ``>= 1``, the same for every row.
    patch : Tensor (N, C, ph, pw), optional
        Each row's changed values, ``clean``'s dtype and device, any strides. Only where it
        overlaps both the row's region and the map is it used.
    patch_at : int64 Tensor (N, 2), optional
        Each patch's corner ``(py, px)`` in map coordinates, any values; given exactly when
        ``patch`` is.
    pad : float
        The value of region positions outside the map: ``0.0`` for a convolution's zero
        padding, ``-inf`` for max-pooling (infinities allowed, NaN not).
    out : Tensor (N2, C, rh, rw), optional
        Buffer with ``N2 >= N`` rows, ``clean``'s dtype and device, any memory format
        (channels-last included); ``out[:N]`` is written and returned. It must not overlap
        ``clean`` or ``patch``. Default: a new tensor in ``clean``'s memory format.
    backend : {"auto", "torch", "cpu", "cuda"}
        ``"auto"``: :data:`DEFAULTS` for ``clean``'s device type.

    Returns
    -------
    Tensor (N, C, rh, rw)
        Element ``(n, c, i, j)``, with ``(y, x) = (ry + i, rx + j)``: ``pad`` outside the
        map, else ``patch[n, c, y - py, x - px]`` inside row ``n``'s patch, else
        ``clean[frame[n], c, y, x]``.

    Raises
    ------
    ValueError
        For wrong ranks, dtypes or devices, an empty map, row counts differing between
        ``frame``, ``region_at``, ``patch`` and ``patch_at``, frame indices outside
        ``[0, B)``, a size that is not two ints ``>= 1``, a patch whose channel count is not
        ``C``, ``patch`` without ``patch_at`` or the reverse, a pad that is not a real number
        or is NaN, an ``out`` too small or of the wrong shape, dtype or device, or a backend
        that cannot run on ``clean``'s device.

    Notes
    -----
    The frame-index range check reads one value back from the device (a synchronisation on
    CUDA); the implementations themselves do not check their arguments.

    Examples
    --------
    >>> clean = torch.arange(12.0).view(1, 1, 3, 4)
    >>> patch = torch.tensor([[[[100.0, 101.0], [102.0, 103.0]]]])
    >>> assemble(clean, torch.tensor([0]), torch.tensor([[-1, 1]]), (4, 4), patch,
    ...          torch.tensor([[1, 3]]), pad=-1.0, backend="torch")[0, 0]
    tensor([[ -1.,  -1.,  -1.,  -1.],
            [  1.,   2.,   3.,  -1.],
            [  5.,   6., 100.,  -1.],
            [  9.,  10., 102.,  -1.]])
    """
    size, pad = _check(clean, frame, region_at, size, patch, patch_at, pad, out)
    impl = _backend.resolve(backend, clean.device, DEFAULTS)
    if impl == "cpu":
        return assemble_cpu(clean, frame, region_at, size, patch, patch_at, pad, out)
    if impl == "cuda":
        return assemble_cuda(clean, frame, region_at, size, patch, patch_at, pad, out)
    return assemble_torch(clean, frame, region_at, size, patch, patch_at, pad, out)


def _check(clean, frame, region_at, size, patch, patch_at, pad, out) -> tuple[tuple[int, int], float]:
    """Raise ValueError naming the first problem; return ``size`` as two ints and ``pad`` as a float."""
    if not isinstance(clean, torch.Tensor) or clean.ndim != 4:
        raise ValueError(f"clean must be a (B, C, H, W) tensor, got {_backend.describe(clean)}")
    if clean.dtype not in _DTYPES:
        raise ValueError(f"clean must be float32 or float64, got {clean.dtype}")
    b, c, h, w = clean.shape
    if h < 1 or w < 1:
        raise ValueError(f"clean must have a non-empty map (H, W >= 1), got shape {tuple(clean.shape)}")
    dev = clean.device
    if not isinstance(frame, torch.Tensor) or frame.ndim != 1:
        raise ValueError(f"frame must be a 1-D (N,) tensor of frame indices, got {_backend.describe(frame)}")
    if not isinstance(region_at, torch.Tensor) or region_at.ndim != 2 or region_at.shape[1] != 2:
        raise ValueError(f"region_at must be an (N, 2) tensor of (ry, rx) rows, got {_backend.describe(region_at)}")
    for name, t in (("frame", frame), ("region_at", region_at)):
        if t.dtype != torch.int64:
            raise ValueError(f"{name} must be int64, got {t.dtype}")
        if t.device != dev:
            raise ValueError(f"{name} is on {t.device} but clean is on {dev}")
    n = frame.shape[0]
    if region_at.shape[0] != n:
        raise ValueError(f"frame has {n} rows but region_at has {region_at.shape[0]}: one region per row")
    _backend.check_frame_indices(frame, b, "clean")
    size = _size(size)
    if (patch is None) != (patch_at is None):
        given, missing = ("patch", "patch_at") if patch_at is None else ("patch_at", "patch")
        raise ValueError(f"{given} is given without {missing}: pass both (a patch and its (N, 2) corners) or neither")
    if patch is not None:
        if not isinstance(patch, torch.Tensor) or patch.ndim != 4:
            raise ValueError(f"patch must be an (N, C, ph, pw) tensor, got {_backend.describe(patch)}")
        if patch.dtype != clean.dtype or patch.device != dev:
            raise ValueError(f"patch must have clean's dtype and device ({clean.dtype}, {dev}), got {patch.dtype} on {patch.device}")
        if patch.shape[0] != n:
            raise ValueError(f"frame has {n} rows but patch has {patch.shape[0]}: one patch per row")
        if patch.shape[1] != c:
            raise ValueError(f"patch has {patch.shape[1]} channels but clean has {c}")
        if not isinstance(patch_at, torch.Tensor) or patch_at.ndim != 2 or patch_at.shape[1] != 2:
            raise ValueError(f"patch_at must be an (N, 2) tensor of (py, px) rows, got {_backend.describe(patch_at)}")
        if patch_at.dtype != torch.int64:
            raise ValueError(f"patch_at must be int64, got {patch_at.dtype}")
        if patch_at.device != dev:
            raise ValueError(f"patch_at is on {patch_at.device} but clean is on {dev}")
        if patch_at.shape[0] != n:
            raise ValueError(f"frame has {n} rows but patch_at has {patch_at.shape[0]}: one patch corner per row")
    if not isinstance(pad, numbers.Real) or isinstance(pad, bool):
        raise ValueError(f"pad must be a real number (a float, infinities allowed), got {type(pad).__name__}")
    pad = float(pad)
    if math.isnan(pad):
        raise ValueError("pad must not be NaN")
    if out is not None:
        rh, rw = size
        if not isinstance(out, torch.Tensor) or out.ndim != 4 or tuple(out.shape[1:]) != (c, rh, rw):
            raise ValueError(f"out must be an (N2, {c}, {rh}, {rw}) tensor with N2 >= {n}, got {_backend.describe(out)}")
        if out.shape[0] < n:
            raise ValueError(f"out has {out.shape[0]} rows, too few for {n} rows")
        if out.dtype != clean.dtype or out.device != dev:
            raise ValueError(f"out must have clean's dtype and device ({clean.dtype}, {dev}), got {out.dtype} on {out.device}")
    return size, pad


def _size(size) -> tuple[int, int]:
    """``size`` as two Python ints ``>= 1``, or ValueError."""
    try:
        rh, rw = size
    except (TypeError, ValueError):
        raise ValueError(f"size must be two ints (rh, rw) >= 1, got {size!r}") from None
    for v in (rh, rw):
        if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < 1:
            raise ValueError(f"size must be two ints (rh, rw) >= 1, got {size!r}")
    return int(rh), int(rw)



def _destination(clean: torch.Tensor, n: int, size: tuple[int, int], out: torch.Tensor | None) -> torch.Tensor:
    """``out[:n]``, or a new ``(n, C, rh, rw)`` tensor in ``clean``'s memory format."""
    if out is not None:
        return out[:n]
    fmt = torch.contiguous_format
    if not clean.is_contiguous() and clean.is_contiguous(memory_format=torch.channels_last):
        fmt = torch.channels_last
    return torch.empty((n, clean.shape[1], *size), dtype=clean.dtype, device=clean.device, memory_format=fmt)


def _has_patch(patch: torch.Tensor | None) -> bool:
    """Whether there are patch values to write in (a patch of zero height or width has none)."""
    return patch is not None and patch.shape[2] > 0 and patch.shape[3] > 0


# ---------------------------------------------------------------------------------------------
# plain-torch reference


def assemble_torch(
    clean: torch.Tensor,
    frame: torch.Tensor,
    region_at: torch.Tensor,
    size: tuple[int, int],
    patch: torch.Tensor | None = None,
    patch_at: torch.Tensor | None = None,
    pad: float = 0.0,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Plain-torch reference of :func:`assemble` (arguments not checked): a gather of the
    region from the clean maps and one from the patches at clamped coordinates, 0/1 masks for
    "inside the patch" and "inside the map", and two ``where``, on the tensors' device."""
    n = frame.shape[0]
    dst = _destination(clean, n, size, out)
    if dst.numel() == 0:
        return dst
    rh, rw = size
    h, w = clean.shape[-2:]
    dev = clean.device
    ys = region_at[:, 0:1] + torch.arange(rh, device=dev)  # (N, rh) map rows
    xs = region_at[:, 1:2] + torch.arange(rw, device=dev)  # (N, rw) map columns
    # Separated advanced indices put the broadcast (N, rh, rw) first: (N, rh, rw, C) -> permute.
    vals = clean[frame.view(n, 1, 1), :, ys.clamp(0, h - 1).unsqueeze(2), xs.clamp(0, w - 1).unsqueeze(1)]
    vals = vals.permute(0, 3, 1, 2)
    if _has_patch(patch):
        ph, pw = patch.shape[-2:]
        dy = ys - patch_at[:, 0:1]
        dx = xs - patch_at[:, 1:2]
        rows = torch.arange(n, device=dev).view(n, 1, 1)
        pv = patch[rows, :, dy.clamp(0, ph - 1).unsqueeze(2), dx.clamp(0, pw - 1).unsqueeze(1)].permute(0, 3, 1, 2)
        in_patch = (((dy >= 0) & (dy < ph)).unsqueeze(2) & ((dx >= 0) & (dx < pw)).unsqueeze(1)).unsqueeze(1)
        vals = torch.where(in_patch, pv, vals)
    in_map = (((ys >= 0) & (ys < h)).unsqueeze(2) & ((xs >= 0) & (xs < w)).unsqueeze(1)).unsqueeze(1)
    fill = torch.full((), pad, dtype=clean.dtype, device=dev)  # where(out=) takes no Python scalar
    return torch.where(in_map, vals, fill, out=dst)


# ---------------------------------------------------------------------------------------------
# CPU twin (Numba, parallel over output lines)

#: The CPU twin runs its parallel driver only from this many output elements per call; smaller
#: calls run on one thread, where waking Numba's thread pool (tens of microseconds on idle
#: cores, milliseconds when its threads wait for busy ones) would cost more than it saves.
#: The same threshold as kernels/masking.py (a copy loop of the same kind), where a 16-row
#: PilotNet chunk (633,600 elements) ran in 0.22 ms in parallel vs 0.44 ms on one thread
#: (2 cores). For PilotNet's second conv input, all 735 13x13 regions in one call (2.98M
#: elements) and 16-row write-back chunks (1.17M) run in parallel, a 16-row chunk of regions
#: (64,896) on one thread; benchmarks/test_bench_kernel_patches.py times both drivers.
_PARALLEL_MIN_ELEMENTS = 1 << 16


@numba.njit(cache=True, nogil=True)
def _assemble_line(clean, frame, region_at, patch, patch_at, pad, has_patch, out, t):  # pragma: no cover - compiled by Numba
    """Write line ``t`` = (row ``n``, region row ``i``) of ``out`` in ``out``'s memory order,
    as five column ranges: padding, clean, patch, clean, padding."""
    rows, c, rh, rw = out.shape
    h = clean.shape[2]
    w = clean.shape[3]
    n = t // rh
    i = t - n * rh
    f = frame[n]
    y = region_at[n, 0] + i
    rx = region_at[n, 1]
    jl = rw  # columns [0, jl) and [jr, rw) are padding, [jl, jr) the map
    jr = rw
    pl = rw  # columns [pl, pr) inside [jl, jr) take the patch, the rest of [jl, jr) the clean map
    pr = rw
    dy = 0
    px = 0
    if 0 <= y and y < h:
        jl = min(max(-rx, 0), rw)
        jr = min(max(w - rx, jl), rw)
        pl = jl
        pr = jl
        if has_patch:
            dy = y - patch_at[n, 0]
            px = patch_at[n, 1]
            if 0 <= dy and dy < patch.shape[2]:
                pl = min(max(px - rx, jl), jr)
                pr = min(max(px + patch.shape[3] - rx, pl), jr)
    pxo = rx - px  # column j of the region is column j + pxo of the patch
    if out.strides[1] < out.strides[3]:  # channels-last: channels innermost
        for j in range(jl):
            for ch in range(c):
                out[n, ch, i, j] = pad
        for j in range(jl, pl):
            for ch in range(c):
                out[n, ch, i, j] = clean[f, ch, y, rx + j]
        for j in range(pl, pr):
            for ch in range(c):
                out[n, ch, i, j] = patch[n, ch, dy, pxo + j]
        for j in range(pr, jr):
            for ch in range(c):
                out[n, ch, i, j] = clean[f, ch, y, rx + j]
        for j in range(jr, rw):
            for ch in range(c):
                out[n, ch, i, j] = pad
    else:
        for ch in range(c):
            for j in range(jl):
                out[n, ch, i, j] = pad
            for j in range(jl, pl):
                out[n, ch, i, j] = clean[f, ch, y, rx + j]
            for j in range(pl, pr):
                out[n, ch, i, j] = patch[n, ch, dy, pxo + j]
            for j in range(pr, jr):
                out[n, ch, i, j] = clean[f, ch, y, rx + j]
            for j in range(jr, rw):
                out[n, ch, i, j] = pad


def _assemble_lines_parallel(clean, frame, region_at, patch, patch_at, pad, has_patch, out):  # pragma: no cover - compiled by Numba
    for t in prange(out.shape[0] * out.shape[2]):
        _assemble_line(clean, frame, region_at, patch, patch_at, pad, has_patch, out, t)


def _assemble_lines_serial(clean, frame, region_at, patch, patch_at, pad, has_patch, out):  # pragma: no cover - compiled by Numba
    for t in range(out.shape[0] * out.shape[2]):
        _assemble_line(clean, frame, region_at, patch, patch_at, pad, has_patch, out, t)


_host_kernels: dict[tuple[torch.dtype, bool], object] = {}


def _host_kernel(dtype: torch.dtype, parallel: bool):
    """The compiled CPU twin for ``dtype``, parallel over output lines or on one thread.

    One explicit signature with any-stride ('A') arrays, so every memory format of ``clean``,
    ``patch`` and ``out`` shares one compiled (and cached) function; compiled, or loaded from
    Numba's cache, on first use.
    """
    kernel = _host_kernels.get((dtype, parallel))
    if kernel is None:
        real = types.float32 if dtype == torch.float32 else types.float64
        arr4 = types.Array(real, 4, "A")
        at = types.Array(types.int64, 2, "A")
        sig = types.void(arr4, types.Array(types.int64, 1, "A"), at, arr4, at, types.float64, types.boolean, arr4)
        if parallel:
            kernel = numba.njit(sig, parallel=True, cache=True, nogil=True)(_assemble_lines_parallel)
        else:
            kernel = numba.njit(sig, cache=True, nogil=True)(_assemble_lines_serial)
        _host_kernels[(dtype, parallel)] = kernel
    return kernel


def assemble_cpu(
    clean: torch.Tensor,
    frame: torch.Tensor,
    region_at: torch.Tensor,
    size: tuple[int, int],
    patch: torch.Tensor | None = None,
    patch_at: torch.Tensor | None = None,
    pad: float = 0.0,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """CPU twin of :func:`assemble` (CPU tensors; arguments not checked): a Numba
    ``njit(parallel=True, cache=True)`` loop over ``(row, i)`` lines, any strides; calls below
    :data:`_PARALLEL_MIN_ELEMENTS` output elements run the same loop on one thread."""
    dst = _destination(clean, frame.shape[0], size, out)
    if dst.numel() == 0:
        return dst
    has_patch = _has_patch(patch)
    if not has_patch:
        patch, patch_at = clean, region_at  # placeholders, never read
    h = _backend.host_array
    kernel = _host_kernel(clean.dtype, dst.numel() >= _PARALLEL_MIN_ELEMENTS)
    kernel(h(clean), h(frame), h(region_at), h(patch), h(patch_at), float(pad), has_patch, h(dst))
    return dst


# ---------------------------------------------------------------------------------------------
# CUDA kernel (numba.cuda; CPU tensors under the simulator). The kernel itself is in
# kernels/_patches_cuda.py, imported on first launch: CPU-only runs never load numba.cuda.


def assemble_cuda(
    clean: torch.Tensor,
    frame: torch.Tensor,
    region_at: torch.Tensor,
    size: tuple[int, int],
    patch: torch.Tensor | None = None,
    patch_at: torch.Tensor | None = None,
    pad: float = 0.0,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """CUDA kernel of :func:`assemble` (CUDA tensors, or CPU tensors under the simulator;
    arguments not checked): one grid-stride pass over the output elements, on torch's current
    stream, reading and writing the tensors in place through ``__cuda_array_interface__``."""
    dst = _destination(clean, frame.shape[0], size, out)
    total = dst.numel()
    if total == 0:
        return dst  # a launch with no blocks is an error
    has_patch = _has_patch(patch)
    if not has_patch:
        patch, patch_at = clean, region_at  # placeholders, never read
    channels_inner = dst.stride(1) < dst.stride(3)
    tpb = _backend.threads_per_block()
    blocks = min(math.ceil(total / tpb), _MAX_BLOCKS)
    from ._patches_cuda import assemble_device  # loads numba.cuda: only on this backend

    d = _backend.device_array
    with _backend.launch_stream(clean) as stream:
        assemble_device[blocks, tpb, stream](
            d(clean), d(frame), d(region_at), d(patch), d(patch_at), float(pad), has_patch, d(dst), channels_inner
        )
    return dst
