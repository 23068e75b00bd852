"""kernels.masking: every backend against the torch reference and a hand-written loop, exactly.

The masked batch is a copy with a fill (no arithmetic), so every comparison is ``torch.equal``.
The CUDA backend runs in Numba's simulator when there is no GPU (tests/conftest.py), with
8 threads per block and a few blocks, so the multi-block and grid-stride paths run; sizes stay
tiny because the simulator runs every thread in Python.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastviz.kernels import _backend, masking
from fastviz.kernels.masking import masked_batch, masked_batch_torch
from fastviz.methods.perturbation import make_baseline

from kernel_backends import BACKENDS, CUDA, cuda_runs, device_of, launch_settings

B, C, H, W = 3, 3, 7, 9


def run(backend, x, frame, boxes, baseline, out=None, max_blocks=3):
    with launch_settings(masking, backend, max_blocks):
        return masked_batch(x, frame, boxes, baseline, out=out, backend=backend.split("-")[0])


def masked_loop(x, frame, boxes, baseline) -> torch.Tensor:
    """Independent reference: per row, per element, is the pixel in the window?"""
    xs = x.detach().cpu().numpy()
    base = baseline if isinstance(baseline, float) else baseline.detach().cpu().numpy()
    m = frame.shape[0]
    b, c, h, w = xs.shape
    out = np.empty((m, c, h, w), dtype=xs.dtype)
    for i in range(m):
        f = int(frame[i])
        y0, x0, y1, x1 = (int(v) for v in boxes[i])
        for ch in range(c):
            for y in range(h):
                for col in range(w):
                    if y0 <= y < y1 and x0 <= col < x1:
                        if isinstance(base, float):
                            out[i, ch, y, col] = base
                        else:
                            out[i, ch, y, col] = base[f, ch, min(y, base.shape[2] - 1), min(col, base.shape[3] - 1)]
                    else:
                        out[i, ch, y, col] = xs[f, ch, y, col]
    return torch.from_numpy(out)


def frames(dtype=torch.float32, device="cpu", seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, C, H, W, generator=g, dtype=dtype).to(device)


# Windows on a 7x9 frame, (y0, x0, y1, x1) end-exclusive, with the frame each row masks.
CORNERS = [(0, 0, 2, 3), (0, 6, 2, 9), (5, 0, 7, 3), (5, 6, 7, 9)]
EDGES = [(0, 3, 2, 6), (5, 3, 7, 6), (2, 0, 5, 2), (2, 7, 5, 9)]
SPECIAL = [(0, 0, 7, 9), (3, 4, 4, 5), (6, 8, 7, 9), (0, 0, 1, 1), (-2, -3, 3, 20), (4, 4, 4, 6)]
WINDOW_SETS = {
    "corners": (CORNERS, [0, 1, 2, 0]),
    "edges": (EDGES, [2, 2, 1, 0]),
    "whole-1px-clipped-empty": (SPECIAL, [1, 0, 2, 2, 0, 1]),
}


def table(name, device="cpu"):
    boxes, rows = WINDOW_SETS[name]
    return torch.tensor(rows, device=device), torch.tensor(boxes, device=device)


def baselines(x: torch.Tensor) -> dict[str, float | torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    image = torch.rand(B, C, H, W, generator=g, dtype=x.dtype).to(x.device)
    row = torch.rand(1, C, 1, W, generator=g, dtype=x.dtype).to(x.device)
    col = torch.rand(B, C, H, 1, generator=g, dtype=x.dtype).to(x.device)
    return {
        "float": -0.3,
        "per-channel-mean": make_baseline("mean", x),
        "image": image,
        "expanded-stride0": row.expand(B, C, H, W),  # stride 0 on B and H
        "per-channel-tensor": make_baseline(torch.tensor([0.1, 0.5, 0.9]), x),  # (1,C,1,1) expanded to B
        "column": col,
        "blur": make_baseline("blur", x, blur_sigma=1.0),
    }


BASELINE_NAMES = list(baselines(frames()).keys())


@pytest.mark.parametrize("windows", list(WINDOW_SETS))
@pytest.mark.parametrize("base_name", BASELINE_NAMES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_equals_reference_and_loop(backend, base_name, windows):
    dev = device_of(backend)
    x = frames(device=dev)
    frame, boxes = table(windows, dev)
    base = baselines(x)[base_name]
    got = run(backend, x, frame, boxes, base)
    assert got.shape == (frame.shape[0], C, H, W) and got.dtype == x.dtype and got.device == x.device
    assert torch.equal(got, masked_batch_torch(x, frame, boxes, base))
    assert torch.equal(got.cpu(), masked_loop(x, frame, boxes, base))


@pytest.mark.parametrize("x_format", ["contiguous", "channels-last"])
@pytest.mark.parametrize("out_format", ["contiguous", "channels-last"])
@pytest.mark.parametrize("base_name", ["float", "image", "expanded-stride0"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_out_buffer_any_memory_format_larger_than_m(backend, base_name, out_format, x_format):
    dev = device_of(backend)
    x = frames(device=dev)
    base = baselines(x)[base_name]
    if x_format == "channels-last":
        x = x.contiguous(memory_format=torch.channels_last)
    frame, boxes = table("corners", dev)
    m = frame.shape[0]
    fmt = torch.channels_last if out_format == "channels-last" else torch.contiguous_format
    out = torch.full((m + 2, C, H, W), 123.0, device=dev).contiguous(memory_format=fmt)
    got = run(backend, x, frame, boxes, base, out=out)
    assert got.shape == (m, C, H, W)
    assert got.data_ptr() == out.data_ptr() and got.stride() == out.stride()  # a view of out[:M]
    assert torch.equal(out[:m], masked_loop(x, frame, boxes, base).to(dev))
    assert (out[m:] == 123.0).all()  # rows past M untouched


@pytest.mark.parametrize("backend", BACKENDS)
def test_new_result_keeps_x_memory_format(backend):
    dev = device_of(backend)
    frame, boxes = table("edges", dev)
    x = frames(device=dev)
    assert run(backend, x, frame, boxes, 0.0).is_contiguous()
    xl = x.contiguous(memory_format=torch.channels_last)
    got = run(backend, xl, frame, boxes, 0.0)
    assert got.is_contiguous(memory_format=torch.channels_last) and not got.is_contiguous()
    assert torch.equal(got, masked_loop(x, frame, boxes, 0.0).to(dev))


@pytest.mark.parametrize("base_name", ["float", "per-channel-mean", "image"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_float64(backend, base_name):
    dev = device_of(backend)
    x = frames(torch.float64, dev)
    base = baselines(x)[base_name]
    if base_name == "float":
        base = 1.0 / 3.0  # not representable in float32: a float32 path would differ
    frame, boxes = table("whole-1px-clipped-empty", dev)
    got = run(backend, x, frame, boxes, base)
    assert got.dtype == torch.float64
    assert torch.equal(got.cpu(), masked_loop(x, frame, boxes, base))


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_tables_against_loop(backend):
    dev = device_of(backend)
    g = torch.Generator().manual_seed(11)
    x = frames(device=dev, seed=3)
    base = baselines(x)["image"]
    for _ in range(3):
        m = 5
        frame = torch.randint(0, B, (m,), generator=g)
        y0 = torch.randint(-2, H + 1, (m,), generator=g)
        x0 = torch.randint(-2, W + 1, (m,), generator=g)
        boxes = torch.stack([y0, x0, y0 + torch.randint(0, H + 2, (m,), generator=g),
                             x0 + torch.randint(0, W + 2, (m,), generator=g)], dim=1)
        got = run(backend, x, frame.to(dev), boxes.to(dev), base)
        assert torch.equal(got.cpu(), masked_loop(x, frame, boxes, base))


@pytest.mark.parametrize("with_out", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_window_table(backend, with_out):
    dev = device_of(backend)
    x = frames(device=dev)
    frame = torch.zeros(0, dtype=torch.long, device=dev)
    boxes = torch.zeros(0, 4, dtype=torch.long, device=dev)
    out = torch.full((2, C, H, W), 5.0, device=dev) if with_out else None
    got = run(backend, x, frame, boxes, baselines(x)["image"], out=out)
    assert got.shape == (0, C, H, W) and got.dtype == x.dtype
    if with_out:
        assert (out == 5.0).all()


@pytest.mark.skipif(not cuda_runs(), reason="no GPU and NUMBA_ENABLE_CUDASIM is off")
@pytest.mark.parametrize("max_blocks", [1, 2, 10_000], ids=["one-block", "grid-stride", "one-element-per-thread"])
def test_cuda_launch_shapes(max_blocks):
    """One block striding over everything, a few blocks striding, and a block per 8 elements."""
    dev = device_of("cuda")
    x = frames(device=dev)[:2, :1, :5, :6]  # a strided view of x, 60 elements per row
    frame = torch.tensor([1, 0], device=dev)
    boxes = torch.tensor([[1, 2, 4, 5], [0, 0, 5, 1]], device=dev)
    out = torch.zeros(2, 1, 5, 6, device=dev).contiguous(memory_format=torch.channels_last)
    got = run("cuda", x, frame, boxes, 2.5, out=out, max_blocks=max_blocks)
    assert torch.equal(got.cpu(), masked_loop(x, frame, boxes, 2.5))


def test_cpu_twin_runs_in_parallel_from_the_threshold(monkeypatch):
    x = frames()
    frame, boxes = table("edges")
    used = []
    real = masking._host_kernel
    monkeypatch.setattr(masking, "_host_kernel", lambda dtype, parallel: used.append(parallel) or real(dtype, parallel))
    n = frame.shape[0] * C * H * W
    for threshold in (n, n + 1):
        monkeypatch.setattr(masking, "_PARALLEL_MIN_ELEMENTS", threshold)
        assert torch.equal(masked_batch(x, frame, boxes, 0.0, backend="cpu"), masked_loop(x, frame, boxes, 0.0))
    assert used == [True, False]


def test_auto_picks_defaults_for_the_device_at_call_time(monkeypatch):
    x = frames()
    frame, boxes = table("corners")
    called = []
    monkeypatch.setattr(masking, "masked_batch_cpu", lambda *a: called.append("cpu") or masked_batch_torch(*a))
    monkeypatch.setitem(masking.DEFAULTS, "cpu", "cpu")
    masked_batch(x, frame, boxes, 0.0)
    monkeypatch.setitem(masking.DEFAULTS, "cpu", "torch")
    masked_batch(x, frame, boxes, 0.0)
    assert called == ["cpu"]
    assert set(masking.DEFAULTS) <= {"cpu", "cuda"} and set(masking.DEFAULTS.values()) <= {"torch", "cpu", "cuda"}


def test_python_int_baseline_is_a_constant():
    x = frames()
    frame, boxes = table("corners")
    assert torch.equal(masked_batch(x, frame, boxes, 2, backend="cpu"), masked_loop(x, frame, boxes, 2.0))


def _bad_cases():
    x = frames()
    frame, boxes = table("corners")
    m = frame.shape[0]
    img = baselines(x)["image"]
    return {
        "x-rank": ((x[0], frame, boxes, 0.0, None), "x must be a \\(B, C, H, W\\) tensor"),
        "x-dtype": ((x.half(), frame, boxes, 0.0, None), "x must be float32 or float64"),
        "x-int": ((x.long(), frame, boxes, 0.0, None), "x must be float32 or float64"),
        "frame-rank": ((x, frame[:, None], boxes, 0.0, None), "frame must be a 1-D"),
        "frame-dtype": ((x, frame.int(), boxes, 0.0, None), "frame must be int64"),
        "boxes-shape": ((x, frame, boxes[:, :3], 0.0, None), "boxes must be an \\(M, 4\\)"),
        "boxes-dtype": ((x, frame, boxes.float(), 0.0, None), "boxes must be int64"),
        "m-mismatch": ((x, frame[:-1], boxes, 0.0, None), "frame has 3 rows but boxes has 4"),
        "frame-range-high": ((x, frame + 1, boxes, 0.0, None), "frame indices must be in \\[0, 3\\)"),
        "frame-range-neg": ((x, frame - 1, boxes, 0.0, None), "frame indices must be in \\[0, 3\\)"),
        "baseline-shape": ((x, frame, boxes, img[:, :, :4], None), "baseline must have shape \\(3, 3, 1 or 7, 1 or 9\\)"),
        "baseline-batch": ((x, frame, boxes, img[:1], None), "baseline must have shape"),
        "baseline-rank": ((x, frame, boxes, img[0], None), "baseline must have shape"),
        "baseline-dtype": ((x, frame, boxes, img.double(), None), "baseline must have x's dtype"),
        "baseline-type": ((x, frame, boxes, "mean", None), "baseline must be a float or"),
        "baseline-bool": ((x, frame, boxes, True, None), "baseline must be a float or"),
        "out-small": ((x, frame, boxes, 0.0, torch.empty(m - 1, C, H, W)), "out has 3 rows, too few for 4"),
        "out-shape": ((x, frame, boxes, 0.0, torch.empty(m, C, W, H)), "out must be an \\(M2, 3, 7, 9\\)"),
        "out-dtype": ((x, frame, boxes, 0.0, torch.empty(m, C, H, W, dtype=torch.float64)), "out must have x's dtype"),
    }


BAD = _bad_cases()


@pytest.mark.parametrize("case", list(BAD))
def test_bad_arguments_raise_clear_value_errors(case):
    args, message = BAD[case]
    for backend in ("torch", "cpu"):
        with pytest.raises(ValueError, match=message):
            masked_batch(*args, backend=backend)


def test_unknown_backend_and_device_mismatch():
    x = frames()
    frame, boxes = table("corners")
    with pytest.raises(ValueError, match="unknown kernel backend"):
        masked_batch(x, frame, boxes, 0.0, backend="numba")
    if CUDA:
        with pytest.raises(ValueError, match="frame is on cpu but x is on cuda"):
            masked_batch(x.cuda(), frame, boxes.cuda(), 0.0)
        with pytest.raises(ValueError, match="needs CPU tensors"):
            masked_batch(x.cuda(), frame.cuda(), boxes.cuda(), 0.0, backend="cpu")
    elif not _backend.cuda_simulated():
        with pytest.raises(ValueError, match="needs CUDA tensors"):
            masked_batch(x, frame, boxes, 0.0, backend="cuda")
