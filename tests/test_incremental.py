"""Incremental (Krypton-style) occlusion: equal to the full recomputation, box geometry, fallbacks.

Exactness is checked in float64 (where the only difference between recomputing a box and
recomputing the whole map is rounding at ~1e-16) on PilotNet, small VGG- and ResNet-style nets
and graphs with every supported operation, and in float32 on the ResNet-50-sized net; with every
baseline, windows flush with the frame's edges, padding, stride and dilation.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastviz as fv
from fastviz.errors import InputError
from fastviz.methods import incremental as inc
from fastviz.methods.perturbation import window_grids

from references import occlusion_loop


def _both(model, x, **kw):
    full = fv.occlusion(model, x, incremental=False, **kw)
    fast = fv.occlusion(model, x, incremental=True, **kw)
    return full, fast


def _assert_equal_maps(full, fast, rtol):
    scale = full.abs().max()
    assert scale > 0, "the comparison is not between two zero maps"
    assert ((fast - full).abs().max() / scale).item() <= rtol


# ---------------------------------------------------------------------------------------------
# models


class VGGTiny(nn.Module):
    """VGG-style: 3x3 convolutions with padding 1, ReLU in place, 2x2 max-pools, GAP + linear."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class Bottleneck(nn.Module):
    def __init__(self, cin, mid, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        y += identity
        return self.relu(y)


class ResNetTiny(nn.Module):
    """ResNet-style: 7x7/2 stem with padding 3, 3x3/2 max-pool with padding 1, bottlenecks with
    strided and identity shortcuts, in-place residual adds, BatchNorm in eval mode, GAP."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(8),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1))
        self.blocks = nn.Sequential(Bottleneck(8, 4, 16, 1), Bottleneck(16, 4, 16, 1), Bottleneck(16, 8, 32, 2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 3)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


class EveryOp(nn.Module):
    """One of each supported operation: dilation, groups, average pooling with padding,
    functional and method activations, channel concatenation of branches with different boxes,
    products and quotients of maps, a per-channel constant, a scalar, a strided max-pool, then
    an unsupported operation (interpolation: full maps from there on) and a mean."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=2, dilation=2)
        self.b = nn.Conv2d(3, 6, 5, stride=1, padding=2)
        self.g = nn.Conv2d(12, 12, 3, padding=1, groups=3)
        self.avg = nn.AvgPool2d(3, stride=1, padding=1)
        self.up = nn.Conv2d(6, 6, 1)
        self.bn = nn.BatchNorm2d(12)
        self.pool = nn.MaxPool2d(2)
        self.register_buffer("scale", torch.linspace(0.5, 1.5, 12).view(1, 12, 1, 1))
        self.head = nn.Conv2d(12, 2, 3)

    def forward(self, x):
        a = F.leaky_relu(self.a(x), 0.1)
        b = self.up(torch.sigmoid(self.b(x)))
        y = torch.cat([a, b], dim=1)
        y = self.g(y).relu() * self.scale + 0.5
        y = self.avg(self.bn(y)) * torch.tanh(y) / (1.5 + y.abs())
        y = self.head(self.pool(y))
        return F.interpolate(y, scale_factor=2.0, mode="nearest").mean(dim=(2, 3))


def _random_bn(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


@pytest.fixture
def pilotnet64():
    torch.manual_seed(0)
    return fv.models.PilotNet().double().eval()


# ---------------------------------------------------------------------------------------------
# equal to the full recomputation


@pytest.mark.parametrize("baseline", [0.0, 0.5, "mean", "blur", "tensor"])
def test_pilotnet_incremental_equals_full_for_every_baseline(pilotnet64, baseline):
    torch.manual_seed(1)
    x = torch.rand(2, 3, 66, 200, dtype=torch.float64)
    if baseline == "tensor":
        baseline = torch.rand(3, 66, 200, dtype=torch.float64)
    full, fast = _both(pilotnet64, x, windows=(8, 16, 32), stride=(6, 11), baseline=baseline)
    _assert_equal_maps(full, fast, 1e-10)


def test_pilotnet_equals_the_plain_window_loop(pilotnet64):
    torch.manual_seed(2)
    x = torch.rand(1, 3, 66, 200, dtype=torch.float64)
    fast = fv.occlusion(pilotnet64, x, windows=(13, 24), stride=9, incremental=True, score="abs")
    want = occlusion_loop(pilotnet64, x, windows=(13, 24), stride=9, score="abs")
    _assert_equal_maps(want.float(), fast, 1e-6)


@pytest.mark.parametrize("model_cls,size", [(VGGTiny, (30, 37)), (ResNetTiny, (45, 38)), (EveryOp, (21, 26))])
def test_branched_and_padded_nets_equal_full(model_cls, size):
    torch.manual_seed(3)
    model = _random_bn(model_cls()).double().eval()
    x = torch.rand(2, 3, *size, dtype=torch.float64)
    for baseline in (0.0, "mean", "blur"):
        full, fast = _both(model, x, windows=(3, 7, (4, 30)), stride=(4, 5), baseline=baseline, target=fv.targets.Output(1))
        _assert_equal_maps(full, fast, 1e-10)


def test_some_layers_really_ran_on_patches():
    """The equality above is not that of two full passes: the plans hold patch steps of every
    kind, and their boxes are smaller than the maps."""
    model = _random_bn(EveryOp()).double().eval()
    g = inc.trace(model)
    x = torch.rand(1, 3, 21, 26, dtype=torch.float64)
    clean, _ = inc.clean_pass(g, x)
    grid = window_grids(21, 26, (3,), 4)[0]
    at = np.array([(t, l) for t in grid.tops for l in grid.lefts])
    plan = inc.plan_scale(g, clean, at, (3, 3))
    hows = {s.how for s in plan.steps.values() if s.kind == "patch"}
    assert hows == {"input", "conv", "pool", "pointwise", "binary", "cat"}
    assert all(s.size[0] * s.size[1] <= inc.FULL_FRACTION * s.map_size[0] * s.map_size[1]
               for s in plan.steps.values() if s.kind == "patch" and s.how != "input")
    assert plan.macs_per_row < plan.full_macs_per_row


def test_float32_resnet50_sized_net_within_1e_5():
    """In float32 the occluded outputs agree within 1e-5 of the target's value (a map holds
    differences of nearly equal outputs: its own relative error is that over its size)."""
    model = fv.models.resnet.resnet50_random(seed=0, num_classes=10)
    _random_bn(model)
    torch.manual_seed(4)
    x = torch.rand(1, 3, 64, 64)
    full, fast = _both(model, x, windows=(16,), stride=16, target=fv.targets.Class(3))
    with torch.no_grad():
        target = model(x)[0, 3].abs()
    assert full.abs().max() > 0
    assert (fast - full).abs().max() <= 1e-5 * target


def test_float32_trained_pilotnet_within_1e_5():
    model = fv.models.load("pilotnet-carracing")
    log = fv.data.load_drive_log()
    x = model.preprocess(log.frames[:2])
    full, fast = _both(model, x, windows=(8, 16, 32), stride=4)
    _assert_equal_maps(full, fast, 1e-5)


def test_classifier_targets_and_chunking_do_not_change_the_map():
    torch.manual_seed(5)
    model = VGGTiny().double().eval()
    x = torch.rand(3, 3, 24, 24, dtype=torch.float64)
    ref = fv.occlusion(model, x, windows=(5,), stride=3, incremental=False)  # argmax class per frame
    for chunk in (1, 7, 10_000):
        got = fv.occlusion(model, x, windows=(5,), stride=3, incremental=True, chunk_size=chunk)
        _assert_equal_maps(ref, got, 1e-10)
    small = fv.occlusion(model, x, windows=(5,), stride=3, incremental=True, memory_budget="64KiB")
    _assert_equal_maps(ref, small, 1e-10)


def test_untouched_region_scores_exactly_zero():
    """A model reading only the left half: windows in the right half change boxes that the
    model never reads, so they score exactly zero (the box values are recomputed, but the
    output ignores them)."""

    class LeftHalf(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            return self.conv(x)[:, :, :, :8].sum(dim=(1, 2, 3)).unsqueeze(1)

    torch.manual_seed(6)
    model = LeftHalf().eval()
    x = torch.rand(1, 3, 12, 24)
    fast = fv.occlusion(model, x, windows=(4,), stride=4, incremental=True)
    assert (fast[0, :, 13:] == 0).all()
    assert (fast[0, :, :7] != 0).any()


# ---------------------------------------------------------------------------------------------
# box geometry


def test_conv_box_hand_computed():
    """3x3 conv, stride 2, padding 1 on a 9x9 map -> 5x5. A 2x2 window at (2, 2) changes inputs
    2..3; output o reads inputs 2o-1 .. 2o+1, so outputs 1 (reads 1..3) and 2 (reads 3..5)
    change: the box is [1, 3), 2x2, and its input region starts at 2*1-1 = 1, size (2-1)*2+3 = 5."""
    conv = nn.Conv2d(1, 1, 3, stride=2, padding=1)
    at, size = inc._box_through(np.array([[2, 2]]), (2, 2), inc._conv_geometry(conv), (5, 5), None)
    assert at.tolist() == [[1, 1]] and size == (2, 2)
    # at the far edge the box shifts inwards to keep the scale's common size
    at, size = inc._box_through(np.array([[2, 2], [7, 7]]), (2, 2), inc._conv_geometry(conv), (5, 5), None)
    assert size == (2, 2) and at.tolist() == [[1, 1], [3, 3]]


@pytest.mark.parametrize("k,s,p,d", [(3, 1, 1, 1), (5, 2, 2, 1), (3, 2, 0, 2), (1, 2, 0, 1), (4, 3, 1, 1)])
def test_box_holds_every_changed_output(k, s, p, d):
    """Property: every output position that a masked window changes lies inside its box."""
    torch.manual_seed(7)
    conv = nn.Conv2d(2, 3, k, stride=s, padding=p, dilation=d).double()
    x = torch.rand(1, 2, 17, 19, dtype=torch.float64)
    clean = conv(x)[0]
    out_size = tuple(clean.shape[-2:])
    grid = window_grids(17, 19, (3, (2, 5)), 2)
    for gr in grid:
        at = np.array([(t, l) for t in gr.tops for l in gr.lefts])
        box_at, size = inc._box_through(at, (gr.height, gr.width), inc._conv_geometry(conv), out_size, None)
        for (t, l), (by, bx) in zip(at, box_at):
            masked = x.clone()
            masked[..., t:t + gr.height, l:l + gr.width] = -3.0
            changed = (conv(masked)[0] != clean).any(dim=0).nonzero()
            inside = ((changed[:, 0] >= by) & (changed[:, 0] < by + size[0])
                      & (changed[:, 1] >= bx) & (changed[:, 1] < bx + size[1]))
            assert inside.all()


def test_macs_per_window_for_pilotnet():
    """Full-pass multiply-accumulates per row, by hand: conv outputs 31x98, 14x47, 5x22, 3x20,
    1x18; then the fully connected layers."""
    model = fv.models.PilotNet().eval()
    g = inc.trace(model)
    clean, _ = inc.clean_pass(g, torch.rand(1, 3, 66, 200))
    grid = window_grids(66, 200, (8,), 4)[0]
    at = np.array([(t, l) for t in grid.tops for l in grid.lefts])
    plan = inc.plan_scale(g, clean, at, (8, 8))
    convs = (31 * 98 * 24 * 3 * 25 + 14 * 47 * 36 * 24 * 25 + 5 * 22 * 48 * 36 * 25
             + 3 * 20 * 64 * 48 * 9 + 1 * 18 * 64 * 64 * 9)
    fcs = 1152 * 100 + 100 * 50 + 50 * 10 + 10
    assert plan.full_macs_per_row == convs + fcs
    assert plan.macs_per_row < plan.full_macs_per_row / 5  # an 8x8 window's boxes: about a tenth


# ---------------------------------------------------------------------------------------------
# approximate: projective-field threshold


def test_tau_one_is_exact_and_smaller_tau_approximates():
    torch.manual_seed(8)
    model = fv.models.PilotNet().double().eval()
    x = torch.rand(1, 3, 66, 200, dtype=torch.float64)
    exact = fv.occlusion(model, x, windows=(16,), stride=8, incremental=True)
    one = fv.occlusion(model, x, windows=(16,), stride=8, tau=1.0)
    _assert_equal_maps(exact, one, 1e-10)
    approx = fv.occlusion(model, x, windows=(16,), stride=8, tau=0.3)
    assert not torch.equal(approx, exact)
    corr = np.corrcoef(approx.flatten().numpy(), exact.flatten().numpy())[0, 1]
    assert corr > 0.5


# ---------------------------------------------------------------------------------------------
# fallbacks and errors


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)

    def forward(self, x):
        y = self.conv(x)
        if y.mean() > 0:  # data-dependent control flow: torch.fx cannot trace it
            y = y * 2
        return y.sum(dim=(1, 2, 3)).unsqueeze(1)


def test_untraceable_model_falls_back_with_a_debug_line(caplog):
    torch.manual_seed(9)
    model = DataDependent().eval()
    x = torch.rand(1, 3, 10, 12)
    with caplog.at_level(logging.DEBUG, logger="fastviz.methods.perturbation"):
        auto = fv.occlusion(model, x, windows=(3,), stride=2)
    full = fv.occlusion(model, x, windows=(3,), stride=2, incremental=False)
    assert torch.equal(auto, full)
    lines = [r.getMessage() for r in caplog.records if "full forward passes" in r.getMessage()]
    assert len(lines) == 1 and "torch.fx cannot trace" in lines[0] and "\n" not in lines[0]
    with pytest.raises(InputError, match="incremental occlusion is not possible.*torch.fx cannot trace"):
        fv.occlusion(model, x, windows=(3,), stride=2, incremental=True)


def test_training_mode_falls_back_and_tau_needs_incremental():
    model = VGGTiny().double()  # training mode
    with pytest.raises(inc.Unsupported, match="training mode"):
        inc.trace(model)
    x = torch.rand(1, 3, 16, 16, dtype=torch.float64)
    with pytest.raises(InputError, match="training mode"):
        fv.occlusion(model, x, windows=(4,), stride=4, incremental=True)
    with pytest.raises(InputError, match="tau"):
        fv.occlusion(model.eval(), x, windows=(4,), stride=4, incremental=False, tau=0.5)
    for bad in (0.0, 1.5, "x", True):
        with pytest.raises(InputError, match="tau"):
            fv.occlusion(model.eval(), x, windows=(4,), stride=4, tau=bad)
    with pytest.raises(InputError, match="incremental"):
        fv.occlusion(model.eval(), x, windows=(4,), stride=4, incremental="yes")


def test_inplace_mutation_of_a_shared_value_is_refused():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x):
            y = self.conv(x)
            z = y.relu_()  # mutates y, which the next line reads too
            return (z + y).sum(dim=(1, 2, 3)).unsqueeze(1)

    with pytest.raises(inc.Unsupported, match="in-place"):
        inc.trace(Shared().eval())
    x = torch.rand(1, 3, 8, 8)
    model = Shared().eval()
    assert torch.equal(fv.occlusion(model, x, windows=(3,), stride=2),
                       fv.occlusion(model, x, windows=(3,), stride=2, incremental=False))


def test_model_left_unchanged_and_trace_cached():
    model = ResNetTiny().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(1, 3, 32, 32)
    fv.occlusion(model, x, windows=(8,), stride=8, incremental=True)
    assert inc.trace(model) is inc.trace(model)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("backend", ["torch", "cuda"])
def test_incremental_on_the_device_with_each_assembly_kernel(backend):
    """On a GPU (or, without one, in Numba's CUDA simulator on CPU tensors; tiny sizes): the
    incremental map equals the full one with the torch reference and the CUDA kernel."""
    from fastviz.kernels import _backend

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and backend == "cuda" and not _backend.cuda_simulated():
        pytest.skip("no GPU and NUMBA_ENABLE_CUDASIM is off")
    torch.manual_seed(10)
    model = VGGTiny().to(device).eval()
    x = torch.rand(1, 3, 12, 10, device=device)
    full = fv.occlusion(model, x, windows=(5,), stride=5, incremental=False, backend="torch")
    fast = fv.occlusion(model, x, windows=(5,), stride=5, incremental=True, backend=backend)
    assert fast.device == x.device
    with torch.no_grad():
        target = model(x).amax().abs()
    assert full.abs().max() > 0
    assert (fast - full).abs().max() <= 1e-5 * target


# ---------------------------------------------------------------------------------------------
# approximate: adaptive drill-down


def test_interpolation_weights_hand_computed():
    from fastviz.methods.perturbation import _interpolation

    w = _interpolation([0, 2, 4, 6, 8], [0, 6])
    np.testing.assert_allclose(w, [[1, 0], [2 / 3, 1 / 3], [1 / 3, 2 / 3], [0, 1], [0, 1]])


def test_drill_down_plan_selects_the_largest_estimates():
    from fastviz.methods.perturbation import drill_down_plan

    fine = window_grids(10, 13, (3,), 1)  # tops 0..7, lefts 0..10
    coarse = window_grids(10, 13, (3,), 3)  # tops 0, 3, 6, 7; lefts 0, 3, 6, 9, 10
    c = coarse[0]
    scores = torch.zeros(1, len(c), dtype=torch.float64)
    scores[0, c.lefts.index(6)] = 3.0  # the coarse window at (0, 6)
    est, sel = drill_down_plan(scores, coarse, fine, 0.05)
    est = est.view(len(fine[0].tops), len(fine[0].lefts))
    assert est[0, 6] == 3.0 and est[0, 5] == pytest.approx(2.0) and est[1, 6] == pytest.approx(2.0)
    assert est[3, 3] == 0.0
    k = int(np.ceil(0.05 * len(fine[0])))
    assert int(sel.sum()) == k
    picked = sel.view(len(fine[0].tops), len(fine[0].lefts)).nonzero().tolist()
    # never a window at a coarse position (its score is known), largest |estimate| first
    assert [0, 6] not in picked and {tuple(p) for p in picked} <= {(0, 5), (0, 7), (1, 6), (1, 5), (1, 7)}


def test_drill_down_with_every_window_equals_exact_and_fewer_approximate():
    torch.manual_seed(11)
    model = VGGTiny().double().eval()
    x = torch.rand(2, 3, 20, 23, dtype=torch.float64)
    exact = fv.occlusion(model, x, windows=(4, 6), stride=2)
    every = fv.occlusion(model, x, windows=(4, 6), stride=2, drill_down=1.0, coarse_stride=4)
    _assert_equal_maps(exact, every, 1e-10)
    for incremental in (True, False):
        some = fv.occlusion(model, x, windows=(4, 6), stride=2, drill_down=0.3, incremental=incremental)
        assert not torch.equal(some, exact)
        assert ssim_of(some, exact) > 0.5


def ssim_of(a, b):
    from fastviz.similarity import ssim

    return float(ssim(a, b).min())


def test_drill_down_errors():
    model = VGGTiny().eval()
    x = torch.rand(1, 3, 16, 16)
    for bad in (0.0, 1.5, True, "all"):
        with pytest.raises(InputError, match="drill_down"):
            fv.occlusion(model, x, windows=(4,), stride=2, drill_down=bad)
    with pytest.raises(InputError, match="coarse_stride"):
        fv.occlusion(model, x, windows=(4,), stride=2, coarse_stride=6)
    with pytest.raises(InputError, match="coarse_stride"):
        fv.occlusion(model, x, windows=(4,), stride=2, drill_down=0.5, coarse_stride=0)


#: The output the by-hand references below score (VGGTiny has 5).
T0 = fv.targets.Output(0)


def test_drill_down_per_scale_equals_its_parts():
    """Per-scale settings: a scale with fraction 1 is exact, a scale with fraction 0 keeps the
    interpolation of its own coarse scores (its coarse stride), each scale independently of the
    others' settings."""
    from fastviz.methods.perturbation import combine_scales, scale_maps

    torch.manual_seed(12)
    model = VGGTiny().double().eval()
    x = torch.rand(2, 3, 20, 23, dtype=torch.float64)
    exact = fv.occlusion(model, x, windows=(4, 6), stride=2, target=T0)
    every = fv.occlusion(model, x, windows=(4, 6), stride=2, target=T0, drill_down={4: 1.0, 6: 1.0},
                         coarse_stride={4: 6, 6: (4, 6)})
    _assert_equal_maps(exact, every, 1e-10)
    mixed = fv.occlusion(model, x, windows=(4, 6), stride=2, target=T0, drill_down={4: 1.0, 6: 0.0}, coarse_stride={4: 4, 6: 6})
    # the reference: window 4 exact at stride 2, window 6 scored at stride 6 and interpolated
    h, w = x.shape[-2:]
    fine = window_grids(h, w, (4, 6), 2)
    coarse6 = window_grids(h, w, (6,), 6)[0]
    s4 = fv.occlusion(model, x, windows=(4,), stride=2, score="delta", target=T0)  # only to check the per-scale map below
    with torch.no_grad():
        y = model(x)[:, 0]

        def scores(grid):
            out = torch.empty(x.shape[0], len(grid), dtype=x.dtype)
            for k, (y0, x0, y1, x1) in enumerate(grid.boxes().tolist()):
                xm = x.clone()
                xm[:, :, y0:y1, x0:x1] = 0.0
                out[:, k] = y - model(xm)[:, 0]
            return out

        sc4 = scores(fine[0])
        sc6 = scores(coarse6).view(-1, len(coarse6.tops), len(coarse6.lefts))
    from fastviz.methods.perturbation import _interpolation

    wy = torch.as_tensor(_interpolation(fine[1].tops, coarse6.tops))
    wx = torch.as_tensor(_interpolation(fine[1].lefts, coarse6.lefts))
    est6 = (wy @ sc6 @ wx.T).reshape(x.shape[0], -1)
    expected = combine_scales(*scale_maps(torch.cat([sc4, est6], 1), fine, h, w))
    _assert_equal_maps(expected.float(), mixed, 1e-6)
    _assert_equal_maps(combine_scales(*scale_maps(sc4, fine[:1], h, w)).float(), s4, 1e-6)


def test_drill_down_per_scale_errors():
    model = VGGTiny().eval()
    x = torch.rand(1, 3, 16, 16)
    with pytest.raises(InputError, match=r"missing \[6\]"):
        fv.occlusion(model, x, windows=(4, 6), stride=2, drill_down={4: 0.5})
    with pytest.raises(InputError, match=r"no window of size \[8\]"):
        fv.occlusion(model, x, windows=(4, 6), stride=2, drill_down={4: 0.5, 6: 0.5, 8: 0.5})
    with pytest.raises(InputError, match=r"drill_down\[4\] must be a number in \[0, 1\]"):
        fv.occlusion(model, x, windows=(4, 6), stride=2, drill_down={4: 1.5, 6: 0.5})
    with pytest.raises(InputError, match=r"coarse_stride\[6\] must be positive"):
        fv.occlusion(model, x, windows=(4, 6), stride=2, drill_down=0.5, coarse_stride={4: 4, 6: 0})


def test_checkerboard_estimate_by_hand():
    from fastviz.methods.perturbation import WindowGrid, checkerboard, checkerboard_estimate

    board = checkerboard(WindowGrid(2, 2, (0, 1, 2), (0, 1, 2, 3)))
    assert board.tolist() == [[True, False, True, False], [False, True, False, True], [True, False, True, False]]
    s = torch.tensor([[1.0, 0, 3, 0], [0, 5, 0, 7], [9, 0, 11, 0]]).unsqueeze(0)
    est = checkerboard_estimate(s, torch.as_tensor(board))[0]
    # (0, 1): neighbours 1, 3 (row) and 5 (below) -> 3; (1, 0): 1, 9, 5 -> 5; (0, 3): 3, 7 -> 5;
    # (1, 2): 3, 11, 5, 7 -> 6.5; (2, 3): 7, 11 -> 9
    assert est[0, 1] == 3.0 and est[1, 0] == 5.0 and est[0, 3] == 5.0 and est[1, 2] == 6.5 and est[2, 3] == 9.0
    assert torch.equal(est[torch.as_tensor(board)], s[0][torch.as_tensor(board)])


def test_drill_down_checkerboard_equals_its_reference():
    from fastviz.methods.perturbation import checkerboard, checkerboard_estimate, combine_scales, scale_maps

    torch.manual_seed(13)
    model = VGGTiny().double().eval()
    x = torch.rand(2, 3, 20, 23, dtype=torch.float64)
    exact = fv.occlusion(model, x, windows=(4, 6), stride=2, target=T0)
    every = fv.occlusion(model, x, windows=(4, 6), stride=2, target=T0, drill_down={4: 1.0, 6: 1.0},
                         coarse_stride={4: "checkerboard", 6: "checkerboard"})
    _assert_equal_maps(exact, every, 1e-10)
    some = fv.occlusion(model, x, windows=(4, 6), stride=2, target=T0, drill_down={4: 1.0, 6: 0.0},
                        coarse_stride={4: 4, 6: "checkerboard"})
    # the reference: window 4 exact, window 6 from its exact checkerboard scores and neighbour means
    h, w = x.shape[-2:]
    fine = window_grids(h, w, (4, 6), 2)
    with torch.no_grad():
        y = model(x)[:, 0]
        sc = []
        for grid in fine:
            out = torch.empty(x.shape[0], len(grid), dtype=x.dtype)
            for k, (y0, x0, y1, x1) in enumerate(grid.boxes().tolist()):
                xm = x.clone()
                xm[:, :, y0:y1, x0:x1] = 0.0
                out[:, k] = y - model(xm)[:, 0]
            sc.append(out)
    g6 = fine[1]
    board = torch.as_tensor(checkerboard(g6))
    est6 = checkerboard_estimate(sc[1].view(-1, len(g6.tops), len(g6.lefts)), board).reshape(x.shape[0], -1)
    expected = combine_scales(*scale_maps(torch.cat([sc[0], est6], 1), fine, h, w))
    _assert_equal_maps(expected.float(), some, 1e-6)
    assert not torch.allclose(some, exact.float(), atol=1e-6)
    with pytest.raises(InputError, match="coarse_stride"):
        fv.occlusion(model, x, windows=(4,), stride=2, target=T0, drill_down=0.5, coarse_stride="chessboard")
