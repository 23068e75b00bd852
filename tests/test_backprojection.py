"""Histogram back-projection saliency (model-free): finds a distinctly coloured object on a
textured background, with and without GrabCut; shapes, dtypes, ranges; errors."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from fastviz.errors import InputError
from fastviz.methods.backprojection import (
    BackprojectionResult,
    backprojection,
    backprojection_maps,
)

#: The object's true box, (x, y, w, h).
TRUE_BOX = (90, 30, 45, 50)


def iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    ix = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0, min(ay + ah, by + bh) - max(ay, by))
    inter = ix * iy
    return inter / (aw * ah + bw * bh - inter)


def scene(seed: int = 0) -> np.ndarray:
    """BGR 120 x 160: grass-like texture (green hues, mid saturation, varying brightness) with
    one blue object, itself noisy, at TRUE_BOX."""
    rng = np.random.default_rng(seed)
    h, w = 120, 160
    hsv = np.stack(
        [rng.integers(35, 80, (h, w)), rng.integers(30, 110, (h, w)), rng.integers(60, 230, (h, w))], axis=-1
    ).astype(np.uint8)
    img = cv2.GaussianBlur(cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR), (3, 3), 0)
    x, y, bw, bh = TRUE_BOX
    obj = np.stack(
        [rng.integers(108, 125, (bh, bw)), rng.integers(170, 256, (bh, bw)), rng.integers(140, 256, (bh, bw))], axis=-1
    ).astype(np.uint8)
    img[y : y + bh, x : x + bw] = cv2.cvtColor(obj, cv2.COLOR_HSV2BGR)
    return img


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("refine", [None, "grabcut"])
def test_finds_the_object(seed, refine):
    img = scene(seed)
    r = backprojection(img, refine=refine)
    assert r.box is not None
    assert iou(r.box, TRUE_BOX) >= 0.7, r.box
    # the mask lies mostly inside the true box and covers most of it
    x, y, w, h = TRUE_BOX
    inside = np.zeros(img.shape[:2], bool)
    inside[y : y + h, x : x + w] = True
    assert (r.mask & inside).sum() >= 0.7 * inside.sum()
    assert (r.mask & ~inside).sum() <= 0.1 * inside.sum()
    # the object is salient, the background is not
    assert r.saliency[inside].mean() - r.saliency[~inside].mean() > 0.5


def test_outputs_shapes_dtypes_ranges():
    img = scene()
    r = backprojection(img)
    assert isinstance(r, BackprojectionResult)
    assert r.saliency.shape == img.shape[:2] and r.saliency.dtype == np.float32
    assert 0.0 <= r.saliency.min() and r.saliency.max() <= 1.0 and r.saliency.max() == 1.0
    assert r.mask.shape == img.shape[:2] and r.mask.dtype == np.bool_
    assert isinstance(r.box, tuple) and len(r.box) == 4 and all(type(v) is int for v in r.box)
    x, y, w, h = r.box
    assert 0 <= x and 0 <= y and w >= 1 and h >= 1 and x + w <= img.shape[1] and y + h <= img.shape[0]
    # the box is the mask's bounding box
    ys, xs = np.nonzero(r.mask)
    assert (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) == r.box
    # refinement changes mask and box, never the map
    g = backprojection(img, refine="grabcut")
    np.testing.assert_array_equal(g.saliency, r.saliency)


@pytest.mark.parametrize("threshold", [0.3, 0.6, 0.9])
def test_threshold_is_on_the_saliency_scale(threshold):
    r = backprojection(scene(), threshold=threshold)
    # the mask is a filled contour of {saliency > threshold}: its outline lies on passing pixels
    outline = r.mask & ~cv2.erode(r.mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    assert outline.any() and (r.saliency[outline] > threshold).all()


def test_input_not_changed():
    img = scene()
    before = img.copy()
    backprojection(img, refine="grabcut")
    backprojection_maps(img[None, ..., ::-1].copy())
    np.testing.assert_array_equal(img, before)


def test_one_colour_image_has_no_object():
    img = np.full((40, 50, 3), 77, np.uint8)
    for refine in (None, "grabcut"):
        r = backprojection(img, refine=refine)
        assert r.box is None
        assert not r.mask.any()
        assert r.saliency.dtype == np.float32 and not r.saliency.any()


def test_grabcut_cannot_run_on_a_whole_image_box():
    from fastviz.methods.backprojection import _grabcut

    img = scene()
    assert _grabcut(img, (0, 0, img.shape[1], img.shape[0]), 1) is None
    fg = _grabcut(img, TRUE_BOX, 1)
    assert fg is not None and fg.dtype == np.uint8 and set(np.unique(fg)) <= {0, 255}


def test_maps_match_single_image_function_on_rgb_frames():
    frames_bgr = np.stack([scene(0), scene(1), scene(2)])
    frames_rgb = frames_bgr[..., ::-1].copy()
    maps = backprojection_maps(frames_rgb)
    assert maps.shape == (3, 120, 160) and maps.dtype == np.float32
    assert 0.0 <= maps.min() and maps.max() <= 1.0
    for m, bgr in zip(maps, frames_bgr):
        np.testing.assert_array_equal(m, backprojection(bgr).saliency)
    # one (H, W, 3) frame counts as N = 1
    assert backprojection_maps(frames_rgb[0]).shape == (1, 120, 160)


@pytest.mark.parametrize(
    "image, match",
    [
        ([[1, 2, 3]], "numpy array"),
        (np.zeros((10, 10, 3), np.float32), "uint8"),
        (np.zeros((10, 10), np.uint8), r"\(H, W, 3\)"),
        (np.zeros((10, 10, 4), np.uint8), r"\(H, W, 3\)"),
        (np.zeros((0, 10, 3), np.uint8), "2 x 2"),
    ],
)
def test_bad_image(image, match):
    with pytest.raises(InputError, match=match):
        backprojection(image)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"levels": -1}, "levels"),
        ({"levels": 1.5}, "levels"),
        ({"bins": 0}, "bins"),
        ({"bins": 300}, "bins"),
        ({"refine": "crf"}, "refine"),
        ({"threshold": 1.0}, "threshold"),
        ({"threshold": -0.1}, "threshold"),
        ({"threshold": "high"}, "threshold"),
        ({"grabcut_iterations": 0}, "grabcut_iterations"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(InputError, match=match):
        backprojection(scene(), **kwargs)


@pytest.mark.parametrize(
    "frames, match",
    [
        (np.zeros((0, 10, 10, 3), np.uint8), "N >= 1"),
        (np.zeros((2, 10, 10, 3), np.float64), "uint8"),
        (np.zeros((2, 10, 10), np.uint8), r"\(H, W, 3\)"),
        (np.zeros((1, 2, 10, 10, 3), np.uint8), r"\(N, H, W, 3\)"),
        (np.zeros((2, 10, 10, 1), np.uint8), r"\(H, W, 3\)"),
        ("frames", "numpy array"),
    ],
)
def test_maps_bad_frames(frames, match):
    with pytest.raises(InputError, match=match):
        backprojection_maps(frames)


def test_errors_are_value_errors():
    with pytest.raises(ValueError):
        backprojection(np.zeros((4, 4), np.uint8))
