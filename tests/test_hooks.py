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


def test_model_guard_holds_the_models_reentrant_lock():
    import gc
    import threading
    import weakref

    from fastviz import hooks

    net = small_convnet()
    other = small_convnet(seed=1)
    lock = hooks.model_lock(net)
    taken: list[bool] = []

    def try_from_another_thread(module):
        t = threading.Thread(target=lambda: taken.append(_try_acquire(hooks.model_lock(module))))
        t.start()
        t.join()

    with model_guard(net):
        assert _try_acquire(lock)  # re-entrant: the holding thread may take it again
        with model_guard(net):  # nested use in one thread works
            pass
        try_from_another_thread(net)  # another thread cannot take it
        try_from_another_thread(other)  # another model's lock is free
    try_from_another_thread(net)  # released on exit
    assert taken == [False, True, True]
    with pytest.raises(RuntimeError, match="changed the model"):
        with model_guard(net):
            net.train(not net.training)
    try_from_another_thread(net)  # released also when the block raises
    assert taken[-1] is True
    # one lock per model object, dropped with the model
    count = len(hooks._LOCKS)
    alive = weakref.ref(net)
    del net, lock
    gc.collect()
    assert alive() is None
    assert len(hooks._LOCKS) <= count - 1  # other tests' models may go in the same collection


def _try_acquire(lock) -> bool:
    if lock.acquire(blocking=False):
        lock.release()
        return True
    return False


def test_a_lazy_model_not_yet_run_may_materialise_inside_the_guard():
    import fastviz as fv

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.LazyLinear(1)).eval()
    x = torch.rand(2, 3, 8, 8)
    maps = fv.occlusion(net, x, windows=(4,), stride=2)  # its first forward pass materialises the head
    assert type(net[2]) is nn.Linear and net[2].in_features == 2 * 6 * 6
    assert not net[2]._forward_pre_hooks  # the initialisation hook went with it, nothing else stayed
    torch.testing.assert_close(maps, fv.occlusion(net, x, windows=(4,), stride=2), rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="changed the model"):  # other hook changes are still caught
        with model_guard(net):
            net[0].register_forward_hook(lambda *a: None)
