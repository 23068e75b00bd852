"""VisualBackProp's upscaling chain: all-ones transposed convolutions fused with the pointwise
products, from the deepest conv's mean map up to the input size.

Given the channel-mean maps of the conv layers (shallow -> deep) and each conv's geometry
(:class:`ConvGeometry`), from the deepest map up: upscale through that conv's geometry with a
transposed convolution whose kernel is all ones, sized exactly to the conv's input; multiply
pointwise by the shallower mean map; finally upscale through the first conv to its input size.
The result is not normalised unless ``normalize=True`` is given: then each frame becomes
``(m - min) / max(max - min, tiny)`` (fastviz.methods.vbp's min-max normalisation, in the maps'
dtype; a constant frame is exactly 0), fused into the kernel on the CPU twin, with torch ops
after the chain on the other backends.

Each input pixel ``y`` of a conv receives the sum of the deeper map over the output positions
``i`` whose receptive field contains it: ``y = i * stride - padding + dilation * k`` for some
``k`` in ``[0, kernel)``. The kernels compute that without atomics, fused with the
multiplication by the shallower map: the CUDA kernel as a gather per input pixel, the CPU twin
separably per frame (columns of the deeper map as contiguous gathers per output phase, then
rows).

Implementations (:func:`upscale_chain` picks one with :func:`fastviz.kernels._backend.resolve`):

- ``"torch"`` (:func:`upscale_chain_torch`): the reference, fastviz.methods.vbp's loop
  (``conv_transpose2d`` + bilinear resize where pooling sits between convs + multiply);
- ``"cpu"`` (:func:`upscale_chain_cpu`): a ``numba.njit(parallel=True, cache=True)`` twin;
- ``"cuda"`` (:func:`upscale_chain_cuda`): one ``numba.cuda`` launch for the whole chain (the
  kernel in :mod:`._vbp_cuda`, imported on first launch).

The ``cpu`` and ``cuda`` kernels take float32 chains where every conv's input size equals the
shallower mean map's size (:func:`supported`: no pooling between convs); ``"auto"`` uses
``"torch"`` for any other chain.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numba
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._backend import device_array, host_array, launch_stream, resolve, threads_per_block

__all__ = [
    "DEFAULTS",
    "ConvGeometry",
    "normalize_maps",
    "supported",
    "upscale_chain",
    "upscale_chain_cpu",
    "upscale_chain_cuda",
    "upscale_chain_torch",
]

#: Backend that ``backend="auto"`` picks per device type, from benchmarks/test_bench_kernel_vbp.py.
#: CPU: the Numba twin beats the torch loop at every batch measured (1 to 256 PilotNet frames).
#: CUDA: "torch" until the CUDA kernel has been benchmarked on a GPU (it has only run in Numba's
#: simulator so far); switch to "cuda" once it beats the reference there.
DEFAULTS: dict[str, str] = {"cpu": "cpu", "cuda": "torch"}

#: The CPU twin runs frames in parallel (numba.prange) only from this many output pixels per call
#: (B x the sum of the convs' input sizes; PilotNet: ~17.7k per frame, ~60 us on one core with
#: the first, gather-only kernel, 23 us with the columns-first one of 2026-12-05, ~7-8 us with
#: the phase-gather one that replaced it; the numbers below are from the 23 us kernel), below
#: it on the calling thread alone. A parallel region waits until every worker thread gets a core:
#: with the cores busy (torch's OpenMP workers still spinning after its own ops, other processes)
#: that cost 8-16 ms per call on the shared 2-core development machine, for a 0.06 ms PilotNet
#: frame. From about 1M pixels (~60 PilotNet frames, ~3.5 ms on one core) the split can pay for
#: that risk on free cores (256 frames right after the forward pass: 6.5 ms vs 8.4 ms on one
#: thread); on the busy machine it did not (64 frames: 12 ms vs 2-3.5 ms; 256: 11.8 ms vs 8-14 ms).
#: benchmarks/test_bench_kernel_vbp.py times both paths (impl ``cpu-1thread`` / ``cpu-prange``).
#: On the quiet machine (benchmarks/RESULTS.md) 16 PilotNet frames took 0.30 ms in parallel vs
#: 0.52 ms on one thread, so the split starts at 2^17 output pixels (~10 frames).
_PARALLEL_PIXELS = 1 << 17

#: Most thread blocks one CUDA launch uses; frames beyond it are taken grid-stride (tests lower it).
_MAX_BLOCKS = 65535


def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value, value)
    try:
        a, b = value
    except (TypeError, ValueError):
        raise ValueError(f"ConvGeometry.{name} must be an int or a pair of ints, got {value!r}") from None
    for v in (a, b):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"ConvGeometry.{name} must be an int or a pair of ints, got {value!r}")
    return int(a), int(b)


@dataclass(frozen=True)
class ConvGeometry:
    """One conv layer's geometry, as VisualBackProp's upscaling needs it.

    Attributes
    ----------
    kernel, stride, dilation : (int, int)
        ``(h, w)``; each >= 1.
    padding : (int, int)
        Symmetric numeric padding ``(ph, pw)``, each >= 0.
    in_size : (int, int)
        ``(H_in, W_in)`` of the conv's input: the size the upscaled map gets.

    Ints are accepted for any pair and become ``(v, v)``.
    """

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    in_size: tuple[int, int]

    def __post_init__(self) -> None:
        for name, low in (("kernel", 1), ("stride", 1), ("padding", 0), ("dilation", 1), ("in_size", 1)):
            pair = _pair(getattr(self, name), name)
            if min(pair) < low:
                raise ValueError(f"ConvGeometry.{name} must be >= {low}, got {pair}")
            object.__setattr__(self, name, pair)

    @classmethod
    def of(cls, conv: nn.Conv2d, in_size) -> "ConvGeometry":
        """The geometry of ``conv`` applied to an input of spatial size ``in_size`` ``(H, W)``.

        ``padding="valid"`` is 0; ``padding="same"`` is ``dilation * (kernel - 1) // 2`` per
        side, what PyTorch pads before (it pads any odd pixel after; the upscaling then takes a
        deeper map of the input's own size, see :func:`upscale_chain`).

        Raises
        ------
        TypeError
            When ``conv`` is not an ``nn.Conv2d``.
        """
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"ConvGeometry.of needs an nn.Conv2d, got {type(conv).__name__}")
        k, s, d = tuple(conv.kernel_size), tuple(conv.stride), tuple(conv.dilation)
        if isinstance(conv.padding, str):
            p = (0, 0) if conv.padding == "valid" else tuple(di * (ki - 1) // 2 for ki, di in zip(k, d))
        else:
            p = tuple(conv.padding)
        return cls(kernel=k, stride=s, padding=p, dilation=d, in_size=tuple(int(v) for v in in_size))


def _out_extent(n: int, k: int, s: int, p: int, d: int) -> tuple[int, ...]:
    """Output extents along one axis a conv of this geometry can produce from ``n`` pixels:
    the symmetric-padding one, and for stride 1 with an odd ``d * (k - 1)`` and
    ``p == d * (k - 1) // 2`` also ``n`` itself (PyTorch's ``padding="same"``, one more pixel
    padded after)."""
    sizes = ((n + 2 * p - d * (k - 1) - 1) // s + 1,)
    span = d * (k - 1)
    if s == 1 and span % 2 == 1 and p == span // 2:
        sizes += (n,)
    return sizes


def _map_size(m: torch.Tensor) -> tuple[int, int]:
    return int(m.shape[-2]), int(m.shape[-1])


def _validate(means, geometry) -> tuple[list[torch.Tensor], list[ConvGeometry]]:
    """The public boundary's checks; returns both as lists."""
    if isinstance(means, torch.Tensor) or not isinstance(means, Sequence):
        raise ValueError("means must be a list of (B, 1, h, w) tensors, shallow -> deep")
    if isinstance(geometry, ConvGeometry) or not isinstance(geometry, Sequence):
        raise ValueError("geometry must be a list of ConvGeometry, one per mean map")
    means, geometry = list(means), list(geometry)
    if not means:
        raise ValueError("means is empty: VisualBackProp needs at least one conv layer's mean map")
    if len(means) != len(geometry):
        raise ValueError(f"{len(means)} mean maps but {len(geometry)} conv geometries: need one per map")
    first = means[0]
    for i, (m, g) in enumerate(zip(means, geometry)):
        if not isinstance(m, torch.Tensor):
            raise ValueError(f"means[{i}] must be a torch.Tensor, got {type(m).__name__}")
        if not isinstance(g, ConvGeometry):
            raise ValueError(f"geometry[{i}] must be a ConvGeometry, got {type(g).__name__}")
        if m.dim() != 4 or m.shape[1] != 1:
            raise ValueError(f"means[{i}] must be (B, 1, h, w), got shape {tuple(m.shape)}")
        if not m.is_floating_point():
            raise ValueError(f"means[{i}] must be floating point, got {m.dtype}")
        if m.dtype != first.dtype or m.device != first.device:
            raise ValueError(f"means[{i}] is {m.dtype} on {m.device}, means[0] {first.dtype} on {first.device}: "
                             "all maps must share dtype and device")
        if m.shape[0] != first.shape[0]:
            raise ValueError(f"means[{i}] has batch {m.shape[0]}, means[0] {first.shape[0]}: batch sizes differ")
        size = _map_size(m)
        for axis in range(2):
            allowed = _out_extent(g.in_size[axis], g.kernel[axis], g.stride[axis], g.padding[axis], g.dilation[axis])
            if allowed[0] < 1:
                raise ValueError(f"geometry[{i}] ({g}) gives an empty output on its input size {g.in_size}")
            if size[axis] not in allowed:
                raise ValueError(
                    f"means[{i}] is {size[0]}x{size[1]} but conv {i}'s geometry ({g}) makes "
                    f"{'x'.join(str(_out_extent(g.in_size[a], g.kernel[a], g.stride[a], g.padding[a], g.dilation[a])[0]) for a in range(2))} "
                    f"from its {g.in_size[0]}x{g.in_size[1]} input"
                )
    return means, geometry


def _fits(means: list[torch.Tensor], geometry: list[ConvGeometry]) -> bool:
    """Every conv's input is the shallower mean map's size (no pooling in between)."""
    return all(geometry[i].in_size == _map_size(means[i - 1]) for i in range(1, len(means)))


def supported(means, geometry) -> bool:
    """Whether the ``cpu`` and ``cuda`` kernels take this chain: every conv's ``in_size`` equals
    the shallower mean map's size. ``False`` where pooling sits between two convs (the torch
    path then resizes bilinearly); ``backend="auto"`` uses ``"torch"`` there.

    Raises
    ------
    ValueError
        For a malformed chain (as :func:`upscale_chain`).
    """
    means, geometry = _validate(means, geometry)
    return _fits(means, geometry)


def _kernel_ready(means: list[torch.Tensor], geometry: list[ConvGeometry], name: str) -> None:
    if not _fits(means, geometry):
        gaps = [i for i in range(1, len(means)) if geometry[i].in_size != _map_size(means[i - 1])]
        raise ValueError(
            f"backend {name!r} needs every conv's in_size to equal the shallower mean map's size; conv(s) "
            f"{gaps} differ (pooling between convs): use backend 'torch' or 'auto'"
        )
    if means[0].dtype != torch.float32:
        raise ValueError(f"backend {name!r} takes float32 mean maps, got {means[0].dtype}")


# ---------------------------------------------------------------------------------------------
# torch reference


def ones_deconv(m: torch.Tensor, g: ConvGeometry) -> torch.Tensor:
    """One all-ones transposed convolution with ``g``'s geometry, sized exactly to ``g.in_size``:
    ``(B, 1, h, w)`` -> ``(B, 1, H_in, W_in)`` (plain torch, on ``m``'s device)."""
    k, s, p, d, size = g.kernel, g.stride, g.padding, g.dilation, g.in_size
    natural = [(m.shape[2 + i] - 1) * s[i] - 2 * p[i] + d[i] * (k[i] - 1) + 1 for i in range(2)]
    out_pad = [min(max(size[i] - natural[i], 0), max(s[i], d[i]) - 1) for i in range(2)]
    weight = torch.ones(1, 1, k[0], k[1], device=m.device, dtype=m.dtype)
    up = F.conv_transpose2d(m, weight, stride=s, padding=p, output_padding=out_pad, dilation=d)
    dh, dw = size[0] - up.shape[2], size[1] - up.shape[3]
    if dh or dw:  # only for geometries the output padding cannot express
        up = F.pad(up, (0, max(dw, 0), 0, max(dh, 0)))[:, :, : size[0], : size[1]]
    return up


def normalize_maps(m: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each frame of ``m`` in place, in torch on ``m``'s device.

    VisualBackProp's final step (Bojarski et al., arXiv 1611.05418): ``(m - min) / max(max -
    min, tiny)`` per frame, with ``tiny`` the dtype's smallest normal number and a true division,
    so a constant frame is exactly 0 and a frame holding a NaN all NaN. The CPU twin's fused
    normalisation (``normalize=True``) is bitwise this.

    Parameters
    ----------
    m : Tensor (B, H, W)
        Floating point; overwritten.

    Returns
    -------
    Tensor (B, H, W)
        ``m`` itself, in [0, 1] where its frame is finite.
    """
    lo = m.amin(dim=(1, 2), keepdim=True)
    span = m.amax(dim=(1, 2), keepdim=True) - lo
    return m.sub_(lo).div_(span.clamp_min(torch.finfo(m.dtype).tiny))


def _run_torch(means: list[torch.Tensor], geometry: list[ConvGeometry], normalize: bool = False) -> torch.Tensor:
    with torch.no_grad():
        m = means[-1]
        for i in range(len(means) - 1, 0, -1):
            m = ones_deconv(m, geometry[i])
            shallower = means[i - 1]
            if m.shape[-2:] != shallower.shape[-2:]:
                m = F.interpolate(m, size=shallower.shape[-2:], mode="bilinear", align_corners=False)
            m = m * shallower
        m = ones_deconv(m, geometry[0])[:, 0]
        return normalize_maps(m) if normalize else m


def upscale_chain_torch(
    means: Sequence[torch.Tensor], geometry: Sequence[ConvGeometry], *, normalize: bool = False
) -> torch.Tensor:
    """The reference: fastviz.methods.vbp's loop in plain torch on the maps' device.

    ``conv_transpose2d`` with an all-ones kernel per conv (output padding to the conv's exact
    input size), a bilinear resize where the upscaled map's size differs from the shallower
    map's (pooling between convs), and the pointwise product. Any floating dtype.

    With ``normalize``, each frame is then min-max normalised in torch, in place:
    ``(m - min) / max(max - min, tiny)`` (``tiny``: the dtype's smallest normal number), a
    true division; a constant frame is exactly 0, a frame holding a NaN all NaN.

    Returns
    -------
    Tensor (B, H_in0, W_in0)
        On the maps' device, in their dtype; values >= 0 for non-negative maps (not normalised),
        or in [0, 1] with ``normalize`` (finite maps).

    Raises
    ------
    ValueError
        For a malformed chain (as :func:`upscale_chain`).
    """
    means, geometry = _validate(means, geometry)
    return _run_torch(means, geometry, normalize)


# ---------------------------------------------------------------------------------------------
# shared by the kernels


def _offsets(means: list[torch.Tensor]) -> np.ndarray:
    """Each map's offset in a frame's packed row (all maps of a frame, shallow -> deep)."""
    offs = np.zeros(len(means), dtype=np.int64)
    offs[1:] = np.cumsum([m.shape[-2] * m.shape[-1] for m in means])[:-1]
    return offs


def _pack(means: list[torch.Tensor]) -> torch.Tensor:
    """All maps of a frame in one row: ``(B, sum h_i * w_i)`` on the maps' device, a copy (the
    kernels overwrite each shallower map in place with its product)."""
    return torch.cat([m.reshape(m.shape[0], -1) for m in means], dim=1)


def _geometry_table(means: list[torch.Tensor], geometry: list[ConvGeometry]) -> np.ndarray:
    """``(L, 12)`` int64: kh, kw, sh, sw, ph, pw, dh, dw, H_in, W_in, h, w (the map's own size)."""
    return np.array(
        [[*g.kernel, *g.stride, *g.padding, *g.dilation, *g.in_size, *_map_size(m)] for m, g in zip(means, geometry)],
        dtype=np.int64,
    )


# ---------------------------------------------------------------------------------------------
# CPU twin


def _axis_sources(n_in: int, n_out: int, k: int, s: int, p: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    """For each input pixel ``y`` along one axis: the output positions ``i`` (< ``n_out``) with
    ``y = i * s - p + d * kk`` for some ``kk`` in ``[0, k)`` (each ``i`` at most once: ``kk`` is
    fixed by ``i``). Returns counts ``(n_in,)`` and indices ``(n_in, k)``."""
    y = np.arange(n_in)[:, None]
    t = y + p - d * np.arange(k)[None, :]
    i = t // s
    ok = (t >= 0) & (t % s == 0) & (i < n_out)
    counts = ok.sum(1).astype(np.int64)
    idx = np.zeros((n_in, k), dtype=np.int64)
    for row in range(n_in):
        src = i[row][ok[row]]
        idx[row, : src.size] = src
    return counts, idx


def _phase_sources(n_in: int, n_out: int, k: int, s: int, p: int, d: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """The same along one axis by phase: input pixel ``x = q * s + r`` (``r`` in ``[0, s)``,
    ``q`` in ``[0, n_r)``) receives output position ``j = q + c`` for each tap of its phase: the
    ``kk`` with ``(r + p - d * kk) % s == 0``, ``c = (r + p - d * kk) // s``, where ``j`` is in
    ``[0, n_out)``.

    Returns phases ``(s, 3)``: taps ``m``, ``n_r`` and the phase's offset in a row of phases
    (the ``n_r`` of the phases before it); offsets ``c`` ``(s, k)``; and the zeros to pad the
    outputs with before and after (``lead``, ``trail``) so that every ``j = q + c`` falls in
    ``[-lead, n_out + trail)``."""
    phases = np.zeros((s, 3), dtype=np.int64)
    offsets = np.zeros((s, k), dtype=np.int64)
    lead = trail = base = 0
    for r in range(s):
        n_r = max(0, (n_in - r + s - 1) // s)
        m = 0
        for kk in range(k):
            t = r + p - d * kk
            if t % s == 0:
                c = t // s
                offsets[r, m] = c
                m += 1
                if n_r:
                    lead, trail = max(lead, -c), max(trail, n_r - 1 + c - (n_out - 1))
        phases[r] = (m, n_r, base)
        base += n_r
    return phases, offsets, lead, trail


@functools.lru_cache(maxsize=64)
def _cpu_tables(key: tuple) -> tuple[np.ndarray, ...]:
    """Tables for a chain, from ``key = ((geometry, (h, w)), ...)``: dims ``(L, 7)`` (H, W, h, w,
    the stride along the width, and the zero-padded line a row of the map is copied to: its
    lead and length), row counts/indices ``(L, Hmax)`` / ``(L, Hmax, Kh)``
    (:func:`_axis_sources`) and column phases / offsets ``(L, Smax, 3)`` / ``(L, Smax, Kw)``
    (:func:`_phase_sources`)."""
    n = len(key)
    hmax = max(g.in_size[0] for g, _ in key)
    khmax = max(g.kernel[0] for g, _ in key)
    swmax = max(g.stride[1] for g, _ in key)
    kwmax = max(g.kernel[1] for g, _ in key)
    dims = np.zeros((n, 7), dtype=np.int64)
    rn = np.zeros((n, hmax), dtype=np.int64)
    rt = np.zeros((n, hmax, khmax), dtype=np.int64)
    cp = np.zeros((n, swmax, 3), dtype=np.int64)
    ct = np.zeros((n, swmax, kwmax), dtype=np.int64)
    for layer, (g, (h, w)) in enumerate(key):
        big_h, big_w = g.in_size
        c, t = _axis_sources(big_h, h, g.kernel[0], g.stride[0], g.padding[0], g.dilation[0])
        rn[layer, :big_h], rt[layer, :big_h, : g.kernel[0]] = c, t
        c, t, lead, trail = _phase_sources(big_w, w, g.kernel[1], g.stride[1], g.padding[1], g.dilation[1])
        cp[layer, : g.stride[1]], ct[layer, : g.stride[1], : g.kernel[1]] = c, t
        dims[layer] = (big_h, big_w, h, w, g.stride[1], lead, lead + w + trail)
    for a in (dims, rn, rt, cp, ct):
        a.setflags(write=False)
    return dims, rn, rt, cp, ct


#: float32's smallest normal number: the floor of the span the normalisation divides by.
_TINY = np.float32(np.finfo(np.float32).tiny)

#: Index cast for the CPU twin's hot loops: Numba wraps negative signed indices around (a
#: select per access, which turns contiguous loads into gathers and stops LLVM vectorising);
#: unsigned ones it takes as they are. Every index cast is >= 0 by construction.
_ix = np.uint64


@numba.njit(cache=True, inline="always")
def _columns(row, s0, w, lead, tmp, u, line, i, big_w, sw, cp, ct, layer):  # pragma: no cover - compiled
    # One row of the deeper map (row[s0 : s0 + w]) upscaled along the width into tmp[i, :big_w],
    # phase by phase (input columns x = q * sw + r). The row is first copied into the middle of
    # line, a zero-padded scratch line (its margins zeroed per layer), so that every tap is
    # valid at every q: each phase is then one fused pass of contiguous loads (line's slices
    # j = q + c summed, taps in order, three per pass), with no edge cases and, up to three
    # taps, no read-modify-write of the destination (short loops re-reading a just-stored row
    # stall on store forwarding). Stride 1 has one phase: straight into tmp[i].
    # Else the phases go one after another to u[0] (its own array: LLVM vectorises the
    # interleave only between distinct arrays), then interleave into tmp[i] (stride 2: a
    # constant-stride interleave, vectorised with shuffles; larger: a strided copy per phase).
    # Tables and scratch are indexed in place, no views: each view costs two atomic
    # reference-count updates and the vectoriser its aliasing facts.
    for j in range(w):
        line[_ix(lead + j)] = row[_ix(s0 + j)]
    dest = tmp if sw == 1 else u
    g = _ix(i if sw == 1 else 0)
    for r in range(sw):
        m = cp[layer, r, 0]
        n_r = cp[layer, r, 1]
        base = cp[layer, r, 2]
        if m == 0:
            for q in range(base, base + n_r):
                dest[g, _ix(q)] = 0.0
        for k0 in range(0, m, 3):  # three taps a pass; line[a + q] is j = q - base + c
            a = lead + ct[layer, r, k0] - base
            if m - k0 == 1:
                if k0 == 0:
                    for q in range(base, base + n_r):
                        dest[g, _ix(q)] = line[_ix(a + q)]
                else:
                    for q in range(base, base + n_r):
                        dest[g, _ix(q)] += line[_ix(a + q)]
            elif m - k0 == 2:
                b = lead + ct[layer, r, k0 + 1] - base
                if k0 == 0:
                    for q in range(base, base + n_r):
                        dest[g, _ix(q)] = line[_ix(a + q)] + line[_ix(b + q)]
                else:
                    for q in range(base, base + n_r):
                        dest[g, _ix(q)] += line[_ix(a + q)] + line[_ix(b + q)]
            else:
                b = lead + ct[layer, r, k0 + 1] - base
                c = lead + ct[layer, r, k0 + 2] - base
                if k0 == 0:
                    for q in range(base, base + n_r):
                        dest[g, _ix(q)] = line[_ix(a + q)] + line[_ix(b + q)] + line[_ix(c + q)]
                else:
                    for q in range(base, base + n_r):
                        dest[g, _ix(q)] += line[_ix(a + q)] + line[_ix(b + q)] + line[_ix(c + q)]
    if sw == 2:
        n1 = big_w // 2
        n0 = big_w - n1
        for q in range(n1):
            tmp[_ix(i), _ix(2 * q)] = u[0, _ix(q)]
            tmp[_ix(i), _ix(2 * q + 1)] = u[0, _ix(n0 + q)]
        if n0 > n1:
            tmp[_ix(i), _ix(big_w - 1)] = u[0, _ix(n0 - 1)]
    elif sw > 2:
        for r in range(sw):
            base = cp[layer, r, 2]
            for q in range(cp[layer, r, 1]):
                tmp[_ix(i), _ix(q * sw + r)] = u[0, _ix(base + q)]


@numba.njit(cache=True, inline="always")
def _rows(tmp, rn, rt, layer, y, dest, d0, big_w, multiply):  # pragma: no cover - compiled
    # One input row y: the sum of the n = rn[layer, y] rows tmp[rt[layer, y, :n]], written to
    # dest[d0 : d0 + big_w] or multiplied into it (the shallower map's slot of the packed row).
    # One fused pass for up to three source rows (a 5-tap stride-2 conv takes 2 or 3, a 3-tap
    # stride-1 one up to 3); no row or more than three are first summed into tmp's last row.
    n = rn[layer, y]
    if n == 0 or n > 3:
        u = _ix(tmp.shape[0] - 1)
        if n == 0:
            for x in range(big_w):
                tmp[u, _ix(x)] = 0.0
        else:
            a = _ix(rt[layer, y, 0])
            b = _ix(rt[layer, y, 1])
            c = _ix(rt[layer, y, 2])
            for x in range(big_w):
                tmp[u, _ix(x)] = tmp[a, _ix(x)] + tmp[b, _ix(x)] + tmp[c, _ix(x)]
            for k in range(3, n):
                a = _ix(rt[layer, y, k])
                for x in range(big_w):
                    tmp[u, _ix(x)] += tmp[a, _ix(x)]
        n = 1
        a = u
    else:
        a = _ix(rt[layer, y, 0])
    if n == 1:
        if multiply:
            for x in range(big_w):
                dest[_ix(d0 + x)] *= tmp[a, _ix(x)]
        else:
            for x in range(big_w):
                dest[_ix(d0 + x)] = tmp[a, _ix(x)]
    elif n == 2:
        b = _ix(rt[layer, y, 1])
        if multiply:
            for x in range(big_w):
                dest[_ix(d0 + x)] *= tmp[a, _ix(x)] + tmp[b, _ix(x)]
        else:
            for x in range(big_w):
                dest[_ix(d0 + x)] = tmp[a, _ix(x)] + tmp[b, _ix(x)]
    else:
        b = _ix(rt[layer, y, 1])
        c = _ix(rt[layer, y, 2])
        if multiply:
            for x in range(big_w):
                dest[_ix(d0 + x)] *= tmp[a, _ix(x)] + tmp[b, _ix(x)] + tmp[c, _ix(x)]
        else:
            for x in range(big_w):
                dest[_ix(d0 + x)] = tmp[a, _ix(x)] + tmp[b, _ix(x)] + tmp[c, _ix(x)]


@numba.njit(cache=True)
def _normalize(o, scratch):  # pragma: no cover - compiled
    # o (one frame, flat float32) -> (o - min) / max(max - min, tiny) in float32, as torch's
    # o.sub_(lo).div_(span.clamp_min(tiny)): a true division, so bitwise torch's.
    # The min / max over the float32 bits as ordered int32 keys (b ^ ((b >> 31) & 0x7FFFFFFF):
    # negative floats' magnitude bits flipped), an integer reduction that LLVM vectorises
    # without fast-math (a float compare-and-select one, or min / max, stays scalar, ~10x
    # slower; fast-math flags did not change that). Exact, -0
    # below +0, and a NaN lands at one end, so lo or hi is NaN and every pixel NaN, as with
    # torch's amin / amax. scratch: any float32 array of >= 2 elements, for the bit casts.
    bits = o.view(np.int32)
    lo_k = np.int32(0x7FFFFFFF)
    hi_k = np.int32(-0x80000000)
    for x in range(bits.size):
        b = bits[_ix(x)]
        k = np.int32(b ^ np.int32(np.int32(b >> np.int32(31)) & np.int32(0x7FFFFFFF)))
        lo_k = k if k < lo_k else lo_k
        hi_k = k if k > hi_k else hi_k
    cast = scratch.view(np.int32)
    cast[0] = np.int32(lo_k ^ np.int32(np.int32(lo_k >> np.int32(31)) & np.int32(0x7FFFFFFF)))
    cast[1] = np.int32(hi_k ^ np.int32(np.int32(hi_k >> np.int32(31)) & np.int32(0x7FFFFFFF)))
    lo = scratch[0]
    hi = scratch[1]
    span = hi - lo
    if span < _TINY:  # a NaN span stays NaN, as with torch's clamp_min
        span = _TINY
    for x in range(o.size):
        o[_ix(x)] = (o[_ix(x)] - lo) / span


@numba.njit(cache=True)
def _chain_cpu_frame(row, out, offs, dims, rn, rt, cp, ct, tmp, u, line, normalize):  # pragma: no cover - compiled
    # One frame (row: its packed maps, overwritten; out: its flat (H_in0 * W_in0) output), layer
    # by layer from the deepest, each layer separably. Columns first, on the deeper (smaller)
    # map, row by row into tmp (_columns: contiguous gathers per phase). Then rows: each input
    # row y is the sum of the tmp rows that reach it, fused with the product into the shallower
    # map's slot of the frame's packed row (written to out for the first conv; _rows). With
    # normalize, the frame is normalised right after its last row, while it is in cache.
    for layer in range(dims.shape[0] - 1, -1, -1):
        big_h = dims[layer, 0]
        big_w = dims[layer, 1]
        h = dims[layer, 2]
        w = dims[layer, 3]
        sw = dims[layer, 4]
        lead = dims[layer, 5]
        for j in range(dims[layer, 6]):  # the line's margins (and middle) to 0
            line[_ix(j)] = 0.0
        src = offs[layer]
        for i in range(h):
            _columns(row, src + i * w, w, lead, tmp, u, line, i, big_w, sw, cp, ct, layer)
        if layer > 0:
            dst = offs[layer - 1]
            for y in range(big_h):
                _rows(tmp, rn, rt, layer, y, row, dst + y * big_w, big_w, True)
        else:
            for y in range(big_h):
                _rows(tmp, rn, rt, 0, y, out, y * big_w, big_w, False)
            if normalize:
                _normalize(out, u[0])


@numba.njit(cache=True)
def _scratch(dims):  # pragma: no cover - compiled
    # the column pass's (h, W) map at the chain's largest with one more row (the sum of more
    # than three rows), a (1, W) row for the phases of a strided column pass, and the
    # zero-padded line a row of the deeper map is copied to (u is also _normalize's scratch: at
    # least 2 wide)
    rows = 1
    widest = 2
    longest = 1
    for layer in range(dims.shape[0]):
        rows = max(rows, dims[layer, 2])
        widest = max(widest, dims[layer, 1])
        longest = max(longest, dims[layer, 6])
    return (np.empty((rows + 1, widest), dtype=np.float32), np.empty((1, widest), dtype=np.float32),
            np.empty(longest, dtype=np.float32))


@numba.njit(parallel=True, cache=True)
def _chain_cpu_parallel(buf, out, offs, dims, rn, rt, cp, ct, normalize, chunks):  # pragma: no cover - compiled
    # frames in `chunks` contiguous chunks (one per thread), each chunk with its own scratch
    n = buf.shape[0]
    chunks = max(1, min(n, chunks))
    for c in numba.prange(chunks):
        tmp, u, line = _scratch(dims)
        for f in range(c * n // chunks, (c + 1) * n // chunks):
            _chain_cpu_frame(buf[f], out[f], offs, dims, rn, rt, cp, ct, tmp, u, line, normalize)


@numba.njit(cache=True)
def _chain_cpu_serial(buf, out, offs, dims, rn, rt, cp, ct, normalize):  # pragma: no cover - compiled
    tmp, u, line = _scratch(dims)
    for f in range(buf.shape[0]):
        _chain_cpu_frame(buf[f], out[f], offs, dims, rn, rt, cp, ct, tmp, u, line, normalize)


def _run_cpu(means: list[torch.Tensor], geometry: list[ConvGeometry], normalize: bool = False) -> torch.Tensor:
    _kernel_ready(means, geometry, "cpu")
    b = means[0].shape[0]
    h0, w0 = geometry[0].in_size
    out = torch.empty(b, h0, w0, dtype=torch.float32)
    if b == 0:
        return out
    # numpy, not torch.cat: from ~16 PilotNet frames torch.cat goes multi-threaded, and on busy
    # cores waiting for its OpenMP workers cost 12 ms for a 0.01 ms copy
    buf = np.concatenate([host_array(m).reshape(b, -1) for m in means], axis=1)
    offs = _offsets(means)
    tables = _cpu_tables(tuple((g, _map_size(m)) for m, g in zip(means, geometry)))
    flat = host_array(out).reshape(b, h0 * w0)
    if b * sum(h * w for h, w in (g.in_size for g in geometry)) >= _PARALLEL_PIXELS:
        _chain_cpu_parallel(buf, flat, offs, *tables, bool(normalize), numba.get_num_threads())
    else:
        _chain_cpu_serial(buf, flat, offs, *tables, bool(normalize))
    return out


def upscale_chain_cpu(
    means: Sequence[torch.Tensor], geometry: Sequence[ConvGeometry], *, normalize: bool = False
) -> torch.Tensor:
    """The chain as a ``numba.njit(parallel=True, cache=True)`` CPU twin: frames in parallel
    from :data:`_PARALLEL_PIXELS` output pixels per call, each layer separably: the deeper
    map's columns upscaled phase by phase as contiguous gathers, then its rows gathered and
    fused with the product (contiguous inner loops, vectorised by LLVM).

    Needs float32 CPU maps and a chain :func:`supported` accepts.

    With ``normalize``, each frame is min-max normalised inside the kernel right after its last
    layer (while it is in cache), bitwise as the torch backend's normalisation of the
    unnormalised result: ``(m - min) / max(max - min, float32 tiny)`` in float32, a true
    division; a constant frame is exactly 0, a frame holding a NaN all NaN.

    Returns
    -------
    Tensor (B, H_in0, W_in0)
        float32 on the CPU; values >= 0 for non-negative maps (not normalised), or in [0, 1]
        with ``normalize`` (finite maps).

    Raises
    ------
    ValueError
        For a malformed chain, CUDA tensors, non-float32 maps, or pooling between convs.
    """
    means, geometry = _validate(means, geometry)
    resolve("cpu", means[0].device, DEFAULTS)
    return _run_cpu(means, geometry, normalize)


# ---------------------------------------------------------------------------------------------
# CUDA (the kernel is in kernels/_vbp_cuda.py, imported on first launch: CPU-only runs never
# load numba.cuda)


@functools.lru_cache(maxsize=64)
def _cuda_tables(key: tuple, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    geo, offs = key
    return (torch.tensor(np.array(geo, dtype=np.int64), device=device),
            torch.tensor(np.array(offs, dtype=np.int64), device=device))


def _run_cuda(means: list[torch.Tensor], geometry: list[ConvGeometry], normalize: bool = False) -> torch.Tensor:
    _kernel_ready(means, geometry, "cuda")
    first = means[0]
    b = first.shape[0]
    h0, w0 = geometry[0].in_size
    out = torch.empty(b, h0, w0, dtype=torch.float32, device=first.device)
    if b == 0:
        return out
    buf, offs = _pack(means), _offsets(means)
    geo = _geometry_table(means, geometry)
    geo_t, offs_t = _cuda_tables((tuple(map(tuple, geo.tolist())), tuple(offs.tolist())), str(first.device))
    blocks = min(b, _MAX_BLOCKS)
    from ._vbp_cuda import chain_kernel  # loads numba.cuda: only on this backend

    with launch_stream(first) as stream:
        chain_kernel[blocks, threads_per_block(), stream](
            device_array(buf), device_array(out), device_array(geo_t), device_array(offs_t)
        )
    if normalize:  # torch ops on the same (current) stream, after the launch
        with torch.no_grad():
            normalize_maps(out)
    return out


def upscale_chain_cuda(
    means: Sequence[torch.Tensor], geometry: Sequence[ConvGeometry], *, normalize: bool = False
) -> torch.Tensor:
    """The chain as one ``numba.cuda`` launch (one thread block per frame, layer by layer with a
    block barrier between layers), on torch's current stream.

    Needs float32 CUDA maps (CPU maps under ``NUMBA_ENABLE_CUDASIM=1``) and a chain
    :func:`supported` accepts.

    With ``normalize``, each frame is min-max normalised after the launch with torch ops on the
    same stream, as :func:`upscale_chain_torch` does: ``(m - min) / max(max - min, float32
    tiny)``; a constant frame is exactly 0.

    Returns
    -------
    Tensor (B, H_in0, W_in0)
        float32 on the maps' device; values >= 0 for non-negative maps (not normalised), or in
        [0, 1] with ``normalize`` (finite maps).

    Raises
    ------
    ValueError
        For a malformed chain, tensors the CUDA backend cannot take, non-float32 maps, or
        pooling between convs.
    """
    means, geometry = _validate(means, geometry)
    resolve("cuda", means[0].device, DEFAULTS)
    return _run_cuda(means, geometry, normalize)


_RUN = {"torch": _run_torch, "cpu": _run_cpu, "cuda": _run_cuda}


def upscale_chain(
    means: Sequence[torch.Tensor], geometry: Sequence[ConvGeometry], backend: str = "auto", *, normalize: bool = False
) -> torch.Tensor:
    """VisualBackProp's upscaling chain, unnormalised unless ``normalize``.

    Parameters
    ----------
    means : list of Tensor (B, 1, h_i, w_i)
        The conv layers' channel-mean maps, shallow -> deep (at least one), float32, one device.
    geometry : list of ConvGeometry
        One per map: ``means[i]`` must be the output size of conv ``i`` on ``geometry[i].in_size``.
        Where ``geometry[i].in_size`` differs from ``means[i - 1]``'s size (pooling between the
        convs) the upscaled map is resized bilinearly to it (``torch`` backend only).
    backend : {"auto", "torch", "cpu", "cuda"}
        ``"auto"``: :data:`DEFAULTS` for the maps' device, chosen at call time; ``"torch"`` for a
        chain the kernels do not take (:func:`supported` false, or not float32).
    normalize : bool
        Min-max normalise each frame: ``(m - min) / max(max - min, tiny)`` (``tiny``: the
        dtype's smallest normal number; float32's for the kernels), a true division, as
        fastviz.methods.vbp does; a constant frame is exactly 0. ``"cpu"`` fuses it into the
        kernel (bitwise the torch normalisation of its unnormalised result); ``"torch"`` and
        ``"cuda"`` apply it with torch ops after the chain. Default ``False``: unnormalised.

    Returns
    -------
    Tensor (B, H_in0, W_in0)
        On the maps' device, in their dtype (float32 from the kernels); ``H_in0, W_in0 =
        geometry[0].in_size``. Values >= 0 for non-negative maps; in [0, 1] with ``normalize``
        (finite maps; a frame holding a NaN comes out all NaN).

    Raises
    ------
    ValueError
        For a malformed chain (ranks, batch sizes, counts, sizes inconsistent with the
        geometry), an unknown backend, or a backend that cannot take these maps.
    """
    means, geometry = _validate(means, geometry)
    impl = resolve(backend, means[0].device, DEFAULTS)
    if backend == "auto" and impl != "torch" and (not _fits(means, geometry) or means[0].dtype != torch.float32):
        impl = "torch"
    return _RUN[impl](means, geometry, normalize)
