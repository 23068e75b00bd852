"""Window scores -> occlusion map (fastviz.kernels.scoring) on PilotNet's workload: 66x200
frames, the 1,872 windows of sizes 8/16/32 at stride 4, for B = 1 and B = 64 frames of scores.

Compared on the same work (scores (B, 1872) float32 -> the multi-scale map (B, 66, 200)):
- ``torch-reference``: scoring.occlusion_map(backend="torch"), 0/1 masks + one matmul per scale
  (works for any window table);
- ``fastviz-grid``: fastviz's current path, perturbation.scale_maps + combine_scales (two small
  matmuls per scale with the regular grid's row/column coverage matrices);
- ``cpu-twin``: scoring.occlusion_map(backend="cpu"), the Numba CPU twin (compiled beforehand);
- ``cuda-kernel``: scoring.occlusion_map(backend="cuda"), only when torch sees a GPU.

Every call goes through the public entry point, argument checks included. Also the CPU twin's
first-call latency in a fresh interpreter (``first-call`` group; B = 1 takes the serial path, B = 64
the thread pool), with the Numba cache absent (compile) and present (cache load): the subprocess measures the first call itself and the
figure goes to ``extra_info["first_call_ms"]``; the benchmark's own timing there is the whole
subprocess (interpreter start and imports included).

Run: ``python -m pytest benchmarks/test_bench_kernel_scoring.py -q --benchmark-json=...``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from fastviz.kernels import scoring

from fastviz.methods import perturbation

HEIGHT, WIDTH, WINDOWS, STRIDE = 66, 200, (8, 16, 32), 4
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
BATCHES = [1, 64]
ROUNDS = {1: 40, 64: 15}


def workload(device, batch):
    grids = perturbation.window_grids(HEIGHT, WIDTH, WINDOWS, STRIDE)
    boxes, scale = scoring.window_table(grids)
    torch.manual_seed(0)
    scores = torch.randn(batch, boxes.shape[0], device=device)
    return grids, boxes.to(device), scale.to(device), scores


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def impls(device):
    names = ["torch-reference", "fastviz-grid"] + (["cpu-twin"] if device == "cpu" else ["cuda-kernel"])
    return [pytest.param(device, name, id=f"{device}-{name}") for name in names]


@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: f"B{b}")
@pytest.mark.parametrize("device,impl", [p for d in DEVICES for p in impls(d)])
def test_occlusion_map(benchmark, device, impl, batch):
    grids, boxes, scale, scores = workload(device, batch)
    benchmark.group = f"kernel-scoring-{device}-B{batch}"
    benchmark.extra_info.update(impl=impl, device=device, batch=batch, windows=boxes.shape[0])
    if impl == "fastviz-grid":
        def call():
            return perturbation.combine_scales(*perturbation.scale_maps(scores, grids, HEIGHT, WIDTH))
    else:
        backend = {"torch-reference": "torch", "cpu-twin": "cpu", "cuda-kernel": "cuda"}[impl]

        def call():
            return scoring.occlusion_map(scores, boxes, scale, len(grids), HEIGHT, WIDTH, backend=backend)

    def run():
        out = call()
        sync(device)
        return out

    out = benchmark.pedantic(run, rounds=ROUNDS[batch], warmup_rounds=2)  # warm-up compiles / loads
    assert out.shape == (batch, HEIGHT, WIDTH)
    want = perturbation.combine_scales(*perturbation.scale_maps(scores, grids, HEIGHT, WIDTH))
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)


FIRST_CALL = r"""
import json, sys, time
t0 = time.perf_counter()
import torch
from fastviz.kernels import scoring
from fastviz.methods.perturbation import window_grids
boxes, scale = scoring.window_table(window_grids(66, 200, (8, 16, 32), 4))
scores = torch.randn(int(sys.argv[1]), boxes.shape[0])
t1 = time.perf_counter()
scoring.occlusion_map(scores, boxes, scale, 3, 66, 200, backend="cpu")
t2 = time.perf_counter()
scoring.occlusion_map(scores, boxes, scale, 3, 66, 200, backend="cpu")
t3 = time.perf_counter()
print(json.dumps({"import_ms": (t1 - t0) * 1e3, "first_call_ms": (t2 - t1) * 1e3, "second_call_ms": (t3 - t2) * 1e3}))
"""


def first_call(cache_dir: str, batch: int) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    done = subprocess.run([sys.executable, "-c", FIRST_CALL, str(batch)], env=env, capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[1])
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: f"B{b}")  # B = 1: serial path; B = 64: thread pool
@pytest.mark.parametrize("cache", ["absent", "present"])
def test_cpu_twin_first_call(benchmark, cache, batch, tmp_path):
    benchmark.group = "kernel-scoring-first-call"
    benchmark.extra_info.update(impl="cpu-twin", device="cpu", batch=batch, windows=1872, numba_cache=cache)
    present = str(tmp_path / "numba-cache")
    if cache == "present":
        first_call(present, batch)  # fills the cache
    figures = []

    def run():
        if cache == "absent":
            with tempfile.TemporaryDirectory() as empty:
                figures.append(first_call(empty, batch))
        else:
            figures.append(first_call(present, batch))

    benchmark.pedantic(run, rounds=3, warmup_rounds=0)
    for key in ("import_ms", "first_call_ms", "second_call_ms"):
        benchmark.extra_info[key] = round(statistics.median(f[key] for f in figures), 2)
        benchmark.extra_info[key + "_all"] = [round(f[key], 2) for f in figures]
