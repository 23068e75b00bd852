"""VisualBackProp against the paper's steps, a hand-computed case, and its properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import fastviz as fv
from fastviz.errors import InputError
from fastviz.methods import vbp
from fastviz.methods.vbp import ones_deconv

from references import ones_transposed_conv_loop, visual_backprop_sequential


def stack(seed=0):
    torch.manual_seed(seed)
    layers = [
        (nn.Conv2d(3, 4, 5, stride=2), nn.ReLU()),
        (nn.Conv2d(4, 6, 3, stride=1, padding=1), nn.ReLU()),
        (nn.Conv2d(6, 5, 3, stride=2), nn.ReLU()),
        (nn.Conv2d(5, 3, 2, stride=1), None),  # no activation: the conv output is used
    ]
    seq = nn.Sequential(*[m for pair in layers for m in pair if m is not None]).eval()
    return layers, seq


@pytest.mark.parametrize("size", [(31, 37), (32, 40), (29, 29)])
def test_matches_the_papers_steps(size):
    layers, seq = stack()
    torch.manual_seed(5)
    x = torch.rand(2, 3, *size)
    got = fv.visual_backprop(seq, x)
    assert got.shape == (2, *size) and got.dtype == torch.float32
    for i in range(2):
        want = visual_backprop_sequential(layers, x[i : i + 1])
        np.testing.assert_allclose(got[i].numpy(), want, rtol=1e-4, atol=1e-5)


def test_pilotnet_matches_the_papers_steps():
    torch.manual_seed(0)
    net = fv.models.PilotNet().eval()
    x = torch.rand(1, 3, 66, 200)
    f = net.features
    layers = [(f[i], f[i + 1]) for i in range(0, 10, 2)]
    got = fv.visual_backprop(net, x)[0].numpy()
    want = visual_backprop_sequential(layers, x * 2 - 1)  # PilotNet's fixed normalisation
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_hand_computed_single_conv():
    conv = nn.Conv2d(1, 1, 2, stride=2, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    net = nn.Sequential(conv, nn.ReLU()).eval()
    x = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)
    # block sums: [[10, 18], [42, 50]] -> each 2x2 block gets its sum -> min-max: (v - 10) / 40
    want = torch.tensor([[0.0, 0.2], [0.8, 1.0]]).repeat_interleave(2, 0).repeat_interleave(2, 1)
    torch.testing.assert_close(fv.visual_backprop(net, x)[0], want)


@pytest.mark.parametrize("k,s,p", [(5, 2, 0), (3, 1, 1), (3, 2, 1), (4, 3, 2), (1, 1, 0)])
@pytest.mark.parametrize("in_size", [(9, 11), (10, 10), (13, 7)])
def test_ones_deconv_is_the_receptive_field_sum(k, s, p, in_size):
    conv = nn.Conv2d(1, 1, k, stride=s, padding=p)
    out_h = (in_size[0] + 2 * p - k) // s + 1
    out_w = (in_size[1] + 2 * p - k) // s + 1
    torch.manual_seed(2)
    m = torch.rand(1, 1, out_h, out_w, dtype=torch.float64)
    got = ones_deconv(m, conv, in_size)[0, 0].numpy()
    want = ones_transposed_conv_loop(m[0, 0].numpy(), k, s, p, in_size)
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_inplace_relu_and_batchnorm_chain():
    torch.manual_seed(0)
    a = nn.Sequential(nn.Conv2d(3, 4, 3, 2), nn.BatchNorm2d(4), nn.ReLU(inplace=True), nn.Conv2d(4, 2, 3), nn.ReLU(inplace=True)).eval()
    b = nn.Sequential(nn.Conv2d(3, 4, 3, 2), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 3), nn.ReLU()).eval()
    with torch.no_grad():
        a[1].running_mean.uniform_(-0.5, 0.5)  # BatchNorm that matters: shifts before the ReLU
    b.load_state_dict(a.state_dict())
    x = torch.rand(2, 3, 21, 21)
    torch.testing.assert_close(fv.visual_backprop(a, x), fv.visual_backprop(b, x))
    # the first block's mean map is taken after BatchNorm and ReLU, as the reference does
    layers = [(b[0], nn.Sequential(b[1], b[2])), (b[3], b[4])]
    np.testing.assert_allclose(fv.visual_backprop(b, x[:1])[0].numpy(), visual_backprop_sequential(layers, x[:1]), rtol=1e-4, atol=1e-5)


def test_values_in_unit_range_and_constant_maps_are_zero():
    net = nn.Sequential(nn.Conv2d(1, 1, 3), nn.ReLU()).eval()
    with torch.no_grad():
        net[0].weight.zero_()
        net[0].bias.fill_(1.0)
    out = fv.visual_backprop(net, torch.rand(2, 1, 8, 8))
    # all-ones mean map: the upscaled map counts receptive-field overlaps, not constant
    assert out.min() == 0 and out.max() == 1
    flat = nn.Sequential(nn.Conv2d(1, 1, 1), nn.ReLU()).eval()
    with torch.no_grad():
        flat[0].weight.zero_()
        flat[0].bias.fill_(1.0)
    assert (fv.visual_backprop(flat, torch.rand(1, 1, 5, 5)) == 0).all()


def test_pooling_between_convs_is_resized():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()).eval()
    out = fv.visual_backprop(net, torch.rand(1, 3, 16, 16))
    assert out.shape == (1, 16, 16) and out.min() == 0 and out.max() == 1


def test_layer_selection_and_errors():
    layers, seq = stack()
    x = torch.rand(1, 3, 31, 37)
    only_first_two = fv.visual_backprop(seq, x, layers=["0", "2"])
    want = visual_backprop_sequential(layers[:2], x)
    np.testing.assert_allclose(only_first_two[0].numpy(), want, rtol=1e-4, atol=1e-5)
    with pytest.raises(InputError, match="nn.Conv2d"):
        fv.visual_backprop(seq, x, layers=["1"])
    with pytest.raises(InputError, match="no nn.Conv2d"):
        fv.visual_backprop(nn.Sequential(nn.Flatten(), nn.Linear(3 * 31 * 37, 1)), x)


@pytest.mark.parametrize("backend", ["torch", "cpu", "cuda"])
def test_every_kernel_backend_matches_the_papers_steps(backend):
    layers, seq = stack()
    torch.manual_seed(6)
    x = torch.rand(2, 3, 23, 27)
    device = "cuda" if backend == "cuda" and torch.cuda.is_available() else "cpu"  # else the simulator
    with fv.kernels.use_threads_per_block(32):
        got = fv.visual_backprop(seq.to(device), x.to(device), backend=backend).cpu()
    seq.cpu()
    for i in range(2):
        np.testing.assert_allclose(got[i].numpy(), visual_backprop_sequential(layers, x[i : i + 1]), rtol=1e-4, atol=1e-5)


def test_pooling_gap_uses_the_torch_chain_under_auto():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()).eval()
    x = torch.rand(1, 3, 16, 16)
    torch.testing.assert_close(fv.visual_backprop(net, x), fv.visual_backprop(net, x, backend="torch"))
    with pytest.raises(InputError, match="pool|size"):
        fv.visual_backprop(net, x, backend="cpu")


class _Gated(nn.Module):
    """Conv blocks whose second block takes an extra ReLU only for bright inputs (mean > 0.5):
    the module path differs between chunks of dark and bright frames."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.c1, self.r1 = nn.Conv2d(3, 4, 3, 2), nn.ReLU()
        self.c2, self.r2 = nn.Conv2d(4, 5, 3), nn.Tanh()
        self.r3 = nn.ReLU()
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(5 * 5 * 5, 1))  # for 15 x 15 inputs

    def forward(self, x):
        y = self.r2(self.c2(self.r1(self.c1(x))))
        if x.mean() > 0.5:
            y = self.r3(y)  # continues the second block: its activated output is now r3's
        return self.head(y)


def _per_frame(model, x):
    return torch.cat([fv.visual_backprop(model, x[i:i + 1]) for i in range(x.shape[0])])


@pytest.fixture
def tracked_chunks(monkeypatch):
    """How many chunks ran with the full tracking (the others followed the recorded events)."""
    calls = []
    real = vbp._Blocks._track

    def track(self, model, x):
        calls.append(x.shape[0])
        return real(self, model, x)

    monkeypatch.setattr(vbp._Blocks, "_track", track)
    return calls


def test_later_chunks_follow_the_first_chunks_path_and_skip_the_head(tracked_chunks):
    torch.manual_seed(0)
    net = fv.models.PilotNet().eval()
    x = torch.rand(6, 3, 66, 200)
    fv.visual_backprop(net, x, chunk_size=2)  # the planner measures a frame's memory once, a full pass
    head_runs = []
    net.regressor.register_forward_hook(lambda *a: head_runs.append(1))
    tracked_chunks.clear()
    chunked = fv.visual_backprop(net, x, chunk_size=2)
    assert tracked_chunks == [2]  # the first chunk tracked, the two others followed its events
    assert head_runs == []  # the regression head never ran: nothing after the last conv block does
    torch.testing.assert_close(chunked, fv.visual_backprop(net, x, chunk_size=6), rtol=1e-5, atol=1e-6)
    f = net.features
    layers = [(f[i], f[i + 1]) for i in range(0, 10, 2)]
    for i in range(6):
        np.testing.assert_allclose(chunked[i].numpy(), visual_backprop_sequential(layers, x[i:i + 1] * 2 - 1),
                                   rtol=1e-4, atol=1e-5)


def test_a_path_that_changes_between_chunks_falls_back_to_full_tracking(tracked_chunks):
    net = _Gated().eval()
    torch.manual_seed(1)
    dark, bright = torch.rand(2, 3, 15, 15) * 0.5, 0.5 + torch.rand(2, 3, 15, 15) * 0.5
    for x in (torch.cat([dark, bright]), torch.cat([bright, dark])):
        tracked_chunks.clear()
        got = fv.visual_backprop(net, x, chunk_size=2)
        # dark then bright: the extra ReLU's input is the recorded path's last output, but the
        # head's is not; bright then dark: the head starts where the extra ReLU was recorded
        assert tracked_chunks == [2, 2]
        torch.testing.assert_close(got, _per_frame(net, x), rtol=1e-5, atol=1e-6)
    # and the reference: bright frames take the extra ReLU's output (the same as tanh's where
    # tanh >= 0, so compare against the paper's steps with the ReLU in the block)
    want = visual_backprop_sequential([(net.c1, net.r1), (net.c2, nn.Sequential(net.r2, net.r3))], bright[:1])
    np.testing.assert_allclose(fv.visual_backprop(net, bright, chunk_size=1)[0].numpy(), want, rtol=1e-4, atol=1e-5)


class _SharedRelu(nn.Module):
    """One ReLU module after every conv (as torchvision's ResNets reuse ``self.relu``)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.convs = nn.ModuleList([nn.Conv2d(3, 4, 3, 2), nn.Conv2d(4, 4, 3), nn.Conv2d(4, 2, 3)])
        self.relu = nn.ReLU()

        self.head = nn.Flatten()

    def forward(self, x):
        for c in self.convs:
            x = self.relu(c(x))
        return self.head(x).sum(dim=1)


def test_a_shared_activation_module_is_followed_block_by_block(tracked_chunks):
    net = _SharedRelu().eval()
    x = torch.rand(5, 3, 23, 23)
    got = fv.visual_backprop(net, x, chunk_size=2)
    assert tracked_chunks == [2]  # of three chunks (2, 2, 1 frames): the first only
    torch.testing.assert_close(got, _per_frame(net, x), rtol=1e-5, atol=1e-6)
    layers = [(c, net.relu) for c in net.convs]
    for i in range(5):
        np.testing.assert_allclose(got[i].numpy(), visual_backprop_sequential(layers, x[i:i + 1]), rtol=1e-4, atol=1e-5)


class _ViewsActivations(nn.Module):
    """Calls ``.view`` on an activation: rejects channels-last tensors (``view`` needs the
    standard strides), as some hand-written models do."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(6)
        self.c1, self.r1 = nn.Conv2d(3, 4, 3, 2), nn.ReLU()
        self.c2, self.r2 = nn.Conv2d(4, 2, 3), nn.ReLU()

    def forward(self, x):
        h = self.r1(self.c1(x))
        h = h.view(h.shape[0], -1).view(h.shape)  # the first view fails on channels-last h
        return self.r2(self.c2(h)).sum(dim=(1, 2, 3))


def test_chunks_run_channels_last_on_the_cpu():
    layers, seq = stack()
    formats = []
    seq[0].register_forward_pre_hook(lambda m, a: formats.append(
        (a[0].is_contiguous(memory_format=torch.channels_last), a[0].shape[0])))
    x = torch.rand(5, 3, 31, 37)  # the standard layout, as users pass it
    fv.visual_backprop(seq, x, chunk_size=2)  # the planner measures a frame's memory once, a full pass
    formats.clear()
    got = fv.visual_backprop(seq, x, chunk_size=2)
    assert formats == [(True, 2), (True, 2), (True, 1)]
    assert x.is_contiguous()  # the caller's tensor is left as it was
    for i in range(5):
        np.testing.assert_allclose(got[i].numpy(), visual_backprop_sequential(layers, x[i:i + 1]), rtol=1e-4, atol=1e-5)


def test_a_model_that_rejects_channels_last_runs_in_the_given_layout():
    net = _ViewsActivations().eval()
    with pytest.raises(RuntimeError):  # the premise: channels-last input breaks its forward
        net(torch.rand(1, 3, 15, 15).contiguous(memory_format=torch.channels_last))
    formats = []
    net.c1.register_forward_pre_hook(lambda m, a: formats.append(a[0].is_contiguous(memory_format=torch.channels_last)))
    x = torch.rand(5, 3, 15, 15)
    got = fv.visual_backprop(net, x, chunk_size=2)
    assert formats == [False, True, False, False, False]  # the planner's row; the first chunk tried once
    formats.clear()
    torch.testing.assert_close(fv.visual_backprop(net, x, chunk_size=2), got)
    assert formats == [False, False, False]  # remembered: no second try
    layers = [(net.c1, net.r1), (net.c2, net.r2)]
    for i in range(5):
        np.testing.assert_allclose(got[i].numpy(), visual_backprop_sequential(layers, x[i:i + 1]), rtol=1e-4, atol=1e-5)


def test_a_layer_before_the_first_conv_that_changes_the_size_is_resized_then_normalised():
    torch.manual_seed(8)
    net = nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 3, 3, stride=2), nn.ReLU()).eval()
    x = torch.rand(2, 3, 20, 24)
    got = fv.visual_backprop(net, x)
    assert got.shape == (2, 20, 24)
    layers = [(net[1], net[2]), (net[3], net[4])]
    for i in range(2):
        # the map at the pooled size, resized bilinearly to the input's and normalised again
        # (min-max is affine-invariant, so normalising before the resize does not matter)
        small = torch.from_numpy(visual_backprop_sequential(layers, net[0](x[i:i + 1]))).float()
        up = torch.nn.functional.interpolate(small[None, None], size=(20, 24), mode="bilinear", align_corners=False)[0, 0]
        want = (up - up.min()) / (up.max() - up.min())
        np.testing.assert_allclose(got[i].numpy(), want.numpy(), rtol=1e-4, atol=1e-5)
        assert got[i].min() == 0 and got[i].max() == 1
