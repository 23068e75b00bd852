"""Structural similarity of saliency maps (fastviz.similarity): values against scikit-image's
``structural_similarity`` on random, smooth and signed maps of several sizes and dtypes, batches
against single maps, identical maps, hand-checkable properties, gradients, and errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fastviz.errors import InputError
from fastviz.similarity import ssim, ssim_window

skimage_metrics = pytest.importorskip("skimage.metrics")


# ---------------------------------------------------------------------------------------------
# helpers


def reference(a: torch.Tensor, b: torch.Tensor, data_range: float, sigma: float = 1.5, k1=0.01, k2=0.03) -> float:
    """scikit-image's SSIM with the settings of Wang et al. 2004, on the arrays as given."""
    return float(
        skimage_metrics.structural_similarity(
            a.numpy(),
            b.numpy(),
            data_range=data_range,
            gaussian_weights=True,
            sigma=sigma,
            use_sample_covariance=False,
            K1=k1,
            K2=k2,
        )
    )


def span(t: torch.Tensor) -> float:
    return float(t.max() - t.min())


def smooth_map(h: int, w: int, seed: int) -> torch.Tensor:
    """A sum of three Gaussian blobs, float64, values in about [0, 3]."""
    gen = torch.Generator().manual_seed(seed)
    rows = torch.arange(h, dtype=torch.float64).view(-1, 1)
    cols = torch.arange(w, dtype=torch.float64).view(1, -1)
    out = torch.zeros(h, w, dtype=torch.float64)
    for _ in range(3):
        cy, cx = float(torch.rand(1, generator=gen)) * h, float(torch.rand(1, generator=gen)) * w
        s = 2.0 + 4.0 * float(torch.rand(1, generator=gen))
        out += torch.exp(-((rows - cy) ** 2 + (cols - cx) ** 2) / (2 * s * s))
    return out


def pair(kind: str, h: int, w: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(approximation, reference) float64 maps of one kind."""
    gen = torch.Generator().manual_seed(seed + 1000)
    if kind == "random":
        ref = torch.rand(h, w, dtype=torch.float64, generator=gen)
        approx = 0.7 * ref + 0.3 * torch.rand(h, w, dtype=torch.float64, generator=gen)
    elif kind == "smooth":
        ref = smooth_map(h, w, seed)
        approx = ref + 0.05 * torch.randn(h, w, dtype=torch.float64, generator=gen)
    elif kind == "signed":
        ref = torch.randn(h, w, dtype=torch.float64, generator=gen) * 0.2 + smooth_map(h, w, seed) - 1.0
        approx = ref + 0.3 * torch.randn(h, w, dtype=torch.float64, generator=gen)
    else:
        raise AssertionError(kind)
    return approx, ref


def checkerboard(h: int, w: int) -> torch.Tensor:
    """A +-1 checkerboard under a smooth positive envelope: local means vanish (to ~1e-6)."""
    rows = torch.arange(h).view(-1, 1)
    cols = torch.arange(w).view(1, -1)
    sign = 1.0 - 2.0 * ((rows + cols) % 2).to(torch.float64)
    return sign * (1.5 + 0.5 * torch.cos(rows / 7.0) * torch.sin(cols / 5.0))


# ---------------------------------------------------------------------------------------------
# against scikit-image


@pytest.mark.parametrize("kind", ["random", "smooth", "signed"])
@pytest.mark.parametrize("shape", [(11, 11), (11, 23), (29, 11), (37, 52), (64, 64)])
def test_matches_skimage(kind, shape):
    a, b = pair(kind, *shape, seed=shape[0] * 100 + shape[1])
    want = reference(a, b, span(b))
    got = ssim(a, b)
    assert got.dtype == torch.float64 and got.shape == ()
    assert float(got) == pytest.approx(want, abs=1e-12)
    assert float(ssim(a, b, data_range=span(b))) == pytest.approx(want, abs=1e-12)
    assert -1.0 <= float(got) < 1.0


@pytest.mark.parametrize(
    ("sigma", "k1", "k2"), [(0.5, 0.01, 0.03), (1.0, 0.02, 0.05), (2.0, 0.01, 0.03), (0.1, 0.01, 0.03)]
)
def test_matches_skimage_other_windows(sigma, k1, k2):
    """Other window widths at the smallest size each allows, and one map a few pixels larger."""
    side = ssim_window(sigma)
    assert side == 2 * int(3.5 * sigma + 0.5) + 1
    for h, w in [(side, side), (side + 3, side + 7)]:
        a, b = pair("smooth", h, w, seed=h + w)
        # a 1 x 1 map (sigma = 0.1) is constant: the default data range is then 1.0
        want = reference(a, b, span(b) or 1.0, sigma=sigma, k1=k1, k2=k2)
        assert float(ssim(a, b, sigma=sigma, k1=k1, k2=k2)) == pytest.approx(want, abs=1e-12)


def test_window_sizes():
    assert ssim_window() == 11  # the paper's 11-tap window
    assert ssim_window(1.0) == 9
    assert ssim_window(0.1) == 1


@pytest.mark.parametrize("data_range", [0.5, 1.0, 4.0])
def test_explicit_data_range(data_range):
    a, b = pair("random", 20, 33)
    want = reference(a, b, data_range)
    assert float(ssim(a, b, data_range=data_range)) == pytest.approx(want, abs=1e-12)
    assert float(ssim(a, b, data_range=torch.tensor(data_range))) == pytest.approx(want, abs=1e-12)
    assert float(ssim(a, b, data_range=int(data_range) or 1)) == pytest.approx(
        reference(a, b, float(int(data_range) or 1)), abs=1e-12
    )


def test_float32_maps():
    """float32 maps are computed in float64: equal to scikit-image on float64 copies, and to its
    float32 result to float32 rounding."""
    for kind, shape in [("random", (11, 11)), ("smooth", (24, 40)), ("signed", (33, 17))]:
        a64, b64 = pair(kind, *shape)
        a, b = a64.float(), b64.float()
        got = ssim(a, b)
        assert got.dtype == torch.float64
        assert float(got) == pytest.approx(reference(a.double(), b.double(), span(b.double())), abs=1e-12)
        assert float(got) == pytest.approx(reference(a, b, span(b)), abs=1e-5)
    # mixed dtypes
    assert float(ssim(a, b64)) == pytest.approx(reference(a.double(), b64, span(b64)), abs=1e-12)


# ---------------------------------------------------------------------------------------------
# batches


def test_batch_equals_single_maps():
    maps = [pair(kind, 19, 27, seed=i) for i, kind in enumerate(["random", "smooth", "signed", "smooth"])]
    a = torch.stack([m[0] for m in maps])
    b = torch.stack([m[1] for m in maps])
    b[3] *= 10.0  # a different range per map: the default data range is per map
    got = ssim(a, b)
    assert got.shape == (4,) and got.dtype == torch.float64
    for i in range(4):
        assert float(got[i]) == float(ssim(a[i], b[i]))
        assert float(got[i]) == pytest.approx(reference(a[i], b[i], span(b[i])), abs=1e-12)

    ranges = torch.tensor([1.0, 2.0, 3.0, 40.0])
    got = ssim(a, b, data_range=ranges)
    for i in range(4):
        assert float(got[i]) == float(ssim(a[i], b[i], data_range=float(ranges[i])))
    got = ssim(a, b, data_range=torch.tensor(2.5, dtype=torch.float64))
    for i in range(4):
        assert float(got[i]) == pytest.approx(reference(a[i], b[i], 2.5), abs=1e-12)

    assert ssim(a[:0], b[:0]).shape == (0,)


# ---------------------------------------------------------------------------------------------
# properties


def test_identical_maps_give_exactly_one():
    for kind in ["random", "smooth", "signed"]:
        _, b = pair(kind, 23, 31)
        assert ssim(b, b.clone()).item() == 1.0
        assert ssim(b.float(), b.float()).item() == 1.0
        assert ssim(b, b, data_range=1e-3).item() == 1.0
    batch = torch.stack([pair("signed", 12, 15, seed=i)[1] for i in range(3)])
    assert torch.equal(ssim(batch, batch.clone()), torch.ones(3, dtype=torch.float64))
    # a constant reference map gets data range 1.0, so C1 and C2 stay positive
    flat = torch.full((11, 11), 0.25, dtype=torch.float64)
    assert ssim(flat, flat).item() == 1.0
    assert float(ssim(flat + 0.1, flat)) == pytest.approx(reference(flat + 0.1, flat, 1.0), abs=1e-12)


def test_constant_maps_by_hand():
    """Constant maps have no variance, so the structure term is C2 / C2 = 1 and SSIM is the
    luminance term (2 x y + C1) / (x^2 + y^2 + C1) at every pixel."""
    c1 = (0.01 * 2.0) ** 2
    for x, y in [(0.5, -0.5), (0.3, 0.7), (1.0, 0.0)]:
        a = torch.full((13, 12), x, dtype=torch.float64)
        b = torch.full((13, 12), y, dtype=torch.float64)
        want = (2 * x * y + c1) / (x * x + y * y + c1)
        assert float(ssim(a, b, data_range=2.0)) == pytest.approx(want, rel=1e-12)
    assert float(ssim(torch.full((11, 11), 0.5), torch.full((11, 11), -0.5), data_range=2.0)) < 0


def test_scaled_map_decreases_away_from_one():
    """With the data range fixed, SSIM of c * b against b is below 1 for c != 1 and falls as c
    moves away from 1 on either side."""
    _, b = pair("smooth", 32, 32)
    L = span(b)
    scales = [0.25, 0.5, 0.8, 0.95, 1.0, 1.05, 1.25, 2.0, 4.0]
    values = [float(ssim(c * b, b, data_range=L)) for c in scales]
    one = scales.index(1.0)
    assert values[one] == 1.0
    assert all(v < 1.0 for i, v in enumerate(values) if i != one)
    assert all(values[i] < values[i + 1] for i in range(one))  # rising towards c = 1
    assert all(values[i] > values[i + 1] for i in range(one, len(values) - 1))  # falling after


def test_negation():
    """Where the local means vanish, a map against its negation has luminance term 1 and
    structure term about -1: SSIM near -1. Where they do not, both terms are negative and the
    product is positive (a documented blind spot of SSIM)."""
    m = checkerboard(30, 40)
    got = float(ssim(-m, m))
    assert got < -0.99
    assert got == pytest.approx(reference(-m, m, span(m)), abs=1e-12)
    a, b = pair("signed", 30, 40)
    assert float(ssim(-b, b)) == pytest.approx(reference(-b, b, span(b)), abs=1e-12)
    # a positive map with high local contrast: both terms negative, SSIM positive
    positive = torch.rand(30, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) + 1.0
    assert float(ssim(-positive, positive)) > 0.5


def test_gradients():
    a, b = pair("signed", 11, 12)
    a.requires_grad_(True)
    b.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, y: ssim(x, y, data_range=3.0), (a, b))
    c = b.detach().clone().requires_grad_(True)
    ssim(c, b.detach()).backward()
    assert torch.allclose(c.grad, torch.zeros_like(c.grad), atol=1e-12)  # a maximum at a == b


# ---------------------------------------------------------------------------------------------
# errors


def test_errors():
    a = torch.rand(14, 16, dtype=torch.float64)
    with pytest.raises(InputError, match=r"same shape.*\(14, 16\) and \(16, 17\)"):
        ssim(a, torch.rand(16, 17, dtype=torch.float64))
    with pytest.raises(InputError, match=r"\(H, W\) or \(B, H, W\), got \(224,\)"):
        ssim(a.flatten(), a.flatten())
    with pytest.raises(InputError, match=r"\(H, W\) or \(B, H, W\), got \(1, 1, 14, 16\)"):
        ssim(a[None, None], a[None, None])
    with pytest.raises(InputError, match="a must be float32 or float64, got torch.int64"):
        ssim(a.long(), a)
    with pytest.raises(InputError, match="b must be float32 or float64, got torch.float16"):
        ssim(a, a.half())
    with pytest.raises(InputError, match="must be tensors"):
        ssim(a.numpy(), a)
    with pytest.raises(InputError, match=r"at least 11 x 11 pixels for sigma=1.5.*got 10 x 16"):
        ssim(a[:10], a[:10])
    with pytest.raises(InputError, match=r"at least 11 x 11 pixels.*got 14 x 10"):
        ssim(a[None, :, :10], a[None, :, :10])
    with pytest.raises(InputError, match=r"at least 15 x 15 pixels for sigma=2"):
        ssim(a, a, sigma=2.0)
    bad = a.clone()
    bad[3, 4] = math.nan
    with pytest.raises(InputError, match="a holds NaN or infinite"):
        ssim(bad, a)
    bad[3, 4] = -math.inf
    with pytest.raises(InputError, match="b holds NaN or infinite"):
        ssim(a, bad)


@pytest.mark.parametrize("value", [0.0, -1.0, math.nan, math.inf, True, "1"])
def test_bad_data_range(value):
    a = torch.rand(12, 12, dtype=torch.float64)
    with pytest.raises(InputError, match="data_range must be"):
        ssim(a, a, data_range=value)


def test_bad_data_range_tensor():
    a = torch.rand(2, 12, 12, dtype=torch.float64)
    with pytest.raises(InputError, match=r"data_range must be finite and > 0, got \[1.0, 0.0\]"):
        ssim(a, a, data_range=torch.tensor([1.0, 0.0]))
    with pytest.raises(InputError, match=r"data_range must be finite and > 0"):
        ssim(a, a, data_range=torch.tensor(math.nan))
    with pytest.raises(InputError, match=r"shape \(\) or \(2,\), got shape \(3,\)"):
        ssim(a, a, data_range=torch.ones(3))
    with pytest.raises(InputError, match=r"shape \(\), got shape \(1,\)"):
        ssim(a[0], a[0], data_range=torch.ones(1))


@pytest.mark.parametrize(
    ("name", "value"), [("sigma", 0.0), ("sigma", -1.5), ("sigma", math.nan), ("k1", 0.0), ("k2", -0.03)]
)
def test_bad_window_and_constants(name, value):
    a = torch.rand(12, 12, dtype=torch.float64)
    with pytest.raises(InputError, match=f"{name} must be a finite number > 0"):
        ssim(a, a, **{name: value})


def test_result_device_and_inputs_unchanged():
    a, b = pair("random", 14, 14)
    a0, b0 = a.clone(), b.clone()
    out = ssim(a, b)
    assert out.device == a.device
    assert torch.equal(a, a0) and torch.equal(b, b0)
    assert isinstance(np.float64(out.item()), np.float64)
