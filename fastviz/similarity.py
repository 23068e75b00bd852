"""Similarity of saliency maps: how close an approximate map is to the exact one.

Approximate occlusion modes (a coarser stride, incremental inference with a drift threshold)
trade accuracy for speed; Krypton (Nakandala, Kumar and Papakonstantinou, "Incremental and
Approximate Inference for Faster Occlusion-based Deep CNN Explanations", SIGMOD 2019) reports
the error of its approximate heatmaps as their structural similarity to the exact heatmap.
:func:`ssim` computes that index for single maps or batches of maps, on any device.

**SSIM** (Wang, Bovik, Sheikh and Simoncelli, "Image Quality Assessment: From Error Visibility
to Structural Similarity", IEEE Transactions on Image Processing 13(4), 2004) compares local
means ``mu``, variances ``s^2`` and covariance ``s_ab`` of the two maps,

    SSIM(p) = (2 mu_a mu_b + C1) (2 s_ab + C2) / ((mu_a^2 + mu_b^2 + C1) (s_a^2 + s_b^2 + C2)),

weighted by a Gaussian window around each pixel ``p``, and averages it over the pixels whose
window lies inside the map. The implementation follows the paper's settings as scikit-image
implements them (``skimage.metrics.structural_similarity`` with ``gaussian_weights=True``,
``use_sample_covariance=False``), to which it agrees to rounding.
"""

from __future__ import annotations

import torch

from .errors import InputError
from .errors import positive_number as _positive

__all__ = ["TRUNCATE", "ssim", "ssim_window"]

#: Radius of the Gaussian window in standard deviations (scikit-image's choice for SSIM: an
#: 11-pixel window at the paper's ``sigma = 1.5``).
TRUNCATE = 3.5


def ssim_window(sigma: float = 1.5) -> int:
    """Side of the square SSIM window for a Gaussian of standard deviation ``sigma`` pixels.

    ``2 r + 1`` with radius ``r = int(3.5 * sigma + 0.5)`` (SciPy's rounding of
    ``truncate * sigma``): 11 for ``sigma = 1.5``. It is also the smallest height and width
    :func:`ssim` accepts.

    Raises
    ------
    InputError
        For a ``sigma`` that is not a finite number ``> 0``.
    """
    return 2 * _radius(_positive("sigma", sigma)) + 1


def ssim(
    a: torch.Tensor,
    b: torch.Tensor,
    data_range: float | torch.Tensor | None = None,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Mean structural similarity (SSIM) of an approximate saliency map to a reference map.

    The index of Wang, Bovik, Sheikh and Simoncelli (IEEE TIP 2004). Local means, variances
    and the covariance of ``a`` and ``b`` are taken under a normalised Gaussian window of
    standard deviation ``sigma`` pixels, truncated at radius ``r = int(3.5 * sigma + 0.5)``
    (side ``2 r + 1``, see :func:`ssim_window`); variances and covariance are population
    ones (normalised by the window's weight, not by ``N - 1``). With ``C1 = (k1 L)^2`` and
    ``C2 = (k2 L)^2`` for the data range ``L``, the SSIM of each pixel is

        ``(2 mu_a mu_b + C1) (2 s_ab + C2) / ((mu_a^2 + mu_b^2 + C1) (s_a^2 + s_b^2 + C2))``

    and the result is its mean over the pixels at least ``r`` from every border, the pixels
    whose whole window lies inside the map. This equals
    ``skimage.metrics.structural_similarity(a, b, data_range=L, gaussian_weights=True,
    sigma=sigma, K1=k1, K2=k2, use_sample_covariance=False)`` of float64 2-D arrays to
    rounding (scikit-image filters with ``mode='reflect'`` and then crops ``r`` pixels from
    each border, which leaves exactly the pixels computed here without any padding).

    Parameters
    ----------
    a : Tensor (H, W) or (B, H, W)
        float32 or float64, the approximate map(s), finite values of either sign.
    b : Tensor
        The reference (exact) map(s): same shape as ``a``, float32 or float64, finite. It is
        moved to ``a``'s device.
    data_range : float, Tensor () or Tensor (B,), optional
        ``L``, the range of values the maps can take, ``> 0``; a tensor of shape ``(B,)`` gives
        each map of a batch its own. Default: per map, ``b.max() - b.min()``, the range of the
        reference map, and ``1.0`` for a reference map that is constant (so that ``C1`` and
        ``C2`` stay positive). The default makes the index invariant to scaling both maps
        together; pass a fixed ``L`` to compare maps on a common scale.
    sigma : float
        Standard deviation of the Gaussian window in pixels, ``> 0``; the paper's 1.5.
    k1, k2 : float
        The stabilising constants of the paper, ``> 0``.

    Returns
    -------
    Tensor () or (B,)
        float64 on ``a``'s device: the mean SSIM of each map, in ``[-1, 1]``. 1 means
        identical maps (exactly ``1.0`` when ``a`` equals ``b``); values near 0 mean unrelated
        local structure. Differentiable with respect to ``a`` and ``b`` (a default data range
        counts as a constant). The maps are converted to float64 first, so float32 maps lose
        nothing to cancellation in the variances.

    Raises
    ------
    InputError
        For shapes that differ or are not ``(H, W)`` or ``(B, H, W)``; a dtype other than
        float32 or float64; maps smaller than ``ssim_window(sigma)`` (11 x 11 at
        ``sigma = 1.5``) in either dimension; NaN or infinite values; a ``data_range`` that is
        not finite and ``> 0`` or of the wrong shape; ``sigma``, ``k1`` or ``k2`` not finite and
        ``> 0``.

    Notes
    -----
    Each pixel's SSIM is the product of a luminance term (local means) and a structure term
    (local covariance). A map against its negation is negative where its local means are near
    0 (``|mu| < k1 L / sqrt(2)``), near -1 for a map whose local means vanish; where the local
    means are larger and the local contrast is high (``s > k2 L / sqrt(2)``) both terms are
    negative and their product is positive, so SSIM alone need not flag the sign flip of a map
    that is far from zero-mean.

    Examples
    --------
    >>> gen = torch.Generator().manual_seed(0)
    >>> exact = torch.rand(4, 56, 56, dtype=torch.float64, generator=gen)
    >>> approx = exact + 0.01 * torch.randn(4, 56, 56, dtype=torch.float64, generator=gen)
    >>> ssim(approx, exact).shape
    torch.Size([4])
    >>> float(ssim(exact[0], exact[0]))
    1.0
    """
    sigma = _positive("sigma", sigma)
    k1 = _positive("k1", k1)
    k2 = _positive("k2", k2)
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        raise InputError(f"a and b must be tensors, got {type(a).__name__} and {type(b).__name__}")
    if a.shape != b.shape:
        raise InputError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.ndim not in (2, 3):
        raise InputError(f"maps must have shape (H, W) or (B, H, W), got {tuple(a.shape)}")
    for name, t in (("a", a), ("b", b)):
        if t.dtype not in (torch.float32, torch.float64):
            raise InputError(f"{name} must be float32 or float64, got {t.dtype}")
    radius = _radius(sigma)
    window = 2 * radius + 1
    h, w = a.shape[-2:]
    if h < window or w < window:
        raise InputError(
            f"maps must be at least {window} x {window} pixels for sigma={sigma:g} "
            f"(the Gaussian window's size), got {h} x {w}"
        )
    for name, t in (("a", a), ("b", b)):
        if not torch.isfinite(t).all():
            raise InputError(f"{name} holds NaN or infinite values")

    single = a.ndim == 2
    x = a.to(torch.float64).reshape(-1, h, w)
    y = b.to(device=a.device, dtype=torch.float64).reshape(-1, h, w)
    n = x.shape[0]
    L = _data_range(data_range, y, single)

    # Gaussian weights as SciPy builds them: exp(-x^2 / (2 sigma^2)) over -r..r, normalised.
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64, device=a.device)
    g = torch.exp(-0.5 / (sigma * sigma) * taps**2)
    g = g / g.sum()

    # The five maps to filter, filtered along rows then columns. A "valid" filter (no padding)
    # gives the local moments exactly at the pixels r or more from every border. The taps are
    # summed one shifted slice at a time, the same operations for every pixel and map, so
    # equal maps give bitwise equal moments and an SSIM of exactly 1.
    m = torch.stack([x, y, x * x, y * y, x * y], dim=1)
    m = _filter(m, g, dim=-2)
    m = _filter(m, g, dim=-1)
    ux, uy, uxx, uyy, uxy = m.unbind(1)
    vx = uxx - ux * ux
    vy = uyy - uy * uy
    vxy = uxy - ux * uy

    c1 = ((k1 * L) ** 2).view(-1, 1, 1)
    c2 = ((k2 * L) ** 2).view(-1, 1, 1)
    num = (2 * ux * uy + c1) * (2 * vxy + c2)
    den = (ux * ux + uy * uy + c1) * (vx + vy + c2)
    result = (num / den).mean(dim=(-2, -1))
    return result.reshape(()) if single else result


def _filter(m: torch.Tensor, g: torch.Tensor, dim: int) -> torch.Tensor:
    """Correlate ``m`` with the 1-D weights ``g`` along ``dim``, valid part only (the output is
    ``len(g) - 1`` shorter), summing the taps in order."""
    taps = g.shape[0]
    length = m.shape[dim] - taps + 1
    out = m.narrow(dim, 0, length) * g[0]
    for k in range(1, taps):
        out = out + m.narrow(dim, k, length) * g[k]
    return out


def _radius(sigma: float) -> int:
    return int(TRUNCATE * sigma + 0.5)


def _data_range(data_range: float | torch.Tensor | None, y: torch.Tensor, single: bool) -> torch.Tensor:
    """float64 ``(N,)`` data range per map on ``y``'s device (``y`` is ``(N, H, W)``)."""
    n = y.shape[0]
    if data_range is None:
        span = y.detach().amax(dim=(-2, -1)) - y.detach().amin(dim=(-2, -1))
        return torch.where(span > 0, span, torch.ones_like(span))
    if isinstance(data_range, torch.Tensor):
        if data_range.ndim == 0:
            L = data_range.reshape(1).expand(n)
        elif data_range.ndim == 1 and not single and data_range.shape[0] == n:
            L = data_range
        else:
            wanted = "()" if single else f"() or ({n},)"
            raise InputError(
                f"data_range must be a number or a tensor of shape {wanted}, got shape {tuple(data_range.shape)}"
            )
        if data_range.dtype == torch.bool or data_range.is_complex():
            raise InputError(f"data_range must hold real numbers, got {data_range.dtype}")
        L = L.to(device=y.device, dtype=torch.float64)
        if not (torch.isfinite(L) & (L > 0)).all():
            raise InputError(f"data_range must be finite and > 0, got {data_range.tolist()}")
        return L
    return torch.full((n,), _positive("data_range", data_range), dtype=torch.float64, device=y.device)
