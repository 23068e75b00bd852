"""Chunk planning: budget parsing, footprint probe, plan arithmetic."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fastviz import scheduler
from fastviz.errors import InputError


@pytest.mark.parametrize(
    "text,want",
    [("512MiB", 512 * 2**20), ("8GiB", 8 * 2**30), ("1.5GB", 1_500_000_000), (" 64 kib ", 65536), ("1000", 1000), (4096, 4096)],
)
def test_parse_budget(text, want):
    assert scheduler.parse_budget(text) == want


def test_fraction_of_available_memory(monkeypatch):
    monkeypatch.setattr(scheduler, "_available_bytes", lambda device: 10_000)
    assert scheduler.parse_budget(0.25) == 2500
    assert scheduler.default_budget("cpu") == 2500  # a quarter of available, under the cap


@pytest.mark.parametrize("bad", ["", "lots", "12 parsecs", "-5MiB", 0, -1, 0.0, 1.5, True, "0.1B"])
def test_malformed_budget(bad):
    with pytest.raises(InputError, match="budget"):
        scheduler.parse_budget(bad)


def test_row_footprint_counts_input_and_every_leaf_output():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    row = torch.zeros(1, 3, 8, 8)
    # input 192 + conv 144 + relu 144 + flatten 144 + linear 2 floats, 4 bytes each
    assert scheduler.row_footprint(net, row) == 4 * (192 + 144 + 144 + 144 + 2)
    assert not any(m._forward_hooks for m in net.modules())


def test_plan_arithmetic():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    row = torch.zeros(1, 3, 8, 8)
    per_row = 4 * (192 + 144 + 144 + 144 + 2)
    p = scheduler.plan(net, row, rows=1000, memory_budget=int(per_row * scheduler.SAFETY * 64))
    assert (p.chunk, p.passes, p.row_bytes) == (64, 16, per_row)
    assert p.predicted_peak_bytes <= p.budget_bytes
    assert scheduler.plan(net, row, rows=10, memory_budget="1GiB").chunk == 10  # never more than the rows
    cap = scheduler.CPU_CHUNK_BYTES // per_row  # CPU: cache-sized chunks even under a big budget
    assert scheduler.plan(net, row, rows=10**9, memory_budget="64GiB", cache_sized=True).chunk == cap
    big = scheduler.plan(net, row, rows=10**9, memory_budget="64GiB")  # opt-in: budget only
    assert big.chunk == int(64 * 2**30 // (per_row * scheduler.SAFETY))
    # the cap uses the no-grad footprint, the budget the need with the factor
    doubled = scheduler.plan(net, row, rows=10**9, memory_budget="64GiB", factor=2.0, cache_sized=True)
    assert (doubled.chunk, doubled.row_bytes) == (cap, 2 * per_row)
    assert scheduler.plan(net, row, rows=10, memory_budget=1).chunk == 1  # at least one row
    fixed = scheduler.plan(net, row, rows=10, chunk=3)
    assert (fixed.passes, fixed.row_bytes) == (4, per_row)  # the footprint is measured either way
    with pytest.raises(InputError, match="chunk"):
        scheduler.plan(net, row, rows=10, chunk=0)


def test_tune_cpu_allocator_is_accepted_by_glibc():
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("needs glibc")
    assert scheduler.tune_cpu_allocator() is True


_MALLINFO = """
import ctypes, sys, torch
from fastviz import scheduler

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "reserve":
    scheduler.reserve_working_set(32 * 2**20, "cpu")
before = libc.mallinfo2().hblkhd
block = torch.empty(16 * 2**20, dtype=torch.uint8)  # 16 MiB: mapped separately by default
print(libc.mallinfo2().hblkhd - before)
"""


def test_reserve_working_set_moves_chunk_buffers_into_the_heap():
    """In a fresh process, a 16 MiB buffer gets its own mapping under glibc's defaults (and is
    unmapped again when freed); after reserve_working_set it comes from the heap, for reuse."""
    import platform
    import subprocess
    import sys

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("needs glibc")

    def mapped_bytes(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", _MALLINFO, mode], capture_output=True, text=True, check=True)
        return int(out.stdout.strip())

    assert mapped_bytes("default") >= 16 * 2**20
    assert mapped_bytes("reserve") == 0


def test_reserve_working_set_is_a_no_op_elsewhere():
    for n in (0, -5):
        assert scheduler.reserve_working_set(n, "cpu") is None
    assert scheduler.reserve_working_set(2**20, "meta") is None


def test_budget_below_one_row_warns(caplog):
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    with caplog.at_level("WARNING", logger="fastviz.scheduler"):
        p = scheduler.plan(net, torch.zeros(1, 3, 8, 8), rows=10, memory_budget=100)
    assert p.chunk == 1
    assert "below one row's measured need" in caplog.text


def test_row_footprint_is_measured_once_per_signature():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    calls = []
    net.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    row = torch.zeros(1, 3, 8, 8)
    first = scheduler.row_footprint(net, row)
    assert scheduler.row_footprint(net, row) == first and len(calls) == 1  # cached
    scheduler.row_footprint(net, torch.zeros(1, 3, 8, 8, dtype=torch.float64).float())  # same signature
    assert len(calls) == 1
    net.append(nn.ReLU())  # a changed module structure is measured again
    scheduler.row_footprint(net, row)
    assert len(calls) == 2


def test_parse_device():
    assert scheduler.parse_device("cpu") == torch.device("cpu")
    with pytest.raises(InputError, match="unknown device 'gpu0'"):
        scheduler.parse_device("gpu0")
    with pytest.raises(InputError, match="unsupported device 'meta'"):
        scheduler.parse_device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available"):
            scheduler.parse_device("cuda")


# ---------------------------------------------------------------------------------------------
# measured chunk plans


class _Timed:
    """A chunk step whose time is known: a fixed cost per pass plus a cost per row, which grows
    beyond ``knee`` rows (a working set that leaves the cache), so throughput peaks at ``knee``."""

    def __init__(self, knee=64, fail_above=None, stall_once=None):
        self.knee, self.fail_above, self.calls, self.spans = knee, fail_above, [], []
        self.stall_once = stall_once  # a chunk size whose first pass stalls (preempted)

    def __call__(self, r0, r1):
        import time

        c = r1 - r0
        self.calls.append(c)
        self.spans.append((r0, r1))
        if self.fail_above is not None and c > self.fail_above:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        stall = 0.0
        if c == self.stall_once and self.calls.count(c) == 1:
            stall = 0.1
        time.sleep(0.004 + 2e-5 * c + (2e-4 * (c - self.knee) if c > self.knee else 0.0) + stall)


@pytest.fixture
def tune_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTVIZ_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("FASTVIZ_TUNE", raising=False)
    monkeypatch.setattr(scheduler, "_tuned", {})
    return tmp_path


def _plan(chunk, rows=4096, budget=2**30, row_bytes=1000):
    return scheduler.Plan(rows=rows, chunk=chunk, passes=-(-rows // chunk), row_bytes=row_bytes, budget_bytes=budget)


def test_tune_finds_the_fastest_chunk_and_caches_it_on_disk(tune_cache, monkeypatch):
    import json

    monkeypatch.setattr(scheduler, "TUNE_SECONDS", 10.0)  # the search, not its time limit

    step = _Timed(knee=64)
    tuned = scheduler.tune(_plan(8), step, "cpu", ("test", "knee64"))
    assert tuned.chunk == 64 and tuned.passes == 4096 // 64 and tuned.rows == 4096
    assert max(step.calls) == 128  # it looked one doubling past the best
    # each size timed over TUNE_CHUNKS consecutive chunks of different rows, as the run has them
    assert step.spans[1:1 + scheduler.TUNE_CHUNKS] == [(k * 8, (k + 1) * 8) for k in range(scheduler.TUNE_CHUNKS)]
    data = json.loads((tune_cache / "chunk-plans.json").read_text())
    (entry,) = data.values()
    assert entry["chunk"] == 64 and set(entry["rows_per_s"]) >= {"8", "16", "32", "64", "128"}
    # another process (the in-memory cache emptied) reads the disk cache: no step runs
    scheduler._tuned.clear()
    again = _Timed(knee=64)
    assert scheduler.tune(_plan(8), again, "cpu", ("test", "knee64")).chunk == 64 and again.calls == []
    # halving when the guess is too large
    scheduler._tuned.clear()
    down = scheduler.tune(_plan(512), _Timed(knee=64), "cpu", ("test", "from-above"))
    assert down.chunk == 64


def test_tune_is_not_misled_by_one_stalled_timing(tune_cache, monkeypatch):
    monkeypatch.setattr(scheduler, "TUNE_SECONDS", 10.0)
    step = _Timed(knee=64, stall_once=16)  # the first chunk of 16 rows stalls for 0.1 s
    assert scheduler.tune(_plan(8), step, "cpu", ("test", "stall")).chunk == 64
    assert step.calls.count(16) == 2 * scheduler.TUNE_CHUNKS  # timed twice over, the faster counts


def test_tune_keeps_the_plan_when_off_fixed_small_or_out_of_memory(tune_cache, monkeypatch):
    p = _plan(8)
    step = _Timed()
    assert scheduler.tune(p, step, "cpu", ("k",), fixed=True) is p
    with scheduler.tuning(False):
        assert scheduler.tune(p, step, "cpu", ("k",)) is p
    small = _plan(8, rows=scheduler.TUNE_MIN_ROWS - 1)
    assert scheduler.tune(small, step, "cpu", ("k",)) is small
    monkeypatch.setenv("FASTVIZ_TUNE", "0")
    assert scheduler.tune(p, step, "cpu", ("k",)) is p
    assert step.calls == []
    monkeypatch.delenv("FASTVIZ_TUNE")
    # the budget caps the search; an out-of-memory ends it at the sizes that ran
    capped = scheduler.tune(_plan(8, budget=int(32 * 1000 * scheduler.SAFETY)), _Timed(), "cpu", ("k", "cap"))
    assert capped.chunk == 32
    oom = scheduler.tune(_plan(8), _Timed(knee=64, fail_above=16), "cpu", ("k", "oom"))
    assert oom.chunk == 16


def test_unwritable_cache_only_costs_a_measurement(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("FASTVIZ_CACHE_DIR", str(blocker / "sub"))  # makedirs fails, even as root
    monkeypatch.setattr(scheduler, "_tuned", {})
    assert scheduler.tune(_plan(8), _Timed(knee=32), "cpu", ("k", "ro")).chunk == 32
    assert not (blocker / "sub").exists()
