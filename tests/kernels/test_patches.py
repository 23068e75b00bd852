"""kernels.patches: every backend against the torch reference and a hand-written loop, exactly.

Patch assembly is a copy with a pad constant (no arithmetic), so every comparison is
``torch.equal`` (no NaN anywhere; ``-inf`` pads compare equal). The CUDA backend runs in
Numba's simulator when there is no GPU (tests/conftest.py), with 8 threads per block and a few
blocks, so the multi-block and grid-stride paths run; sizes stay tiny because the simulator
runs every thread in Python.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastviz.kernels import _backend, patches
from fastviz.kernels.patches import assemble, assemble_torch

from kernel_backends import BACKENDS, CUDA, cuda_runs, device_of, launch_settings

B, C, H, W = 2, 3, 6, 7
SIZE = (3, 4)  # region (rh, rw)
PH, PW = 2, 3  # patch


def run(backend, clean, frame, region_at, size, patch=None, patch_at=None, pad=0.0, out=None, max_blocks=3):
    with launch_settings(patches, backend, max_blocks):
        return assemble(clean, frame, region_at, size, patch, patch_at, pad=pad, out=out, backend=backend.split("-")[0])


def assemble_loop(clean, frame, region_at, size, patch=None, patch_at=None, pad=0.0) -> torch.Tensor:
    """Independent reference: per row, per element, outside the map / inside the patch / clean."""
    cl = clean.detach().cpu().numpy()
    pa = None if patch is None else patch.detach().cpu().numpy()
    n = frame.shape[0]
    _, c, h, w = cl.shape
    rh, rw = size
    out = np.empty((n, c, rh, rw), dtype=cl.dtype)
    for r in range(n):
        f = int(frame[r])
        ry, rx = (int(v) for v in region_at[r])
        if pa is not None:
            py, px = (int(v) for v in patch_at[r])
        for ch in range(c):
            for i in range(rh):
                for j in range(rw):
                    y, x = ry + i, rx + j
                    if not (0 <= y < h and 0 <= x < w):
                        out[r, ch, i, j] = pad
                    elif pa is not None and 0 <= y - py < pa.shape[2] and 0 <= x - px < pa.shape[3]:
                        out[r, ch, i, j] = pa[r, ch, y - py, x - px]
                    else:
                        out[r, ch, i, j] = cl[f, ch, y, x]
    return torch.from_numpy(out)


def maps(dtype=torch.float32, device="cpu", seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, C, H, W, generator=g, dtype=dtype).to(device)


def patch_values(n, dtype=torch.float32, device="cpu", shape=(PH, PW), seed=5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (10.0 + torch.rand(n, C, *shape, generator=g, dtype=dtype)).to(device)  # >= 10: unlike any clean value


# Rows on a 6x7 map, regions 3x4, patches 2x3: (frame, (ry, rx), (py, px)).
ROW_SETS = {
    "inside": [(0, (1, 1), (2, 2)), (1, (0, 0), (0, 0)), (1, (3, 3), (4, 4)), (0, (2, 2), (2, 3))],
    # regions at negative coordinates, past the far edges, wholly outside the map
    "outside-map": [(0, (-1, -2), (0, 0)), (1, (4, 5), (4, 5)), (0, (-1, 5), (0, 5)), (1, (5, -3), (5, 0)),
                    (0, (-5, 1), (-4, 1)), (1, (2, 9), (2, 9))],
    # patches partly outside the region, wholly outside it, partly outside the map (ignored there)
    "patch-overlap": [(0, (1, 1), (0, 0)), (1, (1, 1), (3, 4)), (0, (1, 1), (5, 5)), (1, (2, 0), (1, -2)),
                      (0, (4, 4), (5, 6)), (1, (-1, -1), (-1, -2))],
}


def table(name, device="cpu"):
    rows = ROW_SETS[name]
    frame = torch.tensor([r[0] for r in rows], device=device)
    region_at = torch.tensor([r[1] for r in rows], device=device)
    patch_at = torch.tensor([r[2] for r in rows], device=device)
    return frame, region_at, patch_at


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_computed_example(backend):
    """One 3x4 map, a 4x4 region from (-1, 1) with pad -1, a 2x2 patch at (1, 3) half outside the map."""
    dev = device_of(backend)
    clean = torch.arange(12.0, device=dev).view(1, 1, 3, 4)  # [[0 1 2 3] [4 5 6 7] [8 9 10 11]]
    patch = torch.tensor([[[[100.0, 101.0], [102.0, 103.0]]]], device=dev)
    frame = torch.tensor([0], device=dev)
    got = run(backend, clean, frame, torch.tensor([[-1, 1]], device=dev), (4, 4), patch,
              torch.tensor([[1, 3]], device=dev), pad=-1.0)
    want = torch.tensor([[[[-1.0, -1.0, -1.0, -1.0],  # y = -1: above the map
                           [1.0, 2.0, 3.0, -1.0],  # x = 4: past the right edge
                           [5.0, 6.0, 100.0, -1.0],  # patch column 1 (x = 4) is outside the map: ignored
                           [9.0, 10.0, 102.0, -1.0]]]])
    assert torch.equal(got.cpu(), want)


@pytest.mark.parametrize("with_patch", [True, False], ids=["patch", "no-patch"])
@pytest.mark.parametrize("rows", list(ROW_SETS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_equals_reference_and_loop(backend, rows, with_patch):
    dev = device_of(backend)
    clean = maps(device=dev)
    frame, region_at, patch_at = table(rows, dev)
    patch = patch_values(frame.shape[0], device=dev) if with_patch else None
    patch_at = patch_at if with_patch else None
    got = run(backend, clean, frame, region_at, SIZE, patch, patch_at, pad=-0.5)
    assert got.shape == (frame.shape[0], C, *SIZE) and got.dtype == clean.dtype and got.device == clean.device
    assert torch.equal(got, assemble_torch(clean, frame, region_at, SIZE, patch, patch_at, -0.5))
    assert torch.equal(got.cpu(), assemble_loop(clean, frame, region_at, SIZE, patch, patch_at, -0.5))


@pytest.mark.parametrize("clean_format", ["contiguous", "channels-last"])
@pytest.mark.parametrize("out_format", ["contiguous", "channels-last"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_out_buffer_any_memory_format_larger_than_n(backend, out_format, clean_format):
    dev = device_of(backend)
    clean = maps(device=dev)
    if clean_format == "channels-last":
        clean = clean.contiguous(memory_format=torch.channels_last)
    frame, region_at, patch_at = table("patch-overlap", dev)
    n = frame.shape[0]
    patch = patch_values(n, device=dev).contiguous(memory_format=torch.channels_last)
    fmt = torch.channels_last if out_format == "channels-last" else torch.contiguous_format
    out = torch.full((n + 2, C, *SIZE), 123.0, device=dev).contiguous(memory_format=fmt)
    got = run(backend, clean, frame, region_at, SIZE, patch, patch_at, out=out)
    assert got.shape == (n, C, *SIZE)
    assert got.data_ptr() == out.data_ptr() and got.stride() == out.stride()  # a view of out[:N]
    assert torch.equal(out[:n].cpu(), assemble_loop(clean, frame, region_at, SIZE, patch, patch_at))
    assert (out[n:] == 123.0).all()  # rows past N untouched


@pytest.mark.parametrize("backend", BACKENDS)
def test_new_result_keeps_clean_memory_format(backend):
    dev = device_of(backend)
    frame, region_at, patch_at = table("inside", dev)
    clean = maps(device=dev)
    assert run(backend, clean, frame, region_at, SIZE).is_contiguous()
    cl = clean.contiguous(memory_format=torch.channels_last)
    got = run(backend, cl, frame, region_at, SIZE)
    assert got.is_contiguous(memory_format=torch.channels_last) and not got.is_contiguous()
    assert torch.equal(got.cpu(), assemble_loop(clean, frame, region_at, SIZE))


@pytest.mark.parametrize("backend", BACKENDS)
def test_float64(backend):
    dev = device_of(backend)
    clean = maps(torch.float64, dev)
    frame, region_at, patch_at = table("outside-map", dev)
    patch = patch_values(frame.shape[0], torch.float64, dev)
    pad = 1.0 / 3.0  # not representable in float32: a float32 path would differ
    got = run(backend, clean, frame, region_at, SIZE, patch, patch_at, pad=pad)
    assert got.dtype == torch.float64
    assert torch.equal(got.cpu(), assemble_loop(clean, frame, region_at, SIZE, patch, patch_at, pad))


@pytest.mark.parametrize("backend", BACKENDS)
def test_minus_inf_pad_for_max_pooling(backend):
    dev = device_of(backend)
    clean = maps(device=dev)
    frame, region_at, patch_at = table("outside-map", dev)
    patch = patch_values(frame.shape[0], device=dev)
    got = run(backend, clean, frame, region_at, SIZE, patch, patch_at, pad=float("-inf"))
    want = assemble_loop(clean, frame, region_at, SIZE, patch, patch_at, float("-inf"))
    assert torch.isinf(want).any() and not torch.isnan(want).any()
    assert torch.equal(got.cpu(), want)
    assert torch.equal(got, assemble_torch(clean, frame, region_at, SIZE, patch, patch_at, float("-inf")))


@pytest.mark.parametrize("clean_format", ["contiguous", "channels-last"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_write_back_whole_map(backend, clean_format):
    """Region (0, 0) of size (H, W): each row's full map with its patch written in."""
    dev = device_of(backend)
    clean = maps(device=dev)
    if clean_format == "channels-last":
        clean = clean.contiguous(memory_format=torch.channels_last)
    frame = torch.tensor([1, 0, 1], device=dev)
    patch_at = torch.tensor([[0, 0], [3, 2], [5, 5]], device=dev)  # the last one hangs past both far edges
    patch = patch_values(3, device=dev)
    got = run(backend, clean, frame, torch.zeros(3, 2, dtype=torch.long, device=dev), (H, W), patch, patch_at)
    want = clean[frame].clone()
    for r, (py, px) in enumerate(patch_at.tolist()):
        hh, ww = min(PH, H - py), min(PW, W - px)
        want[r, :, py: py + hh, px: px + ww] = patch[r, :, :hh, :ww]
    assert torch.equal(got, want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_patch_and_clean(backend):
    dev = device_of(backend)
    big = patch_values(4, device=dev, shape=(5, 7))
    patch = big[:, :, 1:5:2, ::3]  # a strided slice, (4, C, 2, 3)
    assert not patch.is_contiguous() and patch.shape == (4, C, PH, PW)
    clean = maps(device=dev, seed=4).repeat(1, 1, 1, 2)[:, :, :, ::2]  # a stride-2 view of a (B, C, H, W) map
    frame, region_at, patch_at = table("inside", dev)
    got = run(backend, clean, frame, region_at, SIZE, patch, patch_at)
    assert torch.equal(got.cpu(), assemble_loop(clean, frame, region_at, SIZE, patch, patch_at))


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_tables_against_loop(backend):
    dev = device_of(backend)
    g = torch.Generator().manual_seed(11)
    clean = maps(device=dev, seed=3)
    for _ in range(3):
        n = 4
        frame = torch.randint(0, B, (n,), generator=g)
        region_at = torch.stack([torch.randint(-4, H + 1, (n,), generator=g),
                                 torch.randint(-5, W + 1, (n,), generator=g)], dim=1)
        patch_at = region_at + torch.randint(-3, 4, (n, 2), generator=g)
        ph, pw = (int(v) for v in torch.randint(1, 5, (2,), generator=g))
        patch = torch.rand(n, C, ph, pw, generator=g)
        args = (frame.to(dev), region_at.to(dev), SIZE, patch.to(dev), patch_at.to(dev))
        got = run(backend, clean, *args, pad=2.0)
        assert torch.equal(got.cpu(), assemble_loop(clean, frame, region_at, SIZE, patch, patch_at, 2.0))


@pytest.mark.parametrize("with_out", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
def test_no_rows(backend, with_out):
    dev = device_of(backend)
    clean = maps(device=dev)
    frame = torch.zeros(0, dtype=torch.long, device=dev)
    at = torch.zeros(0, 2, dtype=torch.long, device=dev)
    out = torch.full((2, C, *SIZE), 5.0, device=dev) if with_out else None
    got = run(backend, clean, frame, at, SIZE, patch_values(0, device=dev), at, out=out)
    assert got.shape == (0, C, *SIZE) and got.dtype == clean.dtype
    if with_out:
        assert (out == 5.0).all()


@pytest.mark.parametrize("backend", ["torch", "cpu-serial"])
def test_region_input_runs_the_conv_as_on_the_whole_map(backend):
    """Use (a): a conv with padding=0 on the assembled receptive-field regions gives the outputs
    of the conv with padding=1 on the whole modified map (allclose: different conv shapes)."""
    torch.manual_seed(2)
    conv = torch.nn.Conv2d(C, 4, 3, padding=1).double()
    clean = maps(torch.float64)
    frame = torch.tensor([0, 1, 1])
    patch_at = torch.tensor([[0, 0], [2, 3], [4, 5]])  # the last one reaches past both far edges
    patch = patch_values(3, torch.float64)
    changed = clean[frame].clone()
    for r, (py, px) in enumerate(patch_at.tolist()):
        changed[r, :, py: py + PH, px: px + PW] = patch[r, :, : H - py, : W - px]
    # conv outputs over the patch's rows and columns: their 3x3 fields span one more pixel each side
    region_at = patch_at - 1
    got = run(backend, clean, frame, region_at, (PH + 2, PW + 2), patch, patch_at)
    with torch.no_grad():
        part = F.conv2d(got, conv.weight, conv.bias)  # (3, 4, PH, PW)
        full = conv(changed)
    for r, (py, px) in enumerate(patch_at.tolist()):
        hh, ww = min(PH, H - py), min(PW, W - px)
        assert torch.allclose(part[r, :, :hh, :ww], full[r, :, py: py + hh, px: px + ww], rtol=0, atol=1e-12)


@pytest.mark.skipif(not cuda_runs(), reason="no GPU and NUMBA_ENABLE_CUDASIM is off")
@pytest.mark.parametrize("max_blocks", [1, 2, 10_000], ids=["one-block", "grid-stride", "one-element-per-thread"])
def test_cuda_launch_shapes(max_blocks):
    """One block striding over everything, a few blocks striding, and a block per 8 elements."""
    dev = device_of("cuda")
    clean = maps(device=dev)[:, :1, :5, :6]  # a strided view, one channel
    frame = torch.tensor([1, 0], device=dev)
    region_at = torch.tensor([[-1, 2], [3, -1]], device=dev)
    patch_at = torch.tensor([[0, 3], [4, 0]], device=dev)
    patch = patch_values(2, device=dev)[:, :1]
    out = torch.zeros(2, 1, 4, 5, device=dev).contiguous(memory_format=torch.channels_last)
    got = run("cuda", clean, frame, region_at, (4, 5), patch, patch_at, pad=2.5, out=out, max_blocks=max_blocks)
    assert torch.equal(got.cpu(), assemble_loop(clean, frame, region_at, (4, 5), patch, patch_at, 2.5))


def test_cpu_twin_runs_in_parallel_from_the_threshold(monkeypatch):
    clean = maps()
    frame, region_at, patch_at = table("patch-overlap")
    patch = patch_values(frame.shape[0])
    used = []
    real = patches._host_kernel
    monkeypatch.setattr(patches, "_host_kernel", lambda dtype, parallel: used.append(parallel) or real(dtype, parallel))
    n = frame.shape[0] * C * SIZE[0] * SIZE[1]
    want = assemble_loop(clean, frame, region_at, SIZE, patch, patch_at)
    for threshold in (n, n + 1):
        monkeypatch.setattr(patches, "_PARALLEL_MIN_ELEMENTS", threshold)
        assert torch.equal(assemble(clean, frame, region_at, SIZE, patch, patch_at, backend="cpu"), want)
    assert used == [True, False]


def test_auto_picks_defaults_for_the_device_at_call_time(monkeypatch):
    clean = maps()
    frame, region_at, _ = table("inside")
    called = []
    monkeypatch.setattr(patches, "assemble_cpu", lambda *a: called.append("cpu") or assemble_torch(*a))
    monkeypatch.setitem(patches.DEFAULTS, "cpu", "cpu")
    assemble(clean, frame, region_at, SIZE)
    monkeypatch.setitem(patches.DEFAULTS, "cpu", "torch")
    assemble(clean, frame, region_at, SIZE)
    assert called == ["cpu"]
    assert set(patches.DEFAULTS) <= {"cpu", "cuda"} and set(patches.DEFAULTS.values()) <= {"torch", "cpu", "cuda"}


def test_int_pad_and_numpy_size_are_accepted():
    clean = maps()
    frame, region_at, _ = table("outside-map")
    got = assemble(clean, frame, region_at, (np.int64(3), 4), pad=2, backend="cpu")
    assert torch.equal(got, assemble_loop(clean, frame, region_at, SIZE, pad=2.0))


def _bad_cases():
    clean = maps()
    frame, region_at, patch_at = table("inside")
    n = frame.shape[0]
    patch = patch_values(n)
    ok = (clean, frame, region_at, SIZE, patch, patch_at, 0.0, None)

    def bad(**changes):
        names = ("clean", "frame", "region_at", "size", "patch", "patch_at", "pad", "out")
        return tuple(changes.get(k, v) for k, v in zip(names, ok))

    return {
        "clean-rank": (bad(clean=clean[0]), "clean must be a \\(B, C, H, W\\) tensor"),
        "clean-dtype": (bad(clean=clean.half()), "clean must be float32 or float64"),
        "clean-int": (bad(clean=clean.long()), "clean must be float32 or float64"),
        "clean-empty-map": (bad(clean=clean[:, :, :0]), "clean must have a non-empty map"),
        "frame-rank": (bad(frame=frame[:, None]), "frame must be a 1-D"),
        "frame-dtype": (bad(frame=frame.int()), "frame must be int64"),
        "region-shape": (bad(region_at=region_at[:, :1]), "region_at must be an \\(N, 2\\)"),
        "region-rank": (bad(region_at=region_at[0]), "region_at must be an \\(N, 2\\)"),
        "region-dtype": (bad(region_at=region_at.float()), "region_at must be int64"),
        "n-mismatch": (bad(frame=frame[:-1]), "frame has 3 rows but region_at has 4"),
        "frame-range-high": (bad(frame=frame + 1), "frame indices must be in \\[0, 2\\)"),
        "frame-range-neg": (bad(frame=frame - 1), "frame indices must be in \\[0, 2\\)"),
        "size-zero": (bad(size=(0, 4)), "size must be two ints \\(rh, rw\\) >= 1"),
        "size-one-int": (bad(size=3), "size must be two ints"),
        "size-three": (bad(size=(3, 4, 5)), "size must be two ints"),
        "size-float": (bad(size=(3.0, 4)), "size must be two ints"),
        "size-bool": (bad(size=(True, 4)), "size must be two ints"),
        "patch-without-at": (bad(patch_at=None), "patch is given without patch_at"),
        "at-without-patch": (bad(patch=None), "patch_at is given without patch"),
        "patch-rank": (bad(patch=patch[0]), "patch must be an \\(N, C, ph, pw\\) tensor"),
        "patch-dtype": (bad(patch=patch.double()), "patch must have clean's dtype"),
        "patch-rows": (bad(patch=patch[:-1]), "frame has 4 rows but patch has 3"),
        "patch-channels": (bad(patch=patch[:, :2]), "patch has 2 channels but clean has 3"),
        "patch-at-shape": (bad(patch_at=patch_at[:, :1]), "patch_at must be an \\(N, 2\\)"),
        "patch-at-dtype": (bad(patch_at=patch_at.int()), "patch_at must be int64"),
        "patch-at-rows": (bad(patch_at=patch_at[:-1]), "frame has 4 rows but patch_at has 3"),
        "pad-nan": (bad(pad=float("nan")), "pad must not be NaN"),
        "pad-str": (bad(pad="zero"), "pad must be a real number"),
        "pad-bool": (bad(pad=False), "pad must be a real number"),
        "pad-tensor": (bad(pad=torch.tensor(0.0)), "pad must be a real number"),
        "out-small": (bad(out=torch.empty(n - 1, C, *SIZE)), "out has 3 rows, too few for 4"),
        "out-shape": (bad(out=torch.empty(n, C, 4, 3)), "out must be an \\(N2, 3, 3, 4\\)"),
        "out-dtype": (bad(out=torch.empty(n, C, *SIZE, dtype=torch.float64)), "out must have clean's dtype"),
    }


BAD = _bad_cases()


@pytest.mark.parametrize("case", list(BAD))
def test_bad_arguments_raise_clear_value_errors(case):
    args, message = BAD[case]
    for backend in ("torch", "cpu"):
        with pytest.raises(ValueError, match=message):
            assemble(*args, backend=backend)


def test_unknown_backend_and_device_mismatch():
    clean = maps()
    frame, region_at, patch_at = table("inside")
    with pytest.raises(ValueError, match="unknown kernel backend"):
        assemble(clean, frame, region_at, SIZE, backend="numba")
    if CUDA:
        cc, fc, rc, pc = clean.cuda(), frame.cuda(), region_at.cuda(), patch_at.cuda()
        with pytest.raises(ValueError, match="frame is on cpu but clean is on cuda"):
            assemble(cc, frame, rc, SIZE)
        with pytest.raises(ValueError, match="region_at is on cuda"):
            assemble(clean, frame, rc, SIZE)
        with pytest.raises(ValueError, match="patch must have clean's dtype and device"):
            assemble(cc, fc, rc, SIZE, patch_values(4), pc)
        with pytest.raises(ValueError, match="patch_at is on cpu"):
            assemble(cc, fc, rc, SIZE, patch_values(4, device="cuda"), patch_at)
        with pytest.raises(ValueError, match="out must have clean's dtype and device"):
            assemble(cc, fc, rc, SIZE, out=torch.empty(4, C, *SIZE))
        with pytest.raises(ValueError, match="needs CPU tensors"):
            assemble(cc, fc, rc, SIZE, backend="cpu")
    elif not _backend.cuda_simulated():
        with pytest.raises(ValueError, match="needs CUDA tensors"):
            assemble(clean, frame, region_at, SIZE, backend="cuda")
