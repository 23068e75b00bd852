"""Model-free saliency from hue-saturation histogram back-projection, refined with GrabCut.

The idea (from the seed write-up "Simple Image saliency detection from histogram
backprojection", 2015): salient pixels have colours that are rare in the image. Back-projecting
the image's own hue-saturation histogram onto itself (Swain & Ballard 1991) gives each pixel how
common its colour is; smoothed, equalised and inverted, that is a saliency map. Thresholded, its
largest blob gives a box around the salient object, which GrabCut (Rother et al. 2004) can turn
into a finer mask.

No model is involved: this works on frames, in host memory, with OpenCV throughout.

>>> import numpy as np
>>> img = np.full((64, 64, 3), 120, np.uint8)
>>> img[20:40, 10:30] = (0, 0, 255)  # a red square (BGR) on grey
>>> r = backprojection(img)
>>> r.saliency.shape, r.saliency.dtype.name, r.mask.dtype.name
((64, 64), 'float32', 'bool')
>>> r.box  # (x, y, w, h)
(10, 20, 20, 20)
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..errors import InputError

__all__ = ["BackprojectionResult", "backprojection", "backprojection_maps"]

#: Refinements accepted by :func:`backprojection`.
REFINEMENTS = (None, "grabcut")

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class BackprojectionResult:
    """What :func:`backprojection` finds in one image.

    Attributes
    ----------
    saliency : numpy.ndarray
        float32 ``(H, W)`` in ``[0, 1]``; high where the colour is rare in the image.
    mask : numpy.ndarray
        bool ``(H, W)``; the salient object: the largest thresholded blob, or GrabCut's
        foreground with ``refine="grabcut"``. All False when nothing passes the threshold.
    box : tuple of int or None
        ``(x, y, w, h)`` in pixels (OpenCV's ``cv2.boundingRect`` order: column and row of the
        top-left corner, width, height) of the object's bounding box; ``None`` when nothing
        passes the threshold.
    """

    saliency: np.ndarray
    mask: np.ndarray
    box: Box | None


# --------------------------------------------------------------------------- checks


def _check_image(image, what: str = "image") -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise InputError(f"{what} must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise InputError(f"{what} must be uint8, got dtype {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"{what} must have shape (H, W, 3), got {image.shape}")
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise InputError(f"{what} must be at least 2 x 2 pixels, got {image.shape[0]} x {image.shape[1]}")
    return np.ascontiguousarray(image)


def _check_options(levels, bins, refine, threshold, grabcut_iterations) -> None:
    if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or levels < 0:
        raise InputError(f"levels must be a whole number >= 0, got {levels!r}")
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or not 1 <= bins <= 256:
        raise InputError(f"bins must be a whole number in [1, 256], got {bins!r}")
    if refine not in REFINEMENTS:
        raise InputError(f"unknown refine {refine!r}: use None or 'grabcut'")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating, np.integer)) or not (
        0.0 <= float(threshold) < 1.0
    ):
        raise InputError(f"threshold must be a number in [0, 1), got {threshold!r}")
    if (
        isinstance(grabcut_iterations, bool)
        or not isinstance(grabcut_iterations, (int, np.integer))
        or grabcut_iterations < 1
    ):
        raise InputError(f"grabcut_iterations must be a whole number >= 1, got {grabcut_iterations!r}")


# --------------------------------------------------------------------------- steps


def _saliency_u8(image_bgr: np.ndarray, levels: int, bins: int) -> np.ndarray:
    """Steps 1-3 of the seed: mean shift, back-projection, smoothing, equalisation, inversion."""
    # 1. soft segmentation ("abstraction"): pyramid mean shift, spatial radius 2, colour radius 10
    smooth = cv2.pyrMeanShiftFiltering(image_bgr, 2, 10, maxLevel=levels)
    # 2. back-project the image's own hue-saturation histogram onto itself: how common each
    #    pixel's colour is. Scaled so the commonest bin is 255 (raw counts would saturate uint8).
    hsv = cv2.cvtColor(smooth, cv2.COLOR_BGR2HSV)
    hist = cv2.calcHist([hsv], [0, 1], None, [bins, bins], [0, 180, 0, 256])
    cv2.normalize(hist, hist, 0, 255, cv2.NORM_MINMAX)
    common = cv2.calcBackProject([hsv], [0, 1], hist, [0, 180, 0, 256], 1)
    # 3. smooth with mean shift (on a 3-channel copy, as OpenCV requires), equalise, invert
    common3 = cv2.pyrMeanShiftFiltering(cv2.merge([common, common, common]), 20, 200, maxLevel=2)
    gray = cv2.cvtColor(common3, cv2.COLOR_BGR2GRAY)
    if gray.min() == gray.max():  # one colour everywhere: nothing is rare, nothing is salient
        return np.zeros_like(gray)
    return cv2.bitwise_not(cv2.equalizeHist(gray))


def _largest_blob(mask_u8: np.ndarray) -> tuple[np.ndarray, Box | None]:
    """Steps 4-5: the largest outer contour of a 0/255 mask, filled, and its bounding box."""
    contours, _ = cv2.findContours(mask_u8, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    blob = np.zeros(mask_u8.shape, np.uint8)
    if not contours:
        return blob.astype(bool), None
    # ties (equal areas, e.g. single pixels of area 0) go to the contour with the most points
    largest = max(contours, key=lambda c: (cv2.contourArea(c), len(c)))
    cv2.drawContours(blob, [largest], -1, 255, thickness=cv2.FILLED)
    x, y, w, h = cv2.boundingRect(largest)
    return blob.astype(bool), (int(x), int(y), int(w), int(h))


def _grabcut(image_bgr: np.ndarray, box: Box, iterations: int) -> np.ndarray | None:
    """Step 6: GrabCut initialised with ``box``; None when it cannot run (no background left)."""
    height, width = image_bgr.shape[:2]
    x, y, w, h = box
    if w >= width and h >= height:  # the box is the whole image: no background sample
        return None
    mask = np.zeros((height, width), np.uint8)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    try:
        cv2.grabCut(image_bgr, mask, (x, y, w, h), bgd, fgd, iterations, cv2.GC_INIT_WITH_RECT)
    except cv2.error:  # degenerate colour models (too few distinct pixels on one side)
        return None
    fg = ((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)).astype(np.uint8) * 255
    return fg if fg.any() else None


# --------------------------------------------------------------------------- public


def backprojection(
    image_bgr: np.ndarray,
    levels: int = 2,
    refine: str | None = None,
    threshold: float = 200 / 255,
    bins: int = 2,
    grabcut_iterations: int = 1,
) -> BackprojectionResult:
    """Model-free saliency of one image by histogram back-projection; optional GrabCut refinement.

    Steps (the seed write-up "Simple Image saliency detection from histogram backprojection"):

    1. ``cv2.pyrMeanShiftFiltering`` (spatial radius 2, colour radius 10, ``maxLevel=levels``):
       a soft segmentation.
    2. The image's own hue-saturation histogram (``bins`` x ``bins`` bins, ``cv2.calcHist`` on
       HSV), min-max scaled to [0, 255], back-projected onto the image (``cv2.calcBackProject``;
       Swain & Ballard 1991): how common each pixel's colour is.
    3. Mean-shift smoothing of that map (spatial radius 20, colour radius 200, 2 levels),
       ``cv2.equalizeHist``, inversion: rare colours bright. Scaled to [0, 1]: ``saliency``.
    4. Threshold at ``threshold``; 5. the largest outer contour (``cv2.findContours``), filled,
       is ``mask`` and its bounding box ``box``.
    6. With ``refine="grabcut"``: ``cv2.grabCut`` initialised with that box (Rother et al.
       2004, "GrabCut": interactive foreground extraction using iterated graph cuts"); ``mask`` is
       its (probable) foreground's largest blob and ``box`` that blob's bounding box. Where
       GrabCut cannot run (the box is the whole image) the unrefined result is kept.

    Parameters
    ----------
    image_bgr : numpy.ndarray
        uint8 ``(H, W, 3)``, BGR channel order (OpenCV's), at least 2 x 2. For RGB frames use
        :func:`backprojection_maps`.
    levels : int, default 2
        ``maxLevel`` of the pyramid mean-shift filtering of step 1 (0: no pyramid; the seed used
        4). Higher is faster on large images and coarser.
    refine : {None, "grabcut"}, default None
        Refinement of ``mask`` and ``box``; ``saliency`` is never changed by it.
    threshold : float, default 200/255
        In [0, 1): pixels with ``saliency > threshold`` are salient (the seed's 200 of 255).
    bins : int, default 2
        Histogram bins per channel (hue, saturation), in [1, 256]; the seed's ``levels``
        argument of ``backproject``: 2 x 2 bins quantise the image into 4 colours. More bins
        give more detail.
    grabcut_iterations : int, default 1
        GrabCut iterations (the seed: 1), >= 1.

    Returns
    -------
    BackprojectionResult
        ``saliency``: float32 ``(H, W)`` in [0, 1] (all 0 for a one-colour image);
        ``mask``: bool ``(H, W)``; ``box``: ``(x, y, w, h)`` (column, row, width, height) or
        ``None`` when no pixel passes the threshold.

    Raises
    ------
    fastviz.errors.InputError
        If ``image_bgr`` is not a uint8 ``(H, W, 3)`` numpy array of at least 2 x 2 pixels, or an
        option is out of range (``levels < 0``, ``bins`` outside [1, 256], ``threshold``
        outside [0, 1), an unknown ``refine``, ``grabcut_iterations < 1``).

    Notes
    -----
    The map is a colour-rarity heuristic: it does not know any model's output. It assumes the
    salient object is the largest region of rare colour.

    References
    ----------
    M. J. Swain and D. H. Ballard, "Color indexing", IJCV 7(1), 1991.
    C. Rother, V. Kolmogorov and A. Blake, "GrabCut: interactive foreground extraction using
    iterated graph cuts", ACM SIGGRAPH 2004.
    """
    image = _check_image(image_bgr, "image_bgr")
    _check_options(levels, bins, refine, threshold, grabcut_iterations)
    sal_u8 = _saliency_u8(image, int(levels), int(bins))
    # saliency > threshold on the [0, 1] scale == sal_u8 > threshold * 255
    cut = int(np.floor(float(threshold) * 255.0))
    _, binary = cv2.threshold(sal_u8, cut, 255, cv2.THRESH_BINARY)
    mask, box = _largest_blob(binary)
    if refine == "grabcut" and box is not None:
        fg = _grabcut(image, box, int(grabcut_iterations))
        if fg is not None:
            mask, box = _largest_blob(fg)
    saliency = sal_u8.astype(np.float32) / np.float32(255.0)
    return BackprojectionResult(saliency=saliency, mask=mask, box=box)


def backprojection_maps(frames_rgb: np.ndarray, levels: int = 2, bins: int = 2) -> np.ndarray:
    """Back-projection saliency maps of a batch of RGB frames (no torch, no model).

    Steps 1-3 of :func:`backprojection` for each frame (no threshold, box or GrabCut).

    Parameters
    ----------
    frames_rgb : numpy.ndarray
        uint8 ``(N, H, W, 3)`` RGB frames (as from :func:`fastviz.data.load_drive_log` or a frame
        source), ``N >= 1``; or one ``(H, W, 3)`` frame, treated as ``N = 1``.
    levels, bins : int
        As for :func:`backprojection`.

    Returns
    -------
    numpy.ndarray
        float32 ``(N, H, W)`` in [0, 1]; high where a frame's colour is rare in that frame.

    Raises
    ------
    fastviz.errors.InputError
        If ``frames_rgb`` is not uint8 ``(N, H, W, 3)`` (or ``(H, W, 3)``) with N >= 1 and frames of
        at least 2 x 2 pixels, or ``levels`` / ``bins`` are out of range.
    """
    if isinstance(frames_rgb, np.ndarray) and frames_rgb.ndim == 3:
        frames_rgb = frames_rgb[None]
    if not isinstance(frames_rgb, np.ndarray):
        raise InputError(f"frames must be a numpy array, got {type(frames_rgb).__name__}")
    if frames_rgb.ndim != 4 or frames_rgb.shape[0] == 0:
        raise InputError(f"frames must have shape (N, H, W, 3) with N >= 1, got {frames_rgb.shape}")
    _check_options(levels, bins, None, 0.5, 1)
    out = np.empty(frames_rgb.shape[:3], np.float32)
    for i, frame in enumerate(frames_rgb):
        frame = _check_image(frame, f"frame {i}")
        bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
        out[i] = _saliency_u8(bgr, int(levels), int(bins)).astype(np.float32) / np.float32(255.0)
    return out
