"""fastviz.methods.activations: hypercolumns against their definition, layer listings, feature
maps, and filter visualisation (ascent, reproducibility, model left unchanged)."""

from __future__ import annotations

from collections import OrderedDict

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from fastviz.errors import InputError, UnknownNameError
from fastviz.methods import registry
from fastviz.methods.activations import LayerInfo, feature_maps, filter_visualization, hypercolumns, layers


def stack(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 5, stride=2),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 5, 3, stride=2),  # no activation: the conv output is used
    ).eval()


def hypercolumns_by_hand(seq: nn.Sequential, x: torch.Tensor) -> np.ndarray:
    """The seed's recipe on one frame, written out: activations, channel mean, min-max, resize, product."""
    with torch.no_grad():
        a1 = torch.relu(seq[0](x))
        a2 = torch.relu(seq[3](seq[2](a1)))
        a3 = seq[5](a2)
    height, width = x.shape[-2:]
    out = np.ones((height, width), np.float64)
    for a in (a1, a2, a3):
        m = a[0].mean(dim=0).double().numpy()
        span = m.max() - m.min()
        m = (m - m.min()) / span if span > 0 else np.zeros_like(m)
        out *= cv2.resize(m, (width, height), interpolation=cv2.INTER_LINEAR)  # half-pixel, as torch's
    return out


# --------------------------------------------------------------------------- hypercolumns


def test_hypercolumns_is_registered():
    assert registry.get("hypercolumns") is hypercolumns
    assert "hypercolumns" in registry.methods()


@pytest.mark.parametrize("size", [(23, 29), (32, 32)])
def test_hypercolumns_match_their_definition(size):
    seq = stack()
    torch.manual_seed(3)
    x = torch.rand(2, 3, *size)
    got = hypercolumns(seq, x)
    assert got.shape == (2, *size) and got.dtype == torch.float32
    assert float(got.min()) >= 0.0 and float(got.max()) <= 1.0
    for i in range(2):
        np.testing.assert_allclose(got[i].numpy(), hypercolumns_by_hand(seq, x[i : i + 1]), rtol=1e-4, atol=1e-6)


def test_hypercolumns_chosen_layers_hand_computed():
    conv = nn.Conv2d(1, 1, 2, stride=2, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    net = nn.Sequential(conv, nn.ReLU()).eval()
    x = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)
    # one layer, the ReLU's output: block sums [[10, 18], [42, 50]] -> (v - 10) / 40 -> bilinear x2
    want = cv2.resize(np.array([[0.0, 0.2], [0.8, 1.0]], np.float32), (4, 4), interpolation=cv2.INTER_LINEAR)
    for chosen in (None, ["0"], [net[1]]):
        np.testing.assert_allclose(hypercolumns(net, x, layers=chosen)[0].numpy(), want, atol=1e-6)


def test_hypercolumns_constant_layer_gives_zeros():
    conv = nn.Conv2d(1, 2, 3, bias=True)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.fill_(1.0)
    net = nn.Sequential(conv, nn.ReLU()).eval()
    out = hypercolumns(net, torch.rand(1, 1, 8, 8))
    assert torch.equal(out, torch.zeros(1, 8, 8))


def test_hypercolumns_errors():
    seq = stack()
    with pytest.raises(InputError):
        hypercolumns(nn.Sequential(nn.Flatten(), nn.Linear(12, 1)), torch.rand(1, 3, 2, 2))
    with pytest.raises(InputError):
        hypercolumns(seq, torch.rand(3, 20, 20))
    with pytest.raises(UnknownNameError):
        hypercolumns(seq, torch.rand(1, 3, 20, 20), layers=["9"])
    flat = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten()).eval()
    with pytest.raises(InputError, match="must output"):
        hypercolumns(flat, torch.rand(1, 3, 8, 8), layers=["1"])


# --------------------------------------------------------------------------- layers, feature maps


def named_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(
        features=nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.Conv2d(4, 6, 3)),
        head=nn.Sequential(nn.Flatten(), nn.Linear(72, 2)),
    )).eval()


def test_layers_lists_a_known_net_exactly():
    got = layers(named_net(), torch.rand(5, 3, 11, 13))
    assert got == [
        LayerInfo("features.0", "Conv2d", (4, 5, 6)),
        LayerInfo("features.1", "ReLU", (4, 5, 6)),
        LayerInfo("features.2", "Conv2d", (6, 3, 4)),
        LayerInfo("head.0", "Flatten", (72,)),
        LayerInfo("head.1", "Linear", (2,)),
    ]
    assert got[0].name == "features.0" and got[0].type == "Conv2d" and got[0].shape == (4, 5, 6)


def test_feature_maps_equal_slicing_the_sequential():
    net = named_net()
    torch.manual_seed(1)
    x = torch.rand(3, 3, 11, 13)
    with torch.no_grad():
        want1 = net.features[:2](x)
        want2 = net.features(x)
    got1 = feature_maps(net, x, "features.1")
    got2 = feature_maps(net, x, net.features[2])
    assert got1.dtype == torch.float32 and not got1.requires_grad
    torch.testing.assert_close(got1, want1, rtol=0, atol=0)
    torch.testing.assert_close(got2, want2, rtol=0, atol=0)


def test_feature_maps_errors():
    net = named_net()
    x = torch.rand(1, 3, 11, 13)
    with pytest.raises(InputError, match="must output"):
        feature_maps(net, x, "head.1")
    with pytest.raises(UnknownNameError):
        feature_maps(net, x, "features.7")
    with pytest.raises(InputError):
        feature_maps(net, x, nn.Conv2d(3, 3, 1))  # not part of the model
    with pytest.raises(InputError):
        feature_maps(net, x.double(), "features.0")


# --------------------------------------------------------------------------- filter visualisation


def ascent_net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 3, 3, stride=2), nn.ReLU(),
                        nn.Flatten(), nn.LazyLinear(1))  # a head that does not fit (16, 16): never reached
    net[0].weight.requires_grad_(False)  # partly frozen: requires_grad must stay mixed
    return net.eval()


def snapshot(model: nn.Module) -> dict:
    return {
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad for p in model.parameters()],
        "hooks": [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()],
        "params": [p.detach().clone() for p in model.parameters() if not isinstance(p, nn.parameter.UninitializedParameter)],
    }


def channel_mean(net: nn.Module, img: torch.Tensor, channel: int) -> float:
    with torch.no_grad():
        return float(net[:4](img)[0, channel].mean())


@pytest.mark.parametrize("options", [
    {},  # the defaults: L2 decay, blur every 4 steps, small-norm zeroing
    {"l2_decay": 0.0, "blur_every": 0, "norm_threshold": 0.0},  # plain ascent
    {"norm_threshold": 20.0, "contribution_threshold": 20.0, "blur_every": 2, "blur_sigma": 1.0},
])
def test_filter_visualization_raises_the_channel_activation(options):
    net = ascent_net()
    before = snapshot(net)
    start = filter_visualization(net, "3", 1, size=(16, 16), steps=0, seed=4)
    img = filter_visualization(net, "3", 1, size=(16, 16), steps=30, seed=4, **options)
    assert img.shape == (1, 3, 16, 16) and img.dtype == torch.float32 and not img.requires_grad
    assert torch.isfinite(img).all()
    assert channel_mean(net, start, 1) > 0
    assert channel_mean(net, img, 1) > 1.3 * channel_mean(net, start, 1)  # measured: 1.4x (strongest regularisers) to 9x
    after = snapshot(net)
    for key in ("training", "requires_grad", "grads", "hooks"):
        assert before[key] == after[key], key
    for p, q in zip(before["params"], after["params"]):
        assert torch.equal(p, q)


def test_filter_visualization_is_reproducible_from_the_seed():
    net = ascent_net()
    a = filter_visualization(net, net[2], 0, size=(12, 14), steps=8, seed=7)
    b = filter_visualization(net, net[2], 0, size=(12, 14), steps=8, seed=7)
    c = filter_visualization(net, net[2], 0, size=(12, 14), steps=8, seed=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape == (1, 3, 12, 14)


def test_filter_visualization_zeroes_small_norm_pixels():
    net = ascent_net()
    img = filter_visualization(net, "1", 2, size=(10, 10), steps=3, norm_threshold=50.0, blur_every=0)
    zero = (img[0].abs().sum(dim=0) == 0).float().mean()
    assert 0.4 <= float(zero) <= 0.6


def test_filter_visualization_errors():
    net = ascent_net()
    with pytest.raises(InputError, match="channel"):
        filter_visualization(net, "3", 3, size=(16, 16), steps=1)
    with pytest.raises(InputError, match="must output"):
        filter_visualization(net, "4", 0, size=(16, 16), steps=1)
    with pytest.raises(UnknownNameError):
        filter_visualization(net, "conv9", 0, steps=1)
    for bad in ({"steps": -1}, {"lr": 0.0}, {"l2_decay": 1.0}, {"norm_threshold": 100.0},
                {"contribution_threshold": -1.0}, {"blur_sigma": 0.0}, {"size": (0, 4)}):
        with pytest.raises(InputError):
            filter_visualization(net, "3", 0, **bad)
