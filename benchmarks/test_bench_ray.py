"""The Ray engine against the single-process audit, and the store's write cost per chunk.

Workloads:

- ``engine``: ``fv.audit`` of the first 256 frames of the bundled log with Grad-CAM and
  VisualBackProp (chunks of 32 frames, batches of 16, 16 curve steps, no sanity check), by this
  process (torch's default threads: one per core) and by a local Ray of as many 1-CPU workers as
  cores (one thread each), Ray started once for the module (its start-up is not timed; the
  workers' start-up, loading the model, is). Two rounds each.
- ``write``: :meth:`AuditStore.write_arrays` of one 64-frame chunk of three methods' arrays (the
  default audit's), float16 maps of smooth blobs, into a local store: the cost a worker adds per
  chunk on top of computing it, and the ceiling on chunks per second per writer.

Run: ``python -m pytest benchmarks/test_bench_ray.py -q --benchmark-json=ray.json``.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

import fastviz as fv
from fastviz.audit.store import AuditStore

AUDIT = dict(methods=["grad_cam", "visual_backprop"], max_frames=256, chunk=32, batch=16, sanity_frames=0,
             progress=False)


@pytest.fixture(scope="module")
def ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def _audit(path, **kw):
    shutil.rmtree(path, ignore_errors=True)
    return fv.audit(path, **AUDIT, **kw)


@pytest.mark.benchmark(group="audit engine: 256 frames, grad_cam + visual_backprop")
def test_engine_local(benchmark, tmp_path):
    result = benchmark.pedantic(_audit, args=(tmp_path / "a.zarr",), rounds=2, iterations=1)
    benchmark.extra_info["frames_per_s"] = 256 / benchmark.stats.stats.median
    assert result.computed == 256


@pytest.mark.benchmark(group="audit engine: 256 frames, grad_cam + visual_backprop")
def test_engine_ray(benchmark, tmp_path, ray):
    result = benchmark.pedantic(_audit, args=(tmp_path / "a.zarr",), kwargs={"engine": "ray"}, rounds=2,
                                iterations=1)
    benchmark.extra_info["frames_per_s"] = 256 / benchmark.stats.stats.median
    benchmark.extra_info["workers"] = os.cpu_count()
    assert result.computed == 256


@pytest.fixture
def chunk_arrays():
    rng = np.random.default_rng(0)
    n, steps = 64, 16
    yy, xx = np.mgrid[:66, :200]
    out = {"frames/source": np.zeros(n, np.int32), "frames/index": np.arange(n), "frames/time_s": np.arange(n) / 50.0,
           "frames/prediction": rng.normal(size=n).astype(np.float32), "frames/truth": rng.normal(size=n).astype(np.float32),
           "frames/ok": np.ones(n, bool)}
    for m in ("occlusion", "grad_cam", "visual_backprop"):
        cy, cx = rng.uniform(0, 66, n), rng.uniform(0, 200, n)
        out[f"maps/{m}"] = np.exp(-((yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2) / 300.0).astype(np.float16)
        for name in ("deletion_auc", "insertion_auc", "random_deletion_auc", "random_insertion_auc", "entropy"):
            out[f"metrics/{m}/{name}"] = rng.random(n).astype(np.float32)
        for name in ("deletion_curve", "insertion_curve"):
            out[f"metrics/{m}/{name}"] = rng.random((n, steps + 1)).astype(np.float32)
        out[f"metrics/{m}/centroid"] = rng.random((n, 2)).astype(np.float32)
    for name in ("deletion_curve", "insertion_curve"):
        out[f"metrics/random/{name}"] = rng.random((n, steps + 1)).astype(np.float32)
    return out


@pytest.mark.benchmark(group="store: one 64-frame chunk, 3 methods")
def test_write_chunk(benchmark, tmp_path, chunk_arrays):
    st = AuditStore.create(tmp_path / "w.zarr", spec={}, sources=[], frames=64 * 64, size=(66, 200),
                           methods=["occlusion", "grad_cam", "visual_backprop"], steps=16, chunk=64, model={})
    chunks = iter(range(64))
    benchmark.pedantic(lambda: st.write_arrays(next(chunks), chunk_arrays), rounds=20, iterations=1)
    benchmark.extra_info["ms_per_frame"] = 1e3 * benchmark.stats.stats.median / 64
