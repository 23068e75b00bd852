"""fastviz.render: values of normalisation, placement, blending and layouts."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from fastviz import render
from fastviz.errors import FastvizError, InputError, UnknownNameError


@pytest.fixture
def frame() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)


# --------------------------------------------------------------------------- normalize


def test_normalize_min_max_hand_computed():
    m = np.array([[1.0, 2.0], [3.0, 5.0]])
    out = render.normalize(m)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.array([[0.0, 0.25], [0.5, 1.0]], np.float32))


def test_normalize_is_per_map_and_accepts_torch():
    m = torch.tensor([[[0.0, 10.0], [5.0, 10.0]], [[-2.0, -1.0], [0.0, 2.0]]])
    out = render.normalize(m)
    assert isinstance(out, np.ndarray) and out.shape == (2, 2, 2)
    np.testing.assert_allclose(out[0], [[0.0, 1.0], [0.5, 1.0]])
    np.testing.assert_allclose(out[1], [[0.0, 0.25], [0.5, 1.0]])


def test_normalize_constant_map_gives_zeros():
    out = render.normalize(np.full((3, 4), 7.5))
    np.testing.assert_array_equal(out, np.zeros((3, 4), np.float32))
    both = render.normalize(np.stack([np.full((2, 2), 3.0), np.array([[0.0, 1.0], [2.0, 4.0]])]))
    np.testing.assert_array_equal(both[0], np.zeros((2, 2)))
    np.testing.assert_allclose(both[1], [[0.0, 0.25], [0.5, 1.0]])


def test_normalize_percentile_clip():
    # values 0..100: 10th and 90th percentiles are 10 and 90 exactly (linear interpolation)
    m = np.arange(101, dtype=np.float32).reshape(1, 101)
    out = render.normalize(m, clip=(10, 90))
    assert out[0, 0] == 0.0 and out[0, 10] == 0.0
    assert out[0, 90] == 1.0 and out[0, 100] == 1.0
    np.testing.assert_allclose(out[0, 50], 0.5)
    np.testing.assert_allclose(out[0, 30], 0.25)


def test_normalize_signed_keeps_zero_at_half():
    out = render.normalize(np.array([[-2.0, 0.0], [1.0, 4.0]]), signed=True)
    np.testing.assert_allclose(out, [[0.25, 0.5], [0.625, 1.0]])
    np.testing.assert_array_equal(render.normalize(np.zeros((2, 2)), signed=True), np.full((2, 2), 0.5))


def test_normalize_signed_clip_is_symmetric():
    # percentiles of 0..100 shifted by -80: the 10th is -70, the 90th +10 -> a = 70, clip to [-70, 70]
    m = (np.arange(101, dtype=np.float32) - 80.0).reshape(1, 101)
    out = render.normalize(m, signed=True, clip=(10, 90))
    np.testing.assert_allclose(out[0, 80], 0.5)  # value 0
    np.testing.assert_allclose(out[0, 10], 0.0)  # -70 -> the low end
    np.testing.assert_allclose(out[0, 0], 0.0)  # -80, beyond -70: clipped
    np.testing.assert_allclose(out[0, 100], 0.5 + 0.5 * 20 / 70, rtol=1e-6)  # +20 is inside [-70, 70]: kept
    np.testing.assert_allclose(out[0, 45], 0.25)  # -35 = -a / 2


def test_normalize_auto_sign_and_fixed_range():
    m = np.array([[-1.0, 0.0, 3.0]])
    np.testing.assert_allclose(render.normalize(m, signed=None), [[1 / 3, 0.5, 1.0]])  # negative value: signed
    np.testing.assert_allclose(render.normalize(m + 1.0, signed=None), [[0.0, 0.25, 1.0]])  # none: min-max
    # a fixed range: the same value gets the same level in both maps; values beyond it saturate
    a = render.normalize(np.array([[0.0, 1.0]]), vrange=(0.0, 4.0))
    b = render.normalize(np.array([[1.0, 9.0]]), vrange=(0.0, 4.0))
    np.testing.assert_allclose(a, [[0.0, 0.25]])
    np.testing.assert_allclose(b, [[0.25, 1.0]])
    np.testing.assert_allclose(render.normalize(np.array([[-1.0, 2.0]]), signed=None, vrange=(-4.0, 2.0)), [[0.375, 0.75]])
    with pytest.raises(InputError, match="vrange"):
        render.normalize(m, vrange=(1.0, 1.0))
    with pytest.raises(InputError, match="vrange"):
        render.normalize(m, vrange=(0.0, float("nan")))


def test_value_range_over_a_batch():
    batch = np.array([[[-0.2, 0.0], [0.05, 0.1]], [[0.0, 0.3], [0.1, 0.0]]], np.float32)
    lo, hi = render.value_range(batch)
    assert (lo, hi) == pytest.approx((-0.3, 0.3))  # signed: symmetric about 0, over both maps
    assert render.value_range(np.abs(batch)) == pytest.approx((0.0, 0.3))
    assert render.value_range(np.arange(101.0), clip=(10, 90)) == pytest.approx((10.0, 90.0))
    assert render.value_range(np.arange(101.0) - 80.0, clip=(10, 90)) == pytest.approx((-70.0, 70.0))
    assert render.value_range(torch.tensor([1.0, 2.0]), signed=True) == pytest.approx((-2.0, 2.0))


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros(5), "shape"),
        (np.zeros((1, 1, 2, 2)), "shape"),
        (np.array([[np.nan, 1.0]]), "NaN"),
        (np.zeros((0, 3)), "empty"),
        ([[1.0, 2.0]], "numpy array or torch tensor"),
    ],
)
def test_normalize_rejects_bad_maps(bad, match):
    with pytest.raises(InputError, match=match):
        render.normalize(bad)


def test_normalize_rejects_bad_clip():
    with pytest.raises(InputError, match="percentiles"):
        render.normalize(np.eye(3), clip=(90, 10))


# --------------------------------------------------------------------------- resize_to_frame


def test_resize_to_frame_places_map_exactly_in_region():
    m = np.arange(12, dtype=np.float32).reshape(3, 4) + 1.0
    out = render.resize_to_frame(m, (10, 12, 3), region=(2, 5, 6, 10))
    assert out.shape == (10, 12) and out.dtype == np.float32
    np.testing.assert_array_equal(out[2:5, 6:10], m)  # same size: copied exactly
    outside = out.copy()
    outside[2:5, 6:10] = 0
    assert not outside.any()


def test_resize_to_frame_resizes_bilinearly_into_region():
    m = np.array([[0.0, 1.0], [2.0, 3.0]], np.float32)
    out = render.resize_to_frame(m, (9, 8), region=(1, 5, 2, 6))
    expected = cv2.resize(m, (4, 4), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(out[1:5, 2:6], expected)
    # 2x bilinear upscaling with half-pixel centres: the corners keep the corner values
    assert out[1, 2] == 0.0 and out[4, 5] == 3.0
    mask = np.ones((9, 8), bool)
    mask[1:5, 2:6] = False
    assert (out[mask] == 0).all()


def test_resize_to_frame_default_region_is_whole_frame():
    out = render.resize_to_frame(torch.ones(66, 200), (96, 96))
    np.testing.assert_array_equal(out, np.ones((96, 96), np.float32))


@pytest.mark.parametrize("region", [(0, 11, 0, 4), (3, 3, 0, 4), (-1, 4, 0, 4), (0, 4, 2)])
def test_resize_to_frame_rejects_bad_regions(region):
    with pytest.raises(InputError, match="region"):
        render.resize_to_frame(np.ones((2, 2)), (10, 10), region=region)


# --------------------------------------------------------------------------- heatmap


def test_heatmap_is_rgb_of_opencv_colormap():
    m = np.array([[0.0, 0.5, 1.0]], np.float32)
    out = render.heatmap(m, "jet")
    assert out.dtype == np.uint8 and out.shape == (1, 3, 3)
    levels = np.array([[0, 128, 255]], np.uint8)  # rint(0.5 * 255) = 128
    bgr = cv2.applyColorMap(levels, cv2.COLORMAP_JET)
    np.testing.assert_array_equal(out, bgr[..., ::-1])
    # jet: low = blue, high = red (in RGB order)
    assert out[0, 0, 2] > out[0, 0, 0] and out[0, 2, 0] > out[0, 2, 2]


def test_heatmap_accepts_cv2_constant_and_names():
    m = np.linspace(0, 1, 20, dtype=np.float32).reshape(4, 5)
    np.testing.assert_array_equal(render.heatmap(m, cv2.COLORMAP_INFERNO), render.heatmap(m, "inferno"))
    assert "turbo" in render.COLORMAPS and "viridis" in render.COLORMAPS


def test_heatmap_unknown_colormap():
    with pytest.raises(UnknownNameError, match="colormap"):
        render.heatmap(np.zeros((2, 2)), "nope")
    with pytest.raises(UnknownNameError):
        render.heatmap(np.zeros((2, 2)), 999)


# --------------------------------------------------------------------------- overlay


def test_overlay_outside_region_is_untouched(frame):
    region = (2, 8, 3, 11)
    out = render.overlay(frame, np.random.default_rng(1).random((5, 7)), region=region, alpha=0.7)
    assert out.shape == frame.shape and out.dtype == np.uint8
    mask = np.ones(frame.shape[:2], bool)
    mask[2:8, 3:11] = False
    np.testing.assert_array_equal(out[mask], frame[mask])
    assert not np.array_equal(out[2:8, 3:11], frame[2:8, 3:11])


def test_overlay_zero_vs_one_hot_differs_only_at_the_hot_pixel(frame):
    region = (2, 8, 3, 11)  # 6 x 8
    zero = np.zeros((6, 8), np.float32)
    hot = zero.copy()
    hot[4, 5] = 1.0
    a = render.overlay(frame, zero, region=region)
    b = render.overlay(frame, hot, region=region)
    differs = (a != b).any(axis=2)
    expected = np.zeros(frame.shape[:2], bool)
    expected[2 + 4, 3 + 5] = True
    np.testing.assert_array_equal(differs, expected)


def test_overlay_blend_values(frame):
    # zero map -> heatmap colour of level 0 everywhere in the region, blended by addWeighted
    out = render.overlay(frame, np.zeros((3, 3)), alpha=0.25, colormap="jet")
    colour = cv2.applyColorMap(np.zeros((1, 1), np.uint8), cv2.COLORMAP_JET)[0, 0, ::-1]
    expected = np.clip(np.rint(0.75 * frame.astype(np.float64) + 0.25 * colour), 0, 255)
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 1
    np.testing.assert_array_equal(render.overlay(frame, np.zeros((3, 3)), alpha=0.0), frame)


def test_overlay_rejects_bad_inputs(frame):
    with pytest.raises(InputError, match="uint8"):
        render.overlay(frame.astype(np.float32), np.zeros((3, 3)))
    with pytest.raises(InputError, match=r"\(H, W, 3\)"):
        render.overlay(frame[..., :2], np.zeros((3, 3)))
    with pytest.raises(InputError, match="2-D"):
        render.overlay(frame, np.zeros((1, 3, 3)))
    with pytest.raises(InputError, match="alpha"):
        render.overlay(frame, np.zeros((3, 3)), alpha=1.5)


# --------------------------------------------------------------------------- focus


def test_focus_sharp_where_map_is_one_blurred_where_zero(frame):
    m = np.zeros(frame.shape[:2], np.float32)
    m[3:9, 4:12] = 1.0
    out = render.focus(frame, m, blur_sigma=2.0)
    blurred = cv2.GaussianBlur(frame, (0, 0), 2.0)
    np.testing.assert_array_equal(out[3:9, 4:12], frame[3:9, 4:12])
    mask = m == 0
    np.testing.assert_array_equal(out[mask], blurred[mask])


def test_focus_outside_region_is_blurred(frame):
    out = render.focus(frame, np.ones((2, 2)) * 3.0 + np.eye(2), blur_sigma=1.5, region=(0, 6, 0, 16))
    blurred = cv2.GaussianBlur(frame, (0, 0), 1.5)
    np.testing.assert_array_equal(out[6:], blurred[6:])


def test_focus_half_weight_is_midpoint(frame):
    m = np.zeros(frame.shape[:2], np.float32)
    m[0, 0] = 2.0
    m[5, 5] = 1.0  # normalised to 0.5
    out = render.focus(frame, m, blur_sigma=2.0)
    blurred = cv2.GaussianBlur(frame, (0, 0), 2.0).astype(np.float32)
    expected = np.rint(blurred[5, 5] + 0.5 * (frame[5, 5].astype(np.float32) - blurred[5, 5]))
    np.testing.assert_array_equal(out[5, 5], expected.astype(np.uint8))


def test_focus_rejects_bad_sigma(frame):
    with pytest.raises(InputError, match="blur_sigma"):
        render.focus(frame, np.ones((2, 2)), blur_sigma=0)


# --------------------------------------------------------------------------- side_by_side / render


def test_side_by_side_shape_arithmetic():
    a = np.zeros((10, 20, 3), np.uint8)
    b = np.full((20, 10, 3), 255, np.uint8)
    c = np.full((20, 30, 3), 7, np.uint8)
    out = render.side_by_side([a, b, c])
    assert out.shape == (20, 40 + 10 + 30, 3)
    # a was doubled with nearest neighbour: still all zeros; b and c copied unchanged
    assert (out[:, :40] == 0).all() and (out[:, 40:50] == 255).all() and (out[:, 50:] == 7).all()


def test_side_by_side_labels_draw_text_only_where_asked():
    panels = [np.zeros((40, 60, 3), np.uint8), np.zeros((40, 60, 3), np.uint8)]
    out = render.side_by_side(panels, labels=["left", None])
    assert out[:, :60].any() and not out[:, 60:].any()
    with pytest.raises(InputError, match="labels"):
        render.side_by_side(panels, labels=["one"])
    with pytest.raises(InputError, match="non-empty"):
        render.side_by_side([])


def test_upscale_is_nearest_neighbour(frame):
    big = render.upscale(frame, 3)
    assert big.shape == (36, 48, 3)
    np.testing.assert_array_equal(big[::3, ::3], frame)
    np.testing.assert_array_equal(big[2::3, 1::3], frame)


@pytest.mark.parametrize(
    "layout, width_factor", [("overlay", 1), ("focus", 1), ("side-by-side", 3)]
)
def test_render_layout_shapes(layout, width_factor):
    frame = np.random.default_rng(2).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    m = torch.rand(66, 200)
    out = render.render(frame, m, layout, region=(0, 84, 0, 96), scale=2)
    assert out.dtype == np.uint8 and out.shape == (192, 192 * width_factor, 3)


def test_render_overlay_scaled_leaves_dashboard_untouched():
    frame = np.random.default_rng(3).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    out = render.render(frame, np.random.default_rng(4).random((66, 200)), "overlay", region=(0, 84, 0, 96), scale=2)
    np.testing.assert_array_equal(out[168:], render.upscale(frame, 2)[168:])


def test_render_side_by_side_panels():
    frame = np.random.default_rng(5).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    m = np.random.default_rng(6).random((10, 30))
    out = render.render(frame, m, "side-by-side", region=(0, 10, 0, 30), labels=False)
    np.testing.assert_array_equal(out[:, :30], frame)
    np.testing.assert_array_equal(out[:, 30:60], render.overlay(frame, m, region=(0, 10, 0, 30)))
    assert not out[10:, 60:].any()  # heatmap panel is black outside the region
    # a non-negative map: min-max scaled, coloured with the sequential default (inferno)
    np.testing.assert_array_equal(out[:10, 60:], render.heatmap(render.normalize(m), "inferno"))


def test_render_errors():
    frame = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(UnknownNameError, match="layout"):
        render.render(frame, np.zeros((2, 2)), "grid")
    with pytest.raises(InputError, match="scale"):
        render.render(frame, np.zeros((2, 2)), scale=0)
    with pytest.raises(InputError, match="scale"):
        render.render(frame, np.zeros((2, 2)), scale=1.5)
    with pytest.raises(FastvizError):
        render.render(np.zeros((8, 8), np.uint8), np.zeros((2, 2)))


def test_a_clipped_range_that_is_flat_falls_back_to_the_full_range():
    """A map non-zero on fewer pixels than the clipped share (here 1 of 400, clip at the 99th
    percentile) would be coloured flat; it takes its full range instead."""
    m = np.zeros((20, 20), np.float32)
    m[3, 4] = 2.0
    u = render.normalize(m, clip=(0.0, 99.0))
    assert u[3, 4] == 1.0 and u.sum() == 1.0
    s = render.normalize(-m, clip=(1.0, 99.0), signed=True)  # signed: 0.5 + 0.5 * m / max|m|
    assert s[3, 4] == 0.0 and np.all(np.delete(s.ravel(), 3 * 20 + 4) == 0.5)
    # a map the clip does not flatten keeps its clipped range
    ramp = np.arange(400, dtype=np.float32).reshape(20, 20)
    np.testing.assert_allclose(render.normalize(ramp, clip=(0.0, 50.0)).max(), 1.0)
    assert render.normalize(ramp, clip=(0.0, 50.0))[0, 5] == pytest.approx(5 / np.percentile(ramp, 50))


# --------------------------------------------------------------------------- per-frame speed: caches and the compiled pass


def _blend_reference(part: np.ndarray, placed: np.ndarray, colours: np.ndarray, alpha: float, signed: bool) -> np.ndarray:
    """The "value" overlay of a placed map, step by step in float32 (levels, LUT, blend)."""
    level = np.rint(np.clip(0.5 + 0.5 * placed if signed else placed, 0.0, 1.0) * 255.0).astype(np.uint8)
    heat = colours[level].astype(np.float32)
    weight = np.float32(alpha) * np.abs(placed)[..., None]
    mixed = part.astype(np.float32) + weight * (heat - part.astype(np.float32))
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def test_render_of_a_tiny_frame_by_hand():
    frame = np.array([[[10, 200, 30], [0, 0, 0], [255, 255, 255], [90, 60, 30]]] * 4, np.uint8)  # 4 x 4
    m = np.array([[0.0, 0.2, 0.5, 1.0], [1.0, 0.0, 0.4, 0.6], [0.9, 0.1, 0.3, 0.7], [0.25, 0.75, 0.05, 0.95]], np.float32)
    colours = render.lut("jet")
    kw = dict(alpha=0.8, colormap="jet", opacity="value", vrange=(0.0, 1.0))
    first = render.render(frame, m, **kw)
    again = render.render(frame, m, **kw)  # after a cached call
    # pixel (0, 2): frame (255, 255, 255), u = 0.5 -> level rint(127.5) = 128, weight 0.8 * 0.5 = 0.4
    c = colours[128].astype(np.float32)
    expected = np.rint(255.0 + np.float32(0.4) * (c - 255.0)).astype(np.uint8)
    np.testing.assert_array_equal(first[0, 2], expected)
    np.testing.assert_array_equal(first[0, 0], frame[0, 0])  # u = 0: weight 0, the frame's own pixel
    np.testing.assert_array_equal(first, _blend_reference(frame, m, colours, 0.8, False))
    np.testing.assert_array_equal(again, first)
    # constant opacity: cv2.addWeighted of the frame and the LUT colours
    constant = render.render(frame, m, **dict(kw, opacity="constant"))
    level = np.rint(m * 255.0).astype(np.uint8)
    np.testing.assert_array_equal(constant, cv2.addWeighted(frame, 1 - 0.8, np.ascontiguousarray(colours[level]), 0.8, 0.0))


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("alpha", [0.8, 0.33, 1.0])
def test_overlay_is_the_float32_blend_formula(signed, alpha):
    rng = np.random.default_rng(7)
    frame = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    m = rng.random((12, 17)).astype(np.float32) - (0.5 if signed else 0.0)
    region = (3, 27, 5, 38)
    out = render.overlay(frame, m, alpha=alpha, region=region, signed=signed, opacity="value", colormap="turbo")
    u = m / np.abs(m).max() if signed else (m - m.min()) / (m.max() - m.min())  # float32, [-1, 1] or [0, 1]
    placed = render.resize_to_frame(u, frame.shape, region)[3:27, 5:38]
    expected = frame.copy()
    expected[3:27, 5:38] = _blend_reference(frame[3:27, 5:38], placed, render.lut("turbo"), alpha, signed)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(out[:3], frame[:3])
    np.testing.assert_array_equal(out[:, :5], frame[:, :5])


@pytest.mark.parametrize("scale", [1, 2, 3, 49])
def test_render_enlarges_as_opencv_nearest_neighbour(scale):
    # OpenCV's nearest neighbour takes source pixel floor(y * (1 / scale)): row 49 of a x49
    # enlargement is still source row 0 (49 * (1 / 49) < 1); render must enlarge the same way
    frame = np.random.default_rng(8).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    out = render.render(frame, np.ones((2, 2), np.float32), alpha=0.0, scale=scale)
    np.testing.assert_array_equal(out, cv2.resize(frame, (5 * scale, 4 * scale), interpolation=cv2.INTER_NEAREST))


def test_percentile_pair_is_numpy_percentile():
    rng = np.random.default_rng(9)
    for size in (1, 2, 3, 10, 13200):
        for data in (rng.random(size), np.round(rng.random(size) * 3), (rng.random(size) - 0.5) * 1e4):
            a = data.astype(np.float32)
            for lo, hi in ((0.0, 99.0), (1.0, 99.0), (0.0, 100.0), (12.5, 50.0), (33.3, 66.7)):
                got = render._percentile_pair(a.reshape(1, -1), lo, hi)
                want = (np.percentile(a, lo), np.percentile(a, hi))
                assert all(type(g) is np.float32 for g in got)
                assert got[0].tobytes() == np.float32(want[0]).tobytes() and got[1].tobytes() == np.float32(want[1]).tobytes()


def test_colorbar_cache_keyed_by_labels():
    colours = render.lut("inferno")
    render._colorbar_drawn.cache_clear()
    a = render._colorbar(384, 0.0, 0.712, False, colours, "relative")  # labels "0", "0.356", "0.712"
    b = render._colorbar(384, 0.0, 0.7124, False, colours, "relative")  # the same labels
    c = render._colorbar(384, 0.0, 0.72, False, colours, "relative")  # "0", "0.36", "0.72"
    assert b is a and c is not a
    assert not np.array_equal(a, c)
    assert render._colorbar_drawn.cache_info().hits == 1 and render._colorbar_drawn.cache_info().misses == 2
    assert not a.flags.writeable  # shared: read-only
    strip = render.colorbar(384, (0.0, 0.712), colormap="inferno", units="relative")
    assert strip.flags.writeable and np.array_equal(strip, a)  # the public function returns a copy
    strip[:] = 0
    assert a.any() and render._colorbar(384, 0.0, 0.712, False, colours, "relative") is a
    # the cached strip is the one drawn afresh
    render._colorbar_drawn.cache_clear()
    np.testing.assert_array_equal(render._colorbar(384, 0.0, 0.712, False, colours, "relative"), a)


def test_caches_are_bounded():
    colours = render.lut("inferno")
    render._colorbar_drawn.cache_clear()
    for i in range(render._COLORBAR_CACHE + 40):
        render._colorbar(200, 0.0, 1.0 + i, False, colours, "")
    info = render._colorbar_drawn.cache_info()
    assert info.maxsize == render._COLORBAR_CACHE and info.currsize == render._COLORBAR_CACHE
    for i in range(render._SPRITE_CACHE + 10):
        render._text_sprite(f"{i}", 0.5, 1, (255, 255, 255))
    info = render._text_sprite.cache_info()
    assert info.maxsize == render._SPRITE_CACHE and info.currsize == render._SPRITE_CACHE
    for cache in (render._tables_cached, render._nearest_maps, render._metrics, render._gauge_track):
        assert cache.cache_info().maxsize is not None


@pytest.mark.parametrize("org", [(20, 30), (0, 12), (60, 39), (-3, 5)])
def test_text_pasted_on_black_is_text_drawn(org):
    for colour in ((255, 255, 255), render.PREDICTED_COLOUR):
        for background in ("black", "bar", "busy"):
            img = np.zeros((40, 80, 3), np.uint8)
            if background == "bar":
                img[2:9, 5:70] = 180  # drawn, but away from the text
            elif background == "busy":
                img[:, ::7] = 200  # under the text
            expected = img.copy()
            render._put_text(expected, "pred +12.3", org, 0.5, 1, colour)
            render._put_text_on_black(img, "pred +12.3", org, 0.5, 1, colour)
            np.testing.assert_array_equal(img, expected)


def test_frames_in_sequence_do_not_share_state():
    rng = np.random.default_rng(10)
    a, b = (rng.integers(0, 256, (96, 96, 3), dtype=np.uint8) for _ in range(2))
    ma, mb = rng.random((66, 200)).astype(np.float32), rng.random((66, 200)).astype(np.float32) - 0.5
    kw = dict(region=(0, 84, 0, 96), scale=4, alpha=0.8, opacity="value", clip=(0.0, 99.0), legend=True,
              units="relative", gauge=(0.1, -0.05))
    for layout in render.LAYOUTS:
        first = render.render(a, ma, layout, **kw)
        first_copy = first.copy()
        first[:] = 0  # the caller owns the result
        other = render.render(b, mb, layout, **kw)
        again = render.render(a, ma, layout, **kw)
        np.testing.assert_array_equal(again, first_copy)
        assert not np.array_equal(other[: 96 * 4], first_copy[: 96 * 4])
        assert again.flags.writeable and again.flags.c_contiguous
