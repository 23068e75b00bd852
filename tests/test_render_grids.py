"""fastviz.render grids and crops: tile arithmetic and placement, filter tiles, salient crops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fastviz import render
from fastviz.errors import InputError, UnknownNameError


# --------------------------------------------------------------------------- grid


@pytest.mark.parametrize("n,ncols,pad,rows,cols", [
    (5, 3, 2, 2, 3), (6, 3, 0, 2, 3), (1, None, 1, 1, 1), (7, None, 1, 3, 3), (3, 10, 1, 1, 3), (4, 1, 3, 4, 1),
])
def test_grid_shape_arithmetic(n, ncols, pad, rows, cols):
    out = render.grid(np.random.default_rng(0).random((n, 4, 6)), ncols=ncols, pad=pad)
    assert out.dtype == np.uint8
    assert out.shape == (rows * 4 + (rows - 1) * pad, cols * 6 + (cols - 1) * pad, 3)


def test_grid_places_a_known_map_in_its_tile():
    maps = np.zeros((5, 3, 4), np.float32)
    maps[4, 1, 2] = 7.0  # map 4 -> row 1, column 1 with ncols=3; its one bright pixel at (1, 2)
    maps[0] = np.arange(12, dtype=np.float32).reshape(3, 4)  # map 0: a ramp 0..11 -> 0..255
    out = render.grid(maps, ncols=3, pad=2)
    assert out.shape == (2 * 3 + 2, 3 * 4 + 2 * 2, 3)
    y, x = 1 * (3 + 2), 1 * (4 + 2)
    tile = out[y : y + 3, x : x + 4]
    want = np.zeros((3, 4, 3), np.uint8)
    want[1, 2] = 255
    np.testing.assert_array_equal(tile, want)
    np.testing.assert_array_equal(out[:3, :4, 0], np.rint(np.arange(12).reshape(3, 4) * 255 / 11).astype(np.uint8))
    assert (out[:3, :4, 0] == out[:3, :4, 1]).all() and (out[:3, :4, 0] == out[:3, :4, 2]).all()  # grey
    # everything else (the gaps, the constant maps 1-3, the unused tile 5) is black
    rest = out.copy()
    rest[y : y + 3, x : x + 4] = 0
    rest[:3, :4] = 0
    assert not rest.any()


def test_grid_joint_normalisation_and_colormap():
    maps = np.stack([np.full((2, 2), 1.0), np.full((2, 2), 3.0)]).astype(np.float32)
    joint = render.grid(maps, ncols=2, pad=0, normalize_each=False)
    assert (joint[:, :2] == 0).all() and (joint[:, 2:] == 255).all()
    each = render.grid(maps, ncols=2, pad=0)  # constant maps -> black
    assert not each.any()
    coloured = render.grid(maps, ncols=2, pad=0, normalize_each=False, colormap="jet")
    np.testing.assert_array_equal(coloured[:, 2:], np.broadcast_to(render.heatmap(np.ones((1, 1)), "jet")[0, 0], (2, 2, 3)))


def test_grid_accepts_feature_maps_of_one_frame():
    t = torch.rand(1, 6, 5, 5)
    np.testing.assert_array_equal(render.grid(t, ncols=3), render.grid(t[0].numpy(), ncols=3))


def test_grid_errors():
    with pytest.raises(InputError):
        render.grid(np.zeros((4, 4)))
    with pytest.raises(InputError):
        render.grid(np.zeros((2, 3, 4, 4)))
    with pytest.raises(InputError):
        render.grid(np.zeros((2, 4, 4)), ncols=0)
    with pytest.raises(InputError):
        render.grid(np.zeros((2, 4, 4)), pad=-1)
    with pytest.raises(UnknownNameError):
        render.grid(np.zeros((2, 4, 4)), colormap="nope")


# --------------------------------------------------------------------------- weights_grid


def test_weights_grid_first_layer_in_colour():
    conv = nn.Conv2d(3, 2, 2, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 0, 0] = 1.0  # filter 0: red top-left pixel
        conv.weight[1, 2, 1, 1] = -1.0  # filter 1: blue bottom-right pixel, darkest
    out = render.weights_grid(conv, pad=1)
    assert out.shape == (2, 2 * 2 + 1, 3)
    f0 = out[:, :2]
    want0 = np.zeros((2, 2, 3), np.uint8)
    want0[0, 0, 0] = 255
    np.testing.assert_array_equal(f0, want0)
    f1 = out[:, 3:]
    want1 = np.full((2, 2, 3), 255, np.uint8)
    want1[1, 1, 2] = 0
    np.testing.assert_array_equal(f1, want1)
    assert not out[:, 2].any()  # the gap


def test_weights_grid_other_layers_mean_and_channels():
    w = np.zeros((2, 4, 3, 3), np.float32)
    w[0, :, 1, 1] = 2.0  # filter 0: a centre dot in every input channel
    w[1, 3, 0, 0] = 5.0  # filter 1: a corner dot in input channel 3 only
    mean = render.weights_grid(torch.from_numpy(w), ncols=2, pad=0)
    assert mean.shape == (3, 6, 3)
    assert mean[1, 1, 0] == 255 and mean[:, :3, 0].sum() == 255
    assert mean[0, 3, 0] == 255 and mean[:, 3:, 0].sum() == 255
    per = render.weights_grid(w, mode="channels", pad=1)
    assert per.shape == (2 * 3 + 1, 4 * 3 + 3, 3)  # a row per filter, a column per input channel
    assert per[4 + 0, 3 * 4 + 0, 0] == 255  # filter 1, input channel 3, pixel (0, 0)
    big = render.weights_grid(w, ncols=2, pad=0, scale=4)
    assert big.shape == (12, 24, 3)
    np.testing.assert_array_equal(big[::4, ::4], mean)


def test_weights_grid_errors():
    with pytest.raises(InputError):
        render.weights_grid(np.zeros((3, 3)))
    with pytest.raises(UnknownNameError):
        render.weights_grid(nn.Conv2d(4, 2, 3), mode="rgb")
    with pytest.raises(InputError):
        render.weights_grid(nn.Conv2d(4, 2, 3), scale=0)


# --------------------------------------------------------------------------- crop


@pytest.fixture
def frame() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(30, 40, 3), dtype=np.uint8)


def test_crop_returns_the_bright_rectangle(frame):
    m = np.zeros((30, 40), np.float32)
    m[7:15, 11:26] = 3.0
    cut, box = render.crop(frame, m)
    assert box == (7, 15, 11, 26)
    np.testing.assert_array_equal(cut, frame[7:15, 11:26])
    cut[:] = 0
    assert frame[7:15, 11:26].any()  # a copy


def test_crop_takes_the_largest_component(frame):
    m = np.zeros((30, 40), np.float32)
    m[2:4, 2:4] = 1.0  # small, brightest
    m[20:28, 5:35] = 0.8  # large
    m[10, 10] = 0.3  # below the threshold
    assert render.crop(frame, torch.from_numpy(m))[1] == (20, 28, 5, 35)
    assert render.crop(frame, m, threshold=0.25)[1] == (20, 28, 5, 35)
    assert render.crop(frame, m, threshold=0.9)[1] == (2, 4, 2, 4)


def test_crop_in_region_at_model_resolution(frame):
    m = np.zeros((10, 20), np.float32)  # a map of region (10, 30, 0, 40): every map pixel is 2x2 frame pixels
    m[2:5, 4:9] = 1.0
    cut, box = render.crop(frame, m, threshold=0.99, region=(10, 30, 0, 40))
    y0, y1, x0, x1 = box
    assert 10 + 4 <= y0 and y1 <= 10 + 10 and 8 <= x0 and x1 <= 18  # inside the rectangle's place
    np.testing.assert_array_equal(cut, frame[y0:y1, x0:x1])


def test_crop_errors(frame):
    with pytest.raises(InputError, match="constant"):
        render.crop(frame, np.zeros((30, 40)))
    with pytest.raises(InputError, match="constant"):
        render.crop(frame, np.full((30, 40), 2.0))
    m = np.random.default_rng(1).random((30, 40))
    for t in (0.0, 1.5, -0.1):
        with pytest.raises(InputError):
            render.crop(frame, m, threshold=t)
    with pytest.raises(InputError):
        render.crop(frame, m, region=(0, 50, 0, 40))
    with pytest.raises(InputError):
        render.crop(frame.astype(np.float32), m)
    with pytest.raises(InputError):
        render.crop(frame, np.zeros((2, 3, 4)))
