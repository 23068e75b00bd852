"""Post-processing of saliency maps: temporal smoothing and edge-preserving spatial smoothing.

Both run in torch on the maps' own device and treat a batch of maps at once.

* :func:`ema` smooths a sequence of maps over time (video frames) with an exponential moving
  average, and can carry its state from one call to the next.
* :func:`ambrosio_tortorelli` smooths each map in space while keeping its strong edges sharp, by
  minimising the Ambrosio-Tortorelli approximation (Ambrosio and Tortorelli, "Approximation of
  functionals depending on jumps by elliptic functionals via Gamma-convergence", Communications
  on Pure and Applied Mathematics 43(8), 1990) of the Mumford-Shah functional (Mumford and
  Shah, "Optimal approximations by piecewise smooth functions and associated variational
  problems", Communications on Pure and Applied Mathematics 42(5), 1989).
  :func:`ambrosio_tortorelli_energy` evaluates the discrete functional it minimises.

The alternating scheme (solve for the smooth map with the edges fixed, then for the edges with
the map fixed, each a linear system solved by conjugate gradients on a matrix-free operator)
follows the approach of Bar, Sochen and Kiryati ("Semi-blind image restoration via
Mumford-Shah regularization", IEEE Transactions on Image Processing 15(2), 2006) as described
in Jacob Gildenblat's post "Smoothing images with the Mumford Shah functional" (2015).
"""

from __future__ import annotations

import numbers
from typing import Callable

import torch
import torch.nn.functional as F

from .errors import InputError
from .errors import fraction as _fraction
from .errors import positive_number as _positive

__all__ = ["SMOOTHING", "Smoother", "ambrosio_tortorelli", "ambrosio_tortorelli_energy", "ema"]


# ---------------------------------------------------------------------------------------------
# temporal smoothing


def ema(
    maps: torch.Tensor, alpha: float, state: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exponential moving average of a sequence of saliency maps over time.

    ``s_t = alpha * m_t + (1 - alpha) * s_{t-1}`` for ``t = 0 .. T-1``, where ``s_{-1}`` is
    ``state`` when given (the last state of a previous call, so that a video can be smoothed
    chunk by chunk: two calls chained through the state equal one call on the whole sequence)
    and ``s_0 = m_0`` otherwise.

    The filter lags behind the maps: after a step from 0 to 1 the output reaches
    ``1 - (1 - alpha)^k`` after ``k`` frames (``s_{k-1}`` with the step at frame 0 and a
    previous state of 0), and the mean delay of its impulse response
    ``alpha (1 - alpha)^n`` is ``(1 - alpha) / alpha`` frames (1 frame at ``alpha = 0.5``,
    9 frames at ``alpha = 0.1``). ``alpha = 1`` returns the maps unchanged.

    Parameters
    ----------
    maps : Tensor (T, H, W)
        The maps in time order, finite, in any units. Floating-point maps keep their dtype;
        integer maps are converted to float32.
    alpha : float
        Weight of the newest frame, ``0 < alpha <= 1``; smaller smooths more and lags more.
    state : Tensor (H, W), optional
        The previous smoothed map, finite; converted to the result's dtype and device. Required
        when ``T == 0``.

    Returns
    -------
    (Tensor (T, H, W), Tensor (H, W))
        The smoothed maps and the last state (``smoothed[-1]``, or ``state`` when ``T == 0``),
        in the maps' float dtype on their device.

    Raises
    ------
    InputError
        For ``maps`` not a tensor of shape ``(T, H, W)``, of bool or complex dtype, or holding
        NaN or infinite values; ``alpha`` not a number in ``(0, 1]``; ``state`` not a tensor of
        shape ``(H, W)``, of bool or complex dtype, or not finite; ``T == 0`` without a state.
    """
    a = _fraction("alpha", alpha)
    x = _as_float(maps, "maps")
    if x.ndim != 3:
        raise InputError(f"maps must have shape (T, H, W), got {tuple(x.shape)}")
    _check_finite(x, "maps")
    if state is None:
        if x.shape[0] == 0:
            raise InputError("maps must hold at least one frame when no state is given")
        s = x[0]
    else:
        st = _as_float(state, "state")
        if st.shape != x.shape[1:]:
            raise InputError(f"state must have shape {tuple(x.shape[1:])} (H, W), got {tuple(st.shape)}")
        _check_finite(st, "state")
        s = st.to(device=x.device, dtype=x.dtype)
    out = torch.empty_like(x)
    b = 1.0 - a
    start = 0
    if state is None:  # s_0 = m_0 exactly (a * m + (1 - a) * m would round)
        out[0] = s
        start = 1
    for t in range(start, x.shape[0]):
        s = a * x[t] + b * s
        out[t] = s
    return out, out[-1].clone() if x.shape[0] else s.clone()


# ---------------------------------------------------------------------------------------------
# edge-preserving smoothing

# The defaults were tuned on 66 x 200 maps of a unit step edge plus Gaussian noise of standard
# deviation 0.1 (tests/test_postprocess.py): inside each half the noise falls about 9-fold
# (smoothing length about sqrt(ALPHA / BETA) ~ 2.8 pixels), the jump keeps about 90 % of its
# height and rises over about one pixel, and v drops to ~0.1 at the edge. A smoothness weight
# below ~12 (at BETA = 1) lets the first smoothing blur the edge before v can mark it.

#: Default weight of the smoothness term (see :func:`ambrosio_tortorelli`).
ALPHA = 16.0
#: Default weight of the data term.
BETA = 2.0
#: Default edge width in pixels.
EPSILON = 0.5
#: Default number of alternations (v then u); the result hardly changes after 3.
ITERATIONS = 4
#: Default number of conjugate-gradient iterations per linear solve (Jacobi-preconditioned
#: CG has converged to about 1e-3 of the jump by then on 66 x 200 maps).
CG_ITERATIONS = 10


def ambrosio_tortorelli(
    maps: torch.Tensor,
    alpha: float = ALPHA,
    beta: float = BETA,
    epsilon: float = EPSILON,
    iterations: int = ITERATIONS,
    cg_iterations: int = CG_ITERATIONS,
    return_edges: bool = False,
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Edge-preserving smoothing of saliency maps (Ambrosio-Tortorelli / Mumford-Shah).

    Minimises, for each map ``f``, the Ambrosio-Tortorelli functional (Ambrosio and
    Tortorelli, Comm. Pure Appl. Math. 1990), which Gamma-converges to the Mumford-Shah
    functional (Mumford and Shah, Comm. Pure Appl. Math. 1989) as ``epsilon -> 0``,

        ``E(u, v) = sum beta (u - f)^2 + alpha v^2 |grad u|^2
        + epsilon |grad v|^2 + (1 - v)^2 / (4 epsilon)``

    over the smoothed map ``u`` and the edge indicator ``v`` (``v ~ 0`` on edges, ``~ 1``
    in smooth regions). Here ``beta`` weighs the data term and ``alpha`` the smoothness term,
    and the edge terms have weight 1; the seed post (Gildenblat 2015) shows its formula only as
    an image, so this parametrisation is the one stated above. See
    :func:`ambrosio_tortorelli_energy` for the discretisation (forward differences, Neumann
    boundaries, sum over pixels, unit pixel spacing).

    The minimisation alternates, starting from ``u = f``, ``v = 1``: (1) ``v`` with ``u``
    fixed solves ``(alpha |D u|^2 + 1 / (4 epsilon)) v + epsilon D^T D v = 1 / (4 epsilon)``,
    then ``v`` is clipped to ``[0, 1]``; (2) ``u`` with ``v`` fixed solves
    ``(beta + alpha D^T v^2 D) u = beta f``. The edges are found first, on the data itself:
    smoothing first would blur a jump before ``v`` could mark it. Both systems are symmetric
    positive definite; each is solved by ``cg_iterations`` steps of Jacobi-preconditioned
    conjugate gradients started from the current iterate, so each half step (and the clipping) never increases ``E``.

    **Normalisation.** Each map is divided by its own largest ``|value|`` before smoothing and
    the result multiplied back, so the parameters act on maps in ``[-1, 1]`` whatever the units
    of the saliency (a map and ``c`` times it give ``c`` times the same result). A map of zeros
    is returned as is.

    Parameters
    ----------
    maps : Tensor (H, W) or (B, H, W)
        Saliency maps, finite, any units and sign. float32 and float64 are computed in their
        dtype, float16 and bfloat16 in float32 (and returned in their dtype), integer maps in
        float32.
    alpha : float
        Smoothness weight, ``> 0``. Inside smooth regions ``u`` is smoothed over roughly
        ``sqrt(alpha / beta)`` pixels; larger values also make edges appear more readily
        (a jump ``J`` of the normalised map becomes an edge when ``alpha J^2`` clearly
        outweighs the edge terms' cost, of order 1 per pixel of edge length).
    beta : float
        Data weight, ``> 0``. Raising ``alpha`` and ``beta`` together keeps the smoothing
        length and makes edges cheaper relative to the rest (more, weaker jumps kept).
    epsilon : float
        Width of the edge indicator in pixels, ``> 0``. Values near 0.5-1 pixel keep the edges
        1-2 pixels wide.
    iterations : int
        Number of alternations (1) + (2), ``>= 1``.
    cg_iterations : int
        Conjugate-gradient steps per linear solve, ``>= 1``.
    return_edges : bool
        Also return the edge indicator ``v``.
    callback : callable ``(step, energy)``, optional
        Called with ``step = 0`` at the start and then after every half step
        (``2 k - 1`` after the ``v`` update of alternation ``k``, ``2 k`` after its ``u``
        update), and ``energy`` the float64 ``(B,)`` tensor of
        :func:`ambrosio_tortorelli_energy` of the normalised maps (``B = 1`` for a single
        map). Only computed when a callback is given.

    Returns
    -------
    Tensor, or (Tensor, Tensor) with ``return_edges``
        ``u``, the smoothed maps, same shape as ``maps`` and in their units (dtype as above,
        on their device); and ``v``, the edge indicator, same shape and dtype, in ``[0, 1]``,
        dimensionless (0 on an edge, 1 far from edges).

    Raises
    ------
    InputError
        For ``maps`` not a tensor of shape ``(H, W)`` or ``(B, H, W)``, of bool or complex
        dtype, or holding NaN or infinite values; ``alpha``, ``beta``, ``epsilon`` not finite
        numbers ``> 0``; ``iterations`` or ``cg_iterations`` not integers ``>= 1``.

    Examples
    --------
    >>> f = torch.zeros(66, 200); f[:, 100:] = 1
    >>> f = f + 0.1 * torch.randn(66, 200, generator=torch.Generator().manual_seed(0))
    >>> u, v = ambrosio_tortorelli(f, return_edges=True)
    >>> u.shape, bool(v[:, 99].mean() < 0.3)
    (torch.Size([66, 200]), True)
    """
    alpha = _positive("alpha", alpha)
    beta = _positive("beta", beta)
    epsilon = _positive("epsilon", epsilon)
    iterations = _count("iterations", iterations)
    cg_iterations = _count("cg_iterations", cg_iterations)
    if not isinstance(maps, torch.Tensor):
        raise InputError(f"maps must be a tensor, got {type(maps).__name__}")
    if maps.ndim not in (2, 3):
        raise InputError(f"maps must have shape (H, W) or (B, H, W), got {tuple(maps.shape)}")
    x = _as_float(maps, "maps")
    _check_finite(x, "maps")
    out_dtype = x.dtype
    work = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    single = x.ndim == 2
    f = x.to(work).reshape(-1, *x.shape[-2:])
    if f.numel() == 0:
        u, v = f.clone(), torch.ones_like(f)
    else:
        scale = f.abs().amax(dim=(-2, -1), keepdim=True)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        fn = f / scale
        u, v = _minimise(fn, alpha, beta, epsilon, iterations, cg_iterations, callback)
        u = u * scale
    u = u.to(out_dtype)
    v = v.to(out_dtype)
    if single:
        u, v = u[0], v[0]
    return (u, v) if return_edges else u


def ambrosio_tortorelli_energy(
    u: torch.Tensor,
    v: torch.Tensor,
    f: torch.Tensor,
    alpha: float = ALPHA,
    beta: float = BETA,
    epsilon: float = EPSILON,
) -> torch.Tensor:
    """The discrete Ambrosio-Tortorelli energy minimised by :func:`ambrosio_tortorelli`.

    With forward differences ``dx u[i, j] = u[i, j+1] - u[i, j]`` and
    ``dy u[i, j] = u[i+1, j] - u[i, j]``, set to 0 on the last column and the last row
    respectively (Neumann boundaries: the replicated border), and
    ``|grad u|^2 = dx u^2 + dy u^2`` at every pixel,

        ``E = sum over pixels [ beta (u - f)^2 + alpha v^2 |grad u|^2
        + epsilon |grad v|^2 + (1 - v)^2 / (4 epsilon) ]``

    with unit pixel spacing. It is evaluated in float64.

    Parameters
    ----------
    u, v, f : Tensor (H, W) or (B, H, W)
        The smoothed map, the edge indicator and the data, same shape, real, finite. ``v``
        is normally in ``[0, 1]`` but any values are accepted. ``v`` and ``f`` are moved to
        ``u``'s device.
    alpha, beta, epsilon : float
        As in :func:`ambrosio_tortorelli`, finite and ``> 0``.

    Returns
    -------
    Tensor (B,)
        float64 on ``u``'s device, the energy of each map (``B = 1`` for ``(H, W)`` inputs),
        ``>= 0``.

    Raises
    ------
    InputError
        For tensors of different shapes, of a shape other than ``(H, W)`` or ``(B, H, W)``,
        of bool or complex dtype, or with NaN or infinite values; parameters not finite and
        ``> 0``.
    """
    alpha = _positive("alpha", alpha)
    beta = _positive("beta", beta)
    epsilon = _positive("epsilon", epsilon)
    ts = []
    for name, t in (("u", u), ("v", v), ("f", f)):
        if not isinstance(t, torch.Tensor):
            raise InputError(f"{name} must be a tensor, got {type(t).__name__}")
        if t.shape != u.shape:
            raise InputError(
                f"u, v and f must have the same shape, got {tuple(u.shape)} and {tuple(t.shape)} ({name})"
            )
        if t.ndim not in (2, 3):
            raise InputError(f"{name} must have shape (H, W) or (B, H, W), got {tuple(t.shape)}")
        t = _as_float(t, name)
        _check_finite(t, name)
        ts.append(t.to(device=u.device, dtype=torch.float64).reshape(-1, *t.shape[-2:]))
    return _energy(*ts, alpha, beta, epsilon)


# ---------------------------------------------------------------------------------------------
# internals: the discrete operators on (B, H, W) tensors


def _dx(u: torch.Tensor) -> torch.Tensor:
    """Forward differences along columns, ``(B, H, W - 1)`` (the zero last column dropped)."""
    return u[..., 1:] - u[..., :-1]


def _dy(u: torch.Tensor) -> torch.Tensor:
    return u[..., 1:, :] - u[..., :-1, :]


def _dxt(p: torch.Tensor) -> torch.Tensor:
    """Adjoint of :func:`_dx`: ``(B, H, W - 1) -> (B, H, W)``."""
    return F.pad(p, (1, 0)) - F.pad(p, (0, 1))


def _dyt(p: torch.Tensor) -> torch.Tensor:
    return F.pad(p, (0, 0, 1, 0)) - F.pad(p, (0, 0, 0, 1))


def _grad2(u: torch.Tensor) -> torch.Tensor:
    """``|grad u|^2`` at every pixel, ``(B, H, W)``, with the Neumann zeros on the border."""
    return F.pad(_dx(u) ** 2, (0, 1)) + F.pad(_dy(u) ** 2, (0, 0, 0, 1))


def _energy(u, v, f, alpha, beta, epsilon) -> torch.Tensor:
    e = beta * (u - f) ** 2 + alpha * v**2 * _grad2(u) + epsilon * _grad2(v) + (1 - v) ** 2 / (4 * epsilon)
    return e.sum(dim=(-2, -1))


def _cg(apply, b, x, diag, steps):
    """``steps`` iterations of Jacobi-preconditioned conjugate gradients for ``A x = b`` per map,
    from ``x``. Each step minimises ``x^T A x / 2 - b^T x`` over a growing subspace, so the
    quadratic never increases; a map whose residual vanishes stays put."""
    dims = (-2, -1)
    r = b - apply(x)
    z = r / diag
    p = z
    rz = (r * z).sum(dim=dims, keepdim=True)
    for _ in range(steps):
        ap = apply(p)
        pap = (p * ap).sum(dim=dims, keepdim=True)
        ok = pap > 0
        step = torch.where(ok, rz / torch.where(ok, pap, torch.ones_like(pap)), torch.zeros_like(pap))
        x = x + step * p
        r = r - step * ap
        z = r / diag
        rz_new = (r * z).sum(dim=dims, keepdim=True)
        ok = rz > 0
        gamma = torch.where(ok, rz_new / torch.where(ok, rz, torch.ones_like(rz)), torch.zeros_like(rz))
        p = z + gamma * p
        rz = rz_new
    return x


def _minimise(f, alpha, beta, epsilon, iterations, cg_iterations, callback):
    u = f.clone()
    v = torch.ones_like(f)
    c0 = 1.0 / (4.0 * epsilon)

    def report(step):
        if callback is not None:
            callback(step, _energy(u.double(), v.double(), f.double(), alpha, beta, epsilon))

    # Number of grid neighbours of each pixel (the diagonal of D^T D).
    neighbours = F.pad(torch.ones_like(f[..., 1:]), (1, 0)) + F.pad(torch.ones_like(f[..., 1:]), (0, 1))
    neighbours = neighbours + F.pad(torch.ones_like(f[..., 1:, :]), (0, 0, 1, 0)) + F.pad(
        torch.ones_like(f[..., 1:, :]), (0, 0, 0, 1)
    )

    report(0)
    for k in range(1, iterations + 1):
        # (1) v with u fixed: (alpha |Du|^2 + 1/(4 eps)) v + eps D^T D v = 1/(4 eps).
        c = alpha * _grad2(u) + c0

        def apply_v(x):
            return c * x + epsilon * (_dxt(_dx(x)) + _dyt(_dy(x)))

        v = _cg(apply_v, torch.full_like(f, c0), v, c + epsilon * neighbours, cg_iterations)
        # Projecting onto [0, 1] never increases the energy (every term is monotone in the
        # distance to the box, and clipping is 1-Lipschitz).
        v = v.clamp(0.0, 1.0)
        report(2 * k - 1)
        # (2) u with v fixed: (beta + alpha D^T diag(v^2) D) u = beta f.
        w = v * v
        wx, wy = w[..., :, :-1], w[..., :-1, :]

        def apply_u(x):
            return beta * x + alpha * (_dxt(wx * _dx(x)) + _dyt(wy * _dy(x)))

        diag_u = beta + alpha * (
            F.pad(wx, (1, 0)) + F.pad(wx, (0, 1)) + F.pad(wy, (0, 0, 1, 0)) + F.pad(wy, (0, 0, 0, 1))
        )
        u = _cg(apply_u, beta * f, u, diag_u, cg_iterations)
        report(2 * k)

    return u, v


# ---------------------------------------------------------------------------------------------
# internals: validation


def _as_float(t: object, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise InputError(f"{name} must be a tensor, got {type(t).__name__}")
    if t.dtype == torch.bool or t.is_complex():
        raise InputError(f"{name} must hold real numbers, got {t.dtype}")
    return t if t.is_floating_point() else t.to(torch.float32)


def _check_finite(t: torch.Tensor, name: str) -> None:
    if not torch.isfinite(t).all():
        raise InputError(f"{name} holds NaN or infinite values")


def _count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise InputError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


#: What :class:`Smoother` (and ``fastviz overlay --smooth``) accepts.
SMOOTHING = ("none", "ema", "mumford-shah", "mumford-shah+ema")


class Smoother:
    """A post-filter for the maps of a stream of frames: spatial edge-preserving smoothing
    (:func:`ambrosio_tortorelli`, each map alone), then temporal smoothing (:func:`ema`, with
    its state carried from one call to the next, so a video can be fed batch by batch).

    Parameters
    ----------
    spec : {"none", "ema", "mumford-shah", "mumford-shah+ema"} or None
        Which filters run; ``None`` or ``"none"``: the maps pass unchanged.
    ema_alpha : float in (0, 1]
        The weight of the newest map in the moving average (default 0.5: a mean delay of one
        frame, see :func:`ema`).

    Raises
    ------
    InputError
        For an unknown ``spec`` or an ``ema_alpha`` outside (0, 1].

    Examples
    --------
    >>> s = Smoother("ema", ema_alpha=0.5)
    >>> s(torch.ones(1, 2, 2))[0, 0, 0].item(), s(torch.zeros(1, 2, 2))[0, 0, 0].item()
    (1.0, 0.5)
    """

    def __init__(self, spec: str | None = None, ema_alpha: float = 0.5) -> None:
        spec = "none" if spec is None else spec
        if spec not in SMOOTHING:
            raise InputError(f"unknown smoothing {spec!r}: use one of {', '.join(SMOOTHING)}")
        self.spec = spec
        self.ema_alpha = _fraction("ema_alpha", ema_alpha)
        self._state: torch.Tensor | None = None

    @property
    def active(self) -> bool:
        """Whether the maps are changed at all."""
        return self.spec != "none"

    def __call__(self, maps: torch.Tensor) -> torch.Tensor:
        """The next maps of the stream, smoothed: ``(B, H, W)`` in, ``(B, H, W)`` out, on the
        same device (float maps keep their dtype)."""
        if self.spec == "none" or maps.shape[0] == 0:
            return maps
        if self.spec.startswith("mumford-shah"):
            maps = ambrosio_tortorelli(maps)
        if self.spec.endswith("ema"):
            maps, self._state = ema(maps, self.ema_alpha, self._state)
        return maps

    def reset(self) -> None:
        """Forget the moving average's state (a new video)."""
        self._state = None
