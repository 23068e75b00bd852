"""Audit throughput: ``fastviz.audit`` over the bundled drive log, one method per audit.

Workload: the bundled PilotNet (``fv.models.load("pilotnet-carracing")``, loaded once per test)
audits the first frames of the bundled held-out log (``inputs=None``, ``max_frames``): 32 frames
for ``grad_cam`` and ``visual_backprop``, 8 for ``occlusion`` (its default 1,872 windows a frame
make it ~100x dearer); chunks of 8 frames, batches of 8, the default 16 curve steps, no sanity
check (``sanity_frames=0``), no progress bar, default memory budget. Each round writes a fresh
store under ``tmp_path`` (``benchmark.pedantic``'s setup names it, its teardown reads it and
removes it), after one warm-up audit (oneDNN primitives, Numba kernels, the footprint probe).

The benchmark's time is the whole call: describing the input (SHA-256 of the video, frame count),
creating the store, decoding and preprocessing the frames, the method, the metrics, the writes.
From each round's ``progress/seconds`` (seconds per chunk spent in the method, then in the
deletion/insertion metrics), ``extra_info`` holds the medians over rounds of:

- ``method_frames_per_s`` / ``method_ms_per_frame``: the method alone, inside the audit;
- ``metrics_frames_per_s`` / ``metrics_ms_per_frame``: deletion and insertion curves of the
  method's order and the random order (the clean frame, its baseline and 2 x 2 x 15 masked inputs
  through the model per frame, batched), the random order itself included;
- ``audit_frames_per_s``: frames / the audit's wall seconds (all of the above and the overheads);

and each round's figures in the ``*_all`` lists. ``--benchmark-disable`` runs one audit per test
(no warm-up, no teardown) and still fills ``extra_info``.

Run: ``python -m pytest benchmarks/test_bench_audit.py -q --benchmark-json=audit.json``.
"""

from __future__ import annotations

import shutil
import statistics

import numpy as np
import pytest
import torch

import fastviz as fv

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
#: Frames audited per round, and rounds, per method.
FRAMES = {"occlusion": 8, "grad_cam": 32, "visual_backprop": 32}
ROUNDS = {"occlusion": 3, "grad_cam": 5, "visual_backprop": 5}
CHUNK = BATCH = 8
STEPS = fv.audit.metrics.DEFAULT_STEPS


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def read_round(path, method: str) -> dict:
    """One audit store's per-frame costs: seconds of the method and of the metrics, summed over
    its chunks, and the frames they cover."""
    g = fv.audit.open_store(path)
    spec = g.attrs["spec"]
    assert spec["methods"] == [method]
    seconds = np.asarray(g["progress/seconds"][:], dtype=np.float64)
    done = np.asarray(g["progress/done"][:], dtype=bool)
    assert done.all() and np.isfinite(seconds).all()
    return {"frames": int(g["frames/ok"].shape[0]), "method_s": float(seconds[:, 0].sum()),
            "metrics_s": float(seconds[:, -1].sum()), "memory_budget": int(spec["memory_budget"])}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", ["occlusion", "grad_cam", "visual_backprop"])
def test_audit(benchmark, tmp_path, device, method):
    model = fv.models.load("pilotnet-carracing", device)
    frames, rounds = FRAMES[method], ROUNDS[method]
    benchmark.group = f"audit-{device}"
    benchmark.extra_info.update(impl="fastviz", device=device, method=method, frames=frames, chunk=CHUNK,
                                batch=BATCH, steps=STEPS)
    stores: list = []
    walls: list[float] = []
    measured: list[dict] = []

    def setup():
        path = tmp_path / f"round-{len(stores)}.zarr"
        stores.append(path)
        return (path,), {}

    def run(path):
        result = fv.audit(path, None, model=model, methods=[method], batch=BATCH, chunk=CHUNK, steps=STEPS,
                          max_frames=frames, sanity_frames=0, progress=False)
        sync(device)
        walls.append(result.seconds)
        return result

    def teardown(path):
        measured.append(read_round(path, method))
        shutil.rmtree(path)

    result = benchmark.pedantic(run, setup=setup, teardown=teardown, rounds=rounds, warmup_rounds=1)
    assert result.complete and result.frames == frames and result.computed == frames and not result.failed
    if not measured:  # --benchmark-disable: one call, no teardown
        measured.append(read_round(stores[-1], method))
    # the warm-up round's figures are left out (as its time is)
    measured, walls = measured[-rounds:], walls[-rounds:]

    method_fps = [m["frames"] / m["method_s"] for m in measured]
    metrics_fps = [m["frames"] / m["metrics_s"] for m in measured]
    audit_fps = [frames / w for w in walls]
    benchmark.extra_info.update(
        memory_budget=measured[-1]["memory_budget"],
        method_frames_per_s=statistics.median(method_fps),
        method_ms_per_frame=1e3 / statistics.median(method_fps),
        metrics_frames_per_s=statistics.median(metrics_fps),
        metrics_ms_per_frame=1e3 / statistics.median(metrics_fps),
        audit_frames_per_s=statistics.median(audit_fps),
        method_frames_per_s_all=method_fps,
        metrics_frames_per_s_all=metrics_fps,
        audit_frames_per_s_all=audit_fps,
    )
