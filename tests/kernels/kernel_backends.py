"""Backends of the copy kernels' tests (kernels.masking, kernels.patches), shared.

Each test runs every implementation: the torch reference, the Numba CPU twin on one thread and
its prange driver (forced on for tiny sizes), and the CUDA kernel — on the GPU when there is one,
else in Numba's simulator with 8 threads per block and a few blocks, so the multi-block and
grid-stride paths run.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from fastviz.kernels import _backend

CUDA = torch.cuda.is_available()


def cuda_runs() -> bool:
    return CUDA or _backend.cuda_simulated()


BACKENDS = [
    "torch",
    "cpu-serial",  # the CPU twin on one thread (small calls)
    "cpu-parallel",  # the CPU twin's prange driver, forced on for tiny sizes
    pytest.param("cuda", marks=pytest.mark.skipif(not cuda_runs(), reason="no GPU and NUMBA_ENABLE_CUDASIM is off")),
]


def device_of(backend: str) -> str:
    return "cuda" if backend == "cuda" and CUDA else "cpu"


@contextlib.contextmanager
def launch_settings(module, backend: str, max_blocks: int = 3):
    """For ``module``'s kernels: the CPU twin's serial or parallel driver; small CUDA launches:
    8 threads per block and at most ``max_blocks`` blocks (grid-stride)."""
    if backend.startswith("cpu-"):
        old = module._PARALLEL_MIN_ELEMENTS
        module._PARALLEL_MIN_ELEMENTS = 0 if backend == "cpu-parallel" else 1 << 62
        try:
            yield
        finally:
            module._PARALLEL_MIN_ELEMENTS = old
        return
    if backend != "cuda":
        yield
        return
    old = module._MAX_BLOCKS
    module._MAX_BLOCKS = max_blocks
    try:
        with _backend.use_threads_per_block(8):
            yield
    finally:
        module._MAX_BLOCKS = old
