"""Occlusion: against a plain per-window loop, exact zeros, window geometry, baselines, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fastviz as fv
from fastviz.errors import InputError
from fastviz.methods.perturbation import blur, combine_scales, masked_batch, scale_maps, window_grids

from conftest import BoxSum, materialise, small_convnet
from references import occlusion_loop, window_starts


@pytest.mark.parametrize(
    "windows,stride",
    [((5,), 3), ((4, 7, 9), 2), ((3, 8), 5), ((30,), 4), ((6,), 10)],
    ids=["one-scale", "three-scales", "edge-flush", "window-larger-than-frame", "stride-larger-than-window"],
)
def test_occlusion_equals_plain_window_loop(convnet, frames, windows, stride):
    got = fv.occlusion(convnet, frames, windows=windows, stride=stride)
    want = occlusion_loop(convnet, frames, windows=windows, stride=stride)
    assert got.shape == (3, 17, 23) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)
    assert want.abs().max() > 1e-3  # the comparison is not between two zero maps


@pytest.mark.parametrize("chunk_size", [1, 7, 10_000])
def test_chunking_does_not_change_the_map(convnet, frames, chunk_size):
    ref = fv.occlusion(convnet, frames, windows=(4, 6), stride=3)
    got = fv.occlusion(convnet, frames, windows=(4, 6), stride=3, chunk_size=chunk_size)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-7)


def test_tiny_memory_budget_gives_the_same_map(convnet, frames):
    ref = fv.occlusion(convnet, frames, windows=(5,), stride=4)
    got = fv.occlusion(convnet, frames, windows=(5,), stride=4, memory_budget="64KiB")
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-7)


def test_abs_score_and_mean_baseline_match_loop(convnet, frames):
    got = fv.occlusion(convnet, frames, windows=(4, 8), stride=3, baseline="mean", score="abs")
    want = occlusion_loop(
        convnet, frames, windows=(4, 8), stride=3, score="abs",
        baseline=lambda f: f.mean(dim=(1, 2), keepdim=True).expand_as(f),
    )
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)
    assert (got >= 0).all()


def test_blur_baseline_matches_loop_with_blurred_fill(convnet, frames):
    got = fv.occlusion(convnet, frames, windows=(6,), stride=4, baseline="blur", blur_sigma=2.0)
    want = occlusion_loop(convnet, frames, windows=(6,), stride=4, baseline=lambda f: blur(f[None], 2.0)[0])
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)


def test_blur_matches_opencv_gaussian_blur():
    cv2 = pytest.importorskip("cv2")
    torch.manual_seed(4)
    img = torch.rand(1, 3, 40, 50)
    got = blur(img, 2.0)[0].permute(1, 2, 0).numpy()
    # same kernel (radius ceil(3 sigma) = 6) and reflected borders (torch "reflect" = BORDER_REFLECT_101)
    want = cv2.GaussianBlur(img[0].permute(1, 2, 0).numpy(), (13, 13), 2.0, borderType=cv2.BORDER_REFLECT_101)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_blur_is_a_normalised_gaussian():
    img = torch.zeros(1, 1, 21, 21)
    img[0, 0, 10, 10] = 1.0
    out = blur(img, 1.5)[0, 0]
    assert out.sum().item() == pytest.approx(1.0, abs=1e-5)
    g = np.exp(-0.5 * (np.arange(-3, 4) / 1.5) ** 2)
    g /= np.exp(-0.5 * (np.arange(-5, 6) / 1.5) ** 2).sum()  # radius ceil(3 * 1.5) = 5
    np.testing.assert_allclose(out[10, 7:14].numpy(), g * g[3], rtol=1e-5)


def test_tensor_baseline_per_channel(convnet, frames):
    fill = torch.tensor([0.1, 0.5, 0.9])
    got = fv.occlusion(convnet, frames, windows=(5,), stride=4, baseline=fill)
    want = occlusion_loop(convnet, frames, windows=(5,), stride=4, baseline=lambda f: fill.view(3, 1, 1).expand_as(f))
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)


def test_pixels_no_window_touching_the_box_reaches_are_exactly_zero():
    model = BoxSum(y0=10, y1=14, x0=20, x1=27).eval()
    torch.manual_seed(3)
    x = torch.rand(2, 3, 40, 48) + 0.1
    windows, stride = (4, 8, 16), 4
    maps = fv.occlusion(model, x, windows=windows, stride=stride)
    y0, y1, x0, x1 = model.box
    reached = np.zeros((40, 48), dtype=bool)  # pixels under some window that touches the box
    for size in windows:
        for top in window_starts(40, size, stride):
            for left in window_starts(48, size, stride):
                if top < y1 and top + size > y0 and left < x1 and left + size > x0:
                    reached[top : top + size, left : left + size] = True
    assert reached.sum() < reached.size  # the property is not vacuous
    assert (maps[:, ~torch.from_numpy(reached)] == 0).all()  # exactly zero, not approximately
    assert (maps[:, y0:y1, x0:x1] > 0).all()  # occluding the box lowers the output


def test_target_choice_is_made_on_the_clean_input():
    # A two-class model whose top class flips when a window is masked: the score must keep
    # comparing the clean top class's logit, not the masked input's top class.
    class TwoClass(torch.nn.Module):
        def forward(self, x):
            m = x.mean(dim=(1, 2, 3))
            return torch.stack([m, 0.55 - 0 * m], dim=1)

    x = torch.full((1, 1, 4, 4), 0.6)
    maps = fv.occlusion(TwoClass(), x, windows=(4,), stride=4)  # one window: the whole frame
    # clean: class 0 wins (0.6 > 0.55); masked: logit0 = 0 -> delta on class 0 = 0.6
    torch.testing.assert_close(maps, torch.full((1, 4, 4), 0.6))


def test_steering_target_in_occlusion_uses_clean_branch():
    class Lin(torch.nn.Module):
        def forward(self, x):
            return x.mean(dim=(1, 2, 3)).unsqueeze(1)

    x = torch.full((1, 1, 4, 4), 0.2)  # y = 0.2 rad > 5 deg: branch "right", score = y
    maps = fv.occlusion(Lin(), x, windows=(2,), stride=2, target=fv.targets.Steering())
    # each 2x2 window removes 4/16 of the mean: y_masked = 0.15 -> delta 0.05, all pixels
    torch.testing.assert_close(maps, torch.full((1, 4, 4), 0.05))


def test_window_grid_geometry_for_pilotnet_frames():
    grids = window_grids(66, 200, (8, 16, 32), 4)
    assert [len(g) for g in grids] == [16 * 49, 14 * 47, 10 * 43]
    assert sum(len(g) for g in grids) == 1872
    for g in grids:
        assert g.tops[-1] + g.height == 66 and g.lefts[-1] + g.width == 200


def test_masked_batch_fills_exactly_the_window():
    x = torch.arange(2 * 1 * 4 * 5, dtype=torch.float32).view(2, 1, 4, 5)
    boxes = torch.tensor([[0, 0, 2, 2], [1, 3, 4, 5]])
    out = masked_batch(x, torch.tensor([1, 0]), boxes, -1.0)
    want0 = x[1].clone()
    want0[:, 0:2, 0:2] = -1
    want1 = x[0].clone()
    want1[:, 1:4, 3:5] = -1
    torch.testing.assert_close(out, torch.stack([want0, want1]))


def test_scale_maps_hand_computed():
    # 1x4 frame, windows of width 2 at stride 2: [0,2) and [2,4) with scores 3 and 5
    (g,) = window_grids(1, 4, (2,), 2)
    maps, covered = scale_maps(torch.tensor([[3.0, 5.0]]), [g], 1, 4)
    torch.testing.assert_close(maps, torch.tensor([[[[3.0, 3.0, 5.0, 5.0]]]]))
    assert covered.all()
    # width 3 at stride 2: [0,3) and flush [1,4): pixel means 1, (1+2)/2, (1+2)/2, 2
    (g,) = window_grids(1, 4, (3,), 2)
    maps, _ = scale_maps(torch.tensor([[1.0, 2.0]]), [g], 1, 4)
    torch.testing.assert_close(maps, torch.tensor([[[[1.0, 1.5, 1.5, 2.0]]]]))


def test_gaps_of_a_stride_larger_than_the_window_take_the_covering_scales_mean():
    # 1x10 frame. Scale A: width 2 at stride 5 -> [0,2) [5,7) + flush [8,10); gaps at 2-4 and 7.
    # Scale B: width 10 -> one window covering all.
    grids = window_grids(1, 10, (2, 10), 5)
    scores = torch.tensor([[1.0, 2.0, 3.0, 10.0]])
    maps, covered = scale_maps(scores, grids, 1, 10)
    got = combine_scales(maps, covered)[0, 0]
    want = torch.tensor([5.5, 5.5, 10, 10, 10, 6, 6, 10, 6.5, 6.5])
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(windows=()), "windows"),
        (dict(windows=(0,)), "positive"),
        (dict(stride=0), "positive"),
        (dict(score="max"), "score"),
        (dict(baseline="zeros"), "baseline"),
        (dict(baseline=torch.zeros(5)), "broadcast"),
        (dict(memory_budget="lots"), "memory budget"),
        (dict(target="steer"), "target"),
        (dict(baseline="blur", blur_sigma=-1.0), "blur_sigma"),
    ],
)
def test_bad_arguments_raise_clear_errors(convnet, frames, kwargs, match):
    with pytest.raises(InputError, match=match):
        fv.occlusion(convnet, frames, **kwargs)


@pytest.mark.parametrize(
    "x,match",
    [
        (torch.rand(3, 17, 23), r"\(B, C, H, W\)"),
        (torch.zeros(1, 3, 17, 23, dtype=torch.uint8), "floating-point"),
        (torch.zeros(0, 3, 17, 23), "empty"),
        (np.zeros((1, 3, 17, 23), dtype=np.float32), "torch.Tensor"),
    ],
)
def test_bad_input_raises_clear_errors(convnet, x, match):
    with pytest.raises(InputError, match=match):
        fv.occlusion(convnet, x)


def test_model_that_rejects_channels_last_still_works(frames):
    class ViewNet(torch.nn.Module):  # .view on an activation fails on channels-last tensors
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv = torch.nn.Conv2d(3, 2, 3)
            self.fc = torch.nn.Linear(2 * 15 * 21, 1)

        def forward(self, x):
            h = self.conv(x)
            return self.fc(h.view(h.shape[0], -1))

    net = ViewNet().eval()
    with pytest.raises(RuntimeError):
        net(frames.contiguous(memory_format=torch.channels_last))
    got = fv.occlusion(net, frames, windows=(5,), stride=4)
    torch.testing.assert_close(got.double(), occlusion_loop(net, frames, windows=(5,), stride=4), rtol=1e-4, atol=1e-6)


def test_masked_batch_keeps_channels_last():
    x = torch.rand(2, 3, 6, 7).contiguous(memory_format=torch.channels_last)
    out = masked_batch(x, torch.tensor([0, 1, 1]), torch.tensor([[0, 0, 2, 2]] * 3), 0.0)
    assert out.is_contiguous(memory_format=torch.channels_last)
    base = x.mean(dim=(2, 3), keepdim=True)
    out = masked_batch(x, torch.tensor([0, 1, 1]), torch.tensor([[0, 0, 2, 2]] * 3), base)
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_per_sample_top_class_with_several_frames():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(5))
    x = torch.rand(3, 3, 12, 12)
    net(x)
    net.eval()
    top = net(x).argmax(1)
    got = fv.occlusion(net, x, windows=(4,), stride=4)
    for i in range(3):
        want = occlusion_loop(net, x[i : i + 1], windows=(4,), stride=4, target=lambda clean, out, k=int(top[i]): float(out[0, k]))
        torch.testing.assert_close(got[i : i + 1].double(), want, rtol=1e-4, atol=1e-6)


def test_model_with_tuple_output_needs_a_target(frames):
    class TwoHeads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv = torch.nn.Conv2d(3, 2, 3)

        def forward(self, x):
            h = self.conv(x).mean(dim=(2, 3))
            return h[:, :1], h[:, 1:]  # (steering, throttle)

    net = TwoHeads().eval()
    with pytest.raises(InputError, match="returns a tuple, not a tensor"):
        fv.occlusion(net, frames)
    got = fv.occlusion(net, frames, windows=(5,), stride=4, target=lambda out: out[1][:, 0])
    single = torch.nn.Sequential()  # the same head as a one-output model, for the reference loop
    single.forward = lambda x: net(x)[1]
    torch.testing.assert_close(got.double(), occlusion_loop(single, frames, windows=(5,), stride=4), rtol=1e-4, atol=1e-6)


def test_float64_model_and_input(convnet, frames):
    net64 = convnet.double()
    got = fv.occlusion(net64, frames.double(), windows=(5,), stride=4)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), occlusion_loop(net64, frames.double(), windows=(5,), stride=4), rtol=1e-6, atol=1e-9)
    with pytest.raises(InputError, match="float32 but the model's parameters are torch.float64"):
        fv.occlusion(net64, frames)


def test_numpy_integers_are_accepted(convnet, frames):
    ref = fv.occlusion(convnet, frames, windows=(4, 6), stride=3)
    got = fv.occlusion(convnet, frames, windows=np.array([4, 6]), stride=np.int64(3))
    torch.testing.assert_close(got, ref)
    with pytest.raises(InputError, match="positive int"):
        fv.occlusion(convnet, frames, windows=(4.5,))


def test_runs_inside_inference_mode(convnet, frames):
    ref = fv.occlusion(convnet, frames, windows=(6,), stride=4)
    with torch.inference_mode():
        got = fv.occlusion(convnet, frames, windows=(6,), stride=4)
    torch.testing.assert_close(got, ref)


@pytest.mark.parametrize("backend", ["torch", "cpu", "cuda"])
def test_every_kernel_backend_gives_the_same_map(frames, backend):
    """The engine with each kernel backend (CUDA in Numba's simulator without a GPU) equals the
    plain per-window loop."""
    x = frames[:2, :, :9, :11]
    net = materialise(small_convnet(), x[:1])
    device = "cuda" if backend == "cuda" and torch.cuda.is_available() else "cpu"  # else the simulator
    with fv.kernels.use_threads_per_block(32):
        got = fv.occlusion(net.to(device), x.to(device), windows=(3, 5), stride=2, baseline="mean",
                           backend=backend, incremental=False).cpu()
    net.cpu()
    want = occlusion_loop(net, x, windows=(3, 5), stride=2,
                          baseline=lambda f: f.mean(dim=(1, 2), keepdim=True).expand_as(f))
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)


def test_unknown_backend_is_an_input_error(convnet, frames):
    with pytest.raises(InputError, match="unknown kernel backend 'gpu'"):
        fv.occlusion(convnet, frames, backend="gpu")
