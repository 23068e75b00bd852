"""Numba CUDA kernels, CPU (njit) twins and plain-torch references (installed as ``fastviz.kernels``).

One module per kernel, each with three implementations side by side and one dispatch function
that chooses by the device of the tensors it is given, at call time (``backend="auto"``; or
``"torch"``, ``"cpu"``, ``"cuda"`` explicitly):

- :mod:`.masking` — :func:`masked_batch`: frames + window table + baseline -> occlusion's
  masked batch, written in one pass into a preallocated buffer;
- :mod:`.patches` — :func:`assemble`: clean maps + per-row regions + changed patches -> the
  padded patch-assembled inputs (and write-backs) of incremental (Krypton-style) occlusion;
- :mod:`.scoring` — :func:`occlusion_map` / :func:`scale_maps`: window scores -> per-scale
  coverage means -> the multi-scale occlusion map;
- :mod:`.vbp` — :func:`upscale_chain`: VisualBackProp's all-ones transposed convolutions fused
  with the products of mean maps, the whole chain of layers in one pass.

``"auto"`` takes each module's ``DEFAULTS``: the Numba CPU twins on the CPU, where
benchmarks/RESULTS.md shows them beating the torch references; torch on CUDA until the CUDA
kernels are measured on a GPU (they are tested in Numba's CUDA simulator).

The ``@cuda.jit`` kernels live in private siblings (``_masking_cuda`` ...) that the ``"cuda"``
backend imports on its first launch, so ``import fastviz`` and the CPU paths never load
``numba.cuda`` (it costs import time, and loads even where there is no GPU).
"""

from ._backend import BACKENDS, threads_per_block, use_threads_per_block
from .masking import masked_batch
from .patches import assemble
from .scoring import occlusion_map, scale_maps, window_table
from .vbp import ConvGeometry, upscale_chain

__all__ = [
    "BACKENDS",
    "ConvGeometry",
    "assemble",
    "masked_batch",
    "occlusion_map",
    "scale_maps",
    "threads_per_block",
    "upscale_chain",
    "use_threads_per_block",
    "window_table",
]
