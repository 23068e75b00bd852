"""The ``numba.cuda`` kernel of :mod:`.patches` (patch assembly for incremental occlusion).

In its own module so that ``numba.cuda`` is loaded only when the ``"cuda"`` backend first
launches: :func:`.patches.assemble_cuda` imports it then. ``import fastviz`` and the ``"torch"``
and ``"cpu"`` backends never load it (tests/test_imports.py). The launch itself (grid, stream,
views of the tensors) stays in :mod:`.patches`, beside the reference and the CPU twin.
"""

from __future__ import annotations

from numba import cuda

__all__ = ["assemble_device"]


@cuda.jit(cache=True)
def assemble_device(clean, frame, region_at, patch, patch_at, pad, has_patch, out, channels_inner):  # pragma: no cover - compiled by Numba
    """``out[n]`` = row ``n``'s padded region with its patch; a grid-stride loop over elements."""
    rows, c, rh, rw = out.shape
    total = rows * c * rh * rw
    h = clean.shape[2]
    w = clean.shape[3]
    ph = patch.shape[2]
    pw = patch.shape[3]
    for k in range(cuda.grid(1), total, cuda.gridsize(1)):
        # consecutive threads -> consecutive addresses of out (coalesced writes)
        if channels_inner:
            ch = k % c
            t = k // c
            j = t % rw
            t = t // rw
            i = t % rh
            n = t // rh
        else:
            j = k % rw
            t = k // rw
            i = t % rh
            t = t // rh
            ch = t % c
            n = t // c
        y = region_at[n, 0] + i
        x = region_at[n, 1] + j
        if y < 0 or y >= h or x < 0 or x >= w:
            out[n, ch, i, j] = pad
        else:
            dy = y - patch_at[n, 0]
            dx = x - patch_at[n, 1]
            if has_patch and 0 <= dy and dy < ph and 0 <= dx and dx < pw:
                out[n, ch, i, j] = patch[n, ch, dy, dx]
            else:
                out[n, ch, i, j] = clean[frame[n], ch, y, x]
