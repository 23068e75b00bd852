"""Every registered method leaves the user's model exactly as found — hooks, mode,
requires_grad, modules, parameters and buffers — on success and when the model raises in the
middle of a forward pass (after captum's tests/attr/test_hook_removal.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fastviz as fv


class Boom(nn.Module):
    """Once armed: raises in the middle of the forward pass on its ``after``-th call with more
    than one row (occlusion: inside the chunk loop, after its clean pass and first chunks)."""

    def __init__(self):
        super().__init__()
        self.armed = False
        self.after = 1
        self.calls = 0

    def forward(self, x):
        if self.armed and x.shape[0] > 1:
            self.calls += 1
            if self.calls >= self.after:
                raise RuntimeError("boom")
        return x


def net(train: bool = False) -> nn.Sequential:
    torch.manual_seed(0)
    # conv blocks -> global average pooling -> linear: every method applies (CAM too). Boom sits
    # between the conv blocks: VisualBackProp stops the forward pass after the last block
    m = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(inplace=True), Boom(),
        nn.Conv2d(4, 4, 3, stride=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3),
    )
    m[0].weight.requires_grad_(False)  # a partly frozen model: requires_grad must stay mixed
    return m.train(train)


def snapshot(model: nn.Module) -> dict:
    return {
        "modules": [(n, type(m), id(m)) for n, m in model.named_modules()],
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad for p in model.parameters()],
        "hooks": [
            (dict(m._forward_hooks), dict(m._forward_pre_hooks), dict(m._backward_hooks), dict(m._backward_pre_hooks))
            for m in model.modules()
        ],
        "state": {k: v.clone() for k, v in model.state_dict().items()},
    }


def assert_same(before: dict, after: dict) -> None:
    for key in ("modules", "training", "requires_grad", "grads", "hooks"):
        assert before[key] == after[key], key
    assert before["state"].keys() == after["state"].keys()
    for k, v in before["state"].items():
        assert torch.equal(v, after["state"][k]), k


@pytest.mark.parametrize("method", fv.methods())
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_model_unchanged_after_success(method, train):
    model = net(train)
    before = snapshot(model)
    out = fv.explain(model, torch.rand(2, 3, 16, 16), method=method)
    assert out.shape == (2, 16, 16) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert_same(before, snapshot(model))
    assert torch.is_grad_enabled()


@pytest.mark.parametrize("method", fv.methods())
@pytest.mark.parametrize("after", [1, 3], ids=["first-pass", "third-pass"])
def test_model_unchanged_when_the_model_raises(method, after):
    model = net(train=True)
    model[3].armed = True
    model[3].after = after
    before = snapshot(model)
    kwargs = {"chunk_size": 4} if method == "occlusion" else {}  # several chunks: Boom fires inside the loop
    try:
        fv.explain(model, torch.rand(2, 3, 16, 16), method=method, **kwargs)
    except RuntimeError as exc:
        assert "boom" in str(exc)
    else:
        assert after > 1, "a method that runs one multi-row forward pass must reach Boom on its first call"
    assert_same(before, snapshot(model))
    assert torch.is_grad_enabled()


@pytest.mark.parametrize("method", fv.methods())
def test_no_grad_mode_of_the_caller_is_kept(method):
    model = net()
    with torch.no_grad():
        fv.explain(model, torch.rand(1, 3, 16, 16), method=method)
        assert not torch.is_grad_enabled()


def test_registry_lists_the_foundation_methods():
    assert {"occlusion", "visual_backprop", "grad_cam"} <= set(fv.methods())
    with pytest.raises(fv.errors.UnknownNameError, match="registered methods"):
        fv.explain(net(), torch.rand(1, 3, 16, 16), method="lime")
    with pytest.raises(fv.errors.InputError, match="takes no option 'windows'; its options are: layers"):
        fv.explain(net(), torch.rand(1, 3, 16, 16), method="visual_backprop", windows=(4,))
