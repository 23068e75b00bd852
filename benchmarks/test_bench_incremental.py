"""Incremental occlusion (issue 13) against full recomputation and the peers, interleaved.

Workloads (what issue 13 names):
- ``pilotnet-1`` / ``pilotnet-8``: the bundled trained PilotNet on 1 and 8 frames of the bundled
  drive log, windows 8/16/32 at stride 4 (1,872 windows per frame);
- ``resnet50-1``: the ResNet-50-sized net (benchmarks/models.py, random weights) on one random
  224x224 frame, 32-pixel windows at stride 8 (625 windows).

Implementations, each on the same frames and windows:
- ``incremental``: ``fv.occlusion(..., incremental=True)`` (exact);
- ``full``: ``fv.occlusion(..., incremental=False)`` (masked copies, full forward passes);
- ``captum-<ppe>``: captum.attr.Occlusion, one call per window size, at several
  ``perturbations_per_eval``; the report takes the best (Captum places windows only where they
  fit at the stride: 1,733 instead of 1,872 for PilotNet, 625 for the ResNet);
- ``loop-64``: a plain loop that masks windows with tensor slicing and runs them in batches of 64;
- approximate modes, on PilotNet only: ``drill-<coarse>-<fraction>`` (adaptive drill-down),
  ``drill-scales-<f32>`` (drill-down with per-scale settings, see ``DRILL_SCALES``),
  ``drill-checker-<scales>`` (a checkerboard first pass on those scales, see ``DRILL_CHECKER``) and
  ``tau-<tau>`` (projective-field threshold), with their SSIM to the exact maps
  (:func:`fastviz.similarity.ssim`, min and mean over the frames).

Every implementation runs once per round, rounds interleaved (so drift in the machine's speed
hits all alike); medians of the rounds are reported, with the multiply-accumulates per window of
the incremental and the full pass (``fastviz.methods.incremental.plan_scale``). pytest-benchmark
records the incremental run; the interleaved figures are in ``extra_info``. Chunk plans are
measured (``fastviz.scheduler.tune``) in a warm-up before the rounds.

Run: ``python -m pytest benchmarks/test_bench_incremental.py -q -s --benchmark-json=benchmarks/results-incremental-cpu.json``
(on a lent GPU, the same runs on CUDA: ``scripts/gpu_check.sh``).
"""

from __future__ import annotations

import json
import statistics
import time

import numpy as np
import pytest
import torch

import fastviz as fv
import models as bench_models
from fastviz.methods import incremental as inc
from fastviz.methods.perturbation import window_grids
from fastviz.similarity import ssim

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
WORKLOADS = {
    "pilotnet-1": dict(model="pilotnet", frames=1, windows=(8, 16, 32), stride=4, rounds=5, ppe=(16, 64, 256, 1733)),
    "pilotnet-8": dict(model="pilotnet", frames=8, windows=(8, 16, 32), stride=4, rounds=3, ppe=(8, 16, 64, 256)),
    "resnet50-1": dict(model="resnet50-like", frames=1, windows=(32,), stride=8, rounds=2, ppe=(16, 64)),
}
DRILL = ((8, 0.3), (8, 0.1), (12, 0.05))
#: Per-scale drill-down (``drill-scales-<f32>``): windows 8 and 16 interpolated from strides 12
#: and 8, windows 32 from stride 8 with the fraction f32 rescored; chosen offline on 16 frames
#: of the bundled log from exact scores (the largest windows carry the combined map).
DRILL_SCALES = (0.5, 0.4)
#: Drill-down with a checkerboard first pass (``drill-checker-<name>``): per scale, the coarse
#: stride or "checkerboard", and no rescoring; chosen offline like ``DRILL_SCALES``.
DRILL_CHECKER = {
    "32": {8: 12, 16: 8, 32: "checkerboard"},
    "16-32": {8: 12, 16: "checkerboard", 32: "checkerboard"},
}
TAUS = (0.9, 0.7)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def workload(name: str, device: str):
    spec = WORKLOADS[name]
    if spec["model"] == "pilotnet":
        model = fv.models.load("pilotnet-carracing").to(device)
        log = fv.data.load_drive_log()
        idx = np.linspace(0, len(log.frames) - 1, spec["frames"]).astype(int)
        x = model.preprocess(log.frames[idx]).to(device)
    else:
        model = bench_models.build("resnet50-like", device=device)
        torch.manual_seed(0)
        x = torch.rand(spec["frames"], 3, 224, 224, device=device)
    return model, x, spec


def macs_per_window(model, x, windows, stride) -> tuple[float, float]:
    g = inc.trace(model)
    clean, _ = inc.clean_pass(g, x[:1])
    plans = []
    for gr in window_grids(x.shape[2], x.shape[3], windows, stride):
        plans.append(inc.plan_scale(g, clean, gr.boxes()[:, :2].numpy(), (gr.height, gr.width)))
    return inc.macs_per_window(plans)


def loop64(model, x, windows, stride, target_index):
    """Plain occlusion: masked copies by slicing, forward passes in batches of 64."""
    b, c, h, w = x.shape
    maps = []
    with torch.no_grad():
        clean = model(x)[:, target_index]
        for i in range(b):
            per_scale = []
            for gr in window_grids(h, w, windows, stride):
                boxes = [(t, l) for t in gr.tops for l in gr.lefts]
                scores = []
                for k in range(0, len(boxes), 64):
                    part = boxes[k:k + 64]
                    batch = x[i:i + 1].repeat(len(part), 1, 1, 1)
                    for j, (t, l) in enumerate(part):
                        batch[j, :, t:t + gr.height, l:l + gr.width] = 0.0
                    scores.append(clean[i] - model(batch)[:, target_index])
                s = torch.cat(scores).view(len(gr.tops), len(gr.lefts))
                total = torch.zeros(h, w, device=x.device)
                count = torch.zeros(h, w, device=x.device)
                for (t, l), v in zip(boxes, s.flatten()):
                    total[t:t + gr.height, l:l + gr.width] += v
                    count[t:t + gr.height, l:l + gr.width] += 1
                per_scale.append(total / count)
            maps.append(torch.stack(per_scale).mean(0))
    return torch.stack(maps)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(WORKLOADS))
def test_incremental_interleaved(benchmark, device, name):
    model, x, spec = workload(name, device)
    windows, stride = spec["windows"], spec["stride"]
    target = None
    target_index = 0
    if spec["model"] != "pilotnet":
        with torch.no_grad():
            target_index = int(model(x[:1]).argmax(1)[0])
        target = fv.targets.Class(target_index)
    kw = dict(windows=windows, stride=stride, target=target)

    runs = {
        "incremental": lambda: fv.occlusion(model, x, incremental=True, **kw),
        "full": lambda: fv.occlusion(model, x, incremental=False, **kw),
    }
    try:
        import captum.attr as ca

        occ = ca.Occlusion(model)
        for ppe in spec["ppe"]:
            def captum_run(ppe=ppe):
                maps = [occ.attribute(x, sliding_window_shapes=(3, s, s), strides=(3, stride, stride), baselines=0.0,
                                      target=target_index, perturbations_per_eval=ppe) for s in windows]
                return torch.stack(maps).mean(0)
            runs[f"captum-{ppe}"] = captum_run
    except ImportError:
        pass
    runs["loop-64"] = lambda: loop64(model, x, windows, stride, target_index)
    if spec["model"] == "pilotnet":
        for coarse, frac in DRILL:
            runs[f"drill-{coarse}-{frac}"] = lambda c=coarse, f=frac: fv.occlusion(model, x, drill_down=f, coarse_stride=c, **kw)
        for f32 in DRILL_SCALES:
            runs[f"drill-scales-{f32}"] = lambda f=f32: fv.occlusion(
                model, x, drill_down={8: 0.0, 16: 0.0, 32: f}, coarse_stride={8: 12, 16: 8, 32: 8}, **kw)
        for label, first in DRILL_CHECKER.items():
            runs[f"drill-checker-{label}"] = lambda c=first: fv.occlusion(
                model, x, drill_down={8: 0.0, 16: 0.0, 32: 0.0}, coarse_stride=c, **kw)
        for tau in TAUS:
            runs[f"tau-{tau}"] = lambda t=tau: fv.occlusion(model, x, tau=t, **kw)

    results: dict[str, object] = {}
    for key, fn in runs.items():  # warm-up: compilation, traces, measured chunk plans
        if key.startswith(("captum", "loop")) and spec["model"] != "pilotnet":
            continue  # minutes each on the ResNet: their single warm-up would double the run
        results[key] = fn()
        sync(device)
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(spec["rounds"]):
        for key, fn in runs.items():
            t0 = time.perf_counter()
            out = fn()
            sync(device)
            times[key].append(time.perf_counter() - t0)
            results[key] = out
    full = results["full"]
    with torch.no_grad():  # the map holds output differences: compare with the output's size
        scale = max(model(x)[:, target_index].abs().max().item(), full.abs().max().item())
    err = (results["incremental"] - full).abs().max().item() / scale
    # float32 on the CPU: ~1e-7 (the scale: the larger of the target's value and the map's
    # largest delta, since a frame may steer near 0); CUDA convolutions run in TF32 by default
    assert err < (1e-5 if device == "cpu" else 1e-2)
    medians = {k: statistics.median(v) for k, v in times.items()}
    captum = {k: v for k, v in medians.items() if k.startswith("captum")}
    best_captum = min(captum, key=captum.get) if captum else None
    inc_macs, full_macs = macs_per_window(model, x, windows, stride)
    summary = {
        "device": device, "workload": name, "frames": int(x.shape[0]),
        "windows_per_frame": sum(len(g) for g in window_grids(x.shape[2], x.shape[3], windows, stride)),
        "median_s": medians, "rounds": spec["rounds"], "best_captum": best_captum,
        "macs_per_window_incremental": inc_macs, "macs_per_window_full": full_macs,
        "incremental_vs_full_max_error_rel": err,
    }
    if best_captum:
        summary["speedup_vs_captum"] = {k: captum[best_captum] / v for k, v in medians.items()}
    summary["speedup_vs_full"] = {k: medians["full"] / v for k, v in medians.items()}
    if spec["model"] == "pilotnet":
        exact_maps = results["incremental"]
        summary["ssim"] = {}
        for key in runs:
            if key.startswith(("drill", "tau")):
                s = ssim(results[key].double().cpu(), exact_maps.double().cpu())
                summary["ssim"][key] = {"min": float(s.min()), "mean": float(s.mean())}
    benchmark.group = f"incremental-{name}-{device}"
    benchmark.extra_info.update(summary)
    print("\n" + json.dumps(summary, indent=1))
    benchmark.pedantic(runs["incremental"], rounds=1, warmup_rounds=0)
