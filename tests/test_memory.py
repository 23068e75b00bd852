"""Out-of-memory back-off: finished chunks are kept, results are exactly those without a
memory limit, other errors propagate unchanged, nothing is retained between calls."""

from __future__ import annotations

import gc
import warnings

import pytest
import torch
from torch import nn

import fastviz as fv
from fastviz.errors import OutOfBudgetError

from conftest import materialise, small_convnet


class MemoryLimited(nn.Module):
    """Runs ``net`` but raises like an allocator that cannot serve more than ``limit`` rows,
    after ``skip`` calls (``limit=0``: every call after ``skip`` fails)."""

    def __init__(self, net: nn.Module, limit: int, error: str = "cuda", skip: int = 0):
        super().__init__()
        self.net, self.limit, self.error, self.skip = net, limit, error, skip
        self.calls = 0
        self.failures = 0

    def forward(self, x):
        self.calls += 1
        if self.calls > self.skip and x.shape[0] > self.limit:
            self.failures += 1
            if self.error == "cuda":
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            if self.error == "python":
                raise MemoryError("Unable to allocate 3.00 GiB for an array")
            raise RuntimeError(f"[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to allocate {x.numel() * 4000} bytes")
        return self.net(x)


def frames(n: int) -> torch.Tensor:
    torch.manual_seed(2)
    return torch.rand(n, 3, 17, 23)


CASES = {
    # method: (frames, kwargs); occlusion's clean pass sees all frames, so it gets few frames
    "occlusion": (2, dict(windows=(5,), stride=4, chunk_size=40)),
    "visual_backprop": (8, dict(chunk_size=8)),
    "grad_cam": (8, dict(chunk_size=8, layer="net.3")),
}


@pytest.mark.parametrize("error", ["cuda", "cpu-allocator", "python"])
@pytest.mark.parametrize("method", sorted(CASES))
def test_back_off_gives_the_unconstrained_result(method, error):
    n, kwargs = CASES[method]
    x = frames(n)
    net = materialise(small_convnet(), x[:1])
    free = MemoryLimited(net, limit=10**9).eval()
    tight = MemoryLimited(net, limit=3, error=error).eval()
    want = fv.explain(free, x, method=method, **kwargs)
    with fv.scheduler.record_plans() as plans:
        got = fv.explain(tight, x, method=method, **kwargs)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    assert tight.failures >= 1  # the limit was really hit
    ran = plans[-1]
    assert ran.backoffs >= 1 and ran.chunk <= 3
    assert tight.failures == ran.backoffs  # each failure halved the chunk once; none repeated
    assert ran.passes == -(-ran.rows // ran.chunk)  # every row ran exactly once after backing off


def test_one_row_out_of_memory_names_budget_and_need():
    x = frames(4)
    net = MemoryLimited(materialise(small_convnet(), x[:1]), limit=0, skip=1).eval()  # the plan's probe passes
    with pytest.raises(OutOfBudgetError, match=r"one row per forward pass: the budget is 64 MiB and the model needs about [0-9.]+ MiB per row.*\(allocator: CUDA out of memory"):
        fv.visual_backprop(net, x, memory_budget="64MiB")
    assert isinstance(OutOfBudgetError("x"), MemoryError)


def test_other_errors_propagate_unchanged():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = materialise(small_convnet(), frames(1))

        def forward(self, x):
            if x.shape[0] > 1:
                raise RuntimeError("shape mismatch in layer 7")
            return self.net(x)

    with pytest.raises(RuntimeError, match="^shape mismatch in layer 7$"):
        fv.visual_backprop(Broken().eval(), frames(4), chunk_size=4)


def test_per_sample_classes_survive_chunking():
    x = frames(6)
    net = materialise(small_convnet(classes=4), x[:1])
    classes = fv.targets.Class([0, 1, 2, 3, 0, 1])
    whole = fv.grad_cam(net, x, layer="3", target=classes, chunk_size=6)
    chunked = fv.grad_cam(net, x, layer="3", target=classes, chunk_size=4)
    torch.testing.assert_close(chunked, whole)


@pytest.mark.parametrize("method", sorted(CASES))
def test_no_tensors_retained_between_calls(method):
    n, kwargs = CASES[method]
    x = frames(n)
    net = MemoryLimited(materialise(small_convnet(), x[:1]), limit=3).eval()
    fv.explain(net, x, method=method, **kwargs)  # warm-up: caches, compiled kernels

    def live_tensors() -> int:
        gc.collect()
        with warnings.catch_warnings():  # isinstance() on some deprecated torch objects warns
            warnings.simplefilter("ignore")
            return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))

    before = live_tensors()
    result = fv.explain(net, x, method=method, **kwargs)
    del result
    assert live_tensors() == before


def test_plans_are_recorded_and_visible():
    x = frames(5)
    net = materialise(small_convnet(), x[:1])
    with fv.scheduler.record_plans() as plans:
        fv.visual_backprop(net, x, chunk_size=2)
    planned, ran = plans
    assert (planned.rows, planned.chunk, planned.passes) == (5, 2, 3)
    assert (ran.passes, ran.backoffs) == (3, 0)
    assert ran.as_dict()["predicted_peak_bytes"] == 2 * ran.row_bytes * fv.scheduler.SAFETY


def test_occlusion_clean_pass_backs_off_too():
    """More frames than fit in one pass: the clean pass is chunked and backs off as well."""
    x = frames(5)
    net = materialise(small_convnet(), x[:1])
    tight = MemoryLimited(net, limit=2).eval()
    want = fv.occlusion(MemoryLimited(net, limit=10**9).eval(), x, windows=(6,), stride=5, chunk_size=2)
    got = fv.occlusion(tight, x, windows=(6,), stride=5)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    assert tight.failures >= 1


def test_fixed_chunk_above_the_budget_warns(caplog):
    x = frames(2)
    net = materialise(small_convnet(), x[:1])
    with caplog.at_level("WARNING", logger="fastviz.scheduler"):
        fv.scheduler.plan(net, x[:1], rows=5000, memory_budget="1MiB", chunk=5000)
    assert "above the memory budget" in caplog.text


def test_is_out_of_memory():
    oom = fv.scheduler.is_out_of_memory
    assert oom(torch.OutOfMemoryError("x")) and oom(MemoryError("x"))
    assert oom(RuntimeError("CUDA error: out of memory")) and oom(RuntimeError("CUBLAS_STATUS_ALLOC_FAILED when calling"))
    assert not oom(RuntimeError("shape mismatch")) and not oom(ValueError("can't allocate memory"))
    assert not oom(OutOfBudgetError("already reported"))
