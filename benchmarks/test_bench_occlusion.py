"""Occlusion cost on the reference workload: PilotNet, one 66x200 frame, windows 8/16/32 at
stride 4 (1,872 windows).

Compared on the same work, in one run:
- ``fastviz``: fastviz.occlusion (windows of all scales in planned chunks, masks built on the device);
- ``loop``: the plain per-window loop (one forward pass per window, tests/references.py);
- ``captum``: captum.attr.Occlusion, one call per window size (it takes one window shape per
  call), at each ``perturbations_per_eval`` in PPE; the report picks the best.

Captum places windows only where they fit at the stride (1,733 windows here) while fastviz adds
the edge-flush row and column (1,872), so fastviz does 8% more forward passes in these timings.

Run: ``python -m pytest benchmarks -q --benchmark-json=benchmarks/results.json`` then
``python benchmarks/report.py benchmarks/results.json``.
"""

from __future__ import annotations

import pytest
import torch

import fastviz as fv
from references import occlusion_loop

WINDOWS, STRIDE = (8, 16, 32), 4
PPE = (16, 32, 64, 256, 1733)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def setup(device):
    torch.manual_seed(0)
    model = fv.models.PilotNet().to(device).eval()
    x = torch.rand(1, 3, 66, 200, device=device)
    return model, x


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("chunk", [None, 1872], ids=["planned", "one-pass"])
def test_fastviz(benchmark, device, chunk):
    model, x = setup(device)
    benchmark.group = f"occlusion-{device}"
    benchmark.extra_info.update(impl="fastviz", device=device, windows=1872)
    if chunk is not None:
        benchmark.extra_info["chunk"] = chunk

    def run():
        out = fv.occlusion(model, x, windows=WINDOWS, stride=STRIDE, chunk_size=chunk)
        sync(device)
        return out

    out = benchmark.pedantic(run, rounds=9, warmup_rounds=1)
    assert out.shape == (1, 66, 200)


@pytest.mark.parametrize("device", DEVICES)
def test_plain_loop(benchmark, device):
    model, x = setup(device)
    benchmark.group = f"occlusion-{device}"
    benchmark.extra_info.update(impl="loop", device=device, windows=1872)

    def run():
        out = occlusion_loop(model, x, windows=WINDOWS, stride=STRIDE)
        sync(device)
        return out

    benchmark.pedantic(run, rounds=3, warmup_rounds=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("ppe", PPE)
def test_captum(benchmark, device, ppe):
    captum = pytest.importorskip("captum.attr")
    model, x = setup(device)
    occ = captum.Occlusion(model)
    benchmark.group = f"occlusion-{device}"
    benchmark.extra_info.update(impl="captum", device=device, ppe=ppe, windows=1733)

    def run():
        maps = [
            occ.attribute(x, sliding_window_shapes=(3, s, s), strides=(3, STRIDE, STRIDE), baselines=0.0,
                          target=0, perturbations_per_eval=ppe)
            for s in WINDOWS
        ]
        sync(device)
        return torch.stack(maps).mean(0)

    out = benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    assert out.shape == (1, 3, 66, 200)
