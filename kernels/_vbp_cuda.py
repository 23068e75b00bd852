"""The ``numba.cuda`` kernel of :mod:`.vbp` (VisualBackProp's upscaling chain).

In its own module so that ``numba.cuda`` is loaded only when the ``"cuda"`` backend first
launches: :func:`.vbp.upscale_chain_cuda` imports it then. ``import fastviz`` and the
``"torch"`` and ``"cpu"`` backends never load it (tests/test_imports.py). The launch itself
(grid, stream, views of the tensors) stays in :mod:`.vbp`, beside the reference and the CPU
twin.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

__all__ = ["chain_kernel"]


@cuda.jit
def chain_kernel(buf, out, geo, offs):  # pragma: no cover - compiled (or simulated)
    # One launch for the whole chain: one thread block per frame (grid-stride over frames), its
    # threads striding over the pixels of one layer, cuda.syncthreads() between layers. A frame's
    # maps are small (PilotNet: ~17k pixels over all layers), so a block keeps them in L1/L2
    # and a per-layer launch would only add launch latency (5 launches instead of 1) and a
    # device-wide barrier where a block barrier is enough. Each shallower map is overwritten in
    # place in buf (a packed copy of the means) with its product; the first conv's goes to out.
    n_frames = buf.shape[0]
    n_layers = geo.shape[0]
    tid = cuda.threadIdx.x
    n_threads = cuda.blockDim.x
    for f in range(cuda.blockIdx.x, n_frames, cuda.gridDim.x):
        for layer in range(n_layers - 1, -1, -1):
            kh = geo[layer, 0]
            kw = geo[layer, 1]
            sh = geo[layer, 2]
            sw = geo[layer, 3]
            ph = geo[layer, 4]
            pw = geo[layer, 5]
            dh = geo[layer, 6]
            dw = geo[layer, 7]
            big_h = geo[layer, 8]
            big_w = geo[layer, 9]
            h = geo[layer, 10]
            w = geo[layer, 11]
            src = offs[layer]
            dst = 0
            if layer > 0:
                dst = offs[layer - 1]
            for pix in range(tid, big_h * big_w, n_threads):
                y = pix // big_w
                x = pix - y * big_w
                acc = np.float32(0.0)
                for ky in range(kh):
                    t = y + ph - dh * ky
                    if t < 0:
                        break
                    i = t // sh
                    if i * sh != t or i >= h:
                        continue
                    base = src + i * w
                    for kx in range(kw):
                        u = x + pw - dw * kx
                        if u < 0:
                            break
                        j = u // sw
                        if j * sw == u and j < w:
                            acc += buf[f, base + j]
                if layer > 0:
                    buf[f, dst + pix] *= acc
                else:
                    out[f, y, x] = acc
            cuda.syncthreads()
