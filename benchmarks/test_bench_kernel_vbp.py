"""VisualBackProp's upscaling chain (fastviz.kernels.vbp) on PilotNet's geometry: 66x200 input,
convs 5x5/2 x3 and 3x3/1 x2, mean maps 31x98, 14x47, 5x22, 3x20, 1x18 (random positive maps).

Compared on the same maps, per device and batch (1, 16, 256 frames; 1,024 too on CUDA):
- ``torch``: the reference (fastviz.methods.vbp's loop: conv_transpose2d + product per layer);
- ``cpu``: the Numba CPU twin (after its compile, which is measured apart below), with
  ``cpu-1thread`` / ``cpu-prange`` its one-thread and frames-in-parallel paths forced, and
  ``cpu+normalize`` with the per-frame min-max normalisation fused in (``normalize=True``; what
  fastviz.methods.vbp otherwise does in torch after the chain);
- ``cuda``: the one-launch numba.cuda kernel, when torch sees a GPU;
- ``forward``: PilotNet's own forward pass at the same batch, for context ("the chain adds X%
  to the forward pass").

Also the CPU twin's first-call latency in a fresh Python process (``first-call`` group), with
its Numba cache absent (compile) and present (cache load): the benchmark's time is the whole
subprocess (interpreter, torch and numba imports included); ``extra_info["first_call_ms"]`` holds
the first call alone, as each subprocess measured it.

Run: ``python -m pytest benchmarks/test_bench_kernel_vbp.py -q --benchmark-json=vbp.json``.
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

import fastviz as fv
from fastviz.kernels import vbp

IN_SIZES = [(66, 200), (31, 98), (14, 47), (5, 22), (3, 20)]
MAP_SIZES = [(31, 98), (14, 47), (5, 22), (3, 20), (1, 18)]
KERNELS, STRIDES = (5, 5, 5, 3, 3), (2, 2, 2, 1, 1)
GEOMETRY = [vbp.ConvGeometry(k, s, 0, 1, size) for k, s, size in zip(KERNELS, STRIDES, IN_SIZES)]

CASES = [("cpu", impl, b) for impl in ("torch", "cpu") for b in (1, 16, 256)]
# the CPU twin's two paths forced, whatever kernels.vbp._PARALLEL_PIXELS picks (it is tuned from these)
CASES += [("cpu", impl, b) for impl in ("cpu-1thread", "cpu-prange") for b in (16, 256)]
CASES += [("cpu", "cpu+normalize", b) for b in (16, 256)]
if torch.cuda.is_available():
    CASES += [("cuda", impl, b) for impl in ("torch", "cuda") for b in (1, 16, 256, 1024)]
FORWARD = [("cpu", b) for b in (1, 16, 256)]
if torch.cuda.is_available():
    FORWARD += [("cuda", b) for b in (1, 16, 256, 1024)]


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def mean_maps(batch, device):
    torch.manual_seed(0)
    return [torch.rand(batch, 1, *size, device=device) + 0.05 for size in MAP_SIZES]


def rounds(batch):
    return 5 if batch >= 256 else 15


@pytest.mark.parametrize("device,impl,batch", CASES, ids=[f"{d}-{i}-b{b}" for d, i, b in CASES])
def test_upscale_chain(benchmark, monkeypatch, device, impl, batch):
    means = mean_maps(batch, device)
    if impl.startswith("cpu-"):
        monkeypatch.setattr(vbp, "_PARALLEL_PIXELS", 0 if impl == "cpu-prange" else 1 << 62)
    benchmark.group = f"vbp-chain-{device}-b{batch}"
    benchmark.extra_info.update(kernel="vbp", impl=impl, device=device, batch=batch)
    normalize = impl.endswith("+normalize")
    backend = impl.split("+")[0].split("-")[0]
    want = vbp.upscale_chain(means, GEOMETRY, backend="torch", normalize=normalize)

    def run():
        out = vbp.upscale_chain(means, GEOMETRY, backend=backend, normalize=normalize)
        sync(device)
        return out

    out = benchmark.pedantic(run, rounds=rounds(batch), warmup_rounds=1)  # warm-up: compile / cache load
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6 if normalize else 0)


@pytest.mark.parametrize("device,batch", FORWARD, ids=[f"{d}-b{b}" for d, b in FORWARD])
def test_pilotnet_forward(benchmark, device, batch):
    torch.manual_seed(0)
    model = fv.models.PilotNet().to(device).eval()
    x = torch.rand(batch, 3, 66, 200, device=device)
    benchmark.group = f"vbp-chain-{device}-b{batch}"
    benchmark.extra_info.update(kernel="vbp", impl="forward", device=device, batch=batch)

    def run():
        with torch.no_grad():
            out = model(x)
        sync(device)
        return out

    out = benchmark.pedantic(run, rounds=rounds(batch), warmup_rounds=1)
    assert out.shape == (batch, 1)


FIRST_CALL = """
import time
import torch
from fastviz.kernels import vbp
geometry = [vbp.ConvGeometry(k, s, 0, 1, size) for k, s, size in zip({kernels}, {strides}, {in_sizes})]
means = [torch.rand(1, 1, *size) + 0.05 for size in {map_sizes}]
t = time.perf_counter()
vbp.upscale_chain_cpu(means, geometry)
print(time.perf_counter() - t)
""".format(kernels=KERNELS, strides=STRIDES, in_sizes=IN_SIZES, map_sizes=MAP_SIZES)


def first_call(cache_dir: str) -> float:
    """Seconds the CPU twin's first call takes in a fresh process whose Numba cache is ``cache_dir``."""
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    done = subprocess.run([sys.executable, "-c", FIRST_CALL], env=env, capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("cache", ["absent", "present"])
def test_cpu_first_call(benchmark, cache, tmp_path: Path):
    benchmark.group = "vbp-first-call"
    benchmark.extra_info.update(kernel="vbp", impl="cpu", device="cpu", batch=1, cache=cache)
    seconds: list[float] = []
    warm = tmp_path / "warm"
    if cache == "present":
        first_call(str(warm))  # fills the cache

    def setup():
        if cache == "absent":
            return (tempfile.mkdtemp(dir=tmp_path),), {}
        return (str(warm),), {}

    def run(cache_dir):
        seconds.append(first_call(cache_dir))

    benchmark.pedantic(run, setup=setup, rounds=3)
    benchmark.extra_info["first_call_ms"] = [round(s * 1e3, 2) for s in seconds]
    benchmark.extra_info["first_call_median_ms"] = round(statistics.median(seconds) * 1e3, 2)
    print(json.dumps({"cache": cache, "first_call_ms": benchmark.extra_info["first_call_ms"]}))
