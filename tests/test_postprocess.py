"""Post-processing of saliency maps (fastviz.postprocess): the temporal EMA against hand-computed
values, its state, step response and delay; the Ambrosio-Tortorelli energy against a slow numpy
reference, its monotone decrease, edge-preserving smoothing of a noisy step edge, invariances,
dtypes, batches, and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastviz.errors import InputError
from fastviz.postprocess import ambrosio_tortorelli, ambrosio_tortorelli_energy, ema

# ---------------------------------------------------------------------------------------------
# ema


def test_ema_hand_computed_three_frames():
    maps = torch.tensor([[[1.0, 0.0]], [[3.0, 2.0]], [[5.0, -4.0]]])  # (3, 1, 2)
    out, last = ema(maps, 0.25)
    # s0 = m0; s1 = 0.25 m1 + 0.75 s0; s2 = 0.25 m2 + 0.75 s1
    expected = torch.tensor([[[1.0, 0.0]], [[1.5, 0.5]], [[2.375, -0.625]]])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(last, expected[-1], rtol=0, atol=1e-6)
    assert last.shape == (1, 2)


def test_ema_hand_computed_with_state():
    maps = torch.tensor([[[2.0]], [[4.0]], [[0.0]]], dtype=torch.float64)
    out, last = ema(maps, 0.5, state=torch.tensor([[10.0]], dtype=torch.float64))
    assert out.flatten().tolist() == [6.0, 5.0, 2.5]
    assert last.item() == 2.5
    assert out.dtype == torch.float64


def test_ema_state_continuation_equals_one_call():
    gen = torch.Generator().manual_seed(0)
    maps = torch.rand(9, 5, 7, generator=gen)
    whole, whole_last = ema(maps, 0.3)
    first, state = ema(maps[:4], 0.3)
    second, last = ema(maps[4:], 0.3, state=state)
    assert torch.equal(torch.cat([first, second]), whole)
    assert torch.equal(last, whole_last)
    # An empty chunk passes the state through.
    empty, same = ema(maps[:0], 0.3, state=state)
    assert empty.shape == (0, 5, 7) and torch.equal(same, state)


@pytest.mark.parametrize("alpha", [0.1, 0.5, 0.9])
def test_ema_step_response_and_mean_delay(alpha):
    k = torch.arange(1, 31, dtype=torch.float64)
    out, _ = ema(torch.ones(30, 2, 3, dtype=torch.float64), alpha, state=torch.zeros(2, 3, dtype=torch.float64))
    # After k frames of the step, 1 - (1 - alpha)^k.
    torch.testing.assert_close(out[:, 0, 0], 1 - (1 - alpha) ** k, rtol=0, atol=1e-12)
    # Impulse response alpha (1 - alpha)^n: mean delay (1 - alpha) / alpha frames.
    n = 2000
    impulse = torch.zeros(n, 1, 1, dtype=torch.float64)
    impulse[0] = 1
    h, _ = ema(impulse, alpha, state=torch.zeros(1, 1, dtype=torch.float64))
    h = h.flatten()
    delay = float((torch.arange(n, dtype=torch.float64) * h).sum() / h.sum())
    assert delay == pytest.approx((1 - alpha) / alpha, rel=1e-9)


def test_ema_alpha_one_is_identity():
    maps = torch.randn(6, 4, 5, generator=torch.Generator().manual_seed(1))
    out, last = ema(maps, 1.0, state=torch.full((4, 5), 123.0))
    assert torch.equal(out, maps)
    assert torch.equal(last, maps[-1])


def test_ema_integer_maps_become_float32():
    out, last = ema(torch.tensor([[[2]], [[4]]], dtype=torch.int64), 0.5)
    assert out.dtype == torch.float32 and out.flatten().tolist() == [2.0, 3.0]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(alpha=0.0), r"alpha must be a number in \(0, 1\]"),
        (dict(alpha=1.5), r"alpha must be a number in \(0, 1\]"),
        (dict(alpha=float("nan")), r"alpha must be a number in \(0, 1\]"),
        (dict(alpha=True), r"alpha must be a number in \(0, 1\]"),
        (dict(alpha="0.5"), r"alpha must be a number in \(0, 1\]"),
        (dict(alpha=0.5, state=torch.zeros(4, 4)), r"state must have shape \(3, 4\)"),
        (dict(alpha=0.5, state=torch.full((3, 4), float("inf"))), "state holds NaN or infinite"),
        (dict(alpha=0.5, state=[[0.0]]), "state must be a tensor"),
    ],
)
def test_ema_errors(kwargs, match):
    with pytest.raises(InputError, match=match):
        ema(torch.zeros(2, 3, 4), **kwargs)


def test_ema_bad_maps():
    with pytest.raises(InputError, match=r"maps must have shape \(T, H, W\)"):
        ema(torch.zeros(3, 4), 0.5)
    with pytest.raises(InputError, match="maps holds NaN"):
        ema(torch.tensor([[[float("nan")]]]), 0.5)
    with pytest.raises(InputError, match="at least one frame"):
        ema(torch.zeros(0, 3, 4), 0.5)
    with pytest.raises(InputError, match="real numbers"):
        ema(torch.zeros(2, 3, 4, dtype=torch.bool), 0.5)
    with pytest.raises(ValueError):  # InputError is a ValueError
        ema(torch.zeros(2, 3, 4), -1)


# ---------------------------------------------------------------------------------------------
# Ambrosio-Tortorelli: helpers


def energy_reference(u, v, f, alpha, beta, epsilon) -> np.ndarray:
    """Slow, loop-by-pixel discrete energy: forward differences, zero past the last row/column."""
    u, v, f = (np.asarray(t, dtype=np.float64) for t in (u, v, f))
    b, h, w = u.shape
    out = np.zeros(b)
    for n in range(b):
        total = 0.0
        for i in range(h):
            for j in range(w):
                ux = u[n, i, j + 1] - u[n, i, j] if j + 1 < w else 0.0
                uy = u[n, i + 1, j] - u[n, i, j] if i + 1 < h else 0.0
                vx = v[n, i, j + 1] - v[n, i, j] if j + 1 < w else 0.0
                vy = v[n, i + 1, j] - v[n, i, j] if i + 1 < h else 0.0
                total += beta * (u[n, i, j] - f[n, i, j]) ** 2
                total += alpha * v[n, i, j] ** 2 * (ux * ux + uy * uy)
                total += epsilon * (vx * vx + vy * vy)
                total += (1.0 - v[n, i, j]) ** 2 / (4.0 * epsilon)
        out[n] = total
    return out


H, W, EDGE = 66, 200, 100


def noisy_step(batch=1, seed=0, dtype=torch.float32, sigma=0.1):
    """Left half 0, right half 1 (the jump between columns EDGE - 1 and EDGE), plus noise."""
    gen = torch.Generator().manual_seed(seed)
    clean = torch.zeros(batch, H, W, dtype=torch.float64)
    clean[..., EDGE:] = 1
    return (clean + sigma * torch.randn(batch, H, W, generator=gen, dtype=torch.float64)).to(dtype)


def crossing(t: torch.Tensor, level: float) -> float:
    """Interpolated column where the increasing profile ``t`` first crosses ``level`` near EDGE."""
    for j in range(EDGE - 15, EDGE + 15):
        if t[j] < level <= t[j + 1]:
            return j + float((level - t[j]) / (t[j + 1] - t[j]))
    raise AssertionError(f"profile does not cross {level} near the edge")


# ---------------------------------------------------------------------------------------------
# Ambrosio-Tortorelli: energy


@pytest.mark.parametrize("params", [(16.0, 2.0, 0.5), (1.0, 1.0, 1.0), (0.3, 5.0, 0.1)])
def test_energy_matches_numpy_reference(params):
    alpha, beta, epsilon = params
    gen = torch.Generator().manual_seed(3)
    u = torch.randn(3, 7, 9, generator=gen, dtype=torch.float64)
    v = torch.rand(3, 7, 9, generator=gen, dtype=torch.float64)
    f = torch.randn(3, 7, 9, generator=gen, dtype=torch.float64)
    got = ambrosio_tortorelli_energy(u, v, f, alpha=alpha, beta=beta, epsilon=epsilon)
    assert got.shape == (3,) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), energy_reference(u, v, f, alpha, beta, epsilon), rtol=1e-12)
    # One map (H, W) gives (1,); float32 inputs are evaluated in float64.
    one = ambrosio_tortorelli_energy(u[1].float(), v[1].float(), f[1].float(), alpha, beta, epsilon)
    ref = energy_reference(u[1:2].float(), v[1:2].float(), f[1:2].float(), alpha, beta, epsilon)
    assert one.shape == (1,) and one.dtype == torch.float64
    np.testing.assert_allclose(one.numpy(), ref, rtol=1e-12)


def test_energy_of_constant_data_with_no_edges_is_zero():
    f = torch.rand(2, 5, 6, dtype=torch.float64)
    assert ambrosio_tortorelli_energy(f, torch.ones_like(f), f, 1.0, 1.0, 1.0).tolist() != [0.0, 0.0]
    c = torch.full((2, 5, 6), 0.7, dtype=torch.float64)
    assert ambrosio_tortorelli_energy(c, torch.ones_like(c), c, 1.0, 1.0, 1.0).tolist() == [0.0, 0.0]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_energy_never_increases(dtype):
    f = noisy_step(batch=2, seed=1, dtype=dtype)
    # A jump that is not the largest value of the map, to exercise the normalisation too.
    f[1] = 3 * f[1] - 5
    steps, energies = [], []
    ambrosio_tortorelli(f, iterations=5, callback=lambda k, e: (steps.append(k), energies.append(e.clone())))
    assert steps == list(range(11))
    e = torch.stack(energies)  # (steps, B)
    assert e.shape == (11, 2) and e.dtype == torch.float64
    increase = (e[1:] - e[:-1]) / e[:-1]
    assert float(increase.max()) <= 1e-6, increase
    # And it falls by a lot: the initial point (u = f, v = 1) pays for all the noise.
    assert bool((e[-1] < 0.5 * e[0]).all())


# ---------------------------------------------------------------------------------------------
# Ambrosio-Tortorelli: smoothing


def test_noisy_step_is_smoothed_and_edge_kept():
    f = noisy_step()
    u, v = ambrosio_tortorelli(f[0], return_edges=True)
    assert u.shape == (H, W) and v.shape == (H, W)
    assert u.dtype == torch.float32 and v.dtype == torch.float32
    # Noise inside each half (5 or more columns from the edge) falls at least 3-fold.
    for side in (slice(5, EDGE - 5), slice(EDGE + 5, W - 5)):
        before = float(f[0, :, side].std())
        after = float(u[:, side].std())
        assert before == pytest.approx(0.1, rel=0.05)
        assert after <= before / 3, (before, after)
    # The jump between the two edge columns keeps more than 0.8 of its height ...
    jump = u[:, EDGE] - u[:, EDGE - 1]
    assert float(jump.mean()) > 0.8
    assert float(jump.min()) > 0.6
    # ... and rises from 10 % to 90 % within 2 pixels.
    profile = u.double().mean(dim=0)
    low, high = profile[EDGE - 40 : EDGE - 5].mean(), profile[EDGE + 5 : EDGE + 40].mean()
    t = (profile - low) / (high - low)
    assert crossing(t, 0.9) - crossing(t, 0.1) <= 2.0
    # v marks the edge (the forward difference across it sits on column EDGE - 1) and is ~1
    # far from it.
    assert float(v[:, EDGE - 1].mean()) < 0.3
    far = torch.cat([v[:, 10 : EDGE - 10], v[:, EDGE + 10 : W - 10]], dim=1)
    assert float(far.mean()) > 0.98 and float(far.min()) > 0.9
    assert float(v.min()) >= 0.0 and float(v.max()) <= 1.0


@pytest.mark.parametrize("value", [0.37, -2.5, 0.0, 1e-30])
def test_constant_map_unchanged(value):
    f = torch.full((2, 9, 13), value)
    u, v = ambrosio_tortorelli(f, return_edges=True)
    assert torch.equal(u, f)
    assert torch.equal(v, torch.ones_like(f))


def test_batch_equals_single_maps():
    f = noisy_step(batch=3, seed=2)
    f[1] *= 40.0
    f[2] = f[2].flip(-1) - 0.5
    batch = ambrosio_tortorelli(f)
    for n in range(3):
        torch.testing.assert_close(batch[n], ambrosio_tortorelli(f[n]), rtol=1e-5, atol=1e-5 * float(f[n].abs().max()))


def test_scale_invariance_and_sign():
    f = noisy_step(seed=4, dtype=torch.float64)[0]
    u = ambrosio_tortorelli(f)
    torch.testing.assert_close(ambrosio_tortorelli(250.0 * f), 250.0 * u, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ambrosio_tortorelli(-f), -u, rtol=1e-9, atol=1e-12)


def test_float64_and_other_dtypes():
    f64 = noisy_step(seed=5, dtype=torch.float64)[0]
    u64, v64 = ambrosio_tortorelli(f64, return_edges=True)
    assert u64.dtype == torch.float64 and v64.dtype == torch.float64
    u32 = ambrosio_tortorelli(f64.float())
    torch.testing.assert_close(u32.double(), u64, rtol=0, atol=1e-4)
    u16 = ambrosio_tortorelli(f64.half())
    assert u16.dtype == torch.float16
    torch.testing.assert_close(u16.double(), u64, rtol=0, atol=5e-3)
    # Integer maps are smoothed in float32.
    ints = ambrosio_tortorelli((f64 * 100).round().to(torch.int32))
    assert ints.dtype == torch.float32
    torch.testing.assert_close(ints.double() / 100, u64, rtol=0, atol=1e-2)


def test_more_smoothing_with_larger_alpha_over_beta():
    f = noisy_step(seed=6, dtype=torch.float64)[0]
    stds = [float(ambrosio_tortorelli(f, alpha=a, beta=2.0)[:, 10:90].std()) for a in (0.5, 4.0, 16.0)]
    assert stds[0] > stds[1] > stds[2]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu():
    f = noisy_step(batch=4, seed=7)
    u_cpu, v_cpu = ambrosio_tortorelli(f, return_edges=True)
    u_gpu, v_gpu = ambrosio_tortorelli(f.cuda(), return_edges=True)
    assert u_gpu.device.type == "cuda" and v_gpu.device.type == "cuda"
    torch.testing.assert_close(u_gpu.cpu(), u_cpu, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(v_gpu.cpu(), v_cpu, rtol=1e-4, atol=1e-4)
    e = ambrosio_tortorelli_energy(u_gpu, v_gpu, f.cuda())
    assert e.device.type == "cuda"
    out, last = ema(f.cuda(), 0.5)
    assert out.device.type == "cuda" and last.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), ema(f, 0.5)[0])


# ---------------------------------------------------------------------------------------------
# Ambrosio-Tortorelli: errors


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(alpha=0.0), "alpha must be a finite number > 0"),
        (dict(beta=-1.0), "beta must be a finite number > 0"),
        (dict(epsilon=float("inf")), "epsilon must be a finite number > 0"),
        (dict(alpha="1"), "alpha must be a number > 0"),
        (dict(iterations=0), "iterations must be an integer >= 1"),
        (dict(iterations=2.0), "iterations must be an integer >= 1"),
        (dict(cg_iterations=True), "cg_iterations must be an integer >= 1"),
    ],
)
def test_ambrosio_tortorelli_bad_parameters(kwargs, match):
    with pytest.raises(InputError, match=match):
        ambrosio_tortorelli(torch.zeros(4, 5), **kwargs)


def test_ambrosio_tortorelli_bad_maps():
    with pytest.raises(InputError, match=r"maps must have shape \(H, W\) or \(B, H, W\)"):
        ambrosio_tortorelli(torch.zeros(1, 2, 4, 5))
    with pytest.raises(InputError, match=r"maps must have shape \(H, W\) or \(B, H, W\)"):
        ambrosio_tortorelli(torch.zeros(5))
    with pytest.raises(InputError, match="maps holds NaN"):
        ambrosio_tortorelli(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(InputError, match="maps must hold real numbers"):
        ambrosio_tortorelli(torch.zeros(3, 3, dtype=torch.complex64))
    with pytest.raises(InputError, match="maps must hold real numbers"):
        ambrosio_tortorelli(torch.zeros(3, 3, dtype=torch.bool))
    with pytest.raises(InputError, match="maps must be a tensor"):
        ambrosio_tortorelli(np.zeros((3, 3)))


def test_energy_errors():
    z = torch.zeros(2, 3, 4)
    with pytest.raises(InputError, match="same shape"):
        ambrosio_tortorelli_energy(z, z[:1], z)
    with pytest.raises(InputError, match=r"u must have shape \(H, W\) or \(B, H, W\)"):
        ambrosio_tortorelli_energy(z[0, 0], z[0, 0], z[0, 0])
    with pytest.raises(InputError, match="v holds NaN"):
        ambrosio_tortorelli_energy(z, torch.full_like(z, float("nan")), z)
    with pytest.raises(InputError, match="epsilon must be a finite number > 0"):
        ambrosio_tortorelli_energy(z, z, z, epsilon=0)
    with pytest.raises(InputError, match="f must be a tensor"):
        ambrosio_tortorelli_energy(z, z, 0.0)


# ---------------------------------------------------------------------------------------------
# Smoother: the stream post-filter of overlays


def test_smoother_composes_the_filters_and_carries_the_average():
    from fastviz.postprocess import Smoother

    torch.manual_seed(3)
    maps = torch.rand(5, 12, 14)
    assert Smoother(None)(maps) is maps and Smoother("none")(maps) is maps and not Smoother().active
    # batch by batch equals one call: the moving average's state is carried
    s = Smoother("ema", ema_alpha=0.3)
    parts = torch.cat([s(maps[:2]), s(maps[2:3]), s(maps[3:])])
    whole, _ = ema(maps, 0.3)
    assert torch.equal(parts, whole)
    s.reset()
    assert torch.equal(s(maps[2:3]), maps[2:3])  # a new stream starts at its first map
    ms = Smoother("mumford-shah")(maps)
    torch.testing.assert_close(ms, ambrosio_tortorelli(maps))
    both = Smoother("mumford-shah+ema", ema_alpha=0.6)(maps)
    torch.testing.assert_close(both, ema(ambrosio_tortorelli(maps), 0.6)[0])


def test_smoother_errors():
    from fastviz.postprocess import Smoother

    with pytest.raises(InputError, match="unknown smoothing 'blur'"):
        Smoother("blur")
    for bad in (0.0, 1.5, True):
        with pytest.raises(InputError, match="ema_alpha"):
            Smoother("ema", ema_alpha=bad)
