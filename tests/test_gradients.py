"""Gradient saliency and guided backprop against hand-computed values and independent references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastviz as fv
from fastviz.errors import InputError
from fastviz.methods.gradients import guided_backprop, saliency
from fastviz.methods.registry import get

from conftest import materialise, small_convnet

METHODS = [saliency, guided_backprop]


def two_layer_net(inplace: bool = False) -> nn.Sequential:
    """conv 1x1 (1 -> 2: h0 = x, h1 = -x) -> ReLU -> flatten -> linear (8 -> 1), fixed weights."""
    conv = nn.Conv2d(1, 2, 1, bias=False)
    head = nn.Linear(8, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
        head.weight.copy_(torch.tensor([[2.0, 1.0, -3.0, 1.0, 1.0, -1.0, 1.0, 2.0]]))  # a (ch 0), b (ch 1)
    return nn.Sequential(conv, nn.ReLU(inplace=inplace), nn.Flatten(), head).eval()


X = torch.tensor([[[[1.0, -2.0], [3.0, -4.0]]]])
# dy/dx_p = a_p [x_p > 0] - b_p [x_p < 0]:  2, -(-1), -3, -(2)
SALIENCY = torch.tensor([[[[2.0, 1.0], [-3.0, -2.0]]]])
# guided: g0 = max(a_p, 0) [x_p > 0], g1 = max(b_p, 0) [x_p < 0], dx = g0 - g1:
# p1 (b = -1) and p2 (a = -3) are zeroed; plain saliency keeps them
GUIDED = torch.tensor([[[[2.0, 0.0], [0.0, -2.0]]]])


@pytest.mark.parametrize("inplace", [False, True])
def test_hand_computed(inplace):
    net = two_layer_net(inplace)
    torch.testing.assert_close(saliency(net, X, reduce=None), SALIENCY)
    torch.testing.assert_close(saliency(net, X), SALIENCY.abs()[:, 0])
    torch.testing.assert_close(guided_backprop(net, X, reduce=None), GUIDED)
    torch.testing.assert_close(guided_backprop(net, X), GUIDED.abs()[:, 0])


def functional_forward(net: nn.Sequential, x: torch.Tensor, relu=F.relu) -> torch.Tensor:
    """small_convnet rewritten with torch.nn.functional and the net's own parameters."""
    h = x
    for m in net:
        if isinstance(m, nn.Conv2d):
            h = F.conv2d(h, m.weight, m.bias, stride=m.stride, padding=m.padding)
        elif isinstance(m, nn.ReLU):
            h = relu(h)
        elif isinstance(m, nn.Flatten):
            h = h.flatten(1)
        else:
            h = F.linear(h, m.weight, m.bias)
    return h


class ExplicitGuidedReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.where(x > 0, x, torch.zeros_like(x))

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return torch.where((x > 0) & (g > 0), g, torch.zeros_like(g))


def saliency_reference(net, x, k):
    """Per-frame gradient by torch.func on the functional rewrite."""
    params = {n: p.detach() for n, p in net.named_parameters()}

    def score(frame):
        out = torch.func.functional_call(net, params, (frame[None],))
        return out[0, k]

    def score_functional(frame):
        return functional_forward(net, frame[None])[0, k]

    a = torch.func.vmap(torch.func.grad(score))(x)
    b = torch.func.vmap(torch.func.grad(score_functional))(x)
    torch.testing.assert_close(a, b)
    return b


def guided_reference(net, x, k):
    """Guided backprop on the functional rewrite with an explicit guided ReLU, frame by frame."""
    grads = []
    for i in range(x.shape[0]):
        frame = x[i : i + 1].clone().requires_grad_(True)
        out = functional_forward(net, frame, relu=ExplicitGuidedReLU.apply)
        (g,) = torch.autograd.grad(out[0, k], frame)
        grads.append(g[0])
    return torch.stack(grads)


@pytest.mark.parametrize("inplace", [False, True])
def test_matches_independent_references(frames, inplace):
    net = materialise(small_convnet(classes=3, inplace=inplace), frames[:1])
    for k in range(3):
        want_s = saliency_reference(net, frames, k)
        want_g = guided_reference(net, frames, k)
        got_s = saliency(net, frames, target=fv.targets.Class(k), reduce=None)
        got_g = guided_backprop(net, frames, target=fv.targets.Class(k), reduce=None)
        assert got_s.shape == got_g.shape == (3, 3, 17, 23) and got_s.dtype == got_g.dtype == torch.float32
        torch.testing.assert_close(got_s, want_s, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(got_g, want_g, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(saliency(net, frames, target=k), want_s.abs().amax(1), rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(guided_backprop(net, frames, target=k), want_g.abs().amax(1), rtol=1e-5, atol=1e-7)
        assert not torch.allclose(got_s, got_g)


def test_default_target_per_sample_classes_and_chunks(frames):
    net = materialise(small_convnet(classes=3), frames[:1])
    top = net(frames).argmax(1).tolist()
    for method in METHODS:
        default = method(net, frames)
        per_sample = method(net, frames, target=fv.targets.Class(top))
        torch.testing.assert_close(default, per_sample)
        torch.testing.assert_close(method(net, frames, target=fv.targets.Class(top), chunk_size=1), per_sample)
        for i in range(3):
            torch.testing.assert_close(per_sample[i], method(net, frames[i : i + 1], target=top[i])[0])
    reg = materialise(small_convnet(), frames[:1])
    torch.testing.assert_close(saliency(reg, frames, reduce=None), saliency_reference(reg, frames, 0), rtol=1e-5, atol=1e-7)


def test_residual_with_inplace_ops(frames):
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(3)
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.relu = nn.ReLU(inplace=True)
            self.head = nn.Linear(3, 2)

        def forward(self, x):
            out = self.relu(self.conv(x))
            out += x  # in-place on the ReLU's output
            out = self.relu(out)  # the same module twice
            return self.head(out.mean(dim=(2, 3)))

    net = Block().eval()
    got = guided_backprop(net, frames, target=1, reduce=None)
    want = []
    for i in range(3):
        f = frames[i : i + 1].clone().requires_grad_(True)
        h = ExplicitGuidedReLU.apply(F.conv2d(f, net.conv.weight, net.conv.bias, padding=1))
        h = ExplicitGuidedReLU.apply(h + f)
        (g,) = torch.autograd.grad(F.linear(h.mean(dim=(2, 3)), net.head.weight, net.head.bias)[0, 1], f)
        want.append(g[0])
    torch.testing.assert_close(got, torch.stack(want), rtol=1e-5, atol=1e-7)


def test_no_parameter_or_input_grads_and_frozen_models(frames):
    net = materialise(small_convnet(classes=3), frames[:1])
    x = frames.clone().requires_grad_(True)
    for method in METHODS:
        method(net, x)
        assert all(p.grad is None for p in net.parameters())
        assert x.grad is None and x.requires_grad
    frozen = materialise(small_convnet(classes=3), frames[:1]).requires_grad_(False)
    for method in METHODS:
        torch.testing.assert_close(method(frozen, frames), method(net, frames))
    assert not any(p.requires_grad for p in frozen.parameters())


def test_registered():
    assert get("saliency") is saliency and get("guided_backprop") is guided_backprop


def _hooks(net):
    return [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in net.modules()]


@pytest.mark.parametrize("method", METHODS)
def test_model_unchanged_after_success_and_after_a_raising_forward(frames, method):
    net = materialise(small_convnet(classes=3, inplace=True), frames[:1])
    net[1].register_forward_hook(lambda m, a, o: None)  # a user's hook on a ReLU stays
    net.train()
    net[3].eval()
    net[0].requires_grad_(False)
    modes = [m.training for m in net.modules()]
    grads = [p.requires_grad for p in net.parameters()]
    hooks = _hooks(net)
    modules = list(net.modules())
    method(net, frames)
    assert [m.training for m in net.modules()] == modes
    assert [p.requires_grad for p in net.parameters()] == grads
    assert _hooks(net) == hooks
    assert all(m is n for m, n in zip(net.modules(), modules, strict=True))  # none swapped

    class Boom(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = net

        def forward(self, x):
            out = self.body(x)
            if torch.is_grad_enabled():  # the plan's probe runs without grad; the pass with hooks raises
                raise RuntimeError("boom")
            return out

    boom = Boom().eval()
    with pytest.raises(RuntimeError, match="boom"):
        method(boom, frames)
    assert _hooks(net) == hooks
    assert not any(m.training for m in boom.modules())
    assert torch.is_grad_enabled()
    # after the failure the ReLUs are plain again
    torch.testing.assert_close(net.eval()(frames), functional_forward(net, frames))


def test_errors(frames):
    net = materialise(small_convnet(classes=3), frames[:1])
    for method in METHODS:
        with pytest.raises(InputError, match="reduce"):
            method(net, frames, reduce="mean")
        with pytest.raises(InputError, match=r"\(B, C, H, W\)"):
            method(net, frames[0])
        with pytest.raises(InputError, match="one score per sample"):
            method(net, frames, target=lambda out: out.sum())
        with pytest.raises(InputError, match="does not depend on the input"):
            method(net, frames, target=lambda out: torch.zeros(out.shape[0]))
        with torch.inference_mode(), pytest.raises(InputError, match="inference_mode"):
            method(net, frames)
    tanh = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Tanh(), nn.Flatten(), nn.LazyLinear(1))
    materialise(tanh, frames[:1])
    with pytest.raises(InputError, match="no nn.ReLU"):
        guided_backprop(tanh, frames)
    assert saliency(tanh, frames).shape == (3, 17, 23)
