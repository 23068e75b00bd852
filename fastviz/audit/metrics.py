"""Faithfulness metrics: deletion and insertion curves, and the statistics of a saliency map.

**Deletion and insertion** (Petsiuk, Das and Saenko, "RISE: Randomized Input Sampling for
Explanation of Black-box Models", BMVC 2018), adapted to regression. Pixels are ranked by the
map, highest first (ties by row-major pixel index). In ``S`` equal steps the top ``k/S`` of the
pixels, all channels, are

* *deleted*: replaced by a baseline, a Gaussian-blurred copy of the frame
  (:func:`fastviz.methods.perturbation.make_baseline`), or
* *inserted*: restored from the frame into the baseline.

RISE plots a class probability along the way; a regression output such as a steering angle has
no probability, so each point of a curve is the **output change** ``|t(f(x_k)) - t(f(x))|``,
in the model's output units (radians for the bundled steering model), where ``t`` is the target
(the single output of a one-output model; for a classifier the clean frame's top class, its
logit) and ``x`` the clean frame. A deletion curve starts at 0 and ends at the baseline's change
``|t(f(b)) - t(f(x))|``; an insertion curve starts there and ends at 0. The area under each
curve is normalised by the length of the fraction axis (trapezoid rule over fractions 0..1), so
it is the mean output change along the curve, in output units:

* ``deletion_auc``: **higher is more faithful** — deleting the pixels the map ranks first moves
  the output fast;
* ``insertion_auc``: **lower is more faithful** — restoring them first brings the output back
  fast.

A curve for a uniformly random pixel order (seeded per frame, so it is reproducible) is the
reference a map must beat: a faithful map has ``deletion_auc > random_deletion_auc`` and
``insertion_auc < random_insertion_auc``. The audit ranks pixels by the map's magnitude
``|m|``: an output change is measured in either direction, and the pixels that drive a steering
angle left are as much its cause as those that drive it right (occlusion's signed deltas,
ranked by sign, would delete one kind first and undo the change with the other).
:func:`pixel_ranks` ranks whatever values it is given.

All forward passes of all orderings of a batch of frames go through the model in chunks planned
by :mod:`fastviz.scheduler` under the memory budget; masked inputs are built on the model's
device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .. import scheduler
from ..errors import InputError
from ..hooks import check_input, model_guard
from ..methods.perturbation import _fast_layout, make_baseline
from ..targets import as_target, bind, evaluate, for_rows

__all__ = [
    "DEFAULT_STEPS",
    "Curves",
    "area_under_curve",
    "fit_r2",
    "map_statistics",
    "perturbation_curves",
    "pixel_ranks",
    "random_ranks",
    "step_counts",
]

#: Steps of the deletion and insertion curves (points: ``steps + 1``, fractions ``0, 1/S, .. 1``).
DEFAULT_STEPS = 16


@dataclass
class Curves:
    """Deletion and insertion curves of ``K`` pixel orderings of ``B`` frames.

    Attributes
    ----------
    fractions : Tensor (S + 1,)
        float64, the fraction of pixels deleted (inserted) at each point, ``k / S``.
    deletion : Tensor (K, B, S + 1)
        float32, output change ``|t(f(x_k)) - t(f(x))|`` with the top ``k/S`` pixels deleted.
    insertion : Tensor (K, B, S + 1)
        float32, output change with the top ``k/S`` pixels restored into the baseline.
    clean : Tensor (B,)
        float32, the target's score of each clean frame, ``t(f(x))``.
    baseline : Tensor (B,)
        float32, the target's score of each baseline, ``t(f(b))``.
    """

    fractions: torch.Tensor
    deletion: torch.Tensor
    insertion: torch.Tensor
    clean: torch.Tensor
    baseline: torch.Tensor

    @property
    def deletion_auc(self) -> torch.Tensor:
        """float32 ``(K, B)``: :func:`area_under_curve` of :attr:`deletion` (higher: more faithful)."""
        return area_under_curve(self.deletion)

    @property
    def insertion_auc(self) -> torch.Tensor:
        """float32 ``(K, B)``: :func:`area_under_curve` of :attr:`insertion` (lower: more faithful)."""
        return area_under_curve(self.insertion)


def area_under_curve(curve: torch.Tensor) -> torch.Tensor:
    """Area under curves sampled at ``S + 1`` equally spaced fractions of ``[0, 1]``.

    Trapezoid rule: ``(c_0 / 2 + c_1 + ... + c_{S-1} + c_S / 2) / S``, the mean value along the
    curve in the curve's units.

    Parameters
    ----------
    curve : Tensor (..., S + 1)
        ``S >= 1``.

    Returns
    -------
    Tensor (...)
        Same dtype as ``curve``.
    """
    if curve.shape[-1] < 2:
        raise InputError(f"a curve needs at least 2 points, got shape {tuple(curve.shape)}")
    steps = curve.shape[-1] - 1
    inner = curve[..., 1:-1].sum(-1)
    return (inner + 0.5 * (curve[..., 0] + curve[..., -1])) / steps


def step_counts(pixels: int, steps: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Pixels deleted (inserted) at each point: ``round(k * pixels / steps)``, ``k = 0 .. steps``
    (halves round up), int64 ``(steps + 1,)``."""
    k = torch.arange(steps + 1, device=device, dtype=torch.int64)
    return torch.div(k * pixels * 2 + steps, 2 * steps, rounding_mode="floor")


def pixel_ranks(maps: torch.Tensor) -> torch.Tensor:
    """Each pixel's rank in a map, 0 for the highest value.

    Ties are ranked by row-major pixel index (first pixel first), so the order is reproducible.

    Parameters
    ----------
    maps : Tensor (..., H, W)
        Finite values.

    Returns
    -------
    Tensor (..., H, W)
        int64 ranks ``0 .. H*W-1``, a permutation per map.

    Raises
    ------
    InputError
        If a map holds NaN or infinity.
    """
    if not torch.isfinite(maps).all():
        raise InputError("a saliency map holds NaN or infinite values; pixels cannot be ranked")
    flat = maps.reshape(*maps.shape[:-2], -1)
    order = torch.argsort(flat, dim=-1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(flat.shape[-1], device=maps.device).expand_as(order))
    return ranks.view(maps.shape)


def random_ranks(seeds: Sequence[int], height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Uniformly random pixel ranks, one permutation per seed (``torch.randperm`` with a CPU
    generator seeded with it), so the same seed gives the same order on every run and device.

    Returns
    -------
    Tensor (len(seeds), H, W)
        int64.
    """
    out = torch.empty((len(seeds), height * width), dtype=torch.int64)
    gen = torch.Generator()
    for i, seed in enumerate(seeds):
        gen.manual_seed(int(seed))
        out[i] = torch.randperm(height * width, generator=gen)
    return out.view(len(seeds), height, width).to(device)


def perturbation_curves(
    model: nn.Module,
    x: torch.Tensor,
    ranks: torch.Tensor,
    *,
    steps: int = DEFAULT_STEPS,
    baseline: float | str | torch.Tensor = "blur",
    blur_sigma: float | None = None,
    target=None,
    memory_budget=None,
    chunk_size: int | None = None,
) -> Curves:
    """Deletion and insertion curves (Petsiuk et al., BMVC 2018, adapted to regression; see the
    module's description) of ``K`` pixel orderings of each frame.

    Parameters
    ----------
    model : nn.Module
        In eval mode.
    x : Tensor (B, C, H, W)
        Frames in the model's input space, on the model's device.
    ranks : Tensor (K, B, H, W)
        int64 pixel ranks, 0 = deleted first: :func:`pixel_ranks` of saliency maps,
        :func:`random_ranks`, or any permutation per frame.
    steps : int
        ``S >= 1``: the curves have ``S + 1`` points.
    baseline : float, "mean", "blur" or Tensor
        What deleted pixels become; default a Gaussian-blurred copy of the frame (``blur_sigma``
        pixels, default a quarter of the shorter side). See
        :func:`fastviz.methods.perturbation.make_baseline`.
    target : Target or callable, optional
        The scalar explained; default the single output, or a classifier's top class on the
        clean frame.
    memory_budget, chunk_size
        See :func:`fastviz.scheduler.plan`: the clean frames' ``B`` rows, then ``B`` baselines and
        ``2 * K * B * (S - 1)`` masked inputs.

    Returns
    -------
    Curves

    Raises
    ------
    InputError
        For ranks of another shape than ``(K, B, H, W)`` or values outside ``0 .. H*W-1``, steps
        below 1, a bad baseline or target, or frames the model cannot take.
    """
    check_input(model, x)
    b, c, h, w = x.shape
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps must be a whole number >= 1, got {steps!r}")
    if ranks.ndim != 4 or ranks.shape[1:] != (b, h, w):
        raise InputError(f"ranks must have shape (K, {b}, {h}, {w}) for frames {tuple(x.shape)}, got {tuple(ranks.shape)}")
    if ranks.dtype not in (torch.int64, torch.int32):
        raise InputError(f"ranks must be int64 or int32, got {ranks.dtype}")
    pixels = h * w
    if ranks.numel() and (int(ranks.min()) < 0 or int(ranks.max()) >= pixels):
        raise InputError(f"ranks must lie in 0 .. {pixels - 1}")
    k = ranks.shape[0]
    if k < 1:
        raise InputError("ranks must hold at least one ordering, got shape (0, ...)")
    ranks = ranks.to(x.device)
    counts = step_counts(pixels, steps, x.device)
    inner = steps - 1  # points strictly inside the curve; 0 and S are the clean frame and the baseline
    per_frame = 2 * inner  # deletion at steps 1 .. S-1, then insertion at steps 1 .. S-1
    with model_guard(model), torch.no_grad():
        x = _fast_layout(model, x)
        layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        base = make_baseline(baseline, x, blur_sigma)
        base = torch.as_tensor(base, dtype=x.dtype, device=x.device).expand_as(x).contiguous(memory_format=layout)
        clean = torch.empty(b, dtype=torch.float32, device=x.device)
        state: dict = {}

        def clean_step(r0: int, r1: int) -> None:
            out = model(x[r0:r1])
            if "target" not in state:
                state["target"] = as_target(target, out)
            part = for_rows(state["target"], r0, r1)  # a per-frame class list, cut to these frames
            choice = bind(part, out)  # per-frame choices (a classifier's top class) on the clean frame
            if choice is not None:
                state.setdefault("choice", choice.new_empty(b))[r0:r1] = choice
            clean[r0:r1] = evaluate(part, out, choice, r1 - r0).float()

        scheduler.run_chunks(
            scheduler.plan(model, x[:1], rows=b, memory_budget=memory_budget, cache_sized=True), clean_step, x.device
        )
        tgt, choice = state["target"], state.get("choice")
        # rows: the b baselines, then for each ordering and frame its deletion and insertion points
        rows = b + k * b * per_frame
        scores = torch.empty(rows, dtype=torch.float32, device=x.device)

        def step(r0: int, r1: int) -> None:
            r = torch.arange(r0, r1, device=x.device)
            j = (r - b).clamp(min=0)
            order = torch.div(j, b * per_frame, rounding_mode="floor") if per_frame else j
            frame = torch.where(r < b, r, torch.div(j, max(per_frame, 1), rounding_mode="floor") % b)
            within = j % max(per_frame, 1)
            inserting = within >= inner
            n = counts[within % max(inner, 1) + 1]
            # a pixel shows the baseline where it is deleted (rank < n) or not yet inserted (rank >= n)
            from_base = (ranks[order.clamp(max=k - 1), frame] < n.view(-1, 1, 1)) ^ inserting.view(-1, 1, 1)
            from_base |= (r < b).view(-1, 1, 1)  # the baseline rows
            inputs = torch.where(from_base.unsqueeze(1), base[frame], x[frame]).contiguous(memory_format=layout)
            out = model(inputs)
            scores[r0:r1] = evaluate(tgt, out, None if choice is None else choice[frame], r1 - r0).float()

        p = scheduler.plan(model, x[:1], rows=rows, memory_budget=memory_budget, chunk=chunk_size, cache_sized=True)
        scheduler.run_chunks(p, step, x.device)
    base_score = scores[:b]
    start = (base_score - clean).abs()
    deletion = torch.empty((k, b, steps + 1), dtype=torch.float32, device=x.device)
    insertion = torch.empty_like(deletion)
    deletion[..., 0] = 0.0
    deletion[..., -1] = start
    insertion[..., 0] = start
    insertion[..., -1] = 0.0
    if inner:
        change = (scores[b:].view(k, b, 2, inner) - clean.view(1, b, 1, 1)).abs()
        deletion[..., 1:-1] = change[:, :, 0]
        insertion[..., 1:-1] = change[:, :, 1]
    fractions = torch.arange(steps + 1, dtype=torch.float64) / steps
    return Curves(fractions=fractions, deletion=deletion, insertion=insertion, clean=clean, baseline=base_score)


def map_statistics(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where a map's mass lies and how spread it is.

    The mass of a pixel is the map's absolute value there (signed maps such as occlusion's deltas
    count both signs).

    Parameters
    ----------
    maps : Tensor (B, H, W)

    Returns
    -------
    centroid : Tensor (B, 2)
        float32 ``(row, column)`` of the centre of mass, in pixels of the map (0 = the centre of
        the first pixel); NaN for a map that is zero everywhere.
    entropy : Tensor (B,)
        float32 Shannon entropy of the mass as a distribution over pixels, divided by
        ``log(H * W)``: 0 when all the mass is in one pixel, 1 when it is spread evenly; NaN for
        a map that is zero everywhere.

    Raises
    ------
    InputError
        For another shape than ``(B, H, W)`` or non-finite values.
    """
    if maps.ndim != 3:
        raise InputError(f"maps must have shape (B, H, W), got {tuple(maps.shape)}")
    if not torch.isfinite(maps).all():
        raise InputError("a saliency map holds NaN or infinite values")
    b, h, w = maps.shape
    mass = maps.detach().abs().double().reshape(b, -1)
    total = mass.sum(-1)
    p = mass / total.clamp_min(torch.finfo(torch.float64).tiny).unsqueeze(-1)
    rows = torch.arange(h, dtype=torch.float64, device=maps.device).repeat_interleave(w)
    cols = torch.arange(w, dtype=torch.float64, device=maps.device).repeat(h)
    centroid = torch.stack([(p * rows).sum(-1), (p * cols).sum(-1)], dim=-1)
    plogp = torch.where(p > 0, p * torch.log(p.clamp_min(torch.finfo(torch.float64).tiny)), torch.zeros_like(p))
    entropy = -plogp.sum(-1) / math.log(h * w) if h * w > 1 else torch.zeros(b, dtype=torch.float64, device=maps.device)
    empty = total <= 0
    centroid[empty] = float("nan")
    entropy = torch.where(empty, torch.full_like(entropy, float("nan")), entropy)
    return centroid.float(), entropy.float()


def fit_r2(prediction: np.ndarray, truth: np.ndarray) -> tuple[float, float, int]:
    """``(R², RMSE, frames)`` of a prediction against the truth over the frames where both are
    finite: ``R² = 1 - mean((p - t)²) / var(t)`` (NaN when the truth is constant or fewer than
    two frames), RMSE in the outputs' units."""
    p = np.asarray(prediction, dtype=np.float64)
    t = np.asarray(truth, dtype=np.float64)
    known = np.isfinite(p) & np.isfinite(t)
    k = int(known.sum())
    if k < 2:
        return float("nan"), float("nan"), k
    err = p[known] - t[known]
    mse = float(np.mean(err**2))
    var = float(np.var(t[known]))
    return (1.0 - mse / var if var > 0 else float("nan")), math.sqrt(mse), k
