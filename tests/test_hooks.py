"""Layer lookup, hook handles, the model guard and the input check."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fastviz.errors import InputError, UnknownNameError
from fastviz.hooks import HandleList, check_input, execution_order, find_layer, layer_name, model_guard

from conftest import small_convnet


def test_find_layer_by_name_and_module():
    net = small_convnet()
    assert find_layer(net, "2") is net[2]
    assert find_layer(net, net[4]) is net[4]
    assert layer_name(net, net[4]) == "4"
    with pytest.raises(UnknownNameError, match=r"layer '9' not found in Sequential; layers are: 0, 1, 2"):
        find_layer(net, "9")
    with pytest.raises(InputError, match="not a submodule"):
        find_layer(net, nn.ReLU())
    with pytest.raises(InputError, match="module or a dotted name"):
        find_layer(net, 3)


def test_handle_list_removes_hooks_also_when_the_block_raises():
    net = small_convnet()
    with pytest.raises(ValueError, match="inside"):
        with HandleList() as handles:
            handles.append(net[0].register_forward_hook(lambda *a: None))
            handles.append(net[2].register_forward_pre_hook(lambda *a: None))
            raise ValueError("inside")
    assert not net[0]._forward_hooks and not net[2]._forward_pre_hooks


def test_execution_order_lists_leaf_calls():
    net = small_convnet()
    calls = execution_order(net, torch.zeros(1, 3, 9, 9))
    assert [name for name, *_ in calls] == [str(i) for i in range(8)]
    assert calls[2][3].shape == (1, 6, 4, 4)  # output of the stride-2 conv
    assert not any(m._forward_hooks for m in net.modules())


def test_model_guard_restores_buffers_and_reports_changes():
    net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2)).train()
    before = net[1].running_mean.clone()
    with model_guard(net), torch.no_grad():
        net(torch.rand(4, 1, 3, 3) + 5)  # a training-mode forward moves the running mean
        assert not torch.equal(net[1].running_mean, before)
    assert torch.equal(net[1].running_mean, before)
    with pytest.raises(RuntimeError, match="changed the model"):
        with model_guard(net):
            net.eval()


@pytest.mark.parametrize(
    "x,match",
    [
        (torch.zeros(1, 3, 8, 8, dtype=torch.float64), "float64 but the model's parameters are torch.float32"),
        (torch.zeros(3, 8, 8), r"\(B, C, H, W\)"),
        (torch.zeros(1, 3, 8, 8, device="meta"), "is on meta but the model is on cpu"),
    ],
)
def test_check_input(x, match):
    with pytest.raises(InputError, match=match):
        check_input(small_convnet(), x)
