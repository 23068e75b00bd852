"""Numba's parallel CPU kernels from several threads.

The CPU twins in :mod:`fastviz.kernels` are ``numba.njit(parallel=True)`` functions. Numba runs
them on one of three threading layers: TBB and OpenMP may be entered by several Python threads
at once; the ``workqueue`` layer (Numba's fallback where neither library is installed) may not:
it terminates the process ("Concurrent access has been detected"). Methods on different models
run in parallel (only calls on one model are serialised, see :mod:`fastviz.hooks`), so every
kernel call a method makes goes through :func:`parallel_kernels`, which serialises them
process-wide unless the layer in use is known to be thread-safe. The lock is held for the kernel
call only, never across a forward pass.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numba

__all__ = ["THREADSAFE_LAYERS", "parallel_kernels"]

#: Numba threading layers that several threads may enter at once (Numba's documentation,
#: "The Threading Layers": tbb and omp are thread-safe, workqueue is not).
THREADSAFE_LAYERS = frozenset({"tbb", "omp"})

_LOCK = threading.Lock()


def _layer() -> str | None:
    try:
        return numba.threading_layer()
    except ValueError:  # no parallel region has run yet: the layer is not chosen
        return None


@contextmanager
def parallel_kernels() -> Iterator[None]:
    """Hold a process-wide lock around a Numba kernel call unless the threading layer in use is
    thread-safe (held also before the first parallel region has chosen the layer)."""
    if _layer() in THREADSAFE_LAYERS:
        yield
        return
    with _LOCK:
        yield
