"""The audit on a Ray cluster: store chunks computed by Ray actors, committed by the driver.

``fv.audit(..., engine="ray", address=None)`` (``fastviz audit --ray [ADDRESS]``) runs the same
audit as the single-process engine, into the same store, with the chunk as the unit of work:

- **Workers** are Ray actors (:class:`ChunkWorker`), each loading the model once (by name or
  weights file with :func:`fastviz.models.load` where it was given so, else the module as the
  driver holds it), with one GPU each when the audit's device is CUDA, else one CPU. A worker
  computes a whole chunk exactly as the single-process audit does (:func:`fastviz.audit.run._chunk`:
  the same batches, budget and seeds), writes that chunk's arrays into the store itself (a path
  every worker can reach, on a shared file system, or a URL fsspec knows such as ``s3://``), and
  returns its seconds and any input failure it met. No two workers ever write one chunk.
- **The driver** holds the store's lock, hands chunks out (each worker a contiguous run, so its
  decoder reads forward; an idle worker takes the far end of the longest run left), and records
  completion (``progress/seconds``, then ``progress/done``) as results come back: the same commit
  protocol as the single-process audit, so a store started by one engine is resumed by the other.
  The sanity check and the report stay on the driver.
- **Faults.** A worker killed mid-chunk (``kill -9``, a lost node) is restarted by Ray and the
  chunk run again (``max_restarts``, ``max_task_retries``): rewriting a chunk's arrays with the same
  values is harmless, and it is not marked done until a run of it returns. An input that fails
  part-way (a frame that cannot be decoded) is not an error: the worker reports it, the driver
  records it, and because a worker that started its chunk after the failure point could not know
  of it, the driver then computes again every chunk that read the source past its failure
  (:func:`fastviz.audit.run.tainted_chunks`) — the single-process audit stops reading a source at
  its first failure, and so does the finished store. Any other
  error in a worker stops the audit with that error (no retries): the chunks committed are kept.

The result equals the single-process audit's array for array when the workers run with the same
number of threads as that audit did (a convolution's float32 result can change in its last bits
with the thread count): Ray gives each CPU worker one thread (``OMP_NUM_THREADS=1``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import InputError

__all__ = ["ChunkWorker", "RayPlan", "import_ray", "run_on_ray"]

#: Ray restarts a killed worker, and runs its chunk again, at most this many times each.
MAX_RESTARTS = 4


def import_ray():
    """The ``ray`` module, or an :class:`InputError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise InputError("the Ray engine needs ray: pip install 'fastviz[dist]'") from None
    return ray


@dataclass
class RayPlan:
    """What every worker needs to compute chunks (sent once, when the workers start)."""

    store: str
    model: object  # a bundled name or weights path (str), or the nn.Module itself
    device: str
    sources: list  # AuditSource, with the truth and times arrays
    methods: dict  # method -> options
    batch: int
    steps: int
    random_seed: int
    budget: int
    size: tuple


class ChunkWorker:
    """One Ray worker: the model loaded once, the store open for writing arrays (not the commit
    record), a frame reader kept open between chunks."""

    def __init__(self, plan: RayPlan) -> None:
        import functools

        from .. import models
        from .run import _explain
        from .sources import FrameReader
        from .store import AuditStore, open_group

        self.plan = plan
        if isinstance(plan.model, str):
            self.model = models.load(plan.model, plan.device)
        else:
            self.model = plan.model.to(plan.device)
        self.model.eval()
        self.store = AuditStore(plan.store, open_group(plan.store, "r+"))
        self.failures: list[tuple[int, str, int]] = []
        self.reader = FrameReader(plan.sources, self.model.preprocess, on_failure=self._failed)
        self.fns = {m: functools.partial(_explain, method=m, options=o) for m, o in plan.methods.items()}

    def _failed(self, k: int, src) -> None:
        self.failures.append((int(k), str(src.error), int(src.frames_read)))

    def known_failures(self, failures: Sequence[tuple[int, str, int]]) -> None:
        """Failures other workers met: this worker's reader stops at them from now on."""
        for k, error, frames_read in failures:
            src = self.plan.sources[k]
            if src.frames_read is None or frames_read < src.frames_read:
                src.error, src.frames_read = error, frames_read
                if self.reader._open is not None and self.reader._open[0] == k:
                    self.reader.close()

    def run(self, c: int, failures: Sequence[tuple[int, str, int]] = ()) -> tuple[int, np.ndarray, list]:
        """Compute chunk ``c`` and write its arrays. Returns ``(c, seconds per method then the
        metrics, input failures met)``."""
        from .run import _chunk

        self.known_failures(failures)
        self.failures = []
        g0, g1 = self.store.chunk_range(c)
        p = self.plan
        arrays = _chunk(self.model, self.reader.read(g0, g1), self.fns, list(p.methods), batch=p.batch,
                        steps=p.steps, random_seed=p.random_seed, budget=p.budget, size=p.size)
        seconds = arrays.pop("progress/seconds")
        self.store.write_arrays(c, arrays)
        return c, seconds, self.failures


def _shards(todo: Sequence[int], n: int) -> list[list[int]]:
    """``todo`` split into at most ``n`` contiguous runs of near-equal length."""
    todo = [int(c) for c in todo]
    n = max(1, min(n, len(todo)))
    bounds = np.linspace(0, len(todo), n + 1).round().astype(int)
    return [todo[bounds[i]:bounds[i + 1]] for i in range(n)]


def run_on_ray(
    todo: Sequence[int],
    plan: RayPlan,
    sources: list,
    *,
    address: str | None,
    workers: int | None,
    on_commit: Callable[[int, np.ndarray], None],
    on_failure: Callable[[int], None],
    again: Callable[[], list[int]] = lambda: [],
) -> None:
    """Compute chunks ``todo`` on Ray workers and commit each as it returns.

    Parameters
    ----------
    todo : sequence of int
        Chunks not done.
    plan : RayPlan
        Sent to every worker.
    sources : list of AuditSource
        The driver's sources; failures the workers meet are recorded into them.
    address : str, optional
        A running cluster's address (``"auto"``: the one this machine belongs to); ``None``: an
        existing connection, else a local Ray started for this audit and stopped after it.
    workers : int, optional
        Workers to start; default one per GPU (CUDA audits) or per CPU of the cluster, at most
        one per chunk. More workers than GPUs (CPUs) share them.
    on_commit : callable
        ``on_commit(c, seconds)`` marks chunk ``c`` done (the driver's half of the commit).
    on_failure : callable
        ``on_failure(k)`` after source ``k``'s failure is first recorded.
    again : callable
        After each pass, the chunks to compute again (:func:`fastviz.audit.run.tainted_chunks`),
        on the same workers (:func:`fastviz.audit.run.until_clean`).

    Raises
    ------
    InputError
        Without ray, or when the cluster has no GPU for a CUDA audit.
    Exception
        The first error a worker raised that is not an input failure (the chunks committed are
        kept), or Ray's error when a worker died more than :data:`MAX_RESTARTS` times.
    """
    ray = import_ray()
    started_here = False
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False, include_dashboard=False,
                 **({} if address else {"configure_logging": False}))
        started_here = True
    try:
        resources = ray.cluster_resources()
        gpu = plan.device.startswith("cuda")
        if gpu and resources.get("GPU", 0) < 1:
            raise InputError("the audit's device is CUDA but the Ray cluster has no GPU")
        capacity = int(resources.get("GPU" if gpu else "CPU", 1))
        n = max(1, min(workers or capacity, len(todo)))
        # a worker holds its share for life: more workers than CPUs (GPUs) share them, or the
        # ones beyond would wait for a CPU forever
        share = min(1.0, capacity / n)
        per_worker = {"num_gpus": share, "num_cpus": 1 if share >= 1 else share} if gpu else {"num_cpus": share}
        if not todo:
            return
        remote = ray.remote(max_restarts=MAX_RESTARTS, max_task_retries=MAX_RESTARTS)(ChunkWorker)
        actors = [remote.options(**per_worker).remote(plan) for _ in range(n)]
        try:
            from .run import until_clean

            until_clean(list(todo), lambda chunks: _run_pass(ray, actors, chunks, sources, on_commit, on_failure),
                        again, limit=len(sources) + 1)
        finally:
            for a in actors:
                ray.kill(a)
    finally:
        if started_here:
            ray.shutdown()


def _failures(sources) -> list[tuple[int, str, int]]:
    return [(k, str(s.error), int(s.frames_read)) for k, s in enumerate(sources) if s.frames_read is not None]


def _run_pass(ray, actors, todo, sources, on_commit, on_failure) -> None:
    queues = _shards(todo, len(actors))
    queues += [[] for _ in range(len(actors) - len(queues))]
    running: dict = {}  # object ref -> actor number

    def submit(i: int) -> None:
        if not queues[i]:  # take the far end of the longest run left
            longest = max(range(len(queues)), key=lambda j: len(queues[j]))
            if len(queues[longest]) < 2:
                return
            half = len(queues[longest]) // 2
            queues[i], queues[longest] = queues[longest][half:], queues[longest][:half]
        c = queues[i].pop(0)
        running[actors[i].run.remote(c, _failures(sources))] = i

    for i in range(len(actors)):
        submit(i)
    try:
        while running:
            ready, _ = ray.wait(list(running), num_returns=1)
            ref = ready[0]
            i = running.pop(ref)
            try:
                c, seconds, failures = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:  # the worker's own error, as it was raised there
                cause = getattr(exc, "cause", None)
                if isinstance(cause, BaseException):
                    raise cause from None
                raise
            for k, error, frames_read in failures:
                src = sources[k]
                if src.frames_read is None or frames_read < src.frames_read:
                    first = src.frames_read is None
                    src.error, src.frames_read = error, frames_read
                    if first:
                        on_failure(k)
            on_commit(c, seconds)
            submit(i)
    finally:
        for ref in running:  # the workers are killed next; cancelling first stops them sooner
            with contextlib.suppress(Exception):
                ray.cancel(ref)


def check_engine(engine: str, address: str | None, workers: int | None) -> None:
    """Arguments of the engine, checked before any work.

    Raises
    ------
    InputError
        For an unknown engine, Ray options without the Ray engine, a bad worker count, or a Ray
        engine without ray installed.
    """
    if engine not in ("local", "ray"):
        raise InputError(f"engine must be 'local' or 'ray', got {engine!r}")
    if engine == "local" and (address is not None or workers is not None):
        raise InputError("address and workers are options of the Ray engine (engine='ray')")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, (int, np.integer))
                                or workers < 1):
        raise InputError(f"workers must be a whole number >= 1, got {workers!r}")
    if engine == "ray":
        import_ray()
