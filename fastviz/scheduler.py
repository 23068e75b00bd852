"""Memory budget -> chunk plan -> chunks that back off on out-of-memory.

A method that pushes many rows (frames x occlusion windows, or frames) through a model asks
:func:`plan` for a chunk size: how many rows go through one forward pass. The plan comes from
the budget (:func:`parse_budget`: ``"512MiB"``, a byte count, a fraction of free memory; by
default :func:`default_budget`) and a per-row need measured on a one-row probe
(:func:`row_footprint`: ``torch.cuda.max_memory_allocated`` on a GPU, the activation sizes
seen by forward hooks on the CPU), with a safety factor for the allocator and temporaries. On
the CPU, chunks are also kept cache-sized (:data:`CPU_CHUNK_BYTES`).

:func:`run_chunks` runs the chunks: on out-of-memory it frees what the chunk held, halves the
chunk and retries the same rows, keeping every finished chunk; other errors propagate
unchanged; a single row that still fails raises :class:`~fastviz.errors.OutOfBudgetError`.
Plans are logged at debug level and collected by :func:`record_plans` (for cost tables).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .errors import InputError, OutOfBudgetError
from .hooks import HandleList, leaf_modules

__all__ = [
    "Plan",
    "default_budget",
    "is_out_of_memory",
    "parse_budget",
    "parse_device",
    "plan",
    "plan_rows",
    "record_plans",
    "reserve_working_set",
    "row_footprint",
    "run_chunks",
    "tune",
    "tune_cpu_allocator",
    "tuning",
]

log = logging.getLogger(__name__)

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}

#: Multiplier on the measured per-row footprint: masked inputs, the allocator's slack and
#: the transient buffers of convolution algorithms.
SAFETY = 2.0
#: Cap on the default CPU budget.
CPU_DEFAULT_CAP = 2 * 2**30
#: On the CPU, a chunk's measured footprint is kept within about half the last-level cache:
#: PilotNet's occlusion (1,872 rows of ~1 MiB) on a 2-core EPYC with 32 MiB of L3 ran in
#: 0.63-0.71 s in chunks of 16-48 rows, 0.86-0.99 s in chunks of 65 and 2.1-2.4 s in one chunk
#: of 1,872, once a layer's activations spill out of the cache. Smaller chunks also keep the
#: per-forward buffers small enough that glibc's malloc reuses them instead of returning them
#: to the OS and faulting them back in. GPUs gain from chunks as large as the budget allows.
CPU_CHUNK_BYTES = 16 * 2**20


def parse_device(device: str | torch.device) -> torch.device:
    """A device the methods can run on: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Raises
    ------
    InputError
        For a malformed or unsupported device, or CUDA where ``torch.cuda.is_available()``
        is False.
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise InputError(f"unknown device {device!r}: use cpu or cuda") from None
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"unsupported device {device!r}: use cpu or cuda")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r}: CUDA is not available on this machine (torch.cuda.is_available() is False)")
    return dev


def _available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 2**30


def default_budget(device: torch.device | str) -> int:
    """Bytes a method may use by default: half the free GPU memory, or on the CPU a quarter of
    the available system memory, at most 2 GiB."""
    device = torch.device(device)
    if device.type == "cuda":
        return _available_bytes(device) // 2
    return min(_available_bytes(device) // 4, CPU_DEFAULT_CAP)


def parse_budget(budget: str | int | float | None, device: torch.device | str = "cpu") -> int:
    """A memory budget in bytes.

    Parameters
    ----------
    budget : str, int, float or None
        ``"512MiB"``, ``"8GiB"``, ``"1.5GB"`` (binary and decimal units), a byte count (int),
        a fraction of the device's free memory (float in (0, 1]), or ``None`` for
        :func:`default_budget`.

    Raises
    ------
    InputError
        For a malformed or non-positive budget.
    """
    device = torch.device(device)
    if budget is None:
        return default_budget(device)
    if isinstance(budget, bool):
        raise InputError(f"memory budget must be a size like '512MiB', a byte count or a fraction, got {budget!r}")
    if isinstance(budget, int):
        if budget <= 0:
            raise InputError(f"memory budget must be positive, got {budget} bytes")
        return budget
    if isinstance(budget, float):
        if not 0.0 < budget <= 1.0:
            raise InputError(f"a fractional memory budget must be in (0, 1], got {budget}")
        return max(1, int(_available_bytes(device) * budget))
    if isinstance(budget, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", budget)
        if m and m.group(2).lower() in _UNITS:
            value = float(m.group(1)) * _UNITS[m.group(2).lower()]
            if value >= 1:
                return int(value)
    raise InputError(f"malformed memory budget {budget!r}: use e.g. '512MiB', '8GiB', a byte count or a fraction like 0.8")


_FOOTPRINTS: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()
#: Guards ``_FOOTPRINTS`` (models are added from several threads; a probe runs outside it).
_FOOTPRINTS_LOCK = threading.Lock()
#: One lock per CUDA device around the footprint probe: the peak-memory statistics it resets
#: and reads are per device, so two threads probing at once would corrupt each other's peak.
_CUDA_PROBE_LOCKS: dict[str, threading.Lock] = {}


def row_footprint(model: nn.Module, row: torch.Tensor) -> int:
    """:func:`measure_row_footprint`, remembered per model and input signature (shape, dtype,
    device, memory format, and the model's module structure): the need does not depend on the
    weights, and repeated calls (a video, a dataset) skip the probe pass.

    Thread-safe: the cache is shared by all threads (a model's entries are made by the thread
    holding its lock, see :func:`fastviz.hooks.model_lock`)."""
    key = (
        tuple(row.shape), row.dtype, str(row.device), row.is_contiguous(memory_format=torch.channels_last),
        tuple(id(m) for m in model.modules()),
    )
    with _FOOTPRINTS_LOCK:
        cache = _FOOTPRINTS.setdefault(model, {})
        known = cache.get(key)
    if known is None:
        known = measure_row_footprint(model, row)
        with _FOOTPRINTS_LOCK:
            cache[key] = known
    return known


def measure_row_footprint(model: nn.Module, row: torch.Tensor) -> int:
    """Bytes one input row costs in a no-grad forward pass, measured on a one-row probe.

    On a GPU: the peak of ``torch.cuda.max_memory_allocated`` during the probe above what was
    allocated before it (plus the row). On the CPU, where no allocator statistics exist: the
    row plus every leaf module's output, seen by forward hooks — an upper bound, since a
    no-grad pass frees each activation once the next layer has consumed it.
    ``row`` is ``(1, C, H, W)``.

    On a GPU, probes from several threads take turns (one lock per device), so no probe resets
    another's peak statistics; other work on the device meanwhile (another thread's chunks)
    still shifts the device-wide peak, and a need measured too low shows as an out-of-memory
    that :func:`run_chunks` answers by halving the chunk.
    """
    if row.is_cuda:
        with _FOOTPRINTS_LOCK:
            lock = _CUDA_PROBE_LOCKS.setdefault(str(row.device), threading.Lock())
        with lock:
            torch.cuda.synchronize(row.device)
            before = torch.cuda.memory_allocated(row.device)
            torch.cuda.reset_peak_memory_stats(row.device)
            with torch.no_grad():
                model(row)
            torch.cuda.synchronize(row.device)
            return int(torch.cuda.max_memory_allocated(row.device) - before + row.numel() * row.element_size())
    total = row.numel() * row.element_size()

    def add(_module, _args, output) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel() * output.element_size()

    with HandleList() as handles, torch.no_grad():
        handles.extend(m.register_forward_hook(add) for m in leaf_modules(model))
        model(row)
    return int(total)


@dataclass(frozen=True)
class Plan:
    """A chunk plan: ``rows`` rows in chunks of ``chunk`` rows, ``passes`` forward passes.

    ``row_bytes`` is the measured need per row, ``budget_bytes`` the budget, ``backoffs`` how
    often an out-of-memory halved the chunk, ``as_run`` whether this is the plan as it ran (from
    :func:`run_chunks`, with the chunk and passes after any back-off) rather than as planned.
    """

    rows: int
    chunk: int
    passes: int
    row_bytes: int
    budget_bytes: int
    backoffs: int = 0
    as_run: bool = False

    @property
    def predicted_peak_bytes(self) -> int:
        return int(self.chunk * self.row_bytes * SAFETY)

    def as_dict(self) -> dict:
        """The plan's fields and its predicted peak, for logs and cost tables."""
        return {**asdict(self), "predicted_peak_bytes": self.predicted_peak_bytes}


#: RuntimeError messages of allocation failures that do not raise torch.OutOfMemoryError.
_OOM_MESSAGES = (
    "can't allocate memory",  # PyTorch's CPU allocator
    "not enough memory",
    "CUDA error: out of memory",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "CUDNN_STATUS_ALLOC_FAILED",
    "MPS backend out of memory",
)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure: ``torch.OutOfMemoryError``, a Python/numpy
    ``MemoryError``, or one of the ``RuntimeError`` messages of allocators that raise no
    dedicated type (PyTorch's CPU allocator, cuBLAS/cuDNN workspaces)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    if isinstance(exc, MemoryError):  # numpy and Python allocations (the CPU kernels' buffers)
        return not isinstance(exc, OutOfBudgetError)
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(s in text for s in _OOM_MESSAGES)


def _release(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_chunks(p: Plan, step, device: torch.device | str) -> Plan:
    """Run ``step(r0, r1)`` over the rows ``[0, p.rows)`` in chunks of ``p.chunk``, backing off
    on out-of-memory.

    ``step`` computes rows ``r0 .. r1`` and stores their results (it may run again for the
    same rows after a failure, so it must only write its own results); finished chunks are
    kept, and a halved chunk stays halved for the rest of the run.
    When a chunk runs out of memory (:func:`is_out_of_memory`), what it held is freed, the
    chunk size is halved and the same rows are tried again; any other error propagates
    unchanged.

    Returns
    -------
    Plan
        The plan as run: the final chunk size and the forward passes made (backed-off attempts
        not counted); also published to :func:`record_plans`.

    Raises
    ------
    OutOfBudgetError
        If one row alone runs out of memory, naming the budget and the measured need per row.
    """
    device = torch.device(device)
    chunk, r0, passes, backoffs = p.chunk, 0, 0, 0
    while r0 < p.rows:
        r1 = min(r0 + chunk, p.rows)
        failed = ""
        try:
            step(r0, r1)
        except Exception as exc:  # noqa: BLE001 - re-raised unless it is an allocation failure
            if not is_out_of_memory(exc):
                raise
            failed = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            # leave the except block first, so the traceback's tensors can go
        if failed:
            _release(device)
            if chunk == 1:
                raise OutOfBudgetError(
                    f"out of memory on {device} with one row per forward pass: the budget is "
                    f"{p.budget_bytes / 2**20:.0f} MiB and the model needs about "
                    f"{p.row_bytes * SAFETY / 2**20:.1f} MiB per row; free memory on the device or raise memory_budget "
                    f"(allocator: {failed})"
                ) from None
            chunk = max(1, chunk // 2)
            backoffs += 1
            log.debug("out of memory in a chunk of %d rows; retrying rows %d.. in chunks of %d", chunk * 2, r0, chunk)
            continue
        r0, passes = r1, passes + 1
    ran = Plan(rows=p.rows, chunk=chunk, passes=passes, row_bytes=p.row_bytes, budget_bytes=p.budget_bytes,
               backoffs=backoffs, as_run=True)
    _publish(ran)
    return ran


_recorded = threading.local()


@contextmanager
def record_plans() -> Iterator[list[Plan]]:
    """Collect the plans that methods make inside the block (this thread only).

    >>> with record_plans() as plans:          # doctest: +SKIP
    ...     fastviz.occlusion(model, x)
    >>> plans[-1].chunk, plans[-1].passes       # doctest: +SKIP
    """
    stack = getattr(_recorded, "stack", None)
    if stack is None:
        stack = _recorded.stack = []
    plans: list[Plan] = []
    stack.append(plans)
    try:
        yield plans
    finally:
        stack.remove(plans)


def _publish(p: Plan) -> None:
    for plans in getattr(_recorded, "stack", ()):
        plans.append(p)


def plan(
    model: nn.Module,
    row: torch.Tensor,
    rows: int,
    memory_budget=None,
    chunk: int | None = None,
    factor: float = 1.0,
    cache_sized: bool = False,
) -> Plan:
    """Choose how many rows go through the model per forward pass.

    The chunk is the largest that keeps ``chunk * row_bytes * SAFETY`` within the budget; with
    ``cache_sized`` on the CPU it is also capped so that the no-grad footprint of a chunk stays
    within ``CPU_CHUNK_BYTES`` (cache-sized chunks run forward-only passes faster there).

    Parameters
    ----------
    model : nn.Module
    row : Tensor (1, C, H, W)
        One representative input row (used for the footprint probe).
    rows : int
        Total number of rows to push through the model.
    memory_budget : see :func:`parse_budget`
    chunk : int, optional
        Fixed chunk size, e.g. to compare with a peer's batch setting.
    factor : float
        Multiplier on the measured no-grad footprint for methods that need more per row
        (Grad-CAM keeps activations and gradients for the backward pass: 2).
    cache_sized : bool
        On the CPU, also cap the chunk so that its no-grad footprint stays within
        :data:`CPU_CHUNK_BYTES`: measured faster for forward-only passes (occlusion: 0.37 s in
        chunks of 16 vs ~1 s in one pass of 1,872). Gradient methods leave it off: their
        per-pass overhead (hooks, autograd) dominates on small nets (Grad-CAM on 64 PilotNet
        frames: 0.34 ms/frame in one pass vs 0.72 in chunks of 8).

    Returns
    -------
    Plan
        Chunk size, number of forward passes, measured bytes per row and the budget.

    Raises
    ------
    InputError
        For a malformed budget or a chunk size below 1.
    """
    budget = parse_budget(memory_budget, row.device)
    if chunk is not None and chunk < 1:
        raise InputError(f"chunk size must be >= 1, got {chunk}")
    return plan_rows(row_footprint(model, row), rows, row.device, budget, chunk, factor, cache_sized)


def plan_rows(
    forward_bytes: int,
    rows: int,
    device: torch.device | str,
    memory_budget=None,
    chunk: int | None = None,
    factor: float = 1.0,
    cache_sized: bool = False,
) -> Plan:
    """:func:`plan` for a known no-grad need of ``forward_bytes`` per row (e.g. incremental
    occlusion's patches, whose need follows from its plan rather than from a probe pass).

    Raises
    ------
    InputError
        For a malformed budget or a chunk size below 1.
    """
    device = torch.device(device)
    budget = parse_budget(memory_budget, device)
    if chunk is not None and chunk < 1:
        raise InputError(f"chunk size must be >= 1, got {chunk}")
    forward_bytes = max(1, int(forward_bytes))
    row_bytes = int(forward_bytes * factor)
    if chunk is None:
        chunk = max(1, int(budget // (row_bytes * SAFETY)))
        if cache_sized and device.type == "cpu":
            chunk = min(chunk, max(1, CPU_CHUNK_BYTES // forward_bytes))
    chunk = max(1, min(chunk, rows))
    if row_bytes * SAFETY > budget:
        log.warning("memory budget of %.1f MiB is below one row's measured need of %.1f MiB: running one row per pass",
                    budget / 2**20, row_bytes * SAFETY / 2**20)
    elif chunk * row_bytes * SAFETY > budget:
        log.warning("chunk of %d rows is predicted to need %.1f MiB, above the memory budget of %.1f MiB",
                    chunk, chunk * row_bytes * SAFETY / 2**20, budget / 2**20)
    passes = -(-rows // chunk)
    p = Plan(rows=rows, chunk=chunk, passes=passes, row_bytes=row_bytes, budget_bytes=budget)
    _publish(p)
    log.debug("plan: %d rows in %d passes of <= %d rows (%.1f KiB/row, budget %.0f MiB, predicted peak %.0f MiB)",
              rows, passes, chunk, row_bytes / 1024, budget / 2**20, p.predicted_peak_bytes / 2**20)
    return p


#: glibc raises its mmap threshold to the size of a freed mapped block up to this size
#: (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit), and its trim threshold to twice that.
_GLIBC_DYNAMIC_MAX = 32 * 2**20 - 2**16


def reserve_working_set(nbytes: int, device: torch.device | str) -> None:
    """Let the CPU allocator keep a chunk loop's working set between forward passes.

    glibc's malloc adapts its thresholds (mallopt(3), "dynamic mmap threshold"): when a block
    it had mapped separately is freed, blocks up to that size come from the heap from then on,
    and up to twice that much free heap is kept rather than returned to the OS. Allocating and
    freeing one block of the chunk's working set (at most 32 MiB) before the loop lets that
    happen up front, so the model's activation buffers are reused across chunks instead of
    being unmapped and page-faulted back in on every pass: PilotNet's occlusion went from 0.84
    to 0.49 s on a 2-core EPYC (benchmarks/RESULTS.md). This is what any process that once
    freed a tensor of that size gets; it retains at most 64 MiB. The block is never written
    (no page is touched). A no-op on GPUs, where PyTorch's caching allocator pools memory.

    Parameters
    ----------
    nbytes : int
        The chunk loop's working set in bytes (e.g. ``Plan.predicted_peak_bytes``); blocks
        above 32 MiB are clipped to it (glibc adapts no further).
    device : torch device
        Where the chunks run.
    """
    if torch.device(device).type != "cpu" or nbytes <= 0:
        return
    block = torch.empty(int(min(nbytes, _GLIBC_DYNAMIC_MAX)), dtype=torch.uint8)
    del block


def tune_cpu_allocator(trim_threshold: int = 2**30, mmap_threshold: int = 32 * 2**20) -> bool:
    """Make glibc's malloc keep freed buffers in the process (Linux; opt-in, process-wide).

    Between two forward passes on the CPU, PyTorch frees every activation buffer; by default
    glibc returns such multi-MiB blocks to the OS, and the next pass page-faults them back in.
    For occlusion's hundreds of small forward passes this costs more than the convolutions:
    PilotNet's 1,872 windows took 0.79 s with glibc's defaults and 0.44 s after this call on a
    2-core EPYC (measured before occlusion reserved its working set itself, see
    :func:`reserve_working_set`; benchmarks/RESULTS.md has both configurations). It raises ``M_TRIM_THRESHOLD`` (free memory kept at the
    top of the heap) to ``trim_threshold`` and ``M_MMAP_THRESHOLD`` (size above which a block
    gets its own mapping) to ``mmap_threshold`` bytes (glibc caps it at 32 MiB), so the process
    keeps up to ``trim_threshold`` bytes of freed memory for reuse.

    fastviz's command line calls this for its own process; the library itself never calls
    ``mallopt`` (occlusion only relies on glibc's own adaptation, see
    :func:`reserve_working_set`). The same effect from outside: ``MALLOC_TRIM_THRESHOLD_`` and
    ``MALLOC_MMAP_THRESHOLD_`` environment variables, or jemalloc/tcmalloc via ``LD_PRELOAD``
    as PyTorch's CPU performance guide suggests.

    Returns
    -------
    bool
        ``True`` if glibc accepted both settings; ``False`` where there is no glibc (nothing
        is changed then).
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, int(mmap_threshold))) and bool(mallopt(m_trim_threshold, int(trim_threshold)))


# ---------------------------------------------------------------------------------------------
# chunk plans measured on the machine

#: Plans with fewer rows than this are not tuned (the measurement would cost more than it saves).
TUNE_MIN_ROWS = 64
#: A tuning stops trying further chunk sizes once its measurements took this many seconds.
TUNE_SECONDS = 1.0
#: A tuning times this many consecutive chunks per try (fewer where the plan has fewer rows).
TUNE_CHUNKS = 3
#: On a GPU the search starts at this many rows per pass (see :func:`tune`).
GPU_TUNE_START = 64
_TUNE_VERSION = 3  # 3: the best of two timings per size; 2: consecutive chunks timed (1: one chunk)
_tuned: dict[str, int] = {}
_tuned_lock = threading.Lock()
_tuning_state = threading.local()


@contextmanager
def tuning(enabled: bool) -> Iterator[None]:
    """Turn measured chunk plans (:func:`tune`) on or off for the methods called in the block
    (this thread). Off, plans are the deterministic ones of :func:`plan` — what an audit needs,
    whose stored arrays must not depend on measurements (convolution results change in their
    last bits with the chunk size)."""
    old = getattr(_tuning_state, "enabled", True)
    _tuning_state.enabled = bool(enabled)
    try:
        yield
    finally:
        _tuning_state.enabled = old


def tuning_enabled() -> bool:
    """Whether :func:`tune` measures here: on unless turned off by :func:`tuning` or the
    environment variable ``FASTVIZ_TUNE=0``."""
    return getattr(_tuning_state, "enabled", True) and os.environ.get("FASTVIZ_TUNE", "1") != "0"


def machine_id(device: torch.device | str) -> str:
    """What identifies the hardware a plan was measured on: the CPU model and core count (and
    torch's thread count), or the GPU's name."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{cpu_model()}:{os.cpu_count()}cores:{torch.get_num_threads()}threads"


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name: /proc/cpuinfo's ``model name``, else what :mod:`platform` says,
    else ``"unknown"`` (read once per process)."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _cache_file() -> str:
    root = os.environ.get("FASTVIZ_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "fastviz")
    return os.path.join(root, "chunk-plans.json")


def _read_cache() -> dict:
    import json

    try:
        with open(_cache_file()) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(key: str, entry: dict) -> None:
    """Add one entry to the on-disk cache (best effort: an unwritable cache only costs a new
    measurement next time). Written to a temporary file, then renamed."""
    import json
    import tempfile

    path = _cache_file()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        data = _read_cache()
        data[key] = entry
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".chunk-plans.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=1, sort_keys=True)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as exc:
        log.debug("chunk plan cache %s not written: %s", path, exc)


def model_signature(model: nn.Module) -> str:
    """The model's structure (module types, parameter shapes and dtypes) as a short hash: a
    measured plan depends on it, not on the weights."""
    import hashlib

    parts = [f"{name}:{type(m).__name__}" for name, m in model.named_modules()]
    parts += [f"{name}:{tuple(p.shape)}:{p.dtype}" for name, p in model.named_parameters()]
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]


def tune(p: Plan, step, device: torch.device | str, key: tuple, fixed: bool = False) -> Plan:
    """The plan ``p`` with its chunk size measured on this machine: the fastest of a few sizes
    within the memory budget, cached per ``key`` (method, model structure, input signature),
    machine and budget, in memory and in ``$FASTVIZ_CACHE_DIR/chunk-plans.json`` (default
    ``~/.cache/fastviz``).

    The search starts at ``p.chunk`` on the CPU (the cache-sized guess) and at
    :data:`GPU_TUNE_START` rows on a GPU (where the budget's largest chunk is far past the best),
    times :data:`TUNE_CHUNKS` consecutive chunks of that size over the first rows (``step(0, c)``,
    ``step(c, 2c)``, ...: real rows, recomputed later by the run; the faster of two such
    timings), then its doubles and halves while throughput improves, and stops after
    :data:`TUNE_SECONDS`. Rows per second, not seconds per pass, decide.

    Returns ``p`` unchanged if ``fixed`` (the caller gave a chunk size), if tuning is off
    (:func:`tuning`, ``FASTVIZ_TUNE=0``) or if the plan has fewer than :data:`TUNE_MIN_ROWS`
    rows.

    Parameters
    ----------
    p : Plan
        The deterministic plan (:func:`plan` or :func:`plan_rows`).
    step : callable ``(r0, r1) -> None``
        The chunk step that :func:`run_chunks` will run; it must only write its own rows.
    device : torch device
    key : tuple
        What the throughput depends on besides the machine and the budget (e.g. the method's
        name, :func:`model_signature`, the input's shape, dtype and layout).

    Raises
    ------
    Whatever ``step`` raises other than out-of-memory (an out-of-memory ends the search at the
    sizes that ran).
    """
    import time

    device = torch.device(device)
    if fixed or p.rows < TUNE_MIN_ROWS or not tuning_enabled():
        return p
    cap = max(1, min(p.rows, int(p.budget_bytes // max(1, p.row_bytes * SAFETY))))
    full_key = repr((_TUNE_VERSION, key, machine_id(device), p.budget_bytes))
    with _tuned_lock:
        known = _tuned.get(full_key)
    if known is None:
        entry = _read_cache().get(full_key)
        if isinstance(entry, dict) and isinstance(entry.get("chunk"), int) and entry["chunk"] >= 1:
            known = entry["chunk"]
    if known is None:
        rates: dict[int, float] = {}
        spent = 0.0

        def rate(c: int) -> float:
            nonlocal spent
            if c in rates:
                return rates[c]
            # consecutive chunks over different rows, as the run has them: one pass timed alone
            # misleads (PilotNet on 2 cores: 16 rows alone ran at 2,100 rows/s and 64 at 1,270,
            # while 16 chunks of 16 ran at 1,690 and 4 of 64 at 1,815)
            n = max(1, min(TUNE_CHUNKS, p.rows // c))
            best = math.inf
            # the best of two timings: one preempted timing (another process, a page-fault burst)
            # otherwise ends the search early (VisualBackProp in chunks of 32 timed 3% slower
            # than 16 once, while a run in 32s is 4% faster)
            for _ in range(2):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                for k in range(n):
                    step(k * c, (k + 1) * c)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                dt = time.perf_counter() - t0
                spent += dt
                best = min(best, dt)
            rates[c] = n * c / best
            return rates[c]

        # the CPU's guess is cache-sized; a GPU's plan is the budget's largest chunk, far past
        # where throughput stops growing (H200, ResNet-50: 625 rows per pass ran 2.5x slower
        # than 64), so its search starts at a common batch size and doubles from there
        start = max(1, min(p.chunk, cap) if device.type == "cpu" else min(cap, GPU_TUNE_START))
        try:
            step(0, start)  # warm-up: first-call costs (allocations, kernel compilation)
            best = start
            rate(start)
            for direction in (2.0, 0.5):
                c = start
                while spent < TUNE_SECONDS:
                    nxt = max(1, min(cap, int(c * direction)))
                    if nxt == c or rate(nxt) <= rates[best]:
                        break
                    best = c = nxt
                if best != start:
                    break
        except Exception as exc:  # noqa: BLE001 - only an allocation failure ends the search quietly
            if not is_out_of_memory(exc):
                raise
            _release(device)
            if not rates:
                return p
            best = max(rates, key=rates.get)
        known = best
        _write_cache(full_key, {"chunk": known, "rows_per_s": {str(c): round(r, 1) for c, r in sorted(rates.items())},
                                "measured_s": round(spent, 3), "time": time.strftime("%Y-%m-%d %H:%M:%S")})
        log.debug("tuned chunk for %s: %d rows (rows/s by chunk: %s)", key[0] if key else "?", known,
                  {c: round(r) for c, r in sorted(rates.items())})
    with _tuned_lock:
        _tuned[full_key] = known
    known = min(known, cap)
    tuned = Plan(rows=p.rows, chunk=known, passes=-(-p.rows // known), row_bytes=p.row_bytes, budget_bytes=p.budget_bytes)
    _publish(tuned)
    return tuned
