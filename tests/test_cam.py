"""CAM (Zhou et al. 2016) against a hand-computed case, its definition and its identity."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastviz as fv
from fastviz.errors import InputError
from fastviz.methods.cam import cam
from fastviz.methods.registry import get

from conftest import materialise


def tiny_gap_net() -> nn.Sequential:
    """conv 1x1 (1 -> 2, A0 = x, A1 = 3x) -> ReLU -> GAP -> linear (2 -> 3), fixed weights."""
    conv = nn.Conv2d(1, 2, 1, bias=False)
    fc = nn.Linear(2, 3)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, 3.0]).view(2, 1, 1, 1))
        fc.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, -1.0]]))
        fc.bias.fill_(5.0)
    return nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc).eval()


X = torch.tensor([[[[1.0, -2.0], [3.0, -4.0]]]])
# relu(x) = [[1, 0], [3, 0]]; A0 = relu(x), A1 = 3 relu(x)
A0 = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
A1 = 3 * A0


def gap_convnet(seed: int = 0, classes: int = 4, inplace: bool = False) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=inplace),
        nn.Conv2d(4, 6, 3, stride=2), nn.ReLU(inplace=inplace),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, classes),
    ).eval()


def cam_reference(features: nn.Module, weight: torch.Tensor, x: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """CAM by its definition, one frame and one channel at a time: sum_k W[c, k] A_k."""
    maps = []
    with torch.no_grad():
        for i in range(x.shape[0]):
            a = features(x[i : i + 1])[0]
            m = torch.zeros(a.shape[1:], dtype=torch.float64)
            for k in range(a.shape[0]):
                m += float(weight[classes[i], k]) * a[k].double()
            maps.append(m)
    return torch.stack(maps).float()


def test_hand_computed():
    net = tiny_gap_net()
    torch.testing.assert_close(cam(net, X, target=fv.targets.Class(0), upsample=False), A0[None])
    torch.testing.assert_close(cam(net, X, target=fv.targets.Class(1), upsample=False), A1[None])
    # class 2: 2 A0 - A1 = -A0: the raw weighted sum, not rectified
    torch.testing.assert_close(cam(net, X, target=2, upsample=False), -A0[None])
    torch.testing.assert_close(cam(net, X, target=fv.targets.Output(-1), upsample=False), -A0[None])
    # logits: 5 + mean(A) = 6, 8, 4 -> the default (top class) is class 1
    torch.testing.assert_close(cam(net, X), A1[None])  # 2x2 input: no resize
    torch.testing.assert_close(cam(net, X, target=fv.targets.TopClass()), A1[None])


def test_matches_definition_and_per_sample_classes(frames):
    net = gap_convnet()
    classes = [3, 0, 2]
    got = cam(net, frames, target=fv.targets.Class(classes), upsample=False)
    want = cam_reference(net[:4], net[6].weight, frames, classes)
    assert got.shape == (3, 8, 11) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert want.abs().max() > 0
    top = net(frames).argmax(1).tolist()
    torch.testing.assert_close(cam(net, frames, upsample=False), cam_reference(net[:4], net[6].weight, frames, top), rtol=1e-5, atol=1e-6)


def test_spatial_mean_plus_bias_is_the_class_score(frames):
    net = gap_convnet()
    logits = net(frames).detach()
    for k in range(4):
        m = cam(net, frames, target=k, upsample=False)
        torch.testing.assert_close(m.mean(dim=(1, 2)) + net[6].bias[k].detach(), logits[:, k], rtol=1e-5, atol=1e-6)


def test_one_output_model_uses_the_single_row(frames):
    net = gap_convnet(classes=1)
    want = cam_reference(net[:4], net[6].weight, frames, [0, 0, 0])
    torch.testing.assert_close(cam(net, frames, upsample=False), want, rtol=1e-5, atol=1e-6)


def test_upsample_chunks_and_explicit_layers(frames):
    net = gap_convnet(inplace=True)
    low = cam(net, frames, target=1, upsample=False)
    high = cam(net, frames, target=1)
    assert high.shape == (3, 17, 23)
    torch.testing.assert_close(high, F.interpolate(low[:, None], size=(17, 23), mode="bilinear", align_corners=False)[:, 0])
    torch.testing.assert_close(cam(net, frames, target=1, chunk_size=1), high)
    torch.testing.assert_close(cam(net, frames, target=fv.targets.Class([1, 2, 3]), chunk_size=2, upsample=False)[2], cam(net, frames[2:], target=3, upsample=False)[0])
    torch.testing.assert_close(cam(net, frames, target=1, layer="3", fc="6"), high)
    torch.testing.assert_close(cam(net, frames, target=1, layer=net[3], fc=net[6]), high)


def test_registered_and_runs_in_inference_mode(frames):
    net = gap_convnet()
    assert get("cam") is cam
    want = cam(net, frames, target=1)
    with torch.inference_mode():
        torch.testing.assert_close(cam(net, frames, target=1), want)


def test_errors_for_models_without_gap_and_linear(frames):
    torch.manual_seed(0)
    flat = materialise(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2)), frames[:1])
    with pytest.raises(InputError, match="global average pool"):
        cam(flat, frames)  # in_features 4 * 15 * 21 != 4 channels
    maxpool = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
    with pytest.raises(InputError, match="not the global average"):
        cam(maxpool, frames)  # shapes fit, but the pooling is a max
    no_linear = nn.Sequential(nn.Conv2d(3, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    with pytest.raises(InputError, match="no nn.Linear"):
        cam(no_linear, frames)
    net = gap_convnet()
    with pytest.raises(InputError, match="nn.Linear"):
        cam(net, frames, fc="1")
    with pytest.raises(InputError, match=r"\(B, K, h, w\)"):
        cam(net, frames, layer="5")


def test_targets_without_a_class_index_are_errors(frames):
    net = gap_convnet()
    with pytest.raises(InputError, match="class index"):
        cam(net, frames, target=lambda out: out[:, 0])
    with pytest.raises(InputError, match="class index"):
        cam(net, frames, target=fv.targets.Steering())
    with pytest.raises(InputError, match="out of range"):
        cam(net, frames, target=fv.targets.Output(4))
    with pytest.raises(InputError, match="out of range"):
        cam(net, frames, target=7)


def test_model_unchanged_after_success_and_after_a_raising_forward(frames):
    net = gap_convnet()
    net[0].register_forward_hook(lambda m, a, o: None)  # a user's hook stays
    net.train()
    net[2].eval()
    modes = [m.training for m in net.modules()]
    net[4].requires_grad_(False)
    grads = [p.requires_grad for p in net.parameters()]
    cam(net, frames, target=1)
    assert [m.training for m in net.modules()] == modes
    assert [p.requires_grad for p in net.parameters()] == grads
    assert [len(m._forward_hooks) for m in net.modules()] == [0, 1] + [0] * 6
    assert all(not m._forward_pre_hooks and not m._backward_hooks for m in net.modules())

    class Boom(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = gap_convnet()
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            out = self.body(x)
            if self.calls > 3:
                raise RuntimeError("boom")
            return out

    boom = Boom().eval()
    with pytest.raises(RuntimeError, match="boom"):
        cam(boom, frames, target=1)
    assert all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks for m in boom.modules())
    assert not any(m.training for m in boom.modules())
