"""Saliency maps -> pictures: colour scales, overlays, focus-on-blur, side-by-side, legends, gauges.

Everything here works on single frames in host memory with OpenCV: frames are ``numpy`` uint8
``(H, W, 3)`` RGB, maps are 2-D float arrays (numpy, or torch tensors which are copied to the
host). A map computed at the model's input resolution (PilotNet: 66 x 200) is put back onto the
recorded frame with :func:`resize_to_frame`, into the pixel box the model sees (``region``, as
given by ``model.transform.region(H, W)``); the rest of the frame gets no saliency.

Colour scales
-------------
A map is *signed* when it has negative values (occlusion with ``score="delta"``: the change of
the target, e.g. radians of steering for PilotNet; gradients) and *non-negative* otherwise
(VisualBackProp and back-projection in [0, 1], Grad-CAM >= 0); ``signed=`` overrides the
guess, and a fixed ``vrange`` with a negative lower end means signed.

* Signed maps are scaled symmetrically, ``u = v / a`` with ``a = max|v|`` (or the fixed
  range's larger end), so zero is always the middle of the scale, and drawn with a diverging
  colour map (default ``"rdbu_r"``, ColorBrewer RdBu: blue < 0, near-white 0, red > 0). Over
  the frame their opacity is ``alpha * |u|``: where the map is 0 the frame shows unchanged, so
  "no effect" reads as the picture itself and only the pixels that matter are tinted.
* Non-negative maps are scaled ``u = (v - lo) / (hi - lo)`` (per map: its minimum and maximum)
  and drawn with a sequential perceptual colour map (default ``"inferno"``), blended with a
  constant opacity ``alpha`` (the dark end of the scale then dims the unimportant pixels).

The scale is set per frame by default (a legend's numbers then change from frame to frame);
give ``vrange=(lo, hi)`` to fix it for a whole video, e.g. from the first batch with
:func:`value_range` (``clip=(1, 99)`` for a high percentile). Values beyond a fixed range take
the end colours.

Legend and gauge
----------------
:func:`render` with ``legend=True`` adds a strip *below* the picture (the picture itself is
never covered): a colour bar whose ticks give the values the colours stand for, in ``units``
(:func:`colorbar`). With ``gauge=`` it also shows the predicted and the recorded steering
angle on a horizontal dial (:func:`steering_gauge`). In ``side-by-side`` the colour bar sits
under the heatmap panel and the gauge under the frame panel.

Speed
-----
:func:`render` runs once per frame of a video (``fastviz overlay`` draws in a thread beside
the model), so what stays the same from frame to frame is kept, in bounded caches: the colour
maps as lookup tables, each colour bar strip under its labels (a fixed range draws it once),
the gauge's track, every text drawn once on black (pasted where the strip is still black
under it), and the nearest-neighbour enlargement's row and column maps (read off OpenCV).
Enlarging, colouring and blending the frame is one Numba-compiled pass that releases the
GIL. The pictures are byte for byte those of the plain NumPy / OpenCV steps the functions
below describe.

>>> import numpy as np
>>> frame = np.zeros((96, 96, 3), np.uint8)
>>> saliency = np.random.rand(66, 200).astype(np.float32)
>>> render(frame, saliency, layout="side-by-side", region=(0, 84, 0, 96), scale=2).shape
(192, 576, 3)
>>> render(frame, saliency - 0.5, region=(0, 84, 0, 96), scale=4, legend=True, units="rad").shape
(430, 384, 3)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import cv2
import numba
import numpy as np
from numba import types

from .errors import InputError, UnknownNameError

__all__ = [
    "AUTO_DIVERGING",
    "AUTO_SEQUENTIAL",
    "COLORMAPS",
    "COLORMAP_CHOICES",
    "DIVERGING",
    "GAUGE_LIMIT",
    "LAYOUTS",
    "OPACITIES",
    "PREDICTED_COLOUR",
    "RECORDED_COLOUR",
    "colorbar",
    "crop",
    "focus",
    "grid",
    "heatmap",
    "lut",
    "normalize",
    "overlay",
    "render",
    "resize_to_frame",
    "side_by_side",
    "steering_gauge",
    "upscale",
    "value_range",
    "weights_grid",
]

#: OpenCV colormaps by lower-case name (``"jet"``, ``"inferno"``, ``"turbo"``, ...).
COLORMAPS: dict[str, int] = {
    name[len("COLORMAP_"):].lower(): int(getattr(cv2, name)) for name in dir(cv2) if name.startswith("COLORMAP_")
}


def _diverging_lut(anchors: Sequence[tuple[int, int, int]]) -> np.ndarray:
    """An odd number of RGB anchors, low to high, -> a (256, 3) uint8 LUT symmetric about its middle.

    Entries 0..127 run over the first half of the anchors and 128..255 over the second, so
    entries 127 and 128 are both exactly the middle anchor (value 0 of a signed map lands on
    128) and entry ``i`` sits at the mirror position of entry ``255 - i``. Linear in RGB between
    anchors, as matplotlib's ``LinearSegmentedColormap``.
    """
    anchors = np.asarray(anchors, np.float64)
    i = np.arange(256, dtype=np.float64)
    position = np.where(i < 128, 0.5 * i / 127.0, 0.5 + 0.5 * (i - 128.0) / 127.0)
    knots = np.linspace(0.0, 1.0, len(anchors))
    channels = [np.interp(position, knots, anchors[:, c]) for c in range(3)]
    return np.rint(np.stack(channels, axis=1)).astype(np.uint8)


#: ColorBrewer RdBu (Brewer, colorbrewer2.org, 11 classes), ordered blue -> white -> red.
_RDBU_BLUE_TO_RED = (
    (5, 48, 97), (33, 102, 172), (67, 147, 195), (146, 197, 222), (209, 229, 240), (247, 247, 247),
    (253, 219, 199), (244, 165, 130), (214, 96, 77), (178, 24, 43), (103, 0, 31),
)

#: Diverging colour maps as (256, 3) uint8 RGB LUTs, low -> high, neutral in the middle (127, 128):
#: ``"rdbu_r"`` blue (negative) -> near-white (0) -> red (positive), matplotlib's ``RdBu_r``;
#: ``"rdbu"`` the reverse.
DIVERGING: dict[str, np.ndarray] = {"rdbu_r": _diverging_lut(_RDBU_BLUE_TO_RED)}
DIVERGING["rdbu"] = np.ascontiguousarray(DIVERGING["rdbu_r"][::-1])
for _lut in DIVERGING.values():
    _lut.setflags(write=False)

#: Every colour map name :func:`render` accepts: ``"auto"`` (by the map's sign), OpenCV's, the diverging ones.
COLORMAP_CHOICES: tuple[str, ...] = ("auto", *sorted(COLORMAPS), *sorted(DIVERGING))

#: The colour maps ``colormap="auto"`` picks: for signed maps, and for non-negative maps.
AUTO_DIVERGING, AUTO_SEQUENTIAL = "rdbu_r", "inferno"

#: Layouts accepted by :func:`render`.
LAYOUTS: tuple[str, ...] = ("overlay", "focus", "side-by-side")

#: Opacity modes of :func:`overlay`: ``"auto"`` (``"value"`` for signed maps, else ``"constant"``),
#: ``"constant"`` (``alpha`` everywhere), ``"value"`` (``alpha * |u|``, u the scaled map).
OPACITIES: tuple[str, ...] = ("auto", "constant", "value")

#: Default end of the steering gauge, radians: CarRacing-v3 limits the front wheels to +-0.4 rad.
GAUGE_LIMIT: float = 0.4

#: Needle colours of the steering gauge, RGB (Okabe & Ito's orange and sky blue: told apart
#: also with colour-vision deficiencies; the needles also differ in shape and side).
PREDICTED_COLOUR: tuple[int, int, int] = (230, 159, 0)
RECORDED_COLOUR: tuple[int, int, int] = (86, 180, 233)

_TRACK_COLOUR = (150, 150, 150)
_LABEL_COLOUR = (255, 255, 255)
_FONT = cv2.FONT_HERSHEY_SIMPLEX

Region = tuple[int, int, int, int]
Colormap = str | int | np.ndarray


# --------------------------------------------------------------------------- input checks


def _to_numpy(saliency, what: str = "saliency map") -> np.ndarray:
    """A numpy array or torch tensor -> float32 numpy array (a copy only when needed)."""
    if hasattr(saliency, "detach") and hasattr(saliency, "cpu"):  # torch.Tensor, without importing torch
        saliency = saliency.detach().cpu().numpy()
    if not isinstance(saliency, np.ndarray):
        raise InputError(f"{what} must be a numpy array or torch tensor, got {type(saliency).__name__}")
    if not (np.issubdtype(saliency.dtype, np.number) or saliency.dtype == np.bool_):
        raise InputError(f"{what} must be numeric, got dtype {saliency.dtype}")
    if saliency.size == 0:
        raise InputError(f"{what} is empty (shape {saliency.shape})")
    out = np.asarray(saliency, dtype=np.float32)
    if not np.isfinite(out).all():
        raise InputError(f"{what} contains NaN or infinite values")
    return out


def _map2d(saliency, what: str = "saliency map") -> np.ndarray:
    m = _to_numpy(saliency, what)
    if m.ndim != 2:
        raise InputError(f"{what} must be 2-D (H, W), got shape {m.shape}")
    return m


def _frame(frame, what: str = "frame") -> np.ndarray:
    if not isinstance(frame, np.ndarray):
        raise InputError(f"{what} must be a numpy array, got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        raise InputError(f"{what} must be uint8 RGB, got dtype {frame.dtype}")
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.shape[0] == 0 or frame.shape[1] == 0:
        raise InputError(f"{what} must have shape (H, W, 3), got {frame.shape}")
    return frame


def _region(region, height: int, width: int) -> Region:
    if region is None:
        return 0, height, 0, width
    try:
        y0, y1, x0, x1 = (int(v) for v in region)
    except (TypeError, ValueError):
        raise InputError(f"region must be (y0, y1, x0, x1), got {region!r}") from None
    if not (0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width):
        raise InputError(f"region {(y0, y1, x0, x1)} does not fit in a {height}x{width} frame")
    return y0, y1, x0, x1


def _colormap(colormap: Colormap) -> int | np.ndarray:
    """A colour map spec -> an OpenCV colormap code, or a (256, 3) uint8 RGB LUT."""
    if isinstance(colormap, str):
        key = colormap.lower()
        if key in DIVERGING:
            return DIVERGING[key]
        if key not in COLORMAPS:
            known = ", ".join(name for name in COLORMAP_CHOICES if name != "auto")
            hint = " ('auto' is decided by the map's sign: give it to overlay or render)" if key == "auto" else ""
            raise UnknownNameError(f"unknown colormap {colormap!r}{hint} (known: {known})")
        return COLORMAPS[key]
    if isinstance(colormap, np.ndarray):
        if colormap.shape != (256, 3) or colormap.dtype != np.uint8:
            raise InputError(f"a colour LUT must be uint8 RGB of shape (256, 3), got {colormap.dtype} {colormap.shape}")
        return colormap
    if isinstance(colormap, (int, np.integer)) and not isinstance(colormap, bool) and int(colormap) in COLORMAPS.values():
        return int(colormap)
    raise UnknownNameError(f"unknown colormap {colormap!r}: give a name, a cv2.COLORMAP_* constant or a (256, 3) LUT")


def _auto_colormap(colormap: Colormap | None, signed: bool) -> int | np.ndarray:
    """``None`` / ``"auto"`` -> the default for the map's sign; anything else as given (validated)."""
    if colormap is None or (isinstance(colormap, str) and colormap.lower() == "auto"):
        colormap = AUTO_DIVERGING if signed else AUTO_SEQUENTIAL
    return _colormap(colormap)


def _unit_interval(value: float, what: str) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise InputError(f"{what} must be in [0, 1], got {value}")
    return value


def _vrange(vrange) -> tuple[float, float] | None:
    if vrange is None:
        return None
    try:
        lo, hi = (float(v) for v in vrange)
    except (TypeError, ValueError):
        raise InputError(f"vrange must be a pair of numbers (lo, hi), got {vrange!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise InputError(f"vrange must be finite with lo < hi, got {(lo, hi)}")
    return lo, hi


def _signed(signed, m: np.ndarray, vrange: tuple[float, float] | None) -> bool:
    """The signed/non-negative decision: as given, else from ``vrange``, else from the map."""
    if signed is None or (isinstance(signed, str) and signed == "auto"):
        if vrange is not None:
            return vrange[0] < 0.0
        return bool(m.min() < 0.0)
    if not isinstance(signed, (bool, np.bool_)):
        raise InputError(f"signed must be True, False or None (auto), got {signed!r}")
    return bool(signed)


def _opacity(opacity: str, signed: bool) -> str:
    if opacity not in OPACITIES:
        raise UnknownNameError(f"unknown opacity {opacity!r} (known: {', '.join(OPACITIES)})")
    if opacity == "auto":
        return "value" if signed else "constant"
    return opacity


def _percentiles(clip) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in clip)
    except (TypeError, ValueError):
        raise InputError(f"clip must be a pair of percentiles (lo, hi), got {clip!r}") from None
    if not 0.0 <= lo < hi <= 100.0:
        raise InputError(f"clip percentiles must satisfy 0 <= lo < hi <= 100, got {(lo, hi)}")
    return lo, hi


# --------------------------------------------------------------------------- maps


def _ranges(batch: np.ndarray, signed: bool, clip, vrange) -> tuple[np.ndarray, np.ndarray]:
    """Per-map colour range ``(lo, hi)`` of a ``(N, H, W)`` batch, as ``(N, 1, 1)`` arrays."""
    if vrange is not None:
        lo = np.full((batch.shape[0], 1, 1), vrange[0], np.float32)
        hi = np.full((batch.shape[0], 1, 1), vrange[1], np.float32)
    elif clip is not None:
        p_lo, p_hi = _percentiles(clip)
        lo = np.percentile(batch, p_lo, axis=(1, 2), keepdims=True).astype(np.float32)
        hi = np.percentile(batch, p_hi, axis=(1, 2), keepdims=True).astype(np.float32)
        # a map whose non-zero part is smaller than the clipped share (a Grad-CAM spot on under 1%
        # of the pixels) has a flat clipped range: colour it by its full range rather than not at all
        flat = (np.maximum(np.abs(lo), np.abs(hi)) == 0) if signed else (hi <= lo)
        if flat.any():
            lo = np.where(flat, batch.min(axis=(1, 2), keepdims=True), lo)
            hi = np.where(flat, batch.max(axis=(1, 2), keepdims=True), hi)
    else:
        lo = batch.min(axis=(1, 2), keepdims=True)
        hi = batch.max(axis=(1, 2), keepdims=True)
    if signed:
        a = np.maximum(np.abs(lo), np.abs(hi))
        return -a, a
    return lo, hi


def _scaled(batch: np.ndarray, lo: np.ndarray, hi: np.ndarray, signed: bool) -> np.ndarray:
    """``u``: signed ``v / a`` in [-1, 1] (``a = hi``); else ``(v - lo) / (hi - lo)`` in [0, 1]; flat -> 0."""
    span = (hi if signed else hi - lo).astype(np.float32, copy=True)
    flat = span == 0
    span[flat] = 1.0
    u = batch / span if signed else (batch - lo) / span
    u = np.where(np.broadcast_to(flat, u.shape), np.float32(0.0), u)
    return np.clip(u, -1.0 if signed else 0.0, 1.0).astype(np.float32, copy=False)


def _percentile_pair(m: np.ndarray, p_lo: float, p_hi: float) -> tuple[np.float32, np.float32]:
    """``np.percentile(m, p)`` of a float32 array for ``p = p_lo, p_hi``, from one partition of one copy.

    NumPy's default ("linear") method, step by step as ``np.percentile`` takes it for a float
    ``q``: the virtual index ``i = (n - 1) * p / 100``, its neighbours ``floor(i)`` and
    ``floor(i) + 1`` (both the last element from ``n - 1`` on), ``g = i - floor(i)``, and the
    float32 interpolation ``a + (b - a) * g``, or ``b - (b - a) * (1 - g)`` for ``g >= 0.5``
    (``tests/test_render.py`` checks it against ``np.percentile``). Only the sign of a zero
    result may differ (which of equal 0.0 and -0.0 lands at an index depends on the partition),
    and no picture depends on it.
    """
    work = m.ravel().copy()
    n = work.size
    picks = []
    for p in (p_lo, p_hi):
        virtual = (n - 1) * (p / 100.0)
        if virtual >= n - 1:  # both neighbours the last element, which NumPy indexes as -1 (also in g)
            picks.append((n - 1, n - 1, virtual + 1))
        else:
            below = math.floor(virtual)
            picks.append((below, below + 1, virtual - below))
    work.partition(sorted({k for below, above, _ in picks for k in (below, above)}))
    out = []
    for below, above, g in picks:
        a, b = work[below], work[above]
        diff = b - a
        out.append(b - diff * (1.0 - g) if g >= 0.5 else a + diff * g)
    return out[0], out[1]


def _map_range(m: np.ndarray, signed: bool, clip, vrange) -> tuple[np.float32, np.float32]:
    """:func:`_ranges` of one 2-D float32 map, as float32 scalars (the same values, without the
    batch axes; the two percentiles from one partition, :func:`_percentile_pair`)."""
    if vrange is not None:
        lo, hi = np.float32(vrange[0]), np.float32(vrange[1])
    elif clip is not None:
        lo, hi = _percentile_pair(m, *_percentiles(clip))
        flat = (max(abs(lo), abs(hi)) == 0) if signed else (hi <= lo)
        if flat:  # see _ranges
            lo, hi = m.min(), m.max()
    else:
        lo, hi = m.min(), m.max()
    if signed:
        a = max(abs(lo), abs(hi))
        return -a, a
    return lo, hi


def _unit_map(m: np.ndarray, signed: bool, clip, vrange) -> tuple[np.ndarray, tuple[float, float]]:
    """One 2-D map -> (``u`` as in :func:`_scaled`, the value range ``(lo, hi)`` its colours span).

    The same float32 arithmetic as :func:`_scaled` of a batch of one, in place on one new array.
    """
    lo, hi = _map_range(m, signed, clip, vrange)
    span = hi if signed else hi - lo
    if span == 0:
        u = np.zeros(m.shape, np.float32)
    else:
        u = np.divide(m, span) if signed else np.subtract(m, lo)
        if not signed:
            u /= span
        np.clip(u, -1.0 if signed else 0.0, 1.0, out=u)
    return u, (float(lo), float(hi))


def value_range(saliency, *, signed: bool | None = None, clip: tuple[float, float] | None = None) -> tuple[float, float]:
    """The value range a colour scale should span, over all the maps given together.

    Use it to fix one scale for a whole video (``render(..., vrange=value_range(first_batch,
    clip=(1, 99)))``), so that a colour means the same value in every frame.

    Parameters
    ----------
    saliency : numpy.ndarray or torch.Tensor, any shape, e.g. (B, H, W)
        Raw maps, finite, in the method's units (occlusion deltas: the target's units, e.g.
        radians of steering). Tensors are copied to the host.
    signed : bool, optional
        ``None`` (default): signed if any value is negative.
    clip : (float, float), optional
        Percentiles ``(lo, hi)``, ``0 <= lo < hi <= 100``, of all the values instead of their
        minimum and maximum (``(1, 99)`` keeps a few extreme pixels from washing out the rest).

    Returns
    -------
    (float, float)
        ``(lo, hi)``. Signed: ``(-a, a)`` with ``a`` the larger magnitude of the two ends
        (minimum and maximum, or the two percentiles), so zero is in the middle; non-negative:
        the two ends themselves (equal for a constant map: give a wider range to ``vrange``).

    Raises
    ------
    InputError
        For an empty, non-numeric or non-finite input, or bad ``clip`` / ``signed``.

    Examples
    --------
    >>> value_range(np.array([[-0.5, 0.1], [0.2, 0.25]]))
    (-0.5, 0.5)
    >>> value_range(np.arange(101.0), clip=(10, 90))
    (10.0, 90.0)
    """
    m = _to_numpy(saliency)
    signed = _signed(signed, m, None)
    lo, hi = _ranges(m.reshape(1, 1, -1), signed, clip, None)
    return float(lo.flat[0]), float(hi.flat[0])


def normalize(
    saliency,
    *,
    clip: tuple[float, float] | None = None,
    signed: bool | None = False,
    vrange: tuple[float, float] | None = None,
) -> np.ndarray:
    """Scale each saliency map to [0, 1].

    Parameters
    ----------
    saliency : numpy.ndarray or torch.Tensor, shape (H, W) or (B, H, W)
        Raw maps, any real dtype. Tensors are copied to the host.
    clip : (float, float), optional
        Percentiles ``(lo, hi)`` with ``0 <= lo < hi <= 100``: the range of each map is its own
        ``lo``-th and ``hi``-th percentile instead of its minimum and maximum, so a few extreme
        pixels do not wash out the rest (``(1, 99)`` is a common choice); values beyond it take
        the end values. A map whose clipped range is flat (its non-zero part is smaller than
        the clipped share of pixels) takes its full range instead. Default: no clipping.
        Ignored when ``vrange`` is given.
    signed : bool or None
        ``False`` (default): ``(m - lo) / (hi - lo)`` per map with ``lo, hi`` its minimum and
        maximum (or percentiles, or ``vrange``); a constant map gives zeros. ``True``: keep the
        sign and zero, ``0.5 + 0.5 * m / a`` with ``a = max(|lo|, |hi|)`` (per map ``max|m|``),
        so 0 maps to exactly 0.5 and ``m``, ``-m`` to mirror values (for diverging colour
        maps); clipping is symmetric, to ``[-a, a]``; an all-zero map gives 0.5 everywhere.
        ``None``: signed if any value (of all the maps, or ``vrange``'s lower end) is negative.
    vrange : (float, float), optional
        A fixed ``(lo, hi)``, ``lo < hi``, for every map instead of each map's own range, e.g.
        from :func:`value_range` (the same colour means the same value across a video).

    Returns
    -------
    numpy.ndarray
        float32, same shape as ``saliency``, values in [0, 1].

    Raises
    ------
    InputError
        If ``saliency`` is not a non-empty 2-D or 3-D real array with finite values, or
        ``clip`` or ``vrange`` is not a valid pair.

    Examples
    --------
    >>> normalize(np.array([[1.0, 2.0], [3.0, 5.0]])).tolist()
    [[0.0, 0.25], [0.5, 1.0]]
    >>> normalize(np.array([[-2.0, 0.0, 1.0]]), signed=True).tolist()
    [[0.0, 0.5, 0.75]]
    """
    m = _to_numpy(saliency)
    if m.ndim not in (2, 3):
        raise InputError(f"saliency map must be (H, W) or (B, H, W), got shape {m.shape}")
    batch = m if m.ndim == 3 else m[None]
    vrange = _vrange(vrange)
    signed = _signed(signed, batch, vrange)
    lo, hi = _ranges(batch, signed, clip, vrange)
    u = _scaled(batch, lo, hi, signed)
    out = (0.5 + 0.5 * u).astype(np.float32) if signed else u
    return out if m.ndim == 3 else out[0]


def resize_to_frame(saliency, frame_shape: Sequence[int], region: Region | None = None) -> np.ndarray:
    """Put a map computed at the model's input resolution back onto the recorded frame.

    Parameters
    ----------
    saliency : numpy.ndarray or torch.Tensor, shape (h, w)
        The map, e.g. at the model's input resolution (66, 200).
    frame_shape : (H, W) or (H, W, C)
        Shape of the frame the map belongs to.
    region : (y0, y1, x0, x1), optional
        Pixel box of the frame that the model sees (``model.transform.region(H, W)``), with
        ``0 <= y0 < y1 <= H`` and ``0 <= x0 < x1 <= W``. Default: the whole frame.

    Returns
    -------
    numpy.ndarray
        float32, shape (H, W): the map resized with bilinear interpolation
        (``cv2.INTER_LINEAR``) to exactly fill ``region``; 0 outside it. Values stay within the
        map's own range.

    Raises
    ------
    InputError
        If the map is not 2-D or the region does not fit in the frame.
    """
    m = _map2d(saliency)
    if len(frame_shape) < 2 or min(int(frame_shape[0]), int(frame_shape[1])) < 1:
        raise InputError(f"frame_shape must be (H, W) or (H, W, C) with positive sizes, got {tuple(frame_shape)}")
    height, width = int(frame_shape[0]), int(frame_shape[1])
    y0, y1, x0, x1 = _region(region, height, width)
    out = np.zeros((height, width), np.float32)
    if m.shape == (y1 - y0, x1 - x0):
        out[y0:y1, x0:x1] = m
    else:
        out[y0:y1, x0:x1] = cv2.resize(np.ascontiguousarray(m), (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
    return out


def lut(colormap: Colormap) -> np.ndarray:
    """The 256 colours of a colour map, low to high.

    Parameters
    ----------
    colormap : str, int or numpy.ndarray
        A name from :data:`COLORMAP_CHOICES` other than ``"auto"`` (OpenCV's and
        :data:`DIVERGING`), a ``cv2.COLORMAP_*`` constant, or a (256, 3) uint8 RGB LUT.

    Returns
    -------
    numpy.ndarray
        uint8, shape (256, 3), RGB; entry ``k`` is the colour of level ``k / 255``.

    Raises
    ------
    UnknownNameError
        For an unknown colour map.
    """
    spec = _colormap(colormap)
    if isinstance(spec, np.ndarray):
        return spec.copy()
    ramp = np.arange(256, dtype=np.uint8).reshape(256, 1)
    return np.ascontiguousarray(cv2.applyColorMap(ramp, spec)[:, 0, ::-1])


def heatmap(map01, colormap: Colormap = "jet") -> np.ndarray:
    """Colour a map with a colour map.

    Level ``k = rint(255 * clip(value, 0, 1))`` gets colour ``k`` of the colour map (OpenCV
    ``cv2.applyColorMap``, with the LUT itself for the diverging maps). For a signed map
    normalised with :func:`normalize` (``signed=True``), 0 lands on level 128, the middle
    (neutral) colour of a :data:`DIVERGING` map, and ``v``, ``-v`` on mirror levels.

    Parameters
    ----------
    map01 : numpy.ndarray or torch.Tensor, shape (H, W)
        Values in [0, 1] (values outside are clipped; see :func:`normalize`). A uint8 map is
        taken as 0..255 levels as is.
    colormap : str, int or numpy.ndarray
        A name from :data:`COLORMAPS` (``"jet"``, ``"inferno"``, ``"turbo"``, ...) or
        :data:`DIVERGING` (``"rdbu_r"``), a ``cv2.COLORMAP_*`` constant, or a (256, 3) uint8
        RGB LUT.

    Returns
    -------
    numpy.ndarray
        uint8, shape (H, W, 3), RGB.

    Raises
    ------
    InputError
        If the map is not 2-D and finite, or a LUT is not (256, 3) uint8.
    UnknownNameError
        If ``colormap`` is not a known colour map.
    """
    code = _colormap(colormap)
    if isinstance(map01, np.ndarray) and map01.dtype == np.uint8:
        if map01.ndim != 2 or map01.size == 0:
            raise InputError(f"saliency map must be 2-D (H, W), got shape {map01.shape}")
        levels = np.ascontiguousarray(map01)
    else:
        levels = np.rint(np.clip(_map2d(map01), 0.0, 1.0) * 255.0).astype(np.uint8)
    if isinstance(code, np.ndarray):
        code = np.ascontiguousarray(code[:, ::-1].reshape(256, 1, 3))  # RGB LUT -> OpenCV's BGR user colour map
    return cv2.cvtColor(cv2.applyColorMap(levels, code), cv2.COLOR_BGR2RGB)


# --------------------------------------------------------------------------- displays


def upscale(frame: np.ndarray, scale: int) -> np.ndarray:
    """Enlarge a frame by an integer factor with nearest-neighbour interpolation.

    Parameters
    ----------
    frame : numpy.ndarray
        uint8, shape (H, W, 3), RGB.
    scale : int
        Factor, >= 1; 1 returns ``frame`` itself.

    Returns
    -------
    numpy.ndarray
        uint8, shape (H * scale, W * scale, 3): each pixel becomes a ``scale x scale`` block.
    """
    frame = _frame(frame)
    scale = _scale(scale)
    if scale == 1:
        return frame
    return cv2.resize(frame, (frame.shape[1] * scale, frame.shape[0] * scale), interpolation=cv2.INTER_NEAREST)


def _scale(scale) -> int:
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise InputError(f"scale must be an integer >= 1, got {scale!r}")
    return int(scale)


# --------------------------------------------------------------------------- compiled loops

#: 2**23 as float32: for ``0 <= x < 2**23``, ``(x + 2**23) - 2**23`` is ``x`` rounded half to even
#: (``np.rint``), in two float32 operations that vectorise.
_ROUND = np.float32(8388608.0)


@numba.njit(cache=True, nogil=True)
def _mix(q, colour, a):  # pragma: no cover - compiled by Numba
    """``clip(rint(q + a * (colour - q)), 0, 255)`` as uint8, in float32 (``q``, ``colour``: levels 0..255)."""
    q = np.float32(q)
    r = q + a * (np.float32(colour) - q)
    r = r if r > np.float32(0.0) else np.float32(0.0)
    r = r if r < np.float32(255.0) else np.float32(255.0)
    return np.uint8((r + _ROUND) - _ROUND)


def _overlay_rows(frame, rows, cols, placed, signed, colours, alpha, blend, dst, heat, y0, x0):  # pragma: no cover - compiled by Numba
    """Enlarge a frame, colour a placed map and blend it over a region, row by row, in
    :func:`_blend`'s float32 arithmetic.

    Row ``y`` of the picture is row ``rows[y]`` of ``frame`` with columns ``cols`` (the
    nearest-neighbour maps of :func:`upscale`, see :func:`_nearest_maps`); each frame row is
    enlarged once, for the run of picture rows it fills. ``placed[y, x]`` (``u`` resized to the
    region) belongs to picture pixel ``(y0 + y, x0 + x)``; its level is ``k = rint(255 *
    clip(p, 0, 1))`` with ``p = 0.5 + 0.5 * placed`` (signed) or ``placed``, its colour
    ``colours[k]`` (RGB packed in a uint32 LUT: ``r | g << 8 | b << 16``). The picture goes to
    the first rows of ``dst``, with the ``"value"`` blend ``clip(rint(picture + alpha *
    |placed| * (colour - picture)), 0, 255)`` in the region when ``blend``; unless empty,
    ``heat[y, x]`` gets the colour. Levels, look-ups and blends are three loops per row: the
    first and the last vectorise.
    """
    h, w = placed.shape
    half, zero, one, top = np.float32(0.5), np.float32(0.0), np.float32(1.0), np.float32(255.0)
    byte = np.uint32(255)
    line = np.empty(3 * cols.size, np.uint8)  # the enlarged frame row
    level = np.empty(w, np.int32)
    packed = np.empty(w, np.uint32)
    last = -1
    for y in range(rows.size):
        if rows[y] != last:
            last = rows[y]
            src = frame[last].ravel()
            if cols.size == frame.shape[1]:  # not enlarged: the identity map
                line[:] = src
            else:
                for x in range(cols.size):
                    k = 3 * cols[x]
                    line[3 * x] = src[k]
                    line[3 * x + 1] = src[k + 1]
                    line[3 * x + 2] = src[k + 2]
        d = dst[y].ravel()
        if y < y0 or y >= y0 + h:
            d[:] = line
            continue
        row = placed[y - y0]
        for x in range(w):
            p = half + half * row[x] if signed else row[x]
            p = p if p > zero else zero
            p = p if p < one else one
            level[x] = np.int32((p * top + _ROUND) - _ROUND)
        for x in range(w):
            packed[x] = colours[level[x]]
        if heat.shape[0] > 0:
            out = heat[y - y0].ravel()
            for x in range(w):
                c = packed[x]
                out[3 * x] = np.uint8(c & byte)
                out[3 * x + 1] = np.uint8((c >> np.uint32(8)) & byte)
                out[3 * x + 2] = np.uint8((c >> np.uint32(16)) & byte)
        if not blend:
            d[:] = line
            continue
        d[: 3 * x0] = line[: 3 * x0]
        d[3 * (x0 + w) :] = line[3 * (x0 + w) :]
        s, d = line[3 * x0 : 3 * (x0 + w)], d[3 * x0 : 3 * (x0 + w)]
        for x in range(w):
            a = alpha * abs(row[x])
            c = packed[x]
            d[3 * x] = _mix(s[3 * x], c & byte, a)
            d[3 * x + 1] = _mix(s[3 * x + 1], (c >> np.uint32(8)) & byte, a)
            d[3 * x + 2] = _mix(s[3 * x + 2], (c >> np.uint32(16)) & byte, a)


def _lerp_rows(a, b, weights, dst):  # pragma: no cover - compiled by Numba
    """``dst[y, x] = clip(rint(a + w * (b - a)), 0, 255)`` per channel, ``w = weights[y, x]``, in
    float32 as :func:`_focus` (``a``, ``b``, ``dst`` C-contiguous uint8 RGB; ``dst`` may have more rows)."""
    h, w = weights.shape
    for y in range(h):
        row, ar, br, d = weights[y], a[y].ravel(), b[y].ravel(), dst[y].ravel()
        for x in range(w):
            for c in range(3):
                d[3 * x + c] = _mix(ar[3 * x + c], br[3 * x + c], row[x])


@functools.cache
def _kernels():
    """``(overlay_rows, lerp_rows)`` compiled with Numba (``nogil``: drawing threads run beside
    torch), or loaded from its cache, on first use; one signature each (C-contiguous arrays)."""
    f2 = types.Array(types.float32, 2, "C", readonly=True)
    lut32, index = types.Array(types.uint32, 1, "C", readonly=True), types.Array(types.intp, 1, "C", readonly=True)
    u3_in, u3 = types.Array(types.uint8, 3, "C", readonly=True), types.Array(types.uint8, 3, "C")
    overlay_rows = numba.njit(
        types.void(u3_in, index, index, f2, types.boolean, lut32, types.float32, types.boolean, u3, u3, types.intp, types.intp),
        cache=True, nogil=True,
    )(_overlay_rows)
    lerp_rows = numba.njit(types.void(u3_in, u3_in, f2, u3), cache=True, nogil=True)(_lerp_rows)
    return overlay_rows, lerp_rows


_NO_IMAGE = np.empty((0, 0, 3), np.uint8)  # "don't write this output" for the compiled loops


@functools.lru_cache(maxsize=32)
def _tables_cached(key: int | bytes) -> tuple[np.ndarray, np.ndarray]:  # see _tables
    colours = np.frombuffer(key, np.uint8).reshape(256, 3).copy() if isinstance(key, bytes) else lut(key)
    table = colours.astype(np.uint32) << np.array([0, 8, 16], np.uint32)
    table = np.bitwise_or.reduce(table, axis=1)
    colours.setflags(write=False)
    table.setflags(write=False)
    return colours, table


def _tables(colormap: int | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A validated colour map (:func:`_colormap`) -> its RGB LUT as (256, 3) uint8 and as (256,)
    uint32 ``r | g << 8 | b << 16`` (cached, read-only; :func:`lut`'s colours, which
    :func:`heatmap` gives level by level)."""
    return _tables_cached(colormap.tobytes() if isinstance(colormap, np.ndarray) else int(colormap))


def _placed(u: np.ndarray, height: int, width: int) -> np.ndarray:
    """``u`` resized to ``height x width`` as :func:`resize_to_frame` puts it into a region (C-contiguous)."""
    u = np.ascontiguousarray(u)
    if u.shape == (height, width):
        return u
    return cv2.resize(u, (width, height), interpolation=cv2.INTER_LINEAR)


@functools.lru_cache(maxsize=16)
def _nearest_maps(height: int, width: int, scale: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The frame row of each picture row and the frame column of each picture column of
    :func:`upscale` (read-only ``intp`` arrays), or ``None`` if it is not such a map.

    Read off OpenCV itself, once per frame size: two probe frames of this size, whose pixels
    spell their own row and column in their three bytes, enlarged by ``cv2.resize`` as
    :func:`upscale` does (its choice of source pixel is ``floor(y / scale)`` only up to
    rounding: 49 * (1 / 49) < 1).
    """
    if scale == 1:
        rows, cols = np.arange(height, dtype=np.intp), np.arange(width, dtype=np.intp)
    else:
        spelled = []
        for n, axis in ((height, 0), (width, 1)):
            index = np.arange(n, dtype=np.uint32)
            probe = np.stack([(index >> shift) & 255 for shift in (0, 8, 16)], axis=-1).astype(np.uint8)
            probe = np.ascontiguousarray(np.broadcast_to(np.expand_dims(probe, 1 - axis), (height, width, 3)))
            big = upscale(probe, scale).astype(np.intp)
            spelled.append(big[..., 0] | big[..., 1] << 8 | big[..., 2] << 16)
        rows, cols = spelled[0][:, 0].copy(), spelled[1][0].copy()
        if not ((spelled[0] == rows[:, None]).all() and (spelled[1] == cols[None, :]).all()):
            return None
    rows.setflags(write=False)
    cols.setflags(write=False)
    return rows, cols


def _blend(frame: np.ndarray, u: np.ndarray, signed: bool, region: Region, alpha: float, colormap, opacity: str,
           out: np.ndarray | None = None, heat: bool = False, scale: int = 1) -> tuple[np.ndarray, np.ndarray | None]:
    """The overlay of a scaled map ``u`` (see :func:`_scaled`) on a validated frame, enlarged by
    ``scale`` (as :func:`upscale`), and a region of the enlarged frame.

    Written into the first rows of ``out`` (C-contiguous uint8, not ``frame``'s memory; default a
    new array). Returns ``(out, colours)``, ``colours`` the heatmap of the region (what
    :func:`heatmap` gives for the placed map) when ``heat``, else ``None``. One compiled pass
    (:func:`_overlay_rows`) enlarges, colours and blends; ``"constant"`` opacity blends with
    ``cv2.addWeighted``.
    """
    y0, y1, x0, x1 = region
    frame = np.ascontiguousarray(frame)
    maps = _nearest_maps(frame.shape[0], frame.shape[1], scale)
    if maps is None:  # not a row and column map (never seen): enlarge with OpenCV first
        frame, maps = upscale(frame, scale), _nearest_maps(frame.shape[0] * scale, frame.shape[1] * scale, 1)
    if out is None:
        out = np.empty((maps[0].size, maps[1].size, 3), np.uint8)
    placed = _placed(u, y1 - y0, x1 - x0)
    constant = opacity == "constant"
    colours = np.empty((y1 - y0, x1 - x0, 3), np.uint8) if heat or constant else _NO_IMAGE
    _kernels()[0](frame, *maps, placed, bool(signed), _tables(colormap)[1], np.float32(alpha), not constant, out, colours, y0, x0)
    if constant:
        out[y0:y1, x0:x1] = cv2.addWeighted(np.ascontiguousarray(out[y0:y1, x0:x1]), 1.0 - alpha, colours, alpha, 0.0)
    return out, colours if heat else None


def overlay(
    frame: np.ndarray,
    saliency,
    *,
    alpha: float = 0.5,
    colormap: Colormap | None = None,
    region: Region | None = None,
    clip: tuple[float, float] | None = None,
    signed: bool | None = None,
    vrange: tuple[float, float] | None = None,
    opacity: str = "auto",
) -> np.ndarray:
    """Blend a colour-mapped saliency map over the frame.

    The map is scaled (see :func:`normalize`: signed maps symmetrically, ``u = v / a`` in
    [-1, 1]; non-negative maps ``u = (v - lo) / (hi - lo)`` in [0, 1]), resized into
    ``region`` (:func:`resize_to_frame`), coloured (:func:`heatmap`; signed maps at level
    ``0.5 + 0.5 * u``) and blended over the frame inside ``region``; pixels outside ``region``
    are the frame's, unchanged. Blending: ``"constant"`` opacity is
    ``cv2.addWeighted(frame, 1 - alpha, heat, alpha, 0)``; ``"value"`` opacity is
    ``rint(frame + alpha * |u| * (heat - frame))`` per pixel, so where the map is 0 the pixel
    is exactly the frame's.

    Parameters
    ----------
    frame : numpy.ndarray
        uint8, shape (H, W, 3), RGB.
    saliency : numpy.ndarray or torch.Tensor, shape (h, w)
        Raw map, any resolution (typically the model's input resolution).
    alpha : float
        Opacity of the heatmap, in [0, 1] (the largest, with ``"value"`` opacity).
    colormap : str, int, numpy.ndarray or None
        ``None`` or ``"auto"`` (default): ``"rdbu_r"`` (diverging, zero near-white) for a
        signed map, ``"inferno"`` (sequential) otherwise; else see :func:`heatmap`.
    region : (y0, y1, x0, x1), optional
        The part of the frame the map covers; default the whole frame.
    clip : (float, float), optional
        Percentile range instead of the map's minimum and maximum; see :func:`normalize`.
    signed : bool, optional
        ``None`` (default): signed if ``vrange`` starts below 0, else if the map has a negative
        value. Give ``True`` for maps that are signed by nature (occlusion ``score="delta"``),
        so that a frame whose values happen to be all positive keeps the same colour scale.
    vrange : (float, float), optional
        Fixed value range (units of the map) instead of the map's own; see :func:`value_range`.
    opacity : {"auto", "constant", "value"}
        ``"auto"`` (default): ``"value"`` for signed maps (zero shows the frame), ``"constant"``
        otherwise.

    Returns
    -------
    numpy.ndarray
        uint8, shape (H, W, 3), RGB; a new array.

    Raises
    ------
    InputError
        For a frame that is not uint8 (H, W, 3), a map that is not 2-D and finite, a region
        outside the frame, ``alpha`` outside [0, 1], or a bad ``clip``, ``vrange`` or
        ``signed``.
    UnknownNameError
        For an unknown colour map or opacity.
    """
    frame = _frame(frame)
    m = _map2d(saliency)
    alpha = _unit_interval(alpha, "alpha")
    region = _region(region, frame.shape[0], frame.shape[1])
    vrange = _vrange(vrange)
    signed = _signed(signed, m, vrange)
    code = _auto_colormap(colormap, signed)
    mode = _opacity(opacity, signed)
    u, _ = _unit_map(m, signed, clip, vrange)
    return _blend(frame, u, signed, region, alpha, code, mode)[0]


def _focus_weights(u: np.ndarray, signed: bool) -> np.ndarray:
    return np.abs(u) if signed else u


def _focus(frame: np.ndarray, weights: np.ndarray, region, blur_sigma, smooth_sigma, out: np.ndarray | None = None) -> np.ndarray:
    """The focus display of validated inputs, written into the first rows of ``out`` (C-contiguous
    uint8, not ``frame``'s memory; default a new array), which it returns."""
    height, width = frame.shape[:2]
    if blur_sigma is None:
        blur_sigma = max(1.0, min(height, width) / 32.0)
    if not float(blur_sigma) > 0:
        raise InputError(f"blur_sigma must be > 0, got {blur_sigma}")
    if not float(smooth_sigma) >= 0:
        raise InputError(f"smooth_sigma must be >= 0, got {smooth_sigma}")
    weights = resize_to_frame(weights, frame.shape, region)
    if smooth_sigma > 0:
        weights = cv2.GaussianBlur(weights, (0, 0), float(smooth_sigma))
    frame = np.ascontiguousarray(frame)
    blurred = cv2.GaussianBlur(frame, (0, 0), float(blur_sigma))
    if out is None:
        out = np.empty_like(frame)
    _kernels()[1](blurred, frame, np.ascontiguousarray(weights, np.float32), out)
    return out


def focus(
    frame: np.ndarray,
    saliency,
    *,
    blur_sigma: float | None = None,
    smooth_sigma: float = 0.0,
    region: Region | None = None,
    clip: tuple[float, float] | None = None,
    signed: bool | None = None,
    vrange: tuple[float, float] | None = None,
) -> np.ndarray:
    """Focus-on-blur display: the salient area sharp over a blurred copy of the frame.

    ``out = w * frame + (1 - w) * blurred`` per pixel, where ``blurred`` is the frame through a
    Gaussian blur of ``blur_sigma`` and ``w`` the scaled map placed onto the frame
    (:func:`resize_to_frame`), optionally smoothed: ``(v - lo) / (hi - lo)`` for a non-negative
    map (:func:`normalize`), ``|v| / a`` for a signed one (a strong negative effect is as
    salient as a strong positive one). Where ``w == 1`` the output is exactly the frame; where
    ``w == 0`` (including outside ``region``, which the model does not see) it is exactly the
    blurred frame.

    Parameters
    ----------
    frame : numpy.ndarray
        uint8, shape (H, W, 3), RGB.
    saliency : numpy.ndarray or torch.Tensor, shape (h, w)
        Raw map, any resolution.
    blur_sigma : float, optional
        Standard deviation of the background blur, in output pixels, > 0. Default
        ``min(H, W) / 32`` (3 px on a 96 x 96 frame).
    smooth_sigma : float
        Standard deviation (output pixels) of a Gaussian applied to the weights ``w`` after
        placing them, to soften the edges of the sharp area; 0 (default) = none.
    region : (y0, y1, x0, x1), optional
        The part of the frame the map covers; default the whole frame.
    clip, signed, vrange
        The value range, as in :func:`overlay`.

    Returns
    -------
    numpy.ndarray
        uint8, shape (H, W, 3), RGB.

    Raises
    ------
    InputError
        For a frame that is not uint8 (H, W, 3), a map that is not 2-D, a region outside the
        frame, a sigma out of range, or a bad ``clip``, ``vrange`` or ``signed``.
    """
    frame = _frame(frame)
    m = _map2d(saliency)
    region = _region(region, frame.shape[0], frame.shape[1])
    vrange = _vrange(vrange)
    signed = _signed(signed, m, vrange)
    u, _ = _unit_map(m, signed, clip, vrange)
    return _focus(frame, _focus_weights(u, signed), region, blur_sigma, smooth_sigma)


# --------------------------------------------------------------------------- text, legends, gauges

#: One-pixel shifts that draw a text's dark outline (a thicker stroke would also widen the
#: Hershey glyph advance, and the outline would drift off the text).
_OUTLINE = ((-1, -1), (-1, 1), (1, -1), (1, 1), (0, -1), (0, 1), (-1, 0), (1, 0))


def _put_text(img: np.ndarray, text: str, org: tuple[int, int], font_scale: float, thickness: int, colour=_LABEL_COLOUR) -> None:
    """``cv2.putText`` in ``colour`` over a black one-pixel outline; ``org`` is the baseline's left end."""
    x, y = int(org[0]), int(org[1])
    for dx, dy in _OUTLINE:
        cv2.putText(img, text, (x + dx, y + dy), _FONT, font_scale, (0, 0, 0), thickness, cv2.LINE_AA)
    cv2.putText(img, text, (x, y), _FONT, font_scale, tuple(int(c) for c in colour), thickness, cv2.LINE_AA)


def _put_text_on_black(img: np.ndarray, text: str, org: tuple[int, int], font_scale: float, thickness: int,
                       colour=_LABEL_COLOUR) -> None:
    """:func:`_put_text`, pasted from a :func:`_text_sprite` where ``img`` is still black under the text.

    For the legend and gauge strips (black, a text's surroundings mostly still empty): a slice
    test and a copy instead of nine ``cv2.putText`` calls. OpenCV draws a text as line segments
    at fixed-point positions that an integer ``org`` shifts exactly, so away from the canvas
    edges (where segments are clipped) a text draws the same pixels wherever it is put: one
    sprite per text serves every position; near an edge the sprite is drawn on a canvas of
    ``img``'s size at ``org``. Where something is already drawn under the text, it is drawn
    as :func:`_put_text` does.
    """
    x, y = int(org[0]), int(org[1])
    key = (text, float(font_scale), int(thickness), tuple(int(c) for c in colour))
    sprite = _text_sprite(*key)
    if sprite is None or not _inside(sprite[0], (x, y), img.shape, _SPRITE_EDGE):
        sprite = _text_sprite(*key, img.shape[:2], (x, y))
    (y0, y1, x0, x1), pixels, touched = sprite
    area = img[y + y0 : y + y1, x + x0 : x + x1]
    if not area.any():
        area[...] = pixels
    elif not area[touched].any():  # something drawn in the box, but not where the text goes
        np.copyto(area, pixels, where=touched[..., None])
    else:
        _put_text(img, text, (x, y), font_scale, thickness, colour)


def _inside(box: Region, org: tuple[int, int], shape: Sequence[int], edge: int) -> bool:
    """Whether ``box`` (offsets from ``org``) lies at least ``edge`` pixels inside a ``shape`` canvas."""
    y0, y1, x0, x1 = box
    return edge <= org[1] + y0 and org[1] + y1 + edge <= shape[0] and edge <= org[0] + x0 and org[0] + x1 + edge <= shape[1]


#: Pixels a text's position-free sprite keeps from a canvas's edges, where OpenCV clips lines
#: (at the edge; 2 px in for anti-aliased lines in some versions).
_SPRITE_EDGE = 3

#: How many texts :func:`_text_sprite` keeps (a few hundred bytes each).
_SPRITE_CACHE = 512


@functools.lru_cache(maxsize=_SPRITE_CACHE)
def _text_sprite(text: str, font_scale: float, thickness: int, colour: tuple[int, int, int],
                 shape: tuple[int, int] | None = None, org: tuple[int, int] | None = None) -> tuple[Region, np.ndarray, np.ndarray] | None:
    """What :func:`_put_text` draws on black: ``(box, pixels, touched)``, ``box`` relative to ``org`` (read-only).

    ``touched`` (bool, the box's shape) marks every pixel the text's passes can change on any
    canvas: those they change on a black canvas or on a white one (a pass moves a pixel towards
    its colour, by the most from one of the two extremes, so any pixel it touches at all
    changes on one of them); ``box`` ``(y0, y1, x0, x1)``, offsets from ``org``, bounds them.
    Where they are black, drawing the text gives ``pixels`` there and changes nothing else.
    Drawn on a ``shape`` canvas at ``org``, or by default with room all round (away from the
    edges, the same pixels at any position; ``None`` if the text came near that canvas's edge).
    """
    free = shape is None
    if free:
        (w, h), base = cv2.getTextSize(text, _FONT, font_scale, thickness)
        pad = max(8, h) + 2 * thickness + _SPRITE_EDGE
        shape, org = (pad + h + base + pad, pad + w + pad), (pad, pad + h)
    black = np.zeros((*shape, 3), np.uint8)
    white = np.full((*shape, 3), 255, np.uint8)
    cv2.putText(black, text, org, _FONT, font_scale, colour, thickness, cv2.LINE_AA)  # (its black outline: no-op on black)
    _put_text(white, text, org, font_scale, thickness, colour)
    changed = black | ~white
    changed = (changed[..., 0] | changed[..., 1] | changed[..., 2]) != 0
    rows, cols = np.flatnonzero(changed.any(axis=1)), np.flatnonzero(changed.any(axis=0))
    y0, y1, x0, x1 = (0, 0, 0, 0) if rows.size == 0 else (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)
    box = (y0 - org[1], y1 - org[1], x0 - org[0], x1 - org[0])
    if free and rows.size and not _inside(box, org, shape, _SPRITE_EDGE):
        return None
    pixels, touched = black[y0:y1, x0:x1].copy(), changed[y0:y1, x0:x1].copy()
    pixels.setflags(write=False)
    touched.setflags(write=False)
    return box, pixels, touched


class _Metrics:
    """Sizes of the legend strip's parts for a strip ``width`` pixels wide (the picture's width).

    The font grows with the picture: ``width / 768`` (0.5 for CarRacing's 96 px frames shown
    x4 = 384 px; digits ~11 px tall), at least 0.35 (digits 7 px, about the least legible),
    at most 1.5. Everything else is in proportion to the text height.
    """

    def __init__(self, width: int):
        self.font = float(np.clip(width / 768.0, 0.35, 1.5))
        self.thick = 1 if self.font < 0.8 else 2
        (_, self.text_h), self.base = cv2.getTextSize("0", _FONT, self.font, self.thick)
        self.pad = max(2, round(0.35 * self.text_h))
        self.margin = max(3, round(0.6 * self.text_h))
        self.bar_h = max(4, round(0.9 * self.text_h))
        self.tick_h = max(2, round(0.35 * self.text_h))
        self.tri_h = max(4, round(0.8 * self.text_h))
        self.line = 1 if self.text_h < 16 else 2

    def text_size(self, text: str) -> int:
        return _text_width(text, self.font, self.thick)

    @staticmethod
    def even(height: int) -> int:  # even heights keep the picture's parity (H.264 yuv420p needs even sizes)
        return height + (height % 2)

    def colorbar_height(self) -> int:
        text = self.text_h + self.base + 1
        return self.even(self.pad + self.bar_h + self.tick_h + self.pad // 2 + text + self.pad)

    def gauge_height(self) -> int:
        text = self.text_h + self.base + 1
        return self.even(self.pad + 2 * self.tri_h + self.line + self.pad + text + self.pad)


@functools.lru_cache(maxsize=16)
def _metrics(width: int) -> _Metrics:
    """:class:`_Metrics` of a width (cached: the same for every frame of a video)."""
    return _Metrics(width)


@functools.lru_cache(maxsize=1024)
def _text_width(text: str, font: float, thick: int) -> int:
    return cv2.getTextSize(text, _FONT, font, thick)[0][0]


def _fmt(value: float, signed: bool) -> str:
    """A tick label: 3 significant digits, "0" for zero, "+" on positive values of a signed scale."""
    if value == 0:
        return "0"
    text = f"{value:.3g}"
    return f"+{text}" if signed and value > 0 else text


def _width(width, what: str = "width") -> int:
    if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < 1:
        raise InputError(f"{what} must be an integer >= 1, got {width!r}")
    return int(width)


def _units(units) -> str:
    if units is None:
        return ""
    if not isinstance(units, str):
        raise InputError(f"units must be a string such as 'rad' or 'relative', got {type(units).__name__}")
    return units


def _colorbar(width: int, lo: float, hi: float, signed: bool, colours: np.ndarray, units: str) -> np.ndarray:
    """The colour bar strip; ``colours`` (256, 3) RGB, low -> high; validated inputs.

    Cached (read-only results): where the bar, its ticks and the texts go is worked out here,
    and the strip is drawn only for a layout not among the last :data:`_COLORBAR_CACHE` drawn
    (:func:`_colorbar_drawn`), so frames whose labels read the same (a fixed range, or ranges
    that round to the same 3 digits) share one strip.
    """
    mt = _metrics(width)
    units_w = mt.text_size(units) if units else 0
    x0 = mt.margin
    x1 = width - mt.margin - (units_w + mt.margin if units else 0)  # end-exclusive
    if x1 - x0 < max(8, width // 3):  # too narrow for units beside the bar: drop them
        units, x1 = "", width - mt.margin
    if x1 - x0 < 2:
        x0, x1 = 0, width
    n = x1 - x0
    lo, hi = float(lo), float(hi)

    def x_of(value: float) -> int:
        return x0 + int(round((value - lo) / (hi - lo) * (n - 1))) if hi > lo else x0

    if signed:
        marks, labelled = (lo, lo / 2, 0.0, hi / 2, hi), (lo, 0.0, hi)
    else:
        mid = lo + (hi - lo) / 2
        marks, labelled = (lo, mid, hi), (lo, mid, hi)
    boxes = []
    for value in labelled:
        text = _fmt(value, signed)
        w = mt.text_size(text)
        left = min(max(x_of(value) - w // 2, 0), max(width - w, 0))
        boxes.append((left, left + w, text))
    # a middle label that would touch an end label is left out (narrow pictures)
    if len(boxes) == 3 and (boxes[1][0] < boxes[0][1] + 4 or boxes[1][1] + 4 > boxes[2][0]):
        boxes.pop(1)
    colour_bytes = np.ascontiguousarray(colours, np.uint8).tobytes()
    ticks = tuple(x_of(value) for value in marks)
    return _colorbar_drawn(width, colour_bytes, units, x0, x1, ticks, tuple((left, text) for left, _, text in boxes))


#: How many colour bar strips :func:`_colorbar_drawn` keeps (a few KB each).
_COLORBAR_CACHE = 64


@functools.lru_cache(maxsize=_COLORBAR_CACHE)
def _colorbar_drawn(width: int, colour_bytes: bytes, units: str, x0: int, x1: int, ticks: tuple[int, ...],
                    labels: tuple[tuple[int, str], ...]) -> np.ndarray:
    """Draw the colour bar strip laid out by :func:`_colorbar`: the bar over columns ``[x0, x1)``,
    ``units`` after it, tick marks at columns ``ticks``, ``labels`` as ``(left, text)``. Read-only."""
    colours = np.frombuffer(colour_bytes, np.uint8).reshape(256, 3)
    mt = _metrics(width)
    out = np.zeros((mt.colorbar_height(), width, 3), np.uint8)
    n = x1 - x0
    y0 = mt.pad
    y1 = y0 + mt.bar_h
    levels = np.rint(np.arange(n) * (255.0 / max(n - 1, 1))).astype(np.intp)
    out[y0:y1, x0:x1] = colours[levels][None]
    if units:
        _put_text_on_black(out, units, (x1 + mt.margin, y0 + (mt.bar_h + mt.text_h) // 2), mt.font, mt.thick)
    for x in ticks:
        cv2.line(out, (x, y1), (x, y1 + mt.tick_h - 1), _LABEL_COLOUR, 1)
    base_y = y1 + mt.tick_h + mt.pad // 2 + mt.text_h
    for left, text in labels:
        _put_text_on_black(out, text, (left, base_y), mt.font, mt.thick)
    out.setflags(write=False)
    return out


def colorbar(
    width: int,
    vrange: tuple[float, float],
    *,
    colormap: Colormap | None = "auto",
    units: str | None = None,
    signed: bool | None = None,
) -> np.ndarray:
    """A horizontal colour bar with tick values and units, as a strip to put under a picture.

    The bar runs from the left margin to the units text (or the right margin): column ``j`` of
    its ``n`` columns has colour ``rint(j * 255 / (n - 1))`` of the colour map, i.e. the colour
    of value ``lo + j / (n - 1) * (hi - lo)``. Tick marks below it; labels (3 significant
    digits) under the ends and the middle: ``-a``, ``0``, ``+a`` on a signed scale (minor
    marks at ``+-a/2``), ``lo``, ``(lo + hi) / 2``, ``hi`` otherwise. White text with a black
    outline on black; the font scales with ``width`` (``width / 768``, at least 0.35). The
    strip's height is even.

    Parameters
    ----------
    width : int
        Strip width in pixels, >= 1 (the picture's width).
    vrange : (float, float)
        The values the colours span, ``lo < hi`` in the map's units, e.g. from
        :func:`value_range`; a signed scale shows ``(-a, a)``, ``a = max(|lo|, |hi|)``.
        ``lo == hi`` (a constant map) is allowed and labelled as is.
    colormap : str, int, numpy.ndarray or None
        ``"auto"`` (default): ``"rdbu_r"`` on a signed scale, ``"inferno"`` otherwise; ``None``:
        grey levels (the focus layout's weights); else see :func:`heatmap`.
    units : str, optional
        Text after the bar, e.g. ``"rad"`` (occlusion deltas of a steering model) or
        ``"relative"`` ([0, 1] maps). Left out when the strip is too narrow for it.
    signed : bool, optional
        ``None`` (default): signed if ``lo < 0``.

    Returns
    -------
    numpy.ndarray
        uint8, shape (h, width, 3), RGB, ``h`` about 3.3 text heights (46 px at width 384).

    Raises
    ------
    InputError
        For a bad width, range, units or ``signed``.
    UnknownNameError
        For an unknown colour map.
    """
    width = _width(width)
    try:
        lo, hi = (float(v) for v in vrange)
    except (TypeError, ValueError):
        raise InputError(f"vrange must be a pair of numbers (lo, hi), got {vrange!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise InputError(f"vrange must be finite with lo <= hi, got {(lo, hi)}")
    signed = _signed(signed, np.array([lo], np.float32), None)
    if signed:
        a = max(abs(lo), abs(hi))
        lo, hi = -a, a
    if colormap is None:
        colours = _grey_lut()
    else:
        colours = lut(_auto_colormap(colormap, signed))
    return _colorbar(width, lo, hi, signed, colours, _units(units)).copy()


def _grey_lut() -> np.ndarray:
    """The grey ramp as a (256, 3) uint8 LUT: entry ``k`` is ``(k, k, k)``."""
    return np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)


_GREY = _grey_lut()
_GREY.setflags(write=False)


def _steering(value, what: str, allow_unknown: bool) -> float | None:
    if value is None and allow_unknown:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what} steering must be a number (radians), got {value!r}") from None
    if math.isnan(v) and allow_unknown:
        return None
    if not math.isfinite(v):
        raise InputError(f"{what} steering must be finite (radians), got {v}")
    return v


def _gauge_limit(limit) -> float:
    try:
        limit = float(limit)
    except (TypeError, ValueError):
        raise InputError(f"gauge limit must be a positive number of radians, got {limit!r}") from None
    if not (math.isfinite(limit) and limit > 0):
        raise InputError(f"gauge limit must be a positive number of radians, got {limit}")
    return limit


def _gauge_layout(width: int) -> tuple[int, int, int, int]:
    """``(half_base, x0, x1, track)`` of a gauge strip: needle half width, the track's end columns
    (inclusive), the track's first row."""
    mt = _metrics(width)
    half_base = max(2, round(0.6 * mt.tri_h))
    x0, x1 = mt.margin + half_base, width - 1 - mt.margin - half_base
    if x1 - x0 < 4:
        x0, x1 = 0, width - 1
    return half_base, x0, x1, mt.pad + mt.tri_h


def _gauge_x(width: int, angle: float, limit: float) -> int:
    """The column of ``angle`` on a gauge strip's track (clipped to its ends)."""
    _, x0, x1, _ = _gauge_layout(width)
    centre, half = (x0 + x1) / 2.0, (x1 - x0) / 2.0
    return int(round(centre + float(np.clip(angle / limit, -1.0, 1.0)) * half))


@functools.lru_cache(maxsize=16)
def _gauge_track(width: int, limit: float) -> np.ndarray:
    """A gauge strip with its track and marks only (cached, read-only: the same for every frame)."""
    mt = _metrics(width)
    _, x0, x1, track = _gauge_layout(width)
    out = np.zeros((mt.gauge_height(), width, 3), np.uint8)
    cv2.rectangle(out, (x0, track), (x1, track + mt.line - 1), _TRACK_COLOUR, -1)
    for frac in (-1.0, -0.5, 0.0, 0.5, 1.0):
        x = _gauge_x(width, frac * limit, limit)
        reach = mt.tri_h if frac == 0 else mt.tri_h // 2  # the zero mark is longer
        cv2.line(out, (x, track - reach), (x, track + mt.line - 1 + reach), _TRACK_COLOUR, 1)
    out.setflags(write=False)
    return out


def _gauge(width: int, predicted: float, recorded: float | None, limit: float, labels: bool) -> np.ndarray:
    mt = _metrics(width)
    half_base, _, _, track = _gauge_layout(width)
    out = _gauge_track(width, limit).copy()
    # predicted: a triangle above the track pointing down at it; recorded: below, pointing up
    xp = _gauge_x(width, predicted, limit)
    tri = np.array([[xp - half_base, track - mt.tri_h], [xp + half_base, track - mt.tri_h], [xp, track - 1]], np.int32)
    cv2.fillConvexPoly(out, tri, PREDICTED_COLOUR, cv2.LINE_8)
    if recorded is not None:
        xr = _gauge_x(width, recorded, limit)
        below = track + mt.line
        tri = np.array([[xr - half_base, below + mt.tri_h], [xr + half_base, below + mt.tri_h], [xr, below]], np.int32)
        cv2.fillConvexPoly(out, tri, RECORDED_COLOUR, cv2.LINE_8)
    if labels:
        base_y = track + mt.line + mt.tri_h + mt.pad + mt.text_h
        end = f"{math.degrees(limit):.0f}"
        pred, rec = f"{math.degrees(predicted):+.1f}", None if recorded is None else f"{math.degrees(recorded):+.1f}"
        # the longest wording that fits: names and unit, then the coloured numbers alone
        for named in (True, False):
            parts = [(f"pred {pred}" if named else pred, PREDICTED_COLOUR)]
            if rec is not None:
                parts.append((f"  rec {rec}" if named else f" {rec}", RECORDED_COLOUR))
            if named:
                parts.append((" deg", _LABEL_COLOUR))
            widths = [mt.text_size(text) for text, _ in parts]
            if sum(widths) <= width - 2 * mt.margin:
                break
        left_text, right_text = f"L -{end}", f"+{end} R"
        lw, rw = mt.text_size(left_text), mt.text_size(right_text)
        start = max(0, (width - sum(widths)) // 2)
        if start >= lw + mt.margin + 4 and start + sum(widths) + 4 <= width - rw - mt.margin:
            _put_text_on_black(out, left_text, (mt.margin, base_y), mt.font, mt.thick, _TRACK_COLOUR)
            _put_text_on_black(out, right_text, (width - mt.margin - rw, base_y), mt.font, mt.thick, _TRACK_COLOUR)
        for (text, colour), w in zip(parts, widths):
            _put_text_on_black(out, text, (start, base_y), mt.font, mt.thick, colour)
            start += w
    return out


def steering_gauge(
    width: int,
    predicted: float,
    recorded: float | None = None,
    *,
    limit: float = GAUGE_LIMIT,
    labels: bool = True,
) -> np.ndarray:
    """A horizontal steering dial, as a strip to put under a picture.

    A grey track from ``-limit`` (left end) to ``+limit`` (right end), marks at ``+-limit``,
    ``+-limit / 2`` and a longer one at 0 (straight ahead). The predicted angle is a
    :data:`PREDICTED_COLOUR` (orange) triangle above the track pointing down at it, the
    recorded angle a :data:`RECORDED_COLOUR` (sky blue) triangle below it pointing up; a
    triangle sits at ``centre + clip(angle / limit, -1, 1) * half_track`` (angles beyond the
    limit stay at the end, their text gives the true value). Positive = right, as in the drive
    logs. With ``labels``, a line of text in degrees below: ``L -23`` and ``+23 R`` at the ends
    (left out when there is no room) and ``pred +12.3  rec +10.1 deg`` in the needles' colours.

    Parameters
    ----------
    width : int
        Strip width in pixels, >= 1 (the picture's width).
    predicted : float
        The model's steering output, radians (PilotNet's output unit), finite.
    recorded : float, optional
        The steering recorded in the drive log, radians; ``None`` or NaN = unknown: only the
        predicted needle and text are drawn.
    limit : float
        Radians at the ends of the track, > 0; default :data:`GAUGE_LIMIT` (0.4 rad, ~23 deg,
        CarRacing-v3's steering limit).
    labels : bool
        Draw the text line (the strip keeps its height either way).

    Returns
    -------
    numpy.ndarray
        uint8, shape (h, width, 3), RGB, black background, ``h`` even (54 px at width 384).

    Raises
    ------
    InputError
        For a bad width or limit, a non-finite ``predicted``, or an infinite ``recorded``.
    """
    width = _width(width)
    predicted = _steering(predicted, "predicted", allow_unknown=False)
    recorded = _steering(recorded, "recorded", allow_unknown=True)
    return _gauge(width, predicted, recorded, _gauge_limit(limit), bool(labels))


def _gauge_values(gauge) -> tuple[float, float | None] | None:
    if gauge is None:
        return None
    if isinstance(gauge, (tuple, list)) or (isinstance(gauge, np.ndarray) and gauge.ndim == 1):
        if len(gauge) != 2:
            raise InputError(f"gauge must be a predicted angle or a (predicted, recorded) pair in radians, got {gauge!r}")
        predicted, recorded = gauge
    else:
        predicted, recorded = gauge, None
    return _steering(predicted, "predicted", False), _steering(recorded, "recorded", True)


def side_by_side(panels: Sequence[np.ndarray], labels: Sequence[str | None] | None = None) -> np.ndarray:
    """Concatenate RGB panels left to right, resized to a common height, optionally labelled.

    Parameters
    ----------
    panels : sequence of numpy.ndarray
        uint8 (H_i, W_i, 3) RGB images. Each is resized to the largest height ``H`` keeping its
        aspect ratio (width ``round(W_i * H / H_i)``): nearest-neighbour for whole-number
        factors (pixels stay crisp), bilinear otherwise.
    labels : sequence of str or None, optional
        One text per panel (``None`` or ``""``: no text), drawn at the panel's top-left corner
        with ``cv2.putText`` (white with a black outline), font scale ``max(0.35, H / 400)``.

    Returns
    -------
    numpy.ndarray
        uint8, shape (H, sum of resized widths, 3), RGB.

    Raises
    ------
    InputError
        For no panels, a panel that is not uint8 (H, W, 3), or a labels list of another length.
    """
    if isinstance(panels, np.ndarray) or len(panels) == 0:
        raise InputError("side_by_side needs a non-empty sequence of (H, W, 3) panels")
    panels = [_frame(p, f"panel {i}") for i, p in enumerate(panels)]
    _check_labels(labels, len(panels))
    height = max(p.shape[0] for p in panels)
    resized = []
    for p in panels:
        h, w = p.shape[:2]
        if h != height:
            new_w = max(1, int(round(w * height / h)))
            interp = cv2.INTER_NEAREST if height % h == 0 and new_w == w * (height // h) else cv2.INTER_LINEAR
            p = cv2.resize(p, (new_w, height), interpolation=interp)
        else:
            p = p.copy()
        resized.append(p)
    _label_panels(resized, labels, height)
    return np.ascontiguousarray(np.concatenate(resized, axis=1))


def _check_labels(labels: Sequence[str | None] | None, panels: int) -> None:
    if labels is not None and len(labels) != panels:
        raise InputError(f"got {len(labels)} labels for {panels} panels")


def _label_panels(panels: Sequence[np.ndarray], labels: Sequence[str | None] | None, height: int) -> None:
    """Draw :func:`side_by_side`'s labels in place on its panels (arrays or views, ``height`` rows)."""
    if labels is None:
        return
    font_scale = max(0.35, height / 400.0)
    thickness = max(1, int(round(font_scale * 1.5)))
    for p, text in zip(panels, labels):
        if text:
            (_, text_h), _ = cv2.getTextSize(str(text), _FONT, font_scale, thickness)
            _put_text(p, str(text), (3, 3 + text_h), font_scale, thickness)


def render(
    frame: np.ndarray,
    saliency,
    layout: str = "overlay",
    *,
    region: Region | None = None,
    scale: int = 1,
    alpha: float = 0.5,
    colormap: Colormap | None = None,
    clip: tuple[float, float] | None = None,
    blur_sigma: float | None = None,
    smooth_sigma: float = 0.0,
    labels: bool | Sequence[str | None] = True,
    signed: bool | None = None,
    vrange: tuple[float, float] | None = None,
    opacity: str = "auto",
    legend: bool = False,
    units: str | None = None,
    gauge: float | tuple[float, float | None] | None = None,
    gauge_limit: float = GAUGE_LIMIT,
) -> np.ndarray:
    """Render one frame and its saliency map for display, optionally with a legend and a gauge.

    The frame is first enlarged by ``scale`` (nearest neighbour, see :func:`upscale`; small
    frames such as CarRacing's 96 x 96 need it), then the map is placed into the scaled
    ``region`` with bilinear interpolation, so the saliency is smooth over crisp pixels. The
    colour scale (signed or not, its value range) is decided once per call as described in the
    module docstring, and the same scale colours the overlay, the heatmap panel and the legend.

    With ``legend`` or ``gauge`` a black strip is added *below* the picture (nothing of the
    picture is covered: the model's view and, on CarRacing, the game's own dashboard stay
    visible, and the text stays legible on any frame). ``"overlay"`` / ``"focus"``: the colour
    bar (:func:`colorbar`) above the gauge (:func:`steering_gauge`), each as wide as the
    picture. ``"side-by-side"``: one row, the colour bar under the heatmap panel, the gauge
    under the frame panel. In ``"focus"`` the bar is a grey ramp of the sharpness weight (from
    0 to ``max|v|`` for a signed map).

    Parameters
    ----------
    frame : numpy.ndarray
        uint8, shape (H, W, 3), RGB, as recorded.
    saliency : numpy.ndarray or torch.Tensor, shape (h, w)
        Raw map for this frame, typically at the model's input resolution, in the method's units.
    layout : {"overlay", "focus", "side-by-side"}
        ``"overlay"``: :func:`overlay`. ``"focus"``: :func:`focus`. ``"side-by-side"``:
        ``[frame | overlay | heatmap]`` (:func:`side_by_side`), the heatmap panel black outside
        ``region``.
    region : (y0, y1, x0, x1), optional
        Pixel box of the *unscaled* frame that the model sees (``model.transform.region(H, W)``);
        default the whole frame.
    scale : int
        Integer display enlargement, >= 1.
    alpha, colormap, clip, signed, vrange, opacity
        See :func:`overlay` (``colormap`` and the range also apply to the heatmap panel and the
        legend, the range to the focus weights). ``colormap=None`` / ``"auto"`` (default) picks
        ``"rdbu_r"`` for signed maps and ``"inferno"`` otherwise. ``vrange=None`` (default):
        each frame's own range (the legend's numbers change with the frame); a fixed ``(lo,
        hi)`` keeps one scale over a video (see :func:`value_range`).
    blur_sigma, smooth_sigma
        See :func:`focus` (in output pixels, i.e. after scaling).
    labels : bool or sequence of 3 str
        Side-by-side only: ``True`` labels the panels "frame", "overlay", "saliency"; ``False``
        draws none; or give three texts.
    legend : bool
        Add the colour bar strip (default ``False``: the picture alone, as before).
    units : str, optional
        The map's units, written after the colour bar's numbers: ``"rad"`` for occlusion deltas
        of a steering model, ``"relative"`` for [0, 1] maps (VisualBackProp, back-projection).
    gauge : float or (float, float or None), optional
        Steering to show on a :func:`steering_gauge`: the predicted angle, or ``(predicted,
        recorded)``, in radians (positive = right; shown in degrees). ``recorded`` ``None`` or
        NaN = unknown: only the predicted needle is drawn. Default: no gauge.
    gauge_limit : float
        Radians at the gauge's ends, > 0 (default :data:`GAUGE_LIMIT`, 0.4 rad).

    Returns
    -------
    numpy.ndarray
        uint8 RGB, shape ``(H * scale + S, W * scale, 3)`` for "overlay" and "focus",
        ``(H * scale + S, 3 * W * scale, 3)`` for "side-by-side", where ``S`` is the strip's
        height: 0 without legend and gauge; otherwise even, and the same for every frame of a
        given size (colour bar 46 px and gauge 54 px under a 384 px wide picture).

    Raises
    ------
    InputError
        For bad frames, maps, regions, options or gauge values (see the functions above).
    UnknownNameError
        For an unknown layout, colour map or opacity.

    Examples
    --------
    >>> frame = np.zeros((96, 96, 3), np.uint8)
    >>> delta = np.random.default_rng(0).normal(size=(66, 200)).astype(np.float32)
    >>> picture = render(frame, delta, region=(0, 84, 0, 96), scale=4, signed=True, vrange=(-0.05, 0.05),
    ...                  legend=True, units="rad", gauge=(0.1, float("nan")))
    >>> picture.shape
    (484, 384, 3)
    """
    if layout not in LAYOUTS:
        raise UnknownNameError(f"unknown layout {layout!r} (known: {', '.join(LAYOUTS)})")
    frame = _frame(frame)
    m = _map2d(saliency)
    scale = _scale(scale)
    alpha = _unit_interval(alpha, "alpha")
    y0, y1, x0, x1 = _region(region, frame.shape[0], frame.shape[1])
    vrange = _vrange(vrange)
    signed = _signed(signed, m, vrange)
    code = _auto_colormap(colormap, signed)
    mode = _opacity(opacity, signed)
    units = _units(units)
    steering = _gauge_values(gauge)
    limit = _gauge_limit(gauge_limit)
    u, (lo, hi) = _unit_map(m, signed, clip, vrange)

    height, width = frame.shape[0] * scale, frame.shape[1] * scale
    big_region = (y0 * scale, y1 * scale, x0 * scale, x1 * scale)
    rows = []  # the strip's parts, drawn (or taken from the colour bar cache) before the picture
    if legend:
        if layout == "focus":
            wl, wh = (0.0, hi) if signed else (lo, hi)
            rows.append(_colorbar(width, wl, wh, False, _tables(_GREY)[0], units))
        else:
            rows.append(_colorbar(width, lo, hi, signed, _tables(code)[0], units))
    if steering is not None:
        rows.append(_gauge(width, steering[0], steering[1], limit, True))
    if layout != "side-by-side":
        # one new array, the picture on top and the strip's parts stacked below it
        out = np.empty((height + sum(r.shape[0] for r in rows), width, 3), np.uint8)
        if layout == "overlay":
            _blend(frame, u, signed, big_region, alpha, code, mode, out=out, scale=scale)
        else:
            _focus(upscale(frame, scale), _focus_weights(u, signed), big_region, blur_sigma, smooth_sigma, out=out)
        top = height
        for r in rows:
            out[top : top + r.shape[0]] = r
            top += r.shape[0]
        return out

    # side by side: [frame | overlay | heatmap], the colour bar under the heatmap, the gauge under the frame
    if labels is True:
        names: Sequence[str | None] | None = ("frame", "overlay", "saliency")
    elif labels is False or labels is None:
        names = None
    else:
        names = labels
    _check_labels(names, 3)
    blended, colours = _blend(frame, u, signed, big_region, alpha, code, mode, heat=True, scale=scale)
    out = np.zeros((height + max((r.shape[0] for r in rows), default=0), 3 * width, 3), np.uint8)
    panels = [out[:height, i * width : (i + 1) * width] for i in range(3)]
    panels[0][:] = upscale(frame, scale)
    panels[1][:] = blended
    sy0, sy1, sx0, sx1 = big_region
    panels[2][sy0:sy1, sx0:sx1] = colours
    _label_panels(panels, names, height)
    if legend:
        out[height : height + rows[0].shape[0], 2 * width :] = rows[0]
    if steering is not None:
        out[height : height + rows[-1].shape[0], :width] = rows[-1]
    return out


# --------------------------------------------------------------------------- grids and crops


def _tile(tiles: np.ndarray, ncols: int | None, pad: int) -> np.ndarray:
    """Place ``(N, h, w, 3)`` uint8 tiles row by row on a black canvas, ``pad`` pixels apart."""
    n, h, w = tiles.shape[:3]
    if ncols is None:
        ncols = int(np.ceil(np.sqrt(n)))
    if isinstance(ncols, bool) or not isinstance(ncols, (int, np.integer)) or ncols < 1:
        raise InputError(f"ncols must be an integer >= 1, got {ncols!r}")
    if isinstance(pad, bool) or not isinstance(pad, (int, np.integer)) or pad < 0:
        raise InputError(f"pad must be an integer >= 0, got {pad!r}")
    ncols = min(int(ncols), n)
    nrows = -(-n // ncols)
    out = np.zeros((nrows * h + (nrows - 1) * pad, ncols * w + (ncols - 1) * pad, 3), np.uint8)
    for i in range(n):
        r, c = divmod(i, ncols)
        y, x = r * (h + pad), c * (w + pad)
        out[y : y + h, x : x + w] = tiles[i]
    return out


def _levels(maps: np.ndarray, normalize_each: bool) -> np.ndarray:
    """``(N, ...)`` float maps -> uint8 levels 0..255, min-max per map or over all maps."""
    if normalize_each:
        flat = normalize(maps.reshape(maps.shape[0], maps.shape[1], -1)).reshape(maps.shape)
    else:
        flat = normalize(maps.reshape(1, maps.shape[0], -1))[0].reshape(maps.shape)
    return np.rint(flat * 255.0).astype(np.uint8)


def _colour(levels: np.ndarray, colormap: str | int | None) -> np.ndarray:
    """``(N, h, w)`` uint8 levels -> ``(N, h, w, 3)`` RGB: grey, or through ``colormap``."""
    if colormap is None:
        return np.repeat(levels[..., None], 3, axis=-1)
    return np.stack([heatmap(np.ascontiguousarray(m), colormap) for m in levels])


def grid(
    maps,
    ncols: int | None = None,
    pad: int = 1,
    normalize_each: bool = True,
    colormap: str | int | None = None,
) -> np.ndarray:
    """Tile feature maps (or any stack of 2-D maps) into one image.

    Map ``i`` goes to row ``i // ncols``, column ``i % ncols``; its top-left corner is at
    ``(row * (h + pad), col * (w + pad))``. Gaps and unused tiles are black.

    Parameters
    ----------
    maps : numpy.ndarray or torch.Tensor, shape (N, h, w) or (1, N, h, w)
        E.g. one frame's feature maps ``feature_maps(model, x[:1], layer)``. Tensors are copied
        to the host.
    ncols : int, optional
        Tiles per row, >= 1; default ``ceil(sqrt(N))`` (capped at ``N``).
    pad : int
        Black pixels between tiles, >= 0 (none around the border).
    normalize_each : bool
        ``True``: min-max each map to [0, 1] on its own (a constant map is black); ``False``:
        one min-max over all maps, so tiles are comparable.
    colormap : str or int, optional
        ``None``: grey levels (in all three channels); else see :func:`heatmap`.

    Returns
    -------
    numpy.ndarray
        uint8 RGB, shape ``(rows * h + (rows - 1) * pad, ncols * w + (ncols - 1) * pad, 3)``
        with ``rows = ceil(N / ncols)``.

    Raises
    ------
    InputError
        For maps that are not a non-empty finite (N, h, w) stack, or bad ``ncols`` / ``pad``.
    UnknownNameError
        For an unknown colormap.

    Examples
    --------
    >>> grid(np.random.rand(5, 4, 6), ncols=3, pad=2).shape
    (10, 22, 3)
    """
    m = _to_numpy(maps, "maps")
    if m.ndim == 4 and m.shape[0] == 1:
        m = m[0]
    if m.ndim != 3:
        raise InputError(f"maps must be (N, h, w) or (1, N, h, w), got shape {m.shape}")
    return _tile(_colour(_levels(m, normalize_each), colormap), ncols, pad)


def weights_grid(
    conv,
    ncols: int | None = None,
    pad: int = 1,
    normalize_each: bool = True,
    colormap: str | int | None = None,
    mode: str = "mean",
    scale: int = 1,
) -> np.ndarray:
    """Tile a conv layer's filters into one image.

    A layer with 3 input channels (the first layer of an RGB model) shows each filter in
    colour: tile ``o`` is ``weight[o]`` as an RGB image (input channel 0 -> red, 1 -> green,
    2 -> blue), min-max normalised over its three channels together (``colormap`` is ignored).
    Any other layer shows grey (or colour-mapped) tiles: with ``mode="mean"`` one tile per
    filter, the mean over its input channels; with ``mode="channels"`` one tile per (filter,
    input channel) pair, a row per filter (``ncols`` defaults to the input channel count).

    Parameters
    ----------
    conv : nn.Conv2d, or numpy.ndarray / torch.Tensor of shape (O, I, kh, kw)
        The layer (its ``weight`` is used) or a weight array.
    ncols, pad, normalize_each, colormap
        See :func:`grid`; ``normalize_each=False`` uses one min-max over all the weights.
    mode : {"mean", "channels"}
        How a layer with other than 3 input channels is shown (see above).
    scale : int
        Integer nearest-neighbour enlargement of the result, >= 1 (kernels are tiny).

    Returns
    -------
    numpy.ndarray
        uint8 RGB, shape as in :func:`grid` (times ``scale``), tiles of ``kh x kw``.

    Raises
    ------
    InputError
        For a weight that is not 4-D, or bad options.
    UnknownNameError
        For an unknown ``mode`` or colormap.
    """
    weight = getattr(conv, "weight", conv)
    w = _to_numpy(weight, "conv weight")
    if w.ndim != 4:
        raise InputError(f"conv weight must be (O, I, kh, kw), got shape {w.shape}")
    if mode not in ("mean", "channels"):
        raise UnknownNameError(f"unknown mode {mode!r} (known: mean, channels)")
    out_ch, in_ch = w.shape[:2]
    if in_ch == 3:
        tiles = _levels(w, normalize_each).transpose(0, 2, 3, 1)  # (O, kh, kw, 3) RGB
        out = _tile(np.ascontiguousarray(tiles), ncols, pad)
    elif mode == "mean":
        out = grid(w.mean(axis=1), ncols, pad, normalize_each, colormap)
    else:
        out = grid(w.reshape(out_ch * in_ch, *w.shape[2:]), in_ch if ncols is None else ncols, pad, normalize_each, colormap)
    return upscale(out, scale)


def crop(
    frame: np.ndarray,
    saliency_map,
    threshold: float = 0.5,
    region: Region | None = None,
) -> tuple[np.ndarray, Region]:
    """Cut out the most salient area of a frame.

    The map is min-max normalised to [0, 1] (:func:`normalize`) and placed into ``region``
    (:func:`resize_to_frame`, bilinear); the pixels of ``region`` whose value is
    ``>= threshold`` form a mask, and the bounding box of its largest 8-connected component
    (``cv2.connectedComponentsWithStats``; the first one on a tie) is cut out of the frame.

    Parameters
    ----------
    frame : numpy.ndarray
        uint8, shape (H, W, 3), RGB.
    saliency_map : numpy.ndarray or torch.Tensor, shape (h, w)
        Raw map, any resolution.
    threshold : float
        In (0, 1], on the normalised map.
    region : (y0, y1, x0, x1), optional
        The part of the frame the map covers; default the whole frame.

    Returns
    -------
    crop : numpy.ndarray
        uint8 ``(y1 - y0, x1 - x0, 3)``, a copy of ``frame[y0:y1, x0:x1]``.
    box : (int, int, int, int)
        ``(y0, y1, x0, x1)`` in frame pixels, end-exclusive.

    Raises
    ------
    InputError
        For a bad frame, map, region or threshold, or a constant map (all zeros included),
        which has no salient area.
    """
    frame = _frame(frame)
    m = _map2d(saliency_map)
    threshold = _unit_interval(threshold, "threshold")
    if threshold == 0.0:
        raise InputError("threshold must be > 0")
    if not np.any(m != m.flat[0]):
        raise InputError("saliency map is constant (e.g. all zeros): there is no salient area to crop")
    y0, y1, x0, x1 = _region(region, frame.shape[0], frame.shape[1])
    placed = resize_to_frame(normalize(m), frame.shape, (y0, y1, x0, x1))[y0:y1, x0:x1]
    mask = (placed >= threshold).astype(np.uint8)
    count, _labels, stats, _centroids = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count < 2:  # bilinear resizing can smooth the peak below the threshold
        raise InputError(f"no pixel of the placed map reaches threshold {threshold}; lower it")
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    left, top = int(stats[best, cv2.CC_STAT_LEFT]), int(stats[best, cv2.CC_STAT_TOP])
    width, height = int(stats[best, cv2.CC_STAT_WIDTH]), int(stats[best, cv2.CC_STAT_HEIGHT])
    box = (y0 + top, y0 + top + height, x0 + left, x0 + left + width)
    return frame[box[0] : box[1], box[2] : box[3]].copy(), box
