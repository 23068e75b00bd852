"""fastviz.render colour scales, legends and the steering gauge: values, not looks.

The diverging map is checked against matplotlib's RdBu_r (an independent implementation of the
same ColorBrewer colours); the colour bar and the gauge are read back from their pixels.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from fastviz import render
from fastviz.errors import InputError, UnknownNameError

RDBU = render.DIVERGING["rdbu_r"]
NEUTRAL = (247, 247, 247)  # ColorBrewer RdBu's middle class, #f7f7f7


@pytest.fixture
def frame() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(24, 32, 3), dtype=np.uint8)


def signed_map(shape=(24, 32), seed=1) -> np.ndarray:
    """Random signed values with exact zeros in a block and a strong positive and negative peak."""
    m = np.random.default_rng(seed).normal(0.0, 0.3, size=shape).astype(np.float32)
    m[:6, :8] = 0.0
    m[10, 10], m[12, 20] = 2.0, -1.5
    return m


# --------------------------------------------------------------------------- the diverging LUT


def test_diverging_lut_is_matplotlib_rdbu_r():
    colormaps = pytest.importorskip("matplotlib").colormaps
    reference = np.rint(colormaps["RdBu_r"](np.arange(256) / 255.0)[:, :3] * 255.0)
    assert RDBU.shape == (256, 3) and RDBU.dtype == np.uint8
    assert np.abs(RDBU.astype(int) - reference.astype(int)).max() <= 3  # same colours; our centre is a 2-entry plateau


def test_diverging_lut_neutral_middle_and_mirror_ends():
    assert tuple(RDBU[127]) == NEUTRAL and tuple(RDBU[128]) == NEUTRAL
    assert tuple(RDBU[0]) == (5, 48, 97) and tuple(RDBU[255]) == (103, 0, 31)  # #053061 and #67001f
    # entry i and 255 - i are mirror colours: opposite hue, about the same lightness
    lab = cv2.cvtColor(RDBU[None], cv2.COLOR_RGB2LAB)[0].astype(int)
    lightness = lab[:, 0] * 100 / 255
    assert np.abs(lightness[:128] - lightness[::-1][:128]).max() < 5
    low, high = RDBU[:127].astype(int), RDBU[129:].astype(int)
    assert (low[:, 2] > low[:, 0]).all()  # below the middle: blue
    assert (high[:, 0] > high[:, 2]).all()  # above: red
    np.testing.assert_array_equal(render.DIVERGING["rdbu"], RDBU[::-1])
    with pytest.raises(ValueError):  # the module's tables cannot be changed by accident
        RDBU[0, 0] = 1


def test_heatmap_with_lut_is_a_table_lookup():
    levels = np.random.default_rng(2).integers(0, 256, (7, 9), dtype=np.uint8)
    np.testing.assert_array_equal(render.heatmap(levels, "rdbu_r"), RDBU[levels])
    custom = np.random.default_rng(3).integers(0, 256, (256, 3), dtype=np.uint8)
    np.testing.assert_array_equal(render.heatmap(levels, custom), custom[levels])
    np.testing.assert_array_equal(render.lut("inferno")[levels], render.heatmap(levels, "inferno"))
    with pytest.raises(InputError, match=r"\(256, 3\)"):
        render.heatmap(levels, custom[:100])
    with pytest.raises(UnknownNameError, match="sign"):
        render.heatmap(levels, "auto")  # 'auto' needs the raw map


def test_zero_is_neutral_and_opposite_values_get_mirror_colours():
    v = np.array([[-0.8, -0.3, 0.0, 0.3, 0.8]], np.float32)
    colours = render.heatmap(render.normalize(v, signed=True), "rdbu_r")[0]
    assert tuple(colours[2]) == NEUTRAL
    # -0.3 and +0.3 (of max 0.8): levels rint(127.5 -+ 127.5 * 0.375), which sum to 255
    k = int(np.rint(127.5 + 127.5 * 0.375))
    np.testing.assert_array_equal(colours[3], RDBU[k])
    np.testing.assert_array_equal(colours[1], RDBU[255 - k])
    np.testing.assert_array_equal(colours[[0, 4]], RDBU[[0, 255]])


def test_the_sign_of_a_pixel_decides_its_hue(frame):
    m = signed_map()
    out = render.render(frame, m, "side-by-side", labels=False)
    heat = out[:, 2 * frame.shape[1] :].astype(int)
    u = m / np.abs(m).max()
    red, blue = heat[..., 0] > heat[..., 2], heat[..., 2] > heat[..., 0]
    assert (red[u > 0.01]).all() and (blue[u < -0.01]).all()
    assert (heat[m == 0] == NEUTRAL).all()


# --------------------------------------------------------------------------- choosing the scale


def test_auto_colormap_and_scaling_by_sign(frame):
    m = signed_map()
    # opaque, constant blending: the overlay is the heatmap itself
    signed = render.overlay(frame, m, alpha=1.0, opacity="constant")
    np.testing.assert_array_equal(signed, render.heatmap(0.5 + 0.5 * m / np.abs(m).max(), "rdbu_r"))
    positive = np.abs(m) + 0.5
    plain = render.overlay(frame, positive, alpha=1.0)  # non-negative: constant opacity by default
    expected = render.heatmap((positive - positive.min()) / (positive.max() - positive.min()), "inferno")
    np.testing.assert_array_equal(plain, expected)
    # an explicit colour map wins; the scaling still follows the sign
    jet = render.overlay(frame, m, alpha=1.0, opacity="constant", colormap="jet")
    np.testing.assert_array_equal(jet, render.heatmap(0.5 + 0.5 * m / np.abs(m).max(), "jet"))


def test_signed_overlay_shows_the_frame_where_the_map_is_zero(frame):
    m = signed_map()
    out = render.overlay(frame, m, alpha=0.6)
    zero = m == 0
    assert zero.sum() >= 48
    np.testing.assert_array_equal(out[zero], frame[zero])
    # elsewhere: frame + alpha * |u| * (colour - frame), computed here in float64
    u = m.astype(np.float64) / np.abs(m).max()
    colour = RDBU[np.rint(np.clip(0.5 + 0.5 * u, 0, 1) * 255).astype(int)].astype(np.float64)
    expected = frame + (0.6 * np.abs(u))[..., None] * (colour - frame)
    assert np.abs(out.astype(float) - expected).max() <= 1.0
    peak = np.unravel_index(np.argmax(np.abs(m)), m.shape)
    assert np.abs(out[peak].astype(int) - frame[peak].astype(int)).max() > 20  # the strongest pixel is tinted


def test_fixed_range_gives_the_same_colour_to_the_same_value(frame):
    a = np.zeros((24, 32), np.float32)
    b = np.zeros((24, 32), np.float32)
    a[5, 5] = b[5, 5] = 0.05
    a[20, 20], b[20, 20] = 0.1, -3.0  # b's own range would be 60x wider
    kw = dict(alpha=1.0, opacity="constant", vrange=(-0.2, 0.2))
    out_a, out_b = render.overlay(frame, a, **kw), render.overlay(frame, b, **kw)
    np.testing.assert_array_equal(out_a[5, 5], out_b[5, 5])
    np.testing.assert_array_equal(out_a[5, 5], RDBU[int(np.rint(255 * (0.5 + 0.5 * 0.25)))])
    np.testing.assert_array_equal(out_b[20, 20], RDBU[0])  # beyond the range: the end colour
    # per-frame scaling (no vrange) would not agree
    assert not np.array_equal(render.overlay(frame, a, alpha=1.0)[5, 5], render.overlay(frame, b, alpha=1.0)[5, 5])


def test_focus_of_a_signed_map_uses_magnitude(frame):
    m = np.zeros((24, 32), np.float32)
    m[4:10, 4:12] = -2.0  # strongly negative: as salient as a positive peak
    out = render.focus(frame, m, blur_sigma=2.0)
    np.testing.assert_array_equal(out[4:10, 4:12], frame[4:10, 4:12])
    blurred = cv2.GaussianBlur(frame, (0, 0), 2.0)
    np.testing.assert_array_equal(out[m == 0], blurred[m == 0])


# --------------------------------------------------------------------------- colour bar


def _bar_run(strip: np.ndarray, colours: np.ndarray) -> tuple[int, int, int, np.ndarray]:
    """(row, first column, end column, LUT indices) of the longest run of LUT colours in a row."""
    index = {tuple(int(v) for v in c): i for i, c in reversed(list(enumerate(colours)))}  # first index of a colour
    best = (0, 0, 0, np.zeros(0, int))
    for y in range(strip.shape[0]):
        row = [index.get(tuple(int(v) for v in px), -1) if px.any() else -1 for px in strip[y]]
        x = 0
        while x < len(row):
            if row[x] < 0:
                x += 1
                continue
            end = x
            while end < len(row) and row[end] >= 0:
                end += 1
            if end - x > best[2] - best[1]:
                best = (y, x, end, np.array(row[x:end]))
            x = end
    return best


@pytest.mark.parametrize("name", ["rdbu_r", "inferno", "viridis"])
def test_colorbar_pixels_follow_the_lut_in_order(name):
    colours = render.lut(name)
    strip = render.colorbar(384, (-1.0, 1.0) if name == "rdbu_r" else (0.0, 1.0), colormap=name, units="rad")
    assert strip.dtype == np.uint8 and strip.shape[1] == 384 and strip.shape[0] % 2 == 0
    y, x0, x1, found = _bar_run(strip, colours)
    n = x1 - x0
    assert n > 384 // 2  # the bar takes most of the width
    expected = np.rint(np.arange(n) * 255.0 / (n - 1)).astype(int)
    np.testing.assert_array_equal(colours[found], colours[expected])  # column j: colour rint(255 j / (n - 1))
    assert found[0] == 0 and (np.diff(found) >= 0).all()


def test_signed_colorbar_has_zero_in_the_middle_with_ticks():
    strip = render.colorbar(384, (-0.3, 0.1), units="rad")  # signed: shown as -0.3 .. +0.3
    y, x0, x1, found = _bar_run(strip, RDBU)
    bar_rows = np.where((strip[:, x0 + 5] == RDBU[found[5]]).all(axis=1))[0]
    below = strip[bar_rows.max() + 1]
    ticks = np.where((below == 255).all(axis=1))[0]
    n = x1 - x0
    np.testing.assert_array_equal(ticks, x0 + np.rint(np.array([0, 0.25, 0.5, 0.75, 1.0]) * (n - 1)).astype(int))
    middle = ticks[2]
    assert tuple(strip[y, middle]) == NEUTRAL  # the zero tick points at the neutral colour
    # tick labels: bright text pixels below the ticks, in three groups (left end, 0, right end)
    tick_rows = np.where((strip[:, ticks[1]] == 255).all(axis=1))[0]
    assert tick_rows.min() == bar_rows.max() + 1 and len(tick_rows) >= 2
    text = (strip[tick_rows.max() + 1 :] > 128).all(axis=2)
    columns = np.where(text.any(axis=0))[0]
    assert len(columns) > 20
    groups = np.split(columns, np.where(np.diff(columns) > 12)[0] + 1)
    assert len(groups) == 3
    assert abs((groups[1][0] + groups[1][-1]) / 2 - middle) <= 3  # "0" centred under its tick
    # the units: text to the right of the bar, beside it
    assert (strip[bar_rows.min() : bar_rows.max() + 1, x1 + 2 :] > 128).all(axis=2).any()


def test_colorbar_labels_show_the_range():
    narrow = render.colorbar(384, (-0.01, 0.01), units="rad")
    wide = render.colorbar(384, (-0.5, 0.5), units="rad")
    y, x0, x1, _ = _bar_run(narrow, RDBU)
    assert narrow.shape == wide.shape
    same_rows = (narrow == wide).all(axis=(1, 2))
    assert same_rows[y]  # the colours are the same ...
    assert not same_rows.all() and not same_rows[-narrow.shape[0] // 3 :].all()  # ... the numbers under them are not
    assert not np.array_equal(render.colorbar(384, (0.0, 1.0)), render.colorbar(384, (0.0, 2.0)))


def test_colorbar_scales_with_width_and_survives_tiny_widths():
    heights = [render.colorbar(w, (0.0, 1.0), units="relative").shape[0] for w in (96, 384, 768, 1536)]
    assert heights == sorted(heights) and heights[0] < heights[-1]
    assert all(h % 2 == 0 for h in heights)
    for w in (1, 5, 16):
        assert render.colorbar(w, (-1.0, 1.0), units="rad").shape[1] == w
    grey = render.colorbar(384, (0.0, 1.0), colormap=None)
    y, x0, x1, found = _bar_run(grey, np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1))
    assert x1 - x0 > 300 and (np.diff(found) >= 0).all()


def test_colorbar_rejects_bad_input():
    with pytest.raises(InputError, match="vrange"):
        render.colorbar(100, (1.0, 0.0))
    with pytest.raises(InputError, match="vrange"):
        render.colorbar(100, (0.0, math.inf))
    with pytest.raises(InputError, match="width"):
        render.colorbar(0, (0.0, 1.0))
    with pytest.raises(InputError, match="units"):
        render.colorbar(100, (0.0, 1.0), units=3)
    with pytest.raises(UnknownNameError, match="colormap"):
        render.colorbar(100, (0.0, 1.0), colormap="nope")


# --------------------------------------------------------------------------- legend on every layout


@pytest.mark.parametrize("layout", render.LAYOUTS)
def test_every_layout_gets_a_legend_below_the_untouched_picture(layout):
    frame = np.random.default_rng(4).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    m = signed_map((66, 200), seed=5)
    kw = dict(region=(0, 84, 0, 96), scale=4, labels=False)
    plain = render.render(frame, m, layout, **kw)
    out = render.render(frame, m, layout, legend=True, units="rad", **kw)
    strip_h = render.colorbar(384, (-1.0, 1.0)).shape[0]
    assert out.shape == (384 + strip_h, plain.shape[1], 3) and out.shape[0] % 2 == 0
    np.testing.assert_array_equal(out[:384], plain)
    strip = out[384:]
    panel = strip[:, 768:] if layout == "side-by-side" else strip  # under the heatmap panel
    if layout == "side-by-side":
        assert not strip[:, :768].any()
    if layout == "focus":  # the sharpness weights: a grey ramp
        colours = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
    else:
        colours = RDBU
    y, x0, x1, found = _bar_run(panel, colours)
    first = 1 if layout == "focus" else 0  # the grey ramp starts black, which the search skips
    assert x1 - x0 > 250 and found[0] == first and found[-1] == 255


def test_legend_numbers_follow_the_fixed_range():
    frame = np.zeros((96, 96, 3), np.uint8)
    m = signed_map((66, 200), seed=6)
    a = render.render(frame, m, scale=4, legend=True, vrange=(-0.02, 0.02), units="rad")
    b = render.render(frame, m, scale=4, legend=True, vrange=(-0.5, 0.5), units="rad")
    assert a.shape == b.shape
    assert not np.array_equal(a[384:], b[384:])
    np.testing.assert_array_equal(a[384:], render.colorbar(384, (-0.02, 0.02), units="rad"))
    # per frame (no vrange) the legend gives the frame's own range, symmetric for a signed map
    own = np.abs(m).max()
    np.testing.assert_array_equal(render.render(frame, m, scale=4, legend=True)[384:], render.colorbar(384, (-own, own)))


# --------------------------------------------------------------------------- steering gauge


def _centroid(strip: np.ndarray, colour) -> tuple[float, float] | None:
    ys, xs = np.where((strip == np.array(colour, np.uint8)).all(axis=2))
    return (float(xs.mean()), float(ys.mean())) if len(xs) else None


def test_gauge_needle_moves_right_for_positive_angles():
    width, limit = 384, 0.4
    x = {a: _centroid(render.steering_gauge(width, a, labels=False, limit=limit), render.PREDICTED_COLOUR)[0]
         for a in (-0.4, -0.2, -0.1, 0.0, 0.1, 0.2, 0.4, 0.8)}
    centre = x[0.0]
    assert abs(centre - (width - 1) / 2) <= 1.0
    assert x[-0.4] < x[-0.2] < x[-0.1] < centre < x[0.1] < x[0.2] < x[0.4]
    half = x[0.4] - centre
    assert half > width * 0.4
    assert abs((centre - x[-0.4]) - half) <= 1.0  # mirror
    assert abs((x[0.2] - centre) - half / 2) <= 1.0 and abs((x[0.1] - centre) - half / 4) <= 1.0  # linear
    assert x[0.8] == x[0.4]  # beyond the limit: at the end


def test_gauge_recorded_needle_and_unknown_recorded():
    both = render.steering_gauge(384, 0.2, -0.1, labels=False)
    (xp, yp), (xr, yr) = _centroid(both, render.PREDICTED_COLOUR), _centroid(both, render.RECORDED_COLOUR)
    assert xr < (384 - 1) / 2 < xp and yr > yp  # recorded: left of centre, below the track
    only = render.steering_gauge(384, 0.2, float("nan"), labels=False)
    assert _centroid(only, render.RECORDED_COLOUR) is None
    np.testing.assert_array_equal(only, render.steering_gauge(384, 0.2, None, labels=False))
    assert _centroid(only, render.PREDICTED_COLOUR) == (xp, yp)
    # with labels, NaN recorded draws no recorded-coloured text either (no sky-blue pixels at all)
    labelled = render.steering_gauge(384, 0.2, float("nan")).astype(int)
    bluish = (labelled[..., 2] > labelled[..., 0] + 60).sum()
    assert bluish == 0
    labelled = render.steering_gauge(384, 0.2, -0.1).astype(int)
    assert (labelled[..., 2] > labelled[..., 0] + 60).sum() > 20


def test_gauge_text_gives_the_angles():
    a = render.steering_gauge(384, 0.1, 0.05)
    b = render.steering_gauge(384, -0.1, 0.05)
    silent = render.steering_gauge(384, 0.1, 0.05, labels=False)
    assert a.shape == b.shape == silent.shape and a.shape[0] % 2 == 0
    text_rows = ~(a == silent).all(axis=(1, 2))
    assert text_rows.sum() > 5  # the labels add text below the track ...
    first_text_row = np.where(text_rows)[0].min()
    assert not (silent[first_text_row:] != 0).any()  # ... where the unlabelled gauge is empty
    assert not np.array_equal(a[first_text_row:], b[first_text_row:])  # ... and it changes with the angle
    for w in (1, 7, 96):  # narrow pictures: shorter text, no failure
        assert render.steering_gauge(w, 0.3, -0.3).shape[1] == w


def test_render_with_gauge_on_every_layout():
    frame = np.random.default_rng(7).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    m = np.random.default_rng(8).random((66, 200)).astype(np.float32)
    gauge = render.steering_gauge(384, 0.1, -0.05)
    bar = render.colorbar(384, (float(m.min()), float(m.max())), units="relative")
    out = render.render(frame, m, scale=4, legend=True, units="relative", gauge=(0.1, -0.05))
    np.testing.assert_array_equal(out[384:], np.concatenate([bar, gauge]))  # bar above the gauge
    out = render.render(frame, m, "focus", scale=4, gauge=(0.1, float("nan")))
    np.testing.assert_array_equal(out[384:], render.steering_gauge(384, 0.1))
    out = render.render(frame, m, "side-by-side", scale=4, legend=True, gauge=0.1)
    strip = out[384:]
    one = render.steering_gauge(384, 0.1)
    np.testing.assert_array_equal(strip[: one.shape[0], :384], one)  # gauge under the frame panel
    assert not strip[:, 384:768].any()


def test_render_rejects_bad_options():
    frame = np.zeros((8, 8, 3), np.uint8)
    m = np.ones((4, 4))
    with pytest.raises(InputError, match="predicted"):
        render.render(frame, m, gauge=(float("nan"), 0.1))
    with pytest.raises(InputError, match="recorded"):
        render.render(frame, m, gauge=(0.1, math.inf))
    with pytest.raises(InputError, match="gauge"):
        render.render(frame, m, gauge=(0.1, 0.2, 0.3))
    with pytest.raises(InputError, match="limit"):
        render.render(frame, m, gauge=0.1, gauge_limit=0)
    with pytest.raises(InputError, match="vrange"):
        render.render(frame, m, vrange=(2.0, 1.0))
    with pytest.raises(UnknownNameError, match="opacity"):
        render.render(frame, m, opacity="half")
    with pytest.raises(InputError, match="signed"):
        render.render(frame, m, signed="yes")
    with pytest.raises(InputError, match="units"):
        render.render(frame, m, legend=True, units=b"rad")
    with pytest.raises(InputError, match="alpha"):
        render.render(frame, m, alpha=2.0)
    assert set(render.COLORMAP_CHOICES) >= {"auto", "jet", "inferno", "rdbu_r"}
