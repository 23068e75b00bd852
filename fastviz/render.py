"""Saliency maps -> pictures: normalisation, colormaps, overlays, focus-on-blur, side-by-side.

Everything here works on single frames in host memory with OpenCV: frames are ``numpy`` uint8
``(H, W, 3)`` RGB, maps are 2-D float arrays (numpy, or torch tensors which are copied to the
host). A map computed at the model's input resolution (PilotNet: 66 x 200) is put back onto the
recorded frame with :func:`resize_to_frame`, into the pixel box the model sees (``region``, as
given by ``model.transform.region(H, W)``); the rest of the frame gets no saliency.

>>> import numpy as np
>>> frame = np.zeros((96, 96, 3), np.uint8)
>>> saliency = np.random.rand(66, 200).astype(np.float32)
>>> render(frame, saliency, layout="side-by-side", region=(0, 84, 0, 96), scale=2).shape
(192, 576, 3)
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from .errors import InputError, UnknownNameError

__all__ = [
    "COLORMAPS",
    "LAYOUTS",
    "crop",
    "focus",
    "grid",
    "heatmap",
    "normalize",
    "overlay",
    "render",
    "resize_to_frame",
    "side_by_side",
    "upscale",
    "weights_grid",
]

#: OpenCV colormaps by lower-case name (``"jet"``, ``"inferno"``, ``"turbo"``, ...).
COLORMAPS: dict[str, int] = {
    name[len("COLORMAP_"):].lower(): int(getattr(cv2, name)) for name in dir(cv2) if name.startswith("COLORMAP_")
}

#: Layouts accepted by :func:`render`.
LAYOUTS: tuple[str, ...] = ("overlay", "focus", "side-by-side")

Region = tuple[int, int, int, int]


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


def _colormap(colormap: str | int) -> int:
    if isinstance(colormap, str):
        key = colormap.lower()
        if key not in COLORMAPS:
            raise UnknownNameError(f"unknown colormap {colormap!r} (known: {', '.join(sorted(COLORMAPS))})")
        return COLORMAPS[key]
    if isinstance(colormap, (int, np.integer)) and int(colormap) in COLORMAPS.values():
        return int(colormap)
    raise UnknownNameError(f"unknown colormap {colormap!r}: give a name or a cv2.COLORMAP_* constant")


def _unit_interval(value: float, what: str) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise InputError(f"{what} must be in [0, 1], got {value}")
    return value


# --------------------------------------------------------------------------- maps


def normalize(saliency, *, clip: tuple[float, float] | None = None, signed: bool = False) -> np.ndarray:
    """Scale each saliency map to [0, 1].

    Parameters
    ----------
    saliency : numpy.ndarray or torch.Tensor, shape (H, W) or (B, H, W)
        Raw maps, any real dtype. Tensors are copied to the host.
    clip : (float, float), optional
        Percentiles ``(lo, hi)`` with ``0 <= lo < hi <= 100``: each map is first clipped to its
        own ``lo``-th and ``hi``-th percentile, so a few extreme pixels do not wash out the rest
        (``(1, 99)`` is a common choice). Default: no clipping.
    signed : bool
        ``False`` (default): min-max per map, ``(m - min) / (max - min)``; a constant map gives
        zeros. ``True``: keep the sign and zero, ``0.5 + 0.5 * m / max|m|``, so 0 maps to 0.5
        (for diverging colormaps); an all-zero map gives 0.5 everywhere.

    Returns
    -------
    numpy.ndarray
        float32, same shape as ``saliency``, values in [0, 1].

    Raises
    ------
    InputError
        If ``saliency`` is not a non-empty 2-D or 3-D real array with finite values, or ``clip``
        is not a valid percentile pair.

    Examples
    --------
    >>> normalize(np.array([[1.0, 2.0], [3.0, 5.0]])).tolist()
    [[0.0, 0.25], [0.5, 1.0]]
    """
    m = _to_numpy(saliency)
    if m.ndim not in (2, 3):
        raise InputError(f"saliency map must be (H, W) or (B, H, W), got shape {m.shape}")
    batch = m if m.ndim == 3 else m[None]
    batch = batch.astype(np.float32, copy=True)
    if clip is not None:
        try:
            lo, hi = (float(v) for v in clip)
        except (TypeError, ValueError):
            raise InputError(f"clip must be a pair of percentiles (lo, hi), got {clip!r}") from None
        if not 0.0 <= lo < hi <= 100.0:
            raise InputError(f"clip percentiles must satisfy 0 <= lo < hi <= 100, got {(lo, hi)}")
        low = np.percentile(batch, lo, axis=(1, 2), keepdims=True).astype(np.float32)
        high = np.percentile(batch, hi, axis=(1, 2), keepdims=True).astype(np.float32)
        np.clip(batch, low, high, out=batch)
    if signed:
        scale = np.abs(batch).max(axis=(1, 2), keepdims=True)
        scale[scale == 0] = 1.0
        out = 0.5 + 0.5 * (batch / scale)
    else:
        low = batch.min(axis=(1, 2), keepdims=True)
        span = batch.max(axis=(1, 2), keepdims=True) - low
        flat = span == 0
        span[flat] = 1.0
        out = (batch - low) / span
        out[np.broadcast_to(flat, out.shape)] = 0.0
    out = np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)
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


def heatmap(map01, colormap: str | int = "jet") -> np.ndarray:
    """Colour a map with an OpenCV colormap.

    Parameters
    ----------
    map01 : numpy.ndarray or torch.Tensor, shape (H, W)
        Values in [0, 1] (values outside are clipped; see :func:`normalize`). A uint8 map is
        taken as 0..255 levels as is.
    colormap : str or int
        A name from :data:`COLORMAPS` (``"jet"``, ``"inferno"``, ``"turbo"``, ...) or a
        ``cv2.COLORMAP_*`` constant.

    Returns
    -------
    numpy.ndarray
        uint8, shape (H, W, 3), RGB.

    Raises
    ------
    InputError
        If the map is not 2-D and finite.
    UnknownNameError
        If ``colormap`` is not an OpenCV colormap.
    """
    code = _colormap(colormap)
    if isinstance(map01, np.ndarray) and map01.dtype == np.uint8:
        if map01.ndim != 2 or map01.size == 0:
            raise InputError(f"saliency map must be 2-D (H, W), got shape {map01.shape}")
        levels = np.ascontiguousarray(map01)
    else:
        levels = np.rint(np.clip(_map2d(map01), 0.0, 1.0) * 255.0).astype(np.uint8)
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


def overlay(
    frame: np.ndarray,
    saliency,
    *,
    alpha: float = 0.5,
    colormap: str | int = "jet",
    region: Region | None = None,
    clip: tuple[float, float] | None = None,
) -> np.ndarray:
    """Blend a colour-mapped saliency map over the frame.

    The map is normalised (:func:`normalize`, with ``clip``), resized into ``region``
    (:func:`resize_to_frame`), coloured (:func:`heatmap`) and blended with
    ``cv2.addWeighted(frame, 1 - alpha, heat, alpha, 0)`` inside ``region``; pixels outside
    ``region`` are the frame's, unchanged.

    Parameters
    ----------
    frame : numpy.ndarray
        uint8, shape (H, W, 3), RGB.
    saliency : numpy.ndarray or torch.Tensor, shape (h, w)
        Raw map, any resolution (typically the model's input resolution).
    alpha : float
        Weight of the heatmap, in [0, 1].
    colormap : str or int
        See :func:`heatmap`.
    region : (y0, y1, x0, x1), optional
        The part of the frame the map covers; default the whole frame.
    clip : (float, float), optional
        Percentile clipping before normalising; see :func:`normalize`.

    Returns
    -------
    numpy.ndarray
        uint8, shape (H, W, 3), RGB; a new array.

    Raises
    ------
    InputError
        For a frame that is not uint8 (H, W, 3), a map that is not 2-D, a region outside the
        frame, or ``alpha`` outside [0, 1].
    UnknownNameError
        For an unknown colormap.
    """
    frame = _frame(frame)
    m = _map2d(saliency)
    alpha = _unit_interval(alpha, "alpha")
    y0, y1, x0, x1 = _region(region, frame.shape[0], frame.shape[1])
    placed = resize_to_frame(normalize(m, clip=clip), frame.shape, (y0, y1, x0, x1))
    heat = heatmap(placed[y0:y1, x0:x1], colormap)
    out = frame.copy()
    out[y0:y1, x0:x1] = cv2.addWeighted(np.ascontiguousarray(frame[y0:y1, x0:x1]), 1.0 - alpha, heat, alpha, 0.0)
    return out


def focus(
    frame: np.ndarray,
    saliency,
    *,
    blur_sigma: float | None = None,
    smooth_sigma: float = 0.0,
    region: Region | None = None,
    clip: tuple[float, float] | None = None,
) -> np.ndarray:
    """Focus-on-blur display: the salient area sharp over a blurred copy of the frame.

    ``out = w * frame + (1 - w) * blurred`` per pixel, where ``blurred`` is the frame through a
    Gaussian blur of ``blur_sigma`` and ``w`` the normalised map placed onto the frame
    (:func:`normalize`, :func:`resize_to_frame`), optionally smoothed. Where ``w == 1`` the
    output is exactly the frame; where ``w == 0`` (including outside ``region``, which the
    model does not see) it is exactly the blurred frame.

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
    clip : (float, float), optional
        Percentile clipping before normalising; see :func:`normalize`.

    Returns
    -------
    numpy.ndarray
        uint8, shape (H, W, 3), RGB.

    Raises
    ------
    InputError
        For a frame that is not uint8 (H, W, 3), a map that is not 2-D, a region outside the
        frame, or a negative sigma.
    """
    frame = _frame(frame)
    m = _map2d(saliency)
    height, width = frame.shape[:2]
    if blur_sigma is None:
        blur_sigma = max(1.0, min(height, width) / 32.0)
    if not float(blur_sigma) > 0:
        raise InputError(f"blur_sigma must be > 0, got {blur_sigma}")
    if float(smooth_sigma) < 0:
        raise InputError(f"smooth_sigma must be >= 0, got {smooth_sigma}")
    weights = resize_to_frame(normalize(m, clip=clip), frame.shape, region)
    if smooth_sigma > 0:
        weights = cv2.GaussianBlur(weights, (0, 0), float(smooth_sigma))
    blurred = cv2.GaussianBlur(frame, (0, 0), float(blur_sigma)).astype(np.float32)
    sharp = frame.astype(np.float32)
    out = blurred + weights[..., None] * (sharp - blurred)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


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
        with ``cv2.putText`` (white with a black outline).

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
    if labels is not None and len(labels) != len(panels):
        raise InputError(f"got {len(labels)} labels for {len(panels)} panels")
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
    if labels is not None:
        font_scale = max(0.35, height / 400.0)
        thickness = max(1, int(round(font_scale * 1.5)))
        for p, text in zip(resized, labels):
            if text:
                (_, text_h), _ = cv2.getTextSize(str(text), cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
                org = (3, 3 + text_h)
                # outline: the same text shifted by one pixel (a thicker stroke would also widen
                # the Hershey glyph advance, and the outline would drift off the text)
                for dx, dy in ((-1, -1), (-1, 1), (1, -1), (1, 1), (0, -1), (0, 1), (-1, 0), (1, 0)):
                    cv2.putText(p, str(text), (org[0] + dx, org[1] + dy), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (0, 0, 0), thickness, cv2.LINE_AA)
                cv2.putText(p, str(text), org, cv2.FONT_HERSHEY_SIMPLEX, font_scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return np.ascontiguousarray(np.concatenate(resized, axis=1))


def render(
    frame: np.ndarray,
    saliency,
    layout: str = "overlay",
    *,
    region: Region | None = None,
    scale: int = 1,
    alpha: float = 0.5,
    colormap: str | int = "jet",
    clip: tuple[float, float] | None = None,
    blur_sigma: float | None = None,
    smooth_sigma: float = 0.0,
    labels: bool | Sequence[str | None] = True,
) -> np.ndarray:
    """Render one frame and its saliency map for display.

    The frame is first enlarged by ``scale`` (nearest neighbour, see :func:`upscale`; small
    frames such as CarRacing's 96 x 96 need it), then the map is placed into the scaled
    ``region`` with bilinear interpolation, so the saliency is smooth over crisp pixels.

    Parameters
    ----------
    frame : numpy.ndarray
        uint8, shape (H, W, 3), RGB, as recorded.
    saliency : numpy.ndarray or torch.Tensor, shape (h, w)
        Raw map for this frame, typically at the model's input resolution.
    layout : {"overlay", "focus", "side-by-side"}
        ``"overlay"``: :func:`overlay`. ``"focus"``: :func:`focus`. ``"side-by-side"``:
        ``[frame | overlay | heatmap]`` (:func:`side_by_side`), the heatmap panel black outside
        ``region``.
    region : (y0, y1, x0, x1), optional
        Pixel box of the *unscaled* frame that the model sees (``model.transform.region(H, W)``);
        default the whole frame.
    scale : int
        Integer display enlargement, >= 1.
    alpha, colormap, clip
        See :func:`overlay` (``colormap`` and ``clip`` also apply to the heatmap panel, ``clip``
        to the focus weights).
    blur_sigma, smooth_sigma
        See :func:`focus` (in output pixels, i.e. after scaling).
    labels : bool or sequence of 3 str
        Side-by-side only: ``True`` labels the panels "frame", "overlay", "saliency"; ``False``
        draws none; or give three texts.

    Returns
    -------
    numpy.ndarray
        uint8 RGB, shape ``(H * scale, W * scale, 3)`` for "overlay" and "focus",
        ``(H * scale, 3 * W * scale, 3)`` for "side-by-side".

    Raises
    ------
    InputError
        For bad frames, maps, regions or options (see the functions above).
    UnknownNameError
        For an unknown layout or colormap.
    """
    if layout not in LAYOUTS:
        raise UnknownNameError(f"unknown layout {layout!r} (known: {', '.join(LAYOUTS)})")
    frame = _frame(frame)
    m = _map2d(saliency)
    scale = _scale(scale)
    y0, y1, x0, x1 = _region(region, frame.shape[0], frame.shape[1])
    big = upscale(frame, scale)
    big_region = (y0 * scale, y1 * scale, x0 * scale, x1 * scale)
    if layout == "overlay":
        return overlay(big, m, alpha=alpha, colormap=colormap, region=big_region, clip=clip)
    if layout == "focus":
        return focus(big, m, blur_sigma=blur_sigma, smooth_sigma=smooth_sigma, region=big_region, clip=clip)
    blended = overlay(big, m, alpha=alpha, colormap=colormap, region=big_region, clip=clip)
    heat = np.zeros_like(big)
    placed = resize_to_frame(normalize(m, clip=clip), big.shape, big_region)
    sy0, sy1, sx0, sx1 = big_region
    heat[sy0:sy1, sx0:sx1] = heatmap(placed[sy0:sy1, sx0:sx1], colormap)
    if labels is True:
        names: Sequence[str | None] | None = ("frame", "overlay", "saliency")
    elif labels is False or labels is None:
        names = None
    else:
        names = labels
    return side_by_side([big, blended, heat], names)


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
