"""Live overlays (issue 14): the bundled drive log replayed at its 50 fps through ``fv.stream``,
and ``write_overlay``'s frames per second on the same log.

``test_replay``: for each method, the log's frames (``FRAMES`` of them, 50 fps, ``realtime=True``)
go through :func:`fastviz.stream.stream` with policy ``drop`` and the latency budget
``max_latency_ms`` (40 ms for VisualBackProp and Grad-CAM, 100 ms for occlusion at its default
1,872 windows), and the sink stage draws every result as ``fastviz live`` does (the overlay with
its legend and steering gauge; no server or window). Recorded in ``extra_info``: frames in, shown,
dropped, the drop rate, end-to-end latency from capture to drawn (p50, p95, p99, max) and the
micro-batch sizes. pytest-benchmark times the whole replay once (it lasts ``FRAMES / 50`` s by
construction; the figures that matter are the latencies).

``test_overlay_fps``: ``write_overlay`` with VisualBackProp over the whole bundled log (1,500
frames) to an ``.mp4``, the frames per second of the pipeline (decode and the method in threads,
drawing a group ahead of the encoder).

Run (a quiet machine: nothing else on the cores):
``python -m pytest benchmarks/test_bench_stream.py -q -s --benchmark-json=benchmarks/results-stream-cpu.json``
(``--device cuda`` style runs: set ``FASTVIZ_BENCH_DEVICE=cuda``).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import fastviz as fv
from fastviz.live import _Shower
from fastviz.stream import stream

DEVICE = os.environ.get("FASTVIZ_BENCH_DEVICE", "cpu")

#: Frames replayed per method (10 s of the log at 50 fps).
FRAMES = 500

#: method -> (latency budget in ms, method options)
REPLAYS = {
    "visual_backprop": (40.0, {}),
    "grad_cam": (40.0, {}),
    "saliency": (40.0, {}),
    "occlusion": (100.0, {}),
}


@pytest.fixture(scope="module")
def model():
    return fv.models.load("pilotnet-carracing", DEVICE)


@pytest.mark.parametrize("method", list(REPLAYS))
def test_replay(benchmark, model, method):
    budget, options = REPLAYS[method]
    log = fv.data.load_drive_log()
    frames = log.frames[:FRAMES]
    # one untimed second first: the method's first call (compilation, measured chunk plans)
    with stream(model, frames[:50], method, policy="block", **options) as warm:
        for _ in warm:
            pass
    result: dict = {}

    def replay():
        shower = _Shower(model, method, options, layout="overlay", scale=None, server=None, window=False,
                         output=None, fps=50.0, quiet=True)
        with stream(model, frames, method, max_latency_ms=budget, policy="drop", realtime=True, fps=50.0,
                    sink=shower, **options) as st:
            shower.stream = st
            for _ in st:
                pass
            result.update(st.stats.as_dict())

    benchmark.pedantic(replay, rounds=1, iterations=1)
    stats = {k: result[k] for k in ("frames_in", "processed", "shown", "dropped", "fps_overall", "latency_ms_p50",
                                    "latency_ms_p95", "latency_ms_p99", "mean_batch_size", "batch_fixed_ms",
                                    "batch_per_frame_ms") if k in result}
    stats.update(method=method, device=DEVICE, max_latency_ms=budget, replay_fps=50.0,
                 drop_rate=result["dropped"] / max(result["frames_in"], 1))
    benchmark.group = f"stream-replay-{DEVICE}"
    benchmark.extra_info.update(stats)
    print("\n" + json.dumps(stats, indent=1))
    assert result["frames_in"] == FRAMES and result["shown"] + result["dropped"] == FRAMES


def test_overlay_fps(benchmark, tmp_path):
    model = fv.models.load("pilotnet-carracing", DEVICE)
    out = tmp_path / "overlay.mp4"
    fv.write_overlay(tmp_path / "warm.mp4", model=model, method="visual_backprop", max_frames=32, progress=False)
    seen = {}

    def run():
        if out.exists():
            out.unlink()
        r = fv.write_overlay(out, model=model, method="visual_backprop", progress=False)
        seen["fps"] = r.frames_per_s
        seen["frames"] = r.frames

    benchmark.pedantic(run, rounds=3, iterations=1)
    benchmark.group = f"overlay-{DEVICE}"
    benchmark.extra_info.update(method="visual_backprop", frames=seen["frames"],
                                frames_per_s_median=seen["frames"] / benchmark.stats.stats.median)
    print(f"\noverlay: {seen['frames']} frames, {seen['frames'] / benchmark.stats.stats.median:.1f} frames/s (median)")
    assert seen["frames"] == 1500 and np.isfinite(seen["fps"])
