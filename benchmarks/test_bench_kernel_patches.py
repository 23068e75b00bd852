"""Patch-assembly kernel (fastviz.kernels.patches) on incremental occlusion's PilotNet workload.

PilotNet's second conv input: the clean 24x31x98 output of its first conv for one frame
(channels-last, as fastviz feeds the CPU), and 735 rows, the 8x8 windows at stride 4 of the
66x200 input (15 x 49 corners). A window changes a 6x6 patch of the first conv's output (its
5x5 stride-2 projective field, shifted inwards at the map's edges); the second conv (5x5,
stride 2) recomputes its outputs over that patch from a 13x13 receptive-field region, the patch
4 pixels in from its corner (regions reaching past the map are padded with 0). Rows are written
into a preallocated channels-last buffer, float32:

- ``region``: the 13x13 regions with each row's 6x6 patch written in, in chunks of 16 rows
  (fastviz's CPU chunk; 46 calls per round into one 16-row buffer, ms per call = median / 46,
  ``calls`` in extra_info) and all 735 rows in one call;
- ``write-back``: region ``(0, 0)`` of size 31x98, the whole map of each row with its patch
  written in (where the incremental pass hands over to full inference), in chunks of 16 rows
  (a 16-row buffer of 1.17M elements), and on CUDA also all 735 rows at once (214 MB).

Implementations: the plain-torch reference, the Numba CPU twin (with ``cpu-1thread`` /
``cpu-prange`` its one-thread and parallel drivers forced, whatever
``patches._PARALLEL_MIN_ELEMENTS`` picks: it is to be tuned from these), and the CUDA kernel
when torch sees a GPU.

First call: the CPU twin's first call in a fresh interpreter (``assemble_cpu`` on one 16-row
region chunk, which takes the parallel driver: compile or cache load, plus Numba's thread-pool
start), with Numba's cache absent (an empty ``NUMBA_CACHE_DIR`` per round) and present (a primed
one). The benchmark's own time is the whole subprocess (interpreter, torch and numba imports
included); the first call alone is ``first_call_ms`` in extra_info.

Run: ``python -m pytest benchmarks/test_bench_kernel_patches.py -q --benchmark-json=patches.json``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile

import pytest
import torch

from fastviz.kernels import patches

C, H, W = 24, 31, 98  # PilotNet's first conv output (second conv input) at 66x200
PATCH, REGION, OFFSET = (6, 6), (13, 13), 4
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
IMPLS = {"cpu": ["torch", "cpu", "cpu-1thread", "cpu-prange"], "cuda": ["torch", "cuda"]}
CASES = [(d, i, kind, chunk) for d in DEVICES for i in IMPLS[d] for kind, chunk in
         [("region", 16), ("region", 735), ("write-back", 16)] + ([("write-back", 735)] if d == "cuda" else [])]


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def workload(device):
    """The clean map, each row's frame, patch corner and region corner, and the patches."""
    torch.manual_seed(0)
    clean = torch.rand(1, C, H, W, device=device).contiguous(memory_format=torch.channels_last)
    tops = torch.arange(0, 57, 4, device=device)  # 8x8 windows at stride 4 on 66x200: 15 x 49
    lefts = torch.arange(0, 193, 4, device=device)
    py = (tops // 2 - 2).clamp(0, H - PATCH[0])  # the first conv's changed 6x6, shifted inwards
    px = (lefts // 2 - 2).clamp(0, W - PATCH[1])
    patch_at = torch.stack([py.repeat_interleave(len(lefts)), px.repeat(len(tops))], dim=1)
    n = patch_at.shape[0]
    frame = torch.zeros(n, dtype=torch.long, device=device)
    patch = torch.rand(n, C, *PATCH, device=device).contiguous(memory_format=torch.channels_last)
    return clean, frame, patch_at, patch_at - OFFSET, patch


@pytest.mark.parametrize(
    "device,impl,kind,chunk", CASES, ids=[f"{d}-{i}-{k}-chunk{c}" for d, i, k, c in CASES]
)
def test_assemble(benchmark, monkeypatch, device, impl, kind, chunk):
    clean, frame, patch_at, region_at, patch = workload(device)
    n = frame.shape[0]
    assert n == 735
    if kind == "write-back":
        region_at = torch.zeros_like(region_at)
    size = REGION if kind == "region" else (H, W)
    if impl.startswith("cpu-"):
        monkeypatch.setattr(patches, "_PARALLEL_MIN_ELEMENTS", 0 if impl == "cpu-prange" else 1 << 62)
    out = torch.empty(chunk, C, *size, device=device).contiguous(memory_format=torch.channels_last)
    starts = range(0, n, chunk)
    benchmark.group = f"kernel-patches-{device}-{kind}-chunk{chunk}"
    benchmark.extra_info.update(impl=impl, device=device, kind=kind, chunk=chunk, calls=len(starts), rows=n,
                                size=list(size), elements_per_call=chunk * C * size[0] * size[1])
    backend = impl.split("-")[0]

    def run():
        for r0 in starts:
            r1 = r0 + chunk
            patches.assemble(clean, frame[r0:r1], region_at[r0:r1], size, patch[r0:r1], patch_at[r0:r1],
                             out=out, backend=backend)
        sync(device)

    run()  # compile / load the kernel outside the timing
    benchmark.pedantic(run, rounds=15 if chunk == 16 else 5, warmup_rounds=1)
    r0 = starts[-1]
    want = patches.assemble_torch(clean, frame[r0:], region_at[r0:], size, patch[r0:], patch_at[r0:])
    assert torch.equal(out[: n - r0], want)


FIRST_CALL = """
import json, time
t0 = time.perf_counter()
import torch
from fastviz.kernels.patches import assemble_cpu
t1 = time.perf_counter()
clean = torch.rand(1, 24, 31, 98).contiguous(memory_format=torch.channels_last)
frame, region_at, patch_at = torch.zeros(16, dtype=torch.long), torch.tensor([[4, 4]] * 16), torch.tensor([[8, 8]] * 16)
patch = torch.rand(16, 24, 6, 6).contiguous(memory_format=torch.channels_last)
out = torch.empty(16, 24, 13, 13).contiguous(memory_format=torch.channels_last)
assemble_cpu(clean, frame, region_at, (13, 13), patch, patch_at, 0.0, out)
t2 = time.perf_counter()
assemble_cpu(clean, frame, region_at, (13, 13), patch, patch_at, 0.0, out)
t3 = time.perf_counter()
print(json.dumps({"import_ms": (t1 - t0) * 1e3, "first_call_ms": (t2 - t1) * 1e3, "second_call_ms": (t3 - t2) * 1e3}))
"""


def first_call(cache_dir: str) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    env.pop("NUMBA_DISABLE_JIT", None)
    done = subprocess.run([sys.executable, "-c", FIRST_CALL], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("cache", ["absent", "present"])
def test_cpu_twin_first_call(benchmark, cache, tmp_path):
    benchmark.group = "kernel-patches-first-call"
    benchmark.extra_info.update(impl="cpu", device="cpu", cache=cache, rows=16,
                                timing="benchmark time: whole subprocess; first_call_ms: the first call alone")
    primed = str(tmp_path / "primed")
    if cache == "present":
        first_call(primed)  # compiles and writes the cache
    runs = []

    def setup():
        return (primed if cache == "present" else tempfile.mkdtemp(dir=tmp_path),), {}

    def run(cache_dir):
        runs.append(first_call(cache_dir))

    benchmark.pedantic(run, setup=setup, rounds=3, warmup_rounds=0)
    for key in ("first_call_ms", "second_call_ms", "import_ms"):
        benchmark.extra_info[key] = round(statistics.median(r[key] for r in runs), 2)
        benchmark.extra_info[key + "_all"] = [round(r[key], 2) for r in runs]
