"""VisualBackProp's upscaling chain (fastviz.kernels.vbp): every backend against the torch
reference and against an independent scatter loop built on references.ones_transposed_conv_loop.

The CUDA kernel runs in Numba's CUDA simulator when there is no GPU (tests/conftest.py): keep
its chains tiny (each simulated thread is Python).
"""

from __future__ import annotations

import itertools
from unittest import mock

import numpy as np
import pytest
import torch
from torch import nn

import fastviz as fv
from fastviz.kernels import _backend, vbp
from fastviz.kernels.vbp import ConvGeometry
from fastviz.methods.vbp import ones_deconv

from references import ones_transposed_conv_loop, visual_backprop_sequential

RTOL = 1e-5
KERNEL_BACKENDS = ["cpu", "cpu-parallel", "cuda"]


def conv_out(n, k, s, p, d):
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


def make_chain(specs, in_size, batch=2, seed=0, dtype=torch.float32):
    """Geometry and random positive mean maps for a plain conv stack: ``specs`` is a list of
    (kernel, stride, padding, dilation), ints or (h, w) pairs."""
    torch.manual_seed(seed)
    geometry, means, size = [], [], tuple(in_size)
    for k, s, p, d in specs:
        g = ConvGeometry(k, s, p, d, size)
        size = tuple(conv_out(size[a], g.kernel[a], g.stride[a], g.padding[a], g.dilation[a]) for a in range(2))
        assert min(size) >= 1, (specs, in_size)
        geometry.append(g)
        means.append((torch.rand(batch, 1, *size) + 0.1).to(dtype))
    return means, geometry


def scatter_general(m: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """references.ones_transposed_conv_loop's scatter with per-axis kernel/stride/padding and a
    dilation (float64)."""
    k, s, p, d = g.kernel, g.stride, g.padding, g.dilation
    out = np.zeros(g.in_size, dtype=np.float64)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            for di in range(k[0]):
                for dj in range(k[1]):
                    y, x = i * s[0] - p[0] + d[0] * di, j * s[1] - p[1] + d[1] * dj
                    if 0 <= y < g.in_size[0] and 0 <= x < g.in_size[1]:
                        out[y, x] += m[i, j]
    return out


def scatter_loop(m: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """The all-ones transposed convolution by its definition: square, undilated geometries
    through references.ones_transposed_conv_loop itself, the rest through scatter_general."""
    k, s, p, d = g.kernel, g.stride, g.padding, g.dilation
    if k[0] == k[1] and s[0] == s[1] and p[0] == p[1] and d == (1, 1):
        return ones_transposed_conv_loop(m, k[0], s[0], p[0], g.in_size)
    return scatter_general(m, g)


def chain_loop(means, geometry) -> np.ndarray:
    """The chain by its definition, frame by frame, float64: (B, H_in0, W_in0)."""
    frames = []
    for f in range(means[0].shape[0]):
        m = means[-1][f, 0].double().numpy()
        for layer in range(len(means) - 1, -1, -1):
            m = scatter_loop(m, geometry[layer])
            if layer > 0:
                m = m * means[layer - 1][f, 0].double().numpy()
        frames.append(m)
    return np.stack(frames)


def run(backend, means, geometry, normalize=False):
    if backend == "cpu-parallel":  # the prange path, whatever the chain's size
        with mock.patch.object(vbp, "_PARALLEL_PIXELS", 0):
            return vbp.upscale_chain(means, geometry, backend="cpu", normalize=normalize)
    if backend == "cpu-serial":  # the one-thread path, whatever the chain's size
        with mock.patch.object(vbp, "_PARALLEL_PIXELS", 1 << 62):
            return vbp.upscale_chain(means, geometry, backend="cpu", normalize=normalize)
    if backend == "cuda":  # on the GPU when there is one, else in Numba's simulator
        device = "cuda" if torch.cuda.is_available() else "cpu"
        with _backend.use_threads_per_block(8):
            return vbp.upscale_chain([m.to(device) for m in means], geometry, backend="cuda", normalize=normalize).cpu()
    return vbp.upscale_chain(means, geometry, backend=backend, normalize=normalize)


def check(backend, means, geometry):
    got = run(backend, means, geometry)
    h, w = geometry[0].in_size
    assert got.shape == (means[0].shape[0], h, w) and got.dtype == torch.float32
    torch.testing.assert_close(got, vbp.upscale_chain_torch(means, geometry), rtol=RTOL, atol=0)
    np.testing.assert_allclose(got.double().numpy(), chain_loop(means, geometry), rtol=RTOL, atol=0)
    return got


# --- the independent loop is anchored to references.ones_transposed_conv_loop and ones_deconv


@pytest.mark.parametrize("k,s,p", [(3, 2, 1), (5, 2, 0), (2, 3, 0), (4, 1, 2), (1, 1, 0)])
def test_scatter_general_is_the_references_loop(k, s, p):
    rng = np.random.default_rng(k + s + p)
    m = rng.random((conv_out(11, k, s, p, 1), conv_out(12, k, s, p, 1)))
    np.testing.assert_allclose(scatter_general(m, ConvGeometry(k, s, p, 1, (11, 12))),
                               ones_transposed_conv_loop(m, k, s, p, (11, 12)), rtol=1e-12)


@pytest.mark.parametrize("k,s,p,d", [((3, 4), (2, 1), (1, 0), (1, 2)), ((2, 1), 3, (0, 1), 2), (5, (1, 3), 2, (2, 1))])
def test_scatter_general_is_ones_deconv(k, s, p, d):
    g = ConvGeometry(k, s, p, d, (13, 12))
    size = [conv_out(g.in_size[a], g.kernel[a], g.stride[a], g.padding[a], g.dilation[a]) for a in range(2)]
    m = np.random.default_rng(0).random(size)
    conv = nn.Conv2d(1, 1, g.kernel, stride=g.stride, padding=g.padding, dilation=g.dilation)
    want = ones_deconv(torch.from_numpy(m)[None, None], conv, g.in_size)[0, 0].numpy()
    np.testing.assert_allclose(scatter_general(m, g), want, rtol=1e-12)


# --- single convs: every kernel size, stride, padding, dilation; odd sizes (output padding)

GEOMETRIES = [
    (k, s, p, d)
    for k, s, p, d in itertools.product(range(1, 6), range(1, 4), range(3), (1, 2))
    if conv_out(13, k, s, p, d) >= 1
]


@pytest.mark.parametrize("k,s,p,d", GEOMETRIES)
@pytest.mark.parametrize("backend", ["torch", "cpu", "cpu-parallel"])
def test_single_conv(backend, k, s, p, d):
    means, geometry = make_chain([(k, s, p, d)], (13, 10), batch=2, seed=k * 100 + s * 10 + p + d)
    check(backend, means, geometry)


@pytest.mark.parametrize("k,s,p,d", [(3, 2, 1, 1), (2, 3, 0, 1), (3, 1, 2, 2), (5, 2, 1, 2), (1, 2, 0, 1)])
def test_single_conv_cuda(k, s, p, d):
    means, geometry = make_chain([(k, s, p, d)], (11, 9), batch=2, seed=k + s + p + d)
    check("cuda", means, geometry)


# --- chains

CHAINS = {
    # the tests' VisualBackProp stack (tests/test_visual_backprop.py), odd input
    "vbp-stack": ([(5, 2, 0, 1), (3, 1, 1, 1), (3, 2, 0, 1), (2, 1, 0, 1)], (31, 37)),
    # stride > kernel, dilation, rectangular geometry
    "mixed": ([((3, 2), (1, 2), (1, 0), 1), (1, 3, 0, 1), (2, 1, 1, (2, 1))], (23, 29)),
    # deepest map 1x1
    "one-pixel": ([(3, 2, 0, 1), (3, 2, 0, 1), (3, 1, 0, 1)], (15, 15)),
    # PilotNet: 66x200, 5x5/2 x3, 3x3/1 x2 (deepest 1x18)
    "pilotnet": ([(5, 2, 0, 1)] * 3 + [(3, 1, 0, 1)] * 2, (66, 200)),
}


@pytest.mark.parametrize("name", CHAINS)
@pytest.mark.parametrize("backend", ["torch", "cpu", "cpu-parallel"])
def test_chain(backend, name):
    specs, size = CHAINS[name]
    means, geometry = make_chain(specs, size, batch=3 if name != "pilotnet" else 2, seed=len(name))
    got = check(backend, means, geometry)
    if name == "one-pixel":
        assert means[-1].shape[-2:] == (1, 1)
    assert (got >= 0).all()


# the CPU twin's general paths beside its fast ones: more than three taps per phase (groups of
# three summed in turn), more than three source rows per input row, strides > 2 (strided
# interleave), phases with no tap, padding and dilation
WIDE = {
    "taps6x7": ([((7, 6), 1, (3, 2), 1), (3, 1, 1, 1)], (17, 19)),
    "taps6x7-dilated": ([((6, 7), (1, 2), (0, 3), (1, 2)), ((5, 4), 1, 2, 1)], (21, 23)),
    "stride4": ([((2, 5), (3, 4), (1, 2), 1), (4, 1, 3, 1)], (19, 27)),
}


@pytest.mark.parametrize("name", WIDE)
@pytest.mark.parametrize("backend", ["torch", "cpu", "cpu-parallel"])
def test_general_paths(backend, name):
    specs, size = WIDE[name]
    means, geometry = make_chain(specs, size, batch=2, seed=len(name))
    check(backend, means, geometry)


# tiny chains for the simulator: <= 12x12, B <= 2, 2-3 layers
TINY = {
    "two-layers": ([(3, 2, 1, 1), (2, 1, 0, 1)], (12, 11)),
    "stride>kernel+dilation": ([(2, 3, 0, 1), (2, 1, 1, 2)], (11, 12)),
    "one-pixel": ([(3, 2, 0, 1), (3, 2, 0, 1), (2, 1, 0, 1)], (12, 12)),
}


@pytest.mark.parametrize("name", TINY)
def test_chain_cuda(name):
    specs, size = TINY[name]
    means, geometry = make_chain(specs, size, batch=2, seed=len(name))
    check("cuda", means, geometry)


def test_cuda_grid_strides_over_frames(monkeypatch):
    # one block for two frames: the block takes frame 1 after frame 0
    monkeypatch.setattr(vbp, "_MAX_BLOCKS", 1)
    means, geometry = make_chain(TINY["two-layers"][0], TINY["two-layers"][1], batch=2, seed=3)
    check("cuda", means, geometry)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_single_frame_and_inputs_unchanged(backend):
    means, geometry = make_chain([(3, 2, 0, 1), (2, 1, 0, 1)], (9, 10), batch=1, seed=4)
    before = [m.clone() for m in means]
    check(backend, means, geometry)
    for m, b in zip(means, before):
        assert torch.equal(m, b)


@pytest.mark.parametrize("backend", ["torch"] + KERNEL_BACKENDS)
def test_empty_batch(backend):
    means, geometry = make_chain([(3, 2, 0, 1), (2, 1, 0, 1)], (9, 10), batch=0)
    assert run(backend, means, geometry).shape == (0, 9, 10)
    assert run(backend, means, geometry, normalize=True).shape == (0, 9, 10)


# --- normalize=True: (m - min) / max(max - min, float32 tiny) per frame, fastviz.methods.vbp's


def torch_normalize(m):
    """fastviz.methods.vbp's normalisation, verbatim (in place)."""
    lo = m.amin(dim=(1, 2), keepdim=True)
    span = m.amax(dim=(1, 2), keepdim=True) - lo
    return m.sub_(lo).div_(span.clamp_min(torch.finfo(m.dtype).tiny))


def special_frames(means, geometry):
    """``means`` (B >= 4) with frame 1 all zero (a constant 0 result), frame 2 a single nonzero
    pixel in the deepest map, frame 3 of signed values."""
    means = [m.clone() for m in means]
    means[0][1] = 0.0
    means[-1][2] = 0.0
    means[-1][2, 0, -1, 0] = 3.0
    gen = torch.Generator().manual_seed(5)
    for m in means:
        m[3] = torch.randn(m[3].shape, generator=gen)
    return means


def normalised_ok(got, want):
    """Values: within the chain's tolerance of the reference normalised; every frame in [0, 1],
    min exactly 0, max exactly 1 unless constant (then exactly 0)."""
    torch.testing.assert_close(got, want, rtol=RTOL, atol=1e-6)
    for f in range(got.shape[0]):
        lo, hi = got[f].min().item(), got[f].max().item()
        assert lo == 0.0 and (hi == 1.0 or (hi == 0.0 and want[f].max().item() == 0.0)), (f, lo, hi)


@pytest.mark.parametrize("name", ["vbp-stack", "mixed", "pilotnet"])
@pytest.mark.parametrize("backend", ["torch", "cpu", "cpu-parallel"])
def test_normalize_values(backend, name):
    specs, size = CHAINS[name]
    means, geometry = make_chain(specs, size, batch=4, seed=len(name) + 1)
    means = special_frames(means, geometry)
    got = run(backend, means, geometry, normalize=True)
    assert got.shape == (4, *geometry[0].in_size) and got.dtype == torch.float32
    normalised_ok(got, torch_normalize(vbp.upscale_chain_torch(means, geometry)))
    # the torch backend's own normalize=True is the snippet on its result, bitwise
    if backend == "torch":
        assert torch.equal(got, vbp.upscale_chain_torch(means, geometry, normalize=True))
    assert (got[1] == 0).all()  # a constant map is exactly 0


@pytest.mark.parametrize("name", TINY)
def test_normalize_values_cuda(name):
    specs, size = TINY[name]
    means, geometry = make_chain(specs, size, batch=2, seed=len(name) + 1)
    means[0][1] = 0.0  # frame 1: constant 0
    got = run("cuda", means, geometry, normalize=True)
    normalised_ok(got, torch_normalize(vbp.upscale_chain_torch(means, geometry)))
    assert (got[1] == 0).all()


def bits(t):
    return t.contiguous().view(torch.int32)


@pytest.mark.parametrize("name", ["vbp-stack", "mixed", "one-pixel", "pilotnet"] + list(WIDE))
@pytest.mark.parametrize("path", ["cpu-serial", "cpu-parallel"])
def test_normalize_cpu_is_bitwise_the_torch_snippet(path, name):
    # the fused normalisation against the snippet applied to the same kernel's unnormalised
    # output: bit for bit (true division, float32, the same min / max)
    specs, size = CHAINS[name] if name in CHAINS else WIDE[name]
    means, geometry = make_chain(specs, size, batch=5, seed=len(name) + 2)
    means = special_frames(means, geometry)
    means[0][4] = 7.0  # frame 4: its shallowest map constant (the result is not)
    got = run(path, means, geometry, normalize=True)
    want = torch_normalize(run(path, means, geometry))
    assert torch.equal(bits(got), bits(want))
    assert (got[1] == 0).all() and not torch.signbit(got).any()


@pytest.mark.parametrize("path", ["cpu-serial", "cpu-parallel"])
def test_normalize_cpu_bitwise_constant_and_single_pixel(path):
    # 1x1 convs: the result is the product of the maps pixel by pixel, so it can be made a
    # constant nonzero map, a single nonzero pixel, or a map whose span is below float32 tiny
    geometry = [ConvGeometry(1, 1, 0, 1, (7, 9)), ConvGeometry(1, 1, 0, 1, (7, 9))]
    shallow, deep = torch.full((5, 1, 7, 9), 0.75), torch.full((5, 1, 7, 9), 2.0)
    shallow[1] = 0.0
    shallow[1, 0, 3, 4] = 0.5  # frame 1: one nonzero pixel
    deep[2, 0, 0, 0] = 0.0  # frame 2: one zero pixel in a constant map
    shallow[3] = 1e-39  # frame 3: subnormal products, span < tiny: divided by tiny
    shallow[3, 0, 6, 8] = 2e-39
    shallow[4] = -0.25  # frame 4: constant negative
    means = [shallow, deep]
    got = run(path, means, geometry, normalize=True)
    want = torch_normalize(run(path, means, geometry))
    assert torch.equal(bits(got), bits(want))
    assert (got[0] == 0).all() and (got[4] == 0).all()
    assert got[1].sum() == 1.0 and got[1, 3, 4] == 1.0
    assert got[2, 0, 0] == 0.0 and (got[2].flatten()[1:] == 1.0).all()
    assert got[3, 6, 8] > 0 and got[3].max() < 1.0


@pytest.mark.parametrize("backend", ["torch", "cpu", "cpu-parallel"])
def test_normalize_nan_and_inf(backend):
    # a NaN anywhere in a frame's result makes the whole frame NaN (torch's amin / amax
    # propagate it); an infinity gives NaN where the snippet does; the other frames are unharmed
    means, geometry = make_chain(CHAINS["vbp-stack"][0], CHAINS["vbp-stack"][1], batch=3, seed=9)
    means[0][1, 0, 2, 3] = float("nan")
    means[1][2, 0, 1, 1] = float("inf")
    got = run(backend, means, geometry, normalize=True)
    want = torch_normalize(vbp.upscale_chain_torch(means, geometry))
    assert torch.isnan(got[1]).all() and torch.isnan(want[1]).all()
    torch.testing.assert_close(got[2], want[2], rtol=RTOL, atol=1e-6, equal_nan=True)
    normalised_ok(got[:1], want[:1])


def test_normalize_default_is_unnormalised_and_keyword_only():
    means, geometry = make_chain(CHAINS["vbp-stack"][0], CHAINS["vbp-stack"][1], batch=2, seed=3)
    for fn in (vbp.upscale_chain_torch, vbp.upscale_chain_cpu, vbp.upscale_chain):
        plain = fn(means, geometry)
        assert plain.max() > 1.0
        assert torch.equal(fn(means, geometry, normalize=False), plain)
        with pytest.raises(TypeError):
            fn(means, geometry, "auto", True) if fn is vbp.upscale_chain else fn(means, geometry, True)


def test_normalize_auto_fallback_to_torch():
    # pooling between convs: auto runs the torch path, normalised there
    means, geometry = pooled_chain()
    got = vbp.upscale_chain(means, geometry, normalize=True)
    assert torch.equal(got, torch_normalize(vbp.upscale_chain_torch(means, geometry)))


# --- against the method: the torch path is fastviz.methods.vbp's loop


def test_torch_path_is_visual_backprops_chain():
    torch.manual_seed(0)
    layers = [
        (nn.Conv2d(3, 4, 5, stride=2), nn.ReLU()),
        (nn.Conv2d(4, 6, 3, stride=1, padding=1), nn.ReLU()),
        (nn.Conv2d(6, 5, 3, stride=2), nn.ReLU()),
        (nn.Conv2d(5, 3, 2, stride=1), None),
    ]
    x = torch.rand(2, 3, 29, 33)
    means, geometry, h = [], [], x
    with torch.no_grad():
        for conv, act in layers:
            geometry.append(ConvGeometry.of(conv, h.shape[-2:]))
            h = conv(h)
            if act is not None:
                h = act(h)
            means.append(h.mean(1, keepdim=True))
    seq = nn.Sequential(*[m for pair in layers for m in pair if m is not None]).eval()
    want = fv.visual_backprop(seq, x)
    for backend in ("torch", "cpu", "cpu-parallel"):
        m = run(backend, means, geometry)
        lo = m.amin(dim=(1, 2), keepdim=True)
        got = (m - lo) / (m.amax(dim=(1, 2), keepdim=True) - lo)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        for i in range(2):
            np.testing.assert_allclose(got[i].numpy(), visual_backprop_sequential(layers, x[i : i + 1]), rtol=1e-4, atol=1e-5)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")
@pytest.mark.parametrize("padding,k,d", [("same", 3, 1), ("same", 4, 1), ("same", 2, 3), ("valid", 3, 2), ((1, 2), 3, 1)])
def test_geometry_of_conv(padding, k, d):
    conv = nn.Conv2d(2, 3, k, padding=padding, dilation=d)
    g = ConvGeometry.of(conv, torch.Size([10, 11]))
    assert g.kernel == (k, k) and g.stride == (1, 1) and g.dilation == (d, d) and g.in_size == (10, 11)
    if padding == "valid":
        assert g.padding == (0, 0)
    elif padding == "same":
        assert g.padding == (d * (k - 1) // 2,) * 2
    else:
        assert g.padding == padding
    # the conv's real output is accepted, and every backend's upscaling is ones_deconv's
    torch.manual_seed(k + d)
    out = conv(torch.rand(2, 2, 10, 11))
    m = out.detach().abs().mean(1, keepdim=True) + 0.1
    want = ones_deconv(m, conv, (10, 11))[:, 0]
    for backend in ["torch"] + KERNEL_BACKENDS:
        torch.testing.assert_close(run(backend, [m], [g]), want, rtol=RTOL, atol=0)


def test_geometry_of_rejects_non_convs():
    with pytest.raises(TypeError, match="nn.Conv2d"):
        ConvGeometry.of(nn.Linear(2, 2), (4, 4))


# --- pooling between convs: unsupported by the kernels; auto falls back to torch


def pooled_chain():
    torch.manual_seed(7)
    # conv0 on 12x12 -> 10x10, max-pool 2 -> 5x5, conv1 3x3 -> 3x3
    geometry = [ConvGeometry(3, 1, 0, 1, (12, 12)), ConvGeometry(3, 1, 0, 1, (5, 5))]
    means = [torch.rand(2, 1, 10, 10) + 0.1, torch.rand(2, 1, 3, 3) + 0.1]
    return means, geometry


def test_pooling_gap_is_unsupported_and_auto_uses_torch(monkeypatch):
    means, geometry = pooled_chain()
    assert not vbp.supported(means, geometry)
    assert vbp.supported(*make_chain(CHAINS["vbp-stack"][0], (31, 37)))
    calls = []
    real = vbp._RUN["torch"]
    monkeypatch.setitem(vbp._RUN, "torch", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setitem(vbp.DEFAULTS, "cpu", "cpu")
    got = vbp.upscale_chain(means, geometry)
    assert calls == [1]
    torch.testing.assert_close(got, vbp.upscale_chain_torch(means, geometry))
    # the torch path: deconv to 5x5, bilinear to 10x10, product, deconv to 12x12
    up = ones_deconv(means[1], nn.Conv2d(1, 1, 3), (5, 5))
    up = torch.nn.functional.interpolate(up, size=(10, 10), mode="bilinear", align_corners=False) * means[0]
    torch.testing.assert_close(got, ones_deconv(up, nn.Conv2d(1, 1, 3), (12, 12))[:, 0])
    for backend in KERNEL_BACKENDS:
        with pytest.raises(ValueError, match="pooling"):
            run(backend, means, geometry)


def test_auto_reads_defaults_at_call_time(monkeypatch):
    means, geometry = make_chain([(3, 2, 0, 1), (2, 1, 0, 1)], (9, 10))
    seen = []
    for impl in ("torch", "cpu"):
        real = vbp._RUN[impl]
        monkeypatch.setitem(vbp._RUN, impl, lambda *a, _impl=impl, _real=real: seen.append(_impl) or _real(*a))
    for impl in ("cpu", "torch"):
        monkeypatch.setitem(vbp.DEFAULTS, "cpu", impl)
        vbp.upscale_chain(means, geometry)
    assert seen == ["cpu", "torch"]
    # float64 maps: the kernels take float32 only, auto uses torch
    monkeypatch.setitem(vbp.DEFAULTS, "cpu", "cpu")
    out = vbp.upscale_chain([m.double() for m in means], geometry)
    assert seen[-1] == "torch" and out.dtype == torch.float64


def test_defaults_name_known_backends():
    assert set(vbp.DEFAULTS) <= {"cpu", "cuda"} and set(vbp.DEFAULTS.values()) <= {"torch", "cpu", "cuda"}
    assert vbp.DEFAULTS.get("cpu") in ("torch", "cpu") and vbp.DEFAULTS.get("cuda") in ("torch", "cuda")


# --- errors at the public boundary


def good():
    return make_chain([(3, 2, 0, 1), (2, 1, 0, 1)], (9, 10))


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda m, g: ([], []), "empty"),
        (lambda m, g: (m[0], g), "list"),
        (lambda m, g: (m, g[0]), "list of ConvGeometry"),
        (lambda m, g: (m, g[:1]), "2 mean maps but 1"),
        (lambda m, g: ([m[0][:, 0], m[1]], g), r"\(B, 1, h, w\)"),
        (lambda m, g: ([m[0].repeat(1, 2, 1, 1), m[1]], g), r"\(B, 1, h, w\)"),
        (lambda m, g: ([m[0], m[1][:1]], g), "batch"),
        (lambda m, g: ([m[0], m[1].double()], g), "dtype and device"),
        (lambda m, g: ([m[0], (m[1] * 10).long()], g), "floating"),
        (lambda m, g: ([m[0][..., :-1], m[1]], g), "geometry"),
        (lambda m, g: ([m[0], torch.ones(2, 1, 2, 2)], g), "geometry"),
        (lambda m, g: (m, [g[0], (2, 1, 0, 1)]), "ConvGeometry"),
        (lambda m, g: ([m[0], m[1].numpy()], g), "torch.Tensor"),
        (lambda m, g: (m, [g[0], ConvGeometry(9, 1, 0, 1, (4, 4))]), "empty output"),
    ],
)
@pytest.mark.parametrize("fn", ["upscale_chain", "upscale_chain_torch", "upscale_chain_cpu", "upscale_chain_cuda", "supported"])
def test_malformed_chains(fn, mutate, match):
    means, geometry = mutate(*good())
    with pytest.raises(ValueError, match=match):
        getattr(vbp, fn)(means, geometry)


def test_backend_errors():
    means, geometry = good()
    with pytest.raises(ValueError, match="unknown kernel backend"):
        vbp.upscale_chain(means, geometry, backend="numba")
    with pytest.raises(ValueError, match="float32"):
        vbp.upscale_chain([m.double() for m in means], geometry, backend="cpu")
    with pytest.raises(ValueError, match="float32"):
        vbp.upscale_chain_cuda([m.double().to("cuda" if torch.cuda.is_available() else "cpu") for m in means], geometry)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(kernel=0), "kernel must be >= 1"),
        (dict(stride=(1, 0)), "stride must be >= 1"),
        (dict(padding=-1), "padding must be >= 0"),
        (dict(dilation=(0, 1)), "dilation"),
        (dict(in_size=(3, 0)), "in_size"),
        (dict(kernel=(1, 2, 3)), "pair of ints"),
        (dict(stride=1.5), "pair of ints"),
        (dict(padding="same"), "pair of ints"),
    ],
)
def test_geometry_validation(kwargs, match):
    args = dict(kernel=3, stride=1, padding=0, dilation=1, in_size=(5, 5)) | kwargs
    with pytest.raises(ValueError, match=match):
        ConvGeometry(**args)


def test_geometry_normalises_ints():
    g = ConvGeometry(3, 2, 1, 1, (7, 8))
    assert g == ConvGeometry((3, 3), (2, 2), (1, 1), (1, 1), (7, 8))
    assert hash(g) == hash(ConvGeometry((3, 3), (2, 2), (1, 1), (1, 1), (7, 8)))
