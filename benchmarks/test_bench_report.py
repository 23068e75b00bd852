"""The audit report's costs: reading sampled frames again, the mean-map pass, the whole report.

Workloads:

- ``frames_at``: 16 frames spread evenly over a 3,000-frame 96 x 96 video (the bundled log's
  frames twice over, written by ``VideoSink``) as FFV1 ``.mkv`` (intra-only) and H.264 ``.mp4``
  (libx264 veryfast, keyframes 250 apart), read by :meth:`VideoSource.frames_at` (seeks past 48
  frames) against the plain way, decoding every frame in order and keeping the 16 (the report's
  reader before it had ``frames_at``);
- ``mean_maps``: :func:`fastviz.audit.report.mean_maps` over 1,024 float16 66 x 200 maps of a
  Zarr v3 store chunked by 64 frames (the store's layout), against a plain numpy pass over the
  same array read at once;
- ``report``: :func:`fastviz.audit.write_report` on an audit store of the first 256 frames of the
  bundled log with Grad-CAM and VisualBackProp (built once per session), default options except
  ``analysis=128``.

Run: ``python -m pytest benchmarks/test_bench_report.py -q --benchmark-json=report.json``.
"""

from __future__ import annotations

import numpy as np
import pytest
import zarr

import fastviz as fv
from fastviz.audit.report import mean_maps, unit_max, write_report
from fastviz.video import VideoSink, open_source

WANT = np.linspace(0, 2999, 16).astype(int)


@pytest.fixture(scope="module", params=["mkv", "mp4"])
def video(request, tmp_path_factory):
    frames = fv.data.load_drive_log().frames
    path = tmp_path_factory.mktemp("video") / f"long.{request.param}"
    with VideoSink(path, fps=50, size=frames.shape[1:3]) as sink:
        for _ in range(2):
            for f in frames:
                sink.write(f)
    return path


def plain_pick(path, want):
    wanted = set(int(i) for i in want)
    out = []
    for i, frame in enumerate(open_source(path)):
        if i in wanted:
            out.append((i, frame))
        if i >= max(wanted):
            break
    return out


@pytest.mark.benchmark(group="report: 16 frames of 3,000")
def test_frames_at(benchmark, video):
    benchmark.extra_info["container"] = video.suffix
    got = benchmark(lambda: list(open_source(video).frames_at(WANT)))  # the opening's packet count included
    assert [k for k, _ in got] == WANT.tolist()


@pytest.mark.benchmark(group="report: 16 frames of 3,000")
def test_frames_plain_decode(benchmark, video):
    benchmark.extra_info["container"] = video.suffix
    got = benchmark.pedantic(plain_pick, args=(video, WANT), rounds=3, iterations=1)
    assert [k for k, _ in got] == WANT.tolist()


@pytest.fixture(scope="module")
def maps_array(tmp_path_factory):
    rng = np.random.default_rng(0)
    g = zarr.open_group(str(tmp_path_factory.mktemp("maps") / "m.zarr"), mode="w", zarr_format=3)
    a = g.create_array("maps", shape=(1024, 66, 200), chunks=(64, 66, 200), dtype="float16")
    yy, xx = np.mgrid[:66, :200]
    for c in range(16):  # smooth maps, as saliency maps are (they compress like the real ones)
        cy, cx = rng.uniform(0, 66, 64), rng.uniform(0, 200, 64)
        a[c * 64:(c + 1) * 64] = np.exp(-((yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2) / 300.0)
    return a


@pytest.mark.benchmark(group="report: mean map of 1,024 maps")
def test_mean_maps(benchmark, maps_array):
    n = maps_array.shape[0]
    mean, *_ = benchmark(mean_maps, maps_array, np.ones(n, bool), np.ones(n, np.int8), 64)
    np.testing.assert_allclose(mean, unit_max(maps_array[:].astype(np.float32)).mean(0), rtol=1e-5)


@pytest.mark.benchmark(group="report: mean map of 1,024 maps")
def test_mean_plain_numpy(benchmark, maps_array):
    benchmark(lambda: unit_max(maps_array[:].astype(np.float32)).mean(0))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "a.zarr"
    fv.audit(path, methods=["grad_cam", "visual_backprop"], max_frames=256, chunk=64, sanity_frames=2,
             progress=False)
    return path


@pytest.mark.benchmark(group="report: 256-frame store")
def test_report(benchmark, store, tmp_path):
    result = benchmark.pedantic(write_report, args=(store, tmp_path / "r.html"), kwargs={"analysis": 128},
                                rounds=3, iterations=1)
    benchmark.extra_info.update(page_bytes=result.bytes, pictures=result.images)
