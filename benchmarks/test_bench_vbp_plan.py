"""VisualBackProp against the forward pass of the best chunk plan (issue 13).

The bundled PilotNet on 256 frames of the bundled log: ``fv.visual_backprop`` (its chunk plan
measured by ``fastviz.scheduler.tune``) against the model's bare no-grad forward pass over the same
256 frames in chunks of 16, 32, 64, 128 and 256 rows, in the layout the frames come in
(``forward-N``, the standard one) and converted chunk by chunk to channels-last
(``forward-cl-N``, the layout VisualBackProp runs in on the CPU), every variant once per round,
rounds interleaved. The ratio reported is VisualBackProp's median over the fastest forward plan's
median, over both layouts: what VisualBackProp costs beyond the forward pass it cannot avoid
(``ratio_to_best_standard_forward``: over the standard layout's best alone).

Run: ``python -m pytest benchmarks/test_bench_vbp_plan.py -q -s --benchmark-json=benchmarks/results-vbp-plan-cpu.json``
"""

from __future__ import annotations

import json
import statistics
import time

import numpy as np
import torch

import fastviz as fv

CHUNKS = (16, 32, 64, 128, 256)
ROUNDS = 15


def test_visual_backprop_against_the_best_forward_plan(benchmark):
    model = fv.models.load("pilotnet-carracing")
    log = fv.data.load_drive_log()
    x = model.preprocess(log.frames[np.linspace(0, len(log.frames) - 1, 256).astype(int)])

    def forward(chunk, layout=torch.contiguous_format):
        with torch.no_grad():
            for r0 in range(0, x.shape[0], chunk):
                model(x[r0:r0 + chunk].contiguous(memory_format=layout))

    runs = {"visual_backprop": lambda: fv.visual_backprop(model, x)}
    runs.update({f"forward-{c}": (lambda c=c: forward(c)) for c in CHUNKS})
    runs.update({f"forward-cl-{c}": (lambda c=c: forward(c, torch.channels_last)) for c in CHUNKS})
    for fn in runs.values():  # warm-up (and the measured plan)
        fn()
    times = {k: [] for k in runs}
    for _ in range(ROUNDS):
        for key, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    best = min((k for k in med if k.startswith("forward")), key=med.get)
    best_standard = min((k for k in med if k.startswith("forward") and "-cl-" not in k), key=med.get)
    with fv.scheduler.record_plans() as plans:
        fv.visual_backprop(model, x)
    summary = {"median_s": med, "best_forward": best, "ratio_to_best_forward": med["visual_backprop"] / med[best],
               "best_standard_forward": best_standard,
               "ratio_to_best_standard_forward": med["visual_backprop"] / med[best_standard],
               "vbp_chunk": plans[-1].chunk, "rounds": ROUNDS}
    benchmark.extra_info.update(summary)
    print("\n" + json.dumps(summary, indent=1))
    benchmark.pedantic(runs["visual_backprop"], rounds=1, warmup_rounds=0)
