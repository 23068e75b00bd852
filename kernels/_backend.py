"""Backend choice and GPU interop shared by the kernels.

Every kernel has three implementations side by side: a ``numba.cuda`` kernel (``"cuda"``), a
CPU twin compiled with ``numba.njit(parallel=True, cache=True)`` (``"cpu"``) and a plain-torch
reference (``"torch"``). :func:`resolve` picks one from the device of the tensors given — at
call time, never at import time.

``numba.cuda`` is loaded only when the ``"cuda"`` backend runs (or is resolved for CUDA
tensors): each kernel module keeps its ``@cuda.jit`` kernel in a sibling ``_<module>_cuda.py``
that its CUDA launch imports, and this module imports ``numba.cuda`` only inside functions.
``import fastviz`` and every CPU path load no ``numba.cuda`` module (tests/test_imports.py).

GPU interop: torch CUDA tensors pass to Numba through ``__cuda_array_interface__``
(:func:`device_array`, no copy) and kernels launch on torch's current stream
(:func:`launch_stream`), so results stay torch tensors on the device, ordered with torch's work.
Under the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``, how CI tests the CUDA kernels without a
GPU) the ``"cuda"`` backend runs on CPU tensors through numpy views.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from collections.abc import Iterator, Mapping

import torch

__all__ = [
    "BACKENDS",
    "check_frame_indices",
    "describe",
    "cuda_simulated",
    "device_array",
    "host_array",
    "launch_stream",
    "resolve",
    "threads_per_block",
    "use_threads_per_block",
]

#: Accepted ``backend=`` values.
BACKENDS = ("auto", "torch", "cpu", "cuda")

_threads_per_block = int(os.environ.get("FASTVIZ_CUDA_THREADS_PER_BLOCK", "256"))


def threads_per_block() -> int:
    """Threads per block for 1-D CUDA launches (tests shrink it so multi-block paths run)."""
    return _threads_per_block


@contextmanager
def use_threads_per_block(n: int) -> Iterator[None]:
    """Temporarily launch CUDA kernels with ``n`` threads per block."""
    global _threads_per_block
    if n < 1:
        raise ValueError(f"threads per block must be >= 1, got {n}")
    old, _threads_per_block = _threads_per_block, int(n)
    try:
        yield
    finally:
        _threads_per_block = old


def cuda_simulated() -> bool:
    """Whether Numba's CUDA simulator is on (``NUMBA_ENABLE_CUDASIM=1`` before numba loads)."""
    from numba import config

    return bool(config.ENABLE_CUDASIM)


def resolve(backend: str, device: torch.device, defaults: Mapping[str, str]) -> str:
    """The implementation to run: ``"torch"``, ``"cpu"`` or ``"cuda"``.

    Parameters
    ----------
    backend : str
        One of :data:`BACKENDS`. ``"auto"`` takes ``defaults[device.type]`` (the backend the
        kernel's benchmarks chose for that device, falling back to ``"torch"``).
    device : torch.device
        Where the kernel's tensors are.
    defaults : mapping
        Device type (``"cpu"``, ``"cuda"``) -> backend for ``"auto"``.

    Raises
    ------
    ValueError
        For an unknown backend, ``"cpu"`` with CUDA tensors, or ``"cuda"`` with CPU tensors
        outside the simulator (or with no usable CUDA).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown kernel backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if backend == "auto":
        backend = defaults.get(device.type, "torch")
    if backend == "cpu" and device.type != "cpu":
        raise ValueError(f"backend 'cpu' (Numba CPU twin) needs CPU tensors, got tensors on {device}")
    if backend == "cuda":
        if device.type == "cuda":
            from numba import cuda

            if not cuda.is_available():
                raise ValueError("backend 'cuda': Numba finds no usable CUDA driver")
        elif not (device.type == "cpu" and cuda_simulated()):
            raise ValueError(f"backend 'cuda' needs CUDA tensors (or NUMBA_ENABLE_CUDASIM=1), got tensors on {device}")
    return backend


def device_array(t: torch.Tensor):
    """A Numba view of ``t`` for a CUDA kernel, without a copy.

    CUDA tensors go through ``__cuda_array_interface__`` (``numba.cuda.as_cuda_array``). Under
    the simulator, a CPU tensor's numpy view is wrapped as the simulator's device array, so
    the kernel reads and writes it in place with its strides, as on a GPU (a bare numpy
    argument would be copied in and out, and non-contiguous ones such as channels-last
    refused).
    """
    if t.is_cuda:
        from numba import cuda

        return cuda.as_cuda_array(t.detach())
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    return FakeCUDAArray(t.detach().numpy())


def host_array(t: torch.Tensor):
    """A numpy view of a CPU tensor for a CPU twin (no copy; strides kept)."""
    return t.detach().numpy()


@contextmanager
def launch_stream(t: torch.Tensor) -> Iterator[object]:
    """The stream to launch CUDA kernels on: torch's current stream on ``t``'s device (so kernel
    and torch work stay ordered); ``0`` (the default stream) under the simulator."""
    if t.is_cuda:
        from numba import cuda

        stream = cuda.external_stream(torch.cuda.current_stream(t.device).cuda_stream)
        yield stream
    else:
        yield 0


def describe(t) -> str:
    """How an argument is named in the kernels' error messages: a tensor by its shape, anything
    else by its type."""
    if isinstance(t, torch.Tensor):
        return f"a tensor of shape {tuple(t.shape)}"
    return type(t).__name__


def check_frame_indices(frame: torch.Tensor, frames: int, what: str) -> None:
    """Raise ValueError unless every value of ``frame`` lies in ``[0, frames)`` (``what`` names
    the tensor of frames in the message). One read-back from the device."""
    if frame.numel() == 0:
        return
    lo, hi = torch.stack(torch.aminmax(frame)).tolist()
    if lo < 0 or hi >= frames:
        raise ValueError(f"frame indices must be in [0, {frames}) for {what} with {frames} frames, got values in [{lo}, {hi}]")
