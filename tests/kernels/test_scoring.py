"""Window scores -> occlusion maps (fastviz.kernels.scoring): every backend against the plain-torch
reference, against an independent per-window loop written here, and against fastviz's own
regular-grid path (fastviz.methods.perturbation.scale_maps / combine_scales).

The CUDA kernel runs in Numba's CUDA simulator when there is no GPU (tests/conftest.py): its
tables stay tiny (each simulated thread is Python) and it launches 8 threads per block on at most
3 blocks, so the multi-block and grid-stride paths run.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fastviz.kernels import _backend, scoring

from fastviz.methods.perturbation import combine_scales, window_grids
from fastviz.methods.perturbation import scale_maps as grid_scale_maps

RTOL = 1e-5
BACKENDS = ["torch", "cpu", "cpu-parallel", "cuda"]  # cpu-parallel: the CPU twin on the thread pool however small the work
DTYPES = [torch.float32, torch.float64]


def device_of(backend: str) -> str:
    """Where a backend's tensors live here: CUDA when there is a GPU, else the CPU (the CUDA
    backend then needs the simulator)."""
    if backend != "cuda":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if not _backend.cuda_simulated():
        pytest.skip("no GPU and NUMBA_ENABLE_CUDASIM is off")
    return "cpu"


@pytest.fixture
def backend(request, monkeypatch):
    """The backend argument; ``cpu-parallel`` is ``cpu`` with the thread-pool path forced."""
    if request.param == "cpu-parallel":
        monkeypatch.setattr(scoring, "_PARALLEL_WORK", 0)
        return "cpu"
    return request.param


@pytest.fixture(autouse=True)
def small_cuda_launches(monkeypatch):
    """8 threads per block, at most 3 blocks: several blocks, and threads that go round the
    grid-stride loop more than once."""
    monkeypatch.setattr(scoring, "_MAX_BLOCKS", 3)
    with _backend.use_threads_per_block(8):
        yield


def loop_reference(scores, boxes, scale, n_scales, height, width):
    """The definition, per window, in float64 numpy: each window adds its score and a count of
    one to the pixels of its scale it covers; per-scale mean; mean over the covering scales."""
    scores = np.asarray(scores, dtype=np.float64)
    b = scores.shape[0]
    total = np.zeros((b, n_scales, height, width))
    count = np.zeros((n_scales, height, width))
    for w, ((y0, x0, y1, x1), s) in enumerate(zip(np.asarray(boxes).tolist(), np.asarray(scale).tolist())):
        count[s, y0:y1, x0:x1] += 1
        for f in range(b):
            total[f, s, y0:y1, x0:x1] += scores[f, w]
    covered = count > 0
    maps = total / np.maximum(count, 1)
    out = maps.sum(axis=1) / np.maximum(covered.sum(axis=0), 1)
    return maps, covered, out


def grid_case(height, width, windows, stride, batch=2, seed=0):
    grids = window_grids(height, width, windows, stride)
    boxes, scale = scoring.window_table(grids)
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(batch, boxes.shape[0], generator=g, dtype=torch.float64)
    return scores, boxes, scale, len(grids), height, width


def irregular_case(batch=2, seed=0):
    """Any window table: mixed sizes, scales interleaved (not grouped), duplicates, windows on
    every edge and corner, a scale leaving gaps, a scale with no window at all (index 3)."""
    height, width = 6, 9
    rows = [
        (0, 0, 1, 1, 2), (5, 8, 6, 9, 0), (0, 7, 3, 9, 1), (2, 0, 6, 4, 0), (1, 2, 5, 7, 2),
        (0, 0, 6, 9, 1), (3, 3, 4, 8, 0), (1, 2, 5, 7, 2), (4, 0, 6, 9, 2), (0, 4, 2, 5, 0),
        (2, 1, 3, 2, 4), (0, 0, 6, 1, 4),
    ]
    t = torch.tensor(rows, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(batch, len(rows), generator=g, dtype=torch.float64)
    return scores, t[:, :4].contiguous(), t[:, 4].contiguous(), 5, height, width


CASES = {
    "odd-frame-two-scales": lambda: grid_case(7, 9, (3, 5), 2),
    "stride-larger-than-window": lambda: grid_case(5, 9, (2, 9), 4),
    "window-larger-than-frame": lambda: grid_case(5, 7, (3, 12), 2),
    "one-pixel-map": lambda: grid_case(1, 1, (1, 3), 1),
    "one-row": lambda: grid_case(1, 8, (2, 3), 3),
    "ten-frames": lambda: grid_case(4, 5, (2, 3), 2, batch=10),  # two CUDA frame groups, one partial
    "irregular-table": irregular_case,
    "no-windows": lambda: (torch.zeros(2, 0, dtype=torch.float64), torch.zeros(0, 4, dtype=torch.long),
                           torch.zeros(0, dtype=torch.long), 2, 3, 4),
    "no-scales": lambda: (torch.zeros(2, 0, dtype=torch.float64), torch.zeros(0, 4, dtype=torch.long),
                          torch.zeros(0, dtype=torch.long), 0, 2, 3),
    "no-frames": lambda: grid_case(4, 5, (2,), 2, batch=0),
}


def on(backend, dtype, case):
    scores, boxes, scale, s, h, w = case
    dev = device_of(backend)
    return scores.to(dev, dtype), boxes.to(dev), scale.to(dev), s, h, w


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_backend_equals_loop_and_torch_reference(backend, case, dtype):
    args = on(backend, dtype, CASES[case]())
    scores, _, _, n_scales, h, w = args
    maps, covered = scoring.scale_maps(*args, backend=backend)
    out = scoring.occlusion_map(*args, backend=backend)
    assert maps.shape == (scores.shape[0], n_scales, h, w) and covered.shape == (n_scales, h, w)
    assert out.shape == (scores.shape[0], h, w)
    assert maps.dtype == out.dtype == dtype and covered.dtype == torch.bool
    assert maps.device == out.device == covered.device == scores.device

    want_maps, want_covered, want_out = loop_reference(*(a.cpu() if isinstance(a, torch.Tensor) else a for a in args))
    atol = 1e-6 if dtype == torch.float32 else 1e-12
    np.testing.assert_allclose(maps.cpu().double().numpy(), want_maps, rtol=RTOL, atol=atol)
    np.testing.assert_array_equal(covered.cpu().numpy(), want_covered)
    np.testing.assert_allclose(out.cpu().double().numpy(), want_out, rtol=RTOL, atol=atol)

    ref_maps, ref_covered = scoring.scale_maps_torch(*args)
    torch.testing.assert_close(maps, ref_maps, rtol=RTOL, atol=atol)
    assert torch.equal(covered, ref_covered)


def test_the_cases_are_not_trivial():
    """The cases exercise what they are named for: gaps, clipped windows, uncovered pixels."""
    _, covered, _ = loop_reference(*CASES["stride-larger-than-window"]())
    assert not covered[0].all() and covered[1].all()  # gaps at one scale only
    _, boxes, _, _, h, w = CASES["window-larger-than-frame"]()
    assert ((boxes[:, 2] - boxes[:, 0] == h) & (boxes[:, 3] - boxes[:, 1] == w)).any()
    _, covered, _ = loop_reference(*irregular_case())
    assert not covered[3].any() and not covered[0].all() and covered[1].all()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_untouched_pixels_are_exactly_zero(backend, dtype):
    # Scores are 0 except for windows touching a box; pixels under no such window must be 0
    # exactly, at every scale and in the multi-scale map (sums of exact zeros, no residue).
    height, width, box = 9, 9, (3, 4, 5, 6)  # rows 3-4, columns 4-5
    scores, boxes, scale, n_scales, h, w = grid_case(height, width, (2, 4), 2, batch=2, seed=5)
    y0, x0, y1, x1 = box
    touch = (boxes[:, 0] < y1) & (boxes[:, 2] > y0) & (boxes[:, 1] < x1) & (boxes[:, 3] > x0)
    scores = torch.where(touch, 0.1 + scores.abs() / 3, torch.zeros(()))  # 0.1 + x/3: not exact binary sums
    reached = torch.zeros(height, width, dtype=torch.bool)
    for (a, b, c, d) in boxes[touch].tolist():
        reached[a:c, b:d] = True
    assert 0 < reached.sum() < reached.numel()
    args = on(backend, dtype, (scores, boxes, scale, n_scales, h, w))
    maps, _ = scoring.scale_maps(*args, backend=backend)
    out = scoring.occlusion_map(*args, backend=backend)
    assert (maps.cpu()[:, :, ~reached] == 0).all()
    assert (out.cpu()[:, ~reached] == 0).all()
    assert (out.cpu()[:, y0:y1, x0:x1] > 0).all()


@pytest.mark.parametrize(
    "height,width,windows,stride",
    [(7, 9, (3, 5), 2), (5, 9, (2, 9), 4), (6, 6, (4, 8), 3), (1, 1, (1,), 1)],
    ids=["odd-frame", "gaps", "clipped", "one-pixel"],
)
@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_agrees_with_fastviz_grid_path(backend, height, width, windows, stride):
    grids = window_grids(height, width, windows, stride)
    boxes, scale = scoring.window_table(grids)
    dev = device_of(backend)
    scores = torch.randn(2, boxes.shape[0], generator=torch.Generator().manual_seed(1)).to(dev)
    want_maps, want_covered = grid_scale_maps(scores, grids, height, width)
    maps, covered = scoring.scale_maps(scores, boxes.to(dev), scale.to(dev), len(grids), height, width, backend=backend)
    torch.testing.assert_close(maps, want_maps, rtol=RTOL, atol=1e-6)
    assert torch.equal(covered, want_covered)
    out = scoring.occlusion_map(scores, boxes.to(dev), scale.to(dev), len(grids), height, width, backend=backend)
    torch.testing.assert_close(out, combine_scales(want_maps, want_covered), rtol=RTOL, atol=1e-6)


@pytest.mark.parametrize("backend", ["torch", "cpu", "cpu-parallel"], indirect=True)
def test_pilotnet_workload_agrees_with_fastviz_grid_path(backend):
    grids = window_grids(66, 200, (8, 16, 32), 4)
    boxes, scale = scoring.window_table(grids)
    assert boxes.shape == (1872, 4)
    scores = torch.randn(3, 1872, generator=torch.Generator().manual_seed(2))
    want_maps, want_covered = grid_scale_maps(scores, grids, 66, 200)
    maps, covered = scoring.scale_maps(scores, boxes, scale, 3, 66, 200, backend=backend)
    torch.testing.assert_close(maps, want_maps, rtol=RTOL, atol=1e-6)
    assert torch.equal(covered, want_covered)
    out = scoring.occlusion_map(scores, boxes, scale, 3, 66, 200, backend=backend)
    torch.testing.assert_close(out, combine_scales(want_maps, want_covered), rtol=RTOL, atol=1e-6)


def test_hand_computed_gaps_map():
    # 1x10 frame. Scale 0: width 2 at stride 5 -> [0,2) [5,7) + flush [8,10); gaps at 2-4, 7.
    # Scale 1: width 10 -> one window covering all (tests/test_occlusion.py's hand example).
    boxes, scale = scoring.window_table(window_grids(1, 10, (2, 10), 5))
    scores = torch.tensor([[1.0, 2.0, 3.0, 10.0]])
    want = torch.tensor([[[5.5, 5.5, 10, 10, 10, 6, 6, 10, 6.5, 6.5]]])
    for backend in ("torch", "cpu", "cuda"):
        dev = device_of(backend)
        got = scoring.occlusion_map(scores.to(dev), boxes.to(dev), scale.to(dev), 2, 1, 10, backend=backend)
        torch.testing.assert_close(got.cpu(), want)


def test_window_table_order_and_scales():
    grids = window_grids(7, 9, (3, 5), 2)
    boxes, scale = scoring.window_table(grids)
    assert boxes.dtype == scale.dtype == torch.int64
    assert torch.equal(boxes, torch.cat([g.boxes() for g in grids]))
    assert scale.tolist() == [0] * len(grids[0]) + [1] * len(grids[1])
    assert boxes[1].tolist() == [0, grids[0].lefts[1], 3, grids[0].lefts[1] + 3]  # row-major
    boxes, scale = scoring.window_table([])
    assert boxes.shape == (0, 4) and scale.shape == (0,)


@pytest.mark.parametrize("backend", ["cpu", "cpu-parallel", "cuda"], indirect=True)
def test_half_precision_and_strided_scores(backend):
    scores, boxes, scale, s, h, w = grid_case(5, 6, (2, 3), 2, batch=3)
    dev = device_of(backend)
    strided = scores.float().t().contiguous().t().to(dev)  # non-contiguous (B, N) view
    assert not strided.is_contiguous()
    got = scoring.occlusion_map(strided, boxes.to(dev), scale.to(dev), s, h, w, backend=backend)
    want = scoring.occlusion_map(strided.contiguous(), boxes.to(dev), scale.to(dev), s, h, w, backend="torch")
    torch.testing.assert_close(got, want, rtol=RTOL, atol=1e-6)
    half = scoring.occlusion_map(strided.half(), boxes.to(dev), scale.to(dev), s, h, w, backend=backend)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), want, rtol=1e-2, atol=1e-2)


def test_auto_takes_the_default_at_call_time(monkeypatch):
    scores, boxes, scale, s, h, w = grid_case(4, 5, (2,), 2)
    calls = []
    for name in ("torch", "cpu", "cuda"):
        impl = scoring._IMPLS[name]
        monkeypatch.setitem(scoring._IMPLS, name, lambda *a, _name=name, _impl=impl: calls.append(_name) or _impl(*a))
    for choice in ("torch", "cpu"):
        monkeypatch.setitem(scoring.DEFAULTS, "cpu", choice)
        scoring.scale_maps(scores, boxes, scale, s, h, w)
        assert calls[-1] == choice
    assert scoring.DEFAULTS.keys() >= {"cpu", "cuda"}
    assert set(scoring.DEFAULTS.values()) <= {"torch", "cpu", "cuda"}


def _valid():
    scores, boxes, scale, s, h, w = grid_case(4, 5, (2, 3), 2)
    return {"scores": scores, "boxes": boxes, "scale": scale, "n_scales": s, "height": h, "width": w}


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda a: a.update(scores=a["scores"][0]), r"scores must be a floating-point tensor \(B, N\)"),
        (lambda a: a.update(scores=a["scores"].long()), "floating-point"),
        (lambda a: a.update(scores=a["scores"].numpy()), "floating-point tensor"),
        (lambda a: a.update(boxes=a["boxes"].int()), r"boxes must be an int64 tensor \(N, 4\)"),
        (lambda a: a.update(boxes=a["boxes"][:, :3]), r"\(N, 4\)"),
        (lambda a: a.update(scale=a["scale"].float()), r"scale must be an int64 tensor \(N,\)"),
        (lambda a: a.update(boxes=a["boxes"][1:], scale=a["scale"][1:]), "mismatched window counts"),
        (lambda a: a.update(scale=a["scale"][1:]), "mismatched window counts"),
        (lambda a: a.update(n_scales=1), r"scales must be in \[0, 1\)"),
        (lambda a: a["scale"].__setitem__(0, -1), r"scales must be in \[0, 2\)"),
        (lambda a: a.update(height=3), "0 <= y0 < y1 <= 3"),
        (lambda a: a["boxes"].__setitem__((2, 1), -1), "0 <= x0 < x1 <= 5"),
        (lambda a: a["boxes"].__setitem__((0, 2), 0), "non-empty"),
        (lambda a: a.update(width=0), "width must be an int >= 1"),
        (lambda a: a.update(n_scales=2.0), "n_scales must be an int"),
    ],
)
@pytest.mark.parametrize("fn", [scoring.scale_maps, scoring.occlusion_map], ids=["scale_maps", "occlusion_map"])
def test_bad_arguments_raise_clear_errors(fn, change, match):
    args = _valid()
    change(args)
    with pytest.raises(ValueError, match=match):
        fn(**args)


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown kernel backend 'numpy'"):
        scoring.occlusion_map(**_valid(), backend="numpy")
