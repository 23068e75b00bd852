"""The ``numba.cuda`` kernel of :mod:`.scoring` (window scores to occlusion maps).

In its own module so that ``numba.cuda`` is loaded only when the ``"cuda"`` backend first
launches: :func:`.scoring.scale_maps_cuda` imports it then. ``import fastviz`` and the
``"torch"`` and ``"cpu"`` backends never load it (tests/test_imports.py). The launch itself
(grid, stream, views of the tensors) stays in :mod:`.scoring`, beside the reference and the CPU
twin.
"""

from __future__ import annotations

import numba
from numba import cuda

from .scoring import _FRAMES_PER_THREAD

__all__ = ["scale_maps_kernel"]


@cuda.jit(cache=True)
def scale_maps_kernel(scores, boxes, order, offsets, height, width, maps, covered, out, want_maps):  # pragma: no cover - device code
    """Grid-stride over items ``(frame group, y, x)``: a thread scans the windows of each scale
    once for up to ``_FRAMES_PER_THREAD`` frames, accumulating their sums in float64; it writes
    its pixel of ``maps`` (if ``want_maps``), of ``covered`` (group 0) and of ``out``."""
    b = scores.shape[0]
    n_scales = offsets.shape[0] - 1
    pixels = height * width
    n_items = pixels * max(1, (b + _FRAMES_PER_THREAD - 1) // _FRAMES_PER_THREAD)  # B = 0: one empty group writes covered
    acc = cuda.local.array(_FRAMES_PER_THREAD, numba.float64)
    total = cuda.local.array(_FRAMES_PER_THREAD, numba.float64)
    start, step = cuda.grid(1), cuda.gridsize(1)
    for item in range(start, n_items, step):
        f0 = (item // pixels) * _FRAMES_PER_THREAD
        p = item % pixels
        y, x = p // width, p % width
        nf = min(_FRAMES_PER_THREAD, b - f0)
        for j in range(nf):
            total[j] = 0.0
        n_cover = 0
        for s in range(n_scales):
            for j in range(nf):
                acc[j] = 0.0
            count = 0
            for k in range(offsets[s], offsets[s + 1]):
                w = order[k]
                if boxes[w, 0] <= y < boxes[w, 2] and boxes[w, 1] <= x < boxes[w, 3]:
                    count += 1
                    for j in range(nf):
                        acc[j] += scores[f0 + j, w]
            if f0 == 0:
                covered[s, y, x] = count > 0
            if count > 0:
                n_cover += 1
            else:
                count = 1
            for j in range(nf):
                mean = acc[j] / count
                total[j] += mean
                if want_maps:
                    maps[f0 + j, s, y, x] = mean
        if n_cover == 0:
            n_cover = 1
        for j in range(nf):
            out[f0 + j, y, x] = total[j] / n_cover
