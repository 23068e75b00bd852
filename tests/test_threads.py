"""Thread safety: calls on one model are serialised (a re-entrant lock per model), calls on
different models run in parallel, and the Numba parallel kernels are never entered by two
threads at once where the threading layer is not thread-safe. Real threads throughout."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import pytest
import torch
from torch import nn

import fastviz as fv
from fastviz.hooks import model_lock
from fastviz.scheduler import record_plans

#: Options that keep each call small (occlusion: 2 scales of few windows).
OPTIONS = {"occlusion": {"windows": (4, 8), "stride": 4}}
THREADS = 2
ROUNDS = 12


def net(seed: int = 0) -> nn.Sequential:
    """conv blocks -> global average pool -> linear: every registered method applies (CAM too)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3), nn.ReLU(),
        nn.Conv2d(6, 8, 3, stride=2), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
    ).eval()


def hooks_of(model: nn.Module) -> list:
    return [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()]


def run_threads(work, n: int = THREADS, timeout: float = 120.0) -> list[BaseException]:
    """Run ``work(i)`` in ``n`` threads started together; the exceptions they raised."""
    start = threading.Barrier(n)
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            start.wait(timeout=30)
            work(i)
        except BaseException as exc:  # noqa: BLE001 - collected and reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "a thread did not finish (deadlock?)"
    return errors


@pytest.mark.parametrize("method", fv.methods())
def test_two_threads_on_one_model_give_the_sequential_results(method):
    model = net()
    torch.manual_seed(5)
    inputs = [torch.rand(2, 3, 16, 16) for _ in range(3)]  # each thread cycles through different frames
    opts = OPTIONS.get(method, {})
    want = [fv.explain(model, x, method=method, **opts) for x in inputs]
    assert all(w.abs().max() > 0 for w in want)  # a blank map would hide mix-ups
    before = hooks_of(model)
    got: dict[int, list[tuple[int, torch.Tensor]]] = {i: [] for i in range(THREADS)}

    def work(i: int) -> None:
        for r in range(ROUNDS):
            k = (r + i) % len(inputs)  # the threads work on different frames at the same time
            got[i].append((k, fv.explain(model, inputs[k], method=method, **opts)))

    errors = run_threads(work)
    assert not errors, f"{method}: {errors[0]!r}"
    for i in range(THREADS):
        assert len(got[i]) == ROUNDS
        for k, m in got[i]:
            assert torch.equal(m, want[k]), f"{method}: thread {i} got a different map for input {k}"
    assert hooks_of(model) == before


class Rendezvous(nn.Module):
    """Identity whose first forward waits until the other model's first forward has started too:
    it deadlocks (until the barrier's timeout) if the two calls are serialised."""

    def __init__(self, barrier: threading.Barrier):
        super().__init__()
        self.barrier = barrier
        self.met = False

    def forward(self, x):
        if not self.met:
            self.met = True
            self.barrier.wait()  # BrokenBarrierError after the timeout if the other model cannot run
        return x


@pytest.mark.parametrize("method", ["grad_cam", "visual_backprop", "occlusion", "saliency"])
def test_two_models_run_concurrently(method):
    barrier = threading.Barrier(2, timeout=20)
    models = [net(seed) for seed in (0, 1)]
    for m in models:
        m.insert(0, Rendezvous(barrier))
    x = torch.rand(2, 3, 16, 16)
    want = []
    for m in models:  # the sequential results, with the rendezvous passed
        m[0].met = True
        want.append(fv.explain(m, x, method=method, **OPTIONS.get(method, {})))
        m[0].met = False
    got: dict[int, torch.Tensor] = {}

    def work(i: int) -> None:
        got[i] = fv.explain(models[i], x, method=method, **OPTIONS.get(method, {}))

    errors = run_threads(work)
    assert not errors, repr(errors[0])
    assert all(m[0].met for m in models) and not barrier.broken
    for i in range(2):
        assert torch.equal(got[i], want[i])


def test_the_lock_is_reentrant_and_excludes_other_threads():
    model = net()
    x = torch.rand(2, 3, 16, 16)
    want = fv.grad_cam(model, x)
    entered = threading.Event()
    seen: list[torch.Tensor] = []

    def spy(_module, _args, _output):
        entered.set()

    with model_lock(model):
        # nested use in the holding thread works: the lock is re-entrant
        torch.testing.assert_close(fv.grad_cam(model, x), want, rtol=0, atol=0)
        handle = model[0].register_forward_hook(spy)
        try:
            other = threading.Thread(target=lambda: seen.append(fv.grad_cam(model, x)), daemon=True)
            other.start()
            # the other thread cannot reach the model while this one holds the lock
            assert not entered.wait(0.3)
            assert not seen
        finally:
            handle.remove()
    other.join(60)
    assert not other.is_alive() and len(seen) == 1
    assert torch.equal(seen[0], want)


def test_model_lock_is_one_lock_per_model():
    a, b = net(0), net(1)
    assert model_lock(a) is model_lock(a)
    assert model_lock(a) is not model_lock(b)


def test_record_plans_collects_each_threads_own_plans():
    models = [net(0), net(1)]
    xs = [torch.rand(3, 3, 16, 16), torch.rand(5, 3, 16, 16)]
    rows: dict[int, list[int]] = {}

    def work(i: int) -> None:
        with record_plans() as plans:
            for _ in range(5):
                fv.visual_backprop(models[i], xs[i])
        rows[i] = [p.rows for p in plans]

    assert not run_threads(work)
    # each thread sees only its own plans: a planned and a run plan per call, of its own batch
    assert rows[0] == [3] * 10 and rows[1] == [5] * 10


def test_numba_parallel_kernels_under_the_workqueue_layer():
    """Numba's workqueue threading layer aborts the process when two threads enter a parallel
    kernel at once; fastviz serialises its kernel calls there, so two models in two threads
    (occlusion and VisualBackProp on the Numba CPU twins) finish with the sequential results."""
    script = textwrap.dedent(
        """
        import threading, torch, numba, fastviz as fv
        from torch import nn
        def net(seed):
            torch.manual_seed(seed)
            return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2),
                                 nn.ReLU(), nn.Flatten(), nn.LazyLinear(1)).eval()
        x = torch.rand(4, 3, 48, 48)
        models = [net(0), net(1)]
        for m in models:
            m(x)
        def maps(m):
            return fv.occlusion(m, x, windows=(8, 16), stride=2, backend="cpu"), fv.visual_backprop(m, x, backend="cpu")
        want = [maps(m) for m in models]
        got, errors = {}, []
        def run(i):
            try:
                for _ in range(3):  # enough: without the lock every run of 5 aborted
                    got[i] = maps(models[i])
            except Exception as exc:
                errors.append(exc)
        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert not errors, errors
        assert all(torch.equal(a, b) for i in range(2) for a, b in zip(got[i], want[i]))
        print("layer", numba.threading_layer())
        """
    )
    env = {**os.environ, "NUMBA_THREADING_LAYER": "workqueue"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "workqueue"
