"""Grad-CAM against its definition, a hand-computed case, and gradient economy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastviz as fv
from fastviz.errors import InputError, UnknownNameError

from conftest import materialise, small_convnet
from references import grad_cam_split


def test_hand_computed():
    conv = nn.Conv2d(1, 2, 1, bias=False)
    head = nn.Linear(8, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, 3.0]).view(2, 1, 1, 1))  # A0 = x, A1 = 3x
        head.weight.copy_(torch.tensor([[1.0, 0, 0, 1, -1, -1, 1, 0]]))  # W0 mean 0.5, W1 mean -0.25
    net = nn.Sequential(conv, nn.Flatten(), head).eval()
    x = torch.tensor([[[[1.0, -2.0], [3.0, -4.0]]]])
    # relu(0.5 x - 0.25 * 3x) = relu(-0.25 x)
    want = torch.tensor([[[0.0, 0.5], [0.0, 1.0]]])
    torch.testing.assert_close(fv.grad_cam(net, x, layer="0", upsample=False), want)
    torch.testing.assert_close(fv.grad_cam(net, x, layer=conv), want)  # 2x2 -> 2x2: no resize


@pytest.mark.parametrize("inplace", [False, True])
def test_matches_definition_on_a_regressor(frames, inplace):
    net = materialise(small_convnet(inplace=inplace), frames[:1])
    got = fv.grad_cam(net, frames, layer="3", upsample=False)
    ref_net = materialise(small_convnet(inplace=False), frames[:1])
    want = grad_cam_split(ref_net[:4], ref_net[4:], frames, lambda out: out[:, 0])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    assert want.abs().max() > 0


def test_upsample_is_bilinear_resize_of_layer_map(convnet, frames):
    low = fv.grad_cam(convnet, frames, layer="5", upsample=False)
    high = fv.grad_cam(convnet, frames, layer="5")
    assert low.shape == (3, 8, 11) and high.shape == (3, 17, 23)
    torch.testing.assert_close(high, F.interpolate(low[:, None], size=(17, 23), mode="bilinear", align_corners=False)[:, 0])


def test_classifier_targets(frames):
    net = materialise(small_convnet(classes=4), frames[:1])
    for k in range(4):
        got = fv.grad_cam(net, frames, layer="3", target=fv.targets.Class(k), upsample=False)
        want = grad_cam_split(net[:4], net[4:], frames, lambda out, k=k: out[:, k])
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    top = net(frames).argmax(1)
    default = fv.grad_cam(net, frames, layer="3", upsample=False)
    per_sample = fv.grad_cam(net, frames, layer="3", target=fv.targets.Class(top.tolist()), upsample=False)
    torch.testing.assert_close(default, per_sample)


def test_steering_target_matches_definition(frames):
    net = materialise(small_convnet(), frames[:1])
    tgt = fv.targets.Steering(threshold_deg=5.0)
    got = fv.grad_cam(net, frames, layer="5", target=tgt, upsample=False)
    want = grad_cam_split(net[:6], net[6:], frames, lambda out: tgt(out))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_gradients_stop_at_the_target_layer_and_leave_no_parameter_grads(frames):
    class NoBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            raise AssertionError("backpropagated below the target layer")

    class Guard(nn.Module):
        def forward(self, x):
            return NoBackward.apply(x)

    torch.manual_seed(0)
    net = nn.Sequential(Guard(), nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(1))
    materialise(net, frames[:1])
    fv.grad_cam(net, frames.requires_grad_(True), layer="4")
    assert all(p.grad is None for p in net.parameters())
    assert frames.grad is None


def test_frozen_model_works():
    net = fv.models.PilotNet().eval().requires_grad_(False)
    out = fv.grad_cam(net, torch.rand(2, 3, 66, 200))
    assert out.shape == (2, 66, 200)
    assert not any(p.requires_grad for p in net.parameters())


def test_default_layer_is_the_models_cam_layer_else_last_activated_conv(frames):
    torch.manual_seed(0)
    net = fv.models.PilotNet().eval()
    x = torch.rand(2, 3, 66, 200)
    torch.testing.assert_close(fv.grad_cam(net, x), fv.grad_cam(net, x, layer="features.5"))
    plain = materialise(small_convnet(), frames[:1])  # no cam_layer: conv "4" -> its ReLU "5"
    torch.testing.assert_close(fv.grad_cam(plain, frames), fv.grad_cam(plain, frames, layer="5"))
    torch.testing.assert_close(fv.grad_cam(plain, frames), fv.grad_cam(plain, frames, layer=plain[5]))


def test_bundled_model_maps_are_not_blank():
    model = fv.models.load("pilotnet-carracing")
    log = fv.data.load_drive_log()
    x = model.preprocess(log.frames[::100])
    maps = fv.grad_cam(model, x, target=fv.targets.Steering())
    blank = (maps.flatten(1).amax(1) == 0).float().mean().item()
    assert blank <= 0.1, f"{blank:.0%} of Grad-CAM maps are blank on the bundled log"


def test_errors(convnet, frames):
    with pytest.raises(UnknownNameError, match="features.99"):
        fv.grad_cam(convnet, frames, layer="features.99")
    with pytest.raises(InputError, match=r"\(B, K, h, w\)"):
        fv.grad_cam(convnet, frames, layer="7")
    with pytest.raises(InputError, match="not a submodule"):
        fv.grad_cam(convnet, frames, layer=nn.Conv2d(1, 1, 1))

    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.head = nn.LazyLinear(1)

        def forward(self, x):
            return self.head(self.conv(self.conv(x)).flatten(1))

    shared = materialise(Shared(), frames[:1])
    with pytest.raises(InputError, match="more than once"):
        fv.grad_cam(shared, frames, layer="conv")
    assert torch.is_grad_enabled()


def test_inference_mode_is_a_clear_error(convnet, frames):
    with torch.inference_mode(), pytest.raises(InputError, match="inference_mode"):
        fv.grad_cam(convnet, frames, layer="3")


def test_tuple_output_with_a_target(frames):
    net = materialise(small_convnet(classes=2), frames[:1])

    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = net

        def forward(self, x):
            out = self.body(x)
            return out[:, :1], out[:, 1:]

    two = TwoHeads().eval()
    got = fv.grad_cam(two, frames, layer="body.3", target=lambda out: out[1][:, 0], upsample=False)
    want = grad_cam_split(net[:4], net[4:], frames, lambda out: out[:, 1])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    with pytest.raises(InputError, match="not a tensor"):
        fv.grad_cam(two, frames, layer="body.3")
