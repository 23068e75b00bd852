"""The ``numba.cuda`` kernel of :mod:`.masking` (the masked batch of occlusion).

In its own module so that ``numba.cuda`` is loaded only when the ``"cuda"`` backend first
launches: :func:`.masking.masked_batch_cuda` imports it then. ``import fastviz`` and the
``"torch"`` and ``"cpu"`` backends never load it (tests/test_imports.py). The launch itself
(grid, stream, views of the tensors) stays in :mod:`.masking`, beside the reference and the CPU
twin.
"""

from __future__ import annotations

from numba import cuda

__all__ = ["masked_batch_device"]


@cuda.jit(cache=True)
def masked_batch_device(x, frame, boxes, base, fill, use_fill, out, channels_inner):  # pragma: no cover - compiled by Numba
    """``out[i]`` = ``x[frame[i]]`` with ``boxes[i]`` filled; a grid-stride loop over elements."""
    m, c, h, w = out.shape
    n = m * c * h * w
    bb = base.shape[0] > 1
    by = base.shape[2] > 1
    bx = base.shape[3] > 1
    for k in range(cuda.grid(1), n, cuda.gridsize(1)):
        # consecutive threads -> consecutive addresses of out (coalesced writes)
        if channels_inner:
            ch = k % c
            t = k // c
            col = t % w
            t = t // w
            y = t % h
            i = t // h
        else:
            col = k % w
            t = k // w
            y = t % h
            t = t // h
            ch = t % c
            i = t // c
        f = frame[i]
        if boxes[i, 0] <= y and y < boxes[i, 2] and boxes[i, 1] <= col and col < boxes[i, 3]:
            if use_fill:
                out[i, ch, y, col] = fill
            else:
                out[i, ch, y, col] = base[f if bb else 0, ch, y if by else 0, col if bx else 0]
        else:
            out[i, ch, y, col] = x[f, ch, y, col]
