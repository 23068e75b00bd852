"""Compare saliency methods on the bundled drive log, to choose ``fastviz overlay``'s default.

Usage: python scripts/compare_methods.py [--frames-every K] [--seeds S] [--methods A,B,...]
       [--out-json docs/method-choice.json] [--out-md docs/method-choice.md] [--grid PNG]
       [--save-maps NPZ | --load-maps NPZ]

Every ``K``-th frame of the bundled held-out log (``fv.data.load_drive_log()``) goes through the
bundled PilotNet (``fv.models.load("pilotnet-carracing")``, ``model.preprocess``); each row of
:data:`VARIANTS` (a registered method with fixed options) maps every sampled frame, and the maps
are measured in the model's input space (66 x 200):

1. **Frame-specificity.** Each map's absolute value is scaled to sum 1 (where the map puts its
   weight). Per frame: the Pearson and the Spearman correlation of that map with the mean map of
   the *other* sampled frames (leave-one-out). Median, quartiles and mean over frames. Lower =
   more frame-specific; a map that draws the same picture on every frame scores near 1. A blank
   map (all zero) has no correlation and is counted apart. The road mask gets the same measure,
   as a reference for how much the scene itself changes.
2. **Road weight.** The fraction of the map's absolute mass on road pixels, next to the road's
   share of the picture. Road pixels are found by colour (:func:`road_mask`); the road band adds
   ~2 recorded pixels around the road. Also the weight on the car's box (:data:`CAR_BOX`) and, as
   a reference, how far painting the car road grey moves the prediction.
3. **Deletion check** (after Petsiuk et al., *RISE*, BMVC 2018, adapted to regression). Pixels
   are ranked by the map's absolute value (ties in random order); the top 0, 1, 2, 5, 10, 20 and
   50% are replaced by a baseline (all channels), every deleted input goes through the model,
   and the curve is ``|prediction - clean prediction|`` in radians against the fraction deleted.
   Its area (trapezoids, divided by the largest fraction: the curve's mean height) is compared
   with the same area for random rankings (``--seeds`` per frame and control, the same for every
   row): *random pixels* (a uniformly random order) and *random blobs* (smoothed noise, as
   contiguous as a smooth map's top pixels). Ratio of the means over frames, with a 95% paired
   bootstrap interval over frames. Baselines: each frame's per-channel mean, and a
   Gaussian-blurred copy (sigma a quarter of the shorter side, as occlusion's ``"blur"``). Above
   1: the map ranks first the pixels the prediction rests on.
4. **Agreement** with :data:`REFERENCE` (occlusion with the mean baseline): the median per-frame
   Pearson correlation of the absolute maps.

Costs per frame are not measured here: they are the figures recorded in ``benchmarks/RESULTS.md``
(2-core CPU), cited in the output. :func:`recommend` states the rule that picks the default.

Writes a JSON (schema ``fastviz.method-choice/1``: every summary, per-frame values, the rules)
and a markdown page of the same tables, and prints the page. Deterministic for given options:
the maps are, and the random rankings, tie-breaks and bootstrap are seeded (``--seed``).
``--save-maps``/``--load-maps`` keep the maps between runs (occlusion is most of the time).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

import fastviz as fv
from fastviz.errors import InputError
from fastviz.methods.perturbation import make_baseline

#: Default sample: every 30th frame of the 1,500 (50 frames; a few minutes on 2 busy cores,
#: nearly all of it the two occlusion rows).
FRAMES_EVERY = 30

#: Fractions of the pixels deleted, in order; 0 is the clean frame.
DELETION_STEPS = (0.0, 0.01, 0.02, 0.05, 0.10, 0.20, 0.50)

#: Road colour rule in the model's input (values 0..255): grey, i.e. channel spread
#: ``max - min <= ROAD_MAX_SPREAD``, and channel mean within ``ROAD_LEVELS``. CarRacing's road is
#: (102..107, same, same); grass is (102, 204..230, 102); curbs are red (255, 0, 0) and white;
#: the car is red and black.
ROAD_MAX_SPREAD = 16
ROAD_LEVELS = (70, 140)
#: The road band: the road mask dilated by this elliptical kernel (rows, cols) in the 66 x 200
#: input, about 2 recorded pixels each way (the input is 84 -> 66 rows, 96 -> 200 columns).
ROAD_BAND_KERNEL = (5, 9)


@dataclass(frozen=True)
class Variant:
    """One row of the comparison: a registered method with fixed options."""

    name: str
    method: str
    options: dict = field(default_factory=dict)
    #: ms per frame on the 2-core CPU, and where the figure comes from (never measured here).
    cost_ms: float = float("nan")
    cost_source: str = ""
    note: str = ""

    def call(self) -> str:
        opts = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return f"fv.explain(model, x, method={self.method!r}{opts})"

    def options_for(self) -> dict:
        opts = dict(self.options)
        if opts.get("target") == "steering":
            opts["target"] = fv.targets.Steering()
        return opts


_RESULTS = "benchmarks/RESULTS.md"
VARIANTS: tuple[Variant, ...] = (
    Variant(
        "visual_backprop", "visual_backprop", {},
        0.72, f"{_RESULTS}, vbp-chain-cpu-b256: forward 178.7 ms + upscaling chain 4.5 ms per 256 frames "
              "(the whole overlay, decode and render included: ~1.7 ms/frame, README: 1,500 frames in ~3 s)",
        note="the current default",
    ),
    Variant(
        "grad_cam", "grad_cam", {},
        0.63, f"{_RESULTS}, peers-gradcam-pilotnet-cpu-b64 (fastviz, median)",
        note="default layer features.5, default target (the raw steering output)",
    ),
    Variant(
        "grad_cam (steering target)", "grad_cam", {"target": "steering"},
        0.63, f"{_RESULTS}, peers-gradcam-pilotnet-cpu-b64 (the target adds no pass)",
        note="fv.targets.Steering(5 deg): the seeds' grad_cam_loss, as in the README example",
    ),
    Variant(
        "occlusion", "occlusion", {},
        348.0, f"{_RESULTS}, occlusion table (fastviz default plan, malloc default): 1,872 windows per frame",
        note="default options: windows 8/16/32, stride 4, baseline 0.0, score delta (signed)",
    ),
    Variant(
        "saliency", "saliency", {},
        0.86, f"{_RESULTS}, peers-saliency-pilotnet-cpu-b64 (fastviz, median)",
    ),
    Variant(
        "guided_backprop", "guided_backprop", {},
        0.94, f"{_RESULTS}, peers-guided-backprop-pilotnet-cpu-b64 (fastviz, median)",
    ),
    Variant(
        "occlusion (baseline=mean)", "occlusion", {"baseline": "mean"},
        348.0, f"{_RESULTS}, occlusion table (same windows; the baseline costs nothing extra)",
        note="the README's API example; the deletion check's own baseline",
    ),
)

#: An overlay default must keep up with a drive log: at most this many ms per frame on the CPU.
REALTIME_MS = 10.0

#: What a deleted pixel becomes (names of :func:`fastviz.methods.perturbation.make_baseline`).
BASELINES = ("mean", "blur")

#: Random rankings the deletion curves are compared with.
CONTROLS = {
    "random pixels": "a uniformly random order of the pixels",
    "random blobs": "pixels ordered by white noise blurred with a Gaussian of sigma "
                    "4 px (cv2.GaussianBlur), so deleted pixels come in blobs as a smooth map's do",
}
RANDOM_BLOB_SIGMA = 4.0

#: The row other maps are compared with ("agreement"): occlusion with the per-channel-mean baseline,
#: a direct measure of what removing each window does to the prediction.
REFERENCE = "occlusion (baseline=mean)"

#: The car's box in the recorded frame as fractions (top, bottom, left, right): rows 65-78 and
#: columns 44-52 of CarRacing's 96 x 96 frame. The camera follows the car, so the car is drawn
#: there in every frame (checked by eye on the bundled log). Painted with :data:`CAR_PAINT`.
CAR_BOX = (65 / 96, 79 / 96, 44 / 96, 53 / 96)
CAR_PAINT = np.array([105, 105, 105], np.uint8)

RULES = {
    "space": "the model's input: 66 x 200, RGB in [0, 1] (model.preprocess)",
    "specificity": "per frame, Pearson / Spearman correlation of |map| / sum|map| with the mean of the other "
                   "sampled frames' |map| / sum|map| (leave-one-out); blank maps excluded and counted",
    "road": f"road pixel: channel spread max-min <= {ROAD_MAX_SPREAD} and channel mean in "
            f"[{ROAD_LEVELS[0]}, {ROAD_LEVELS[1]}] on the 0..255 scale (grey asphalt); road band: the road "
            f"mask dilated by a {ROAD_BAND_KERNEL[0]}x{ROAD_BAND_KERNEL[1]} (rows x cols) ellipse",
    "road_weight": "fraction of sum|map| on road pixels (and on the road band)",
    "deletion": "pixels ranked by |map| (ties in random order), the top fraction of pixels (all channels) "
                "replaced by the baseline, curve = |f(deleted) - f(clean)| in radians at fractions "
                f"{list(DELETION_STEPS)}; AUC = trapezoid area / {DELETION_STEPS[-1]} (the curve's mean height, "
                "radians); ratio = mean AUC over frames / mean control AUC over frames and rankings, 95% paired "
                "bootstrap interval over frames (2000 resamples)",
    "baselines": {"mean": "each frame's per-channel mean (fastviz occlusion's 'mean')",
                  "blur": "Gaussian blur of the frame, sigma = 66/4 = 16.5 px (fastviz occlusion's 'blur')"},
    "car": "box rows 65-78, columns 44-52 of the 96 x 96 recorded frame, painted (105, 105, 105) for the check",
    "cost": "ms per frame on the project's 2-core CPU, from benchmarks/RESULTS.md; not measured by this script",
}


# --------------------------------------------------------------------------- measures


def road_mask(x: np.ndarray) -> np.ndarray:
    """Road pixels of frames in the model's input space, by colour.

    Parameters
    ----------
    x : ndarray, float, shape (B, 3, H, W)
        RGB frames in [0, 1] (``model.preprocess`` output).

    Returns
    -------
    ndarray, bool, shape (B, H, W)
        True where the pixel is grey road: channel spread ``max - min <= 16`` and channel mean in
        [70, 140], on the 0..255 scale. Excludes grass (green), curbs (red/white), the car, and
        grass/road edge pixels mixed more than ~15% with green.

    Raises
    ------
    InputError
        If ``x`` is not ``(B, 3, H, W)``.
    """
    if x.ndim != 4 or x.shape[1] != 3:
        raise InputError(f"road_mask expects frames (B, 3, H, W), got shape {x.shape}")
    v = x.astype(np.float32) * 255.0
    spread = v.max(axis=1) - v.min(axis=1)
    level = v.mean(axis=1)
    return (spread <= ROAD_MAX_SPREAD) & (level >= ROAD_LEVELS[0]) & (level <= ROAD_LEVELS[1])


def road_band(mask: np.ndarray) -> np.ndarray:
    """The road masks ``(B, H, W)`` bool dilated by :data:`ROAD_BAND_KERNEL` (road and its edges)."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, ROAD_BAND_KERNEL[::-1])
    return np.stack([cv2.dilate(m.astype(np.uint8), kernel).astype(bool) for m in mask])


def rank_average(a: np.ndarray) -> np.ndarray:
    """Ranks of each row of ``a`` (N, P) from 1, ties given their average rank (as Spearman's rho needs)."""
    a = np.asarray(a)
    out = np.empty(a.shape, dtype=np.float64)
    for i, row in enumerate(a):
        _, inverse, counts = np.unique(row, return_inverse=True, return_counts=True)
        ends = np.cumsum(counts)  # rank of the last member of each group of ties
        out[i] = (ends - (counts - 1) / 2.0)[inverse]
    return out


def pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row of ``a`` (N, P) with the same row of ``b``; NaN where a row is
    constant (up to rounding: spread below 1e-9 of the row's norm)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    ac = a - a.mean(axis=1, keepdims=True)
    bc = b - b.mean(axis=1, keepdims=True)
    na, nb = np.sqrt((ac * ac).sum(axis=1)), np.sqrt((bc * bc).sum(axis=1))
    ok = (na > 1e-9 * np.sqrt((a * a).sum(axis=1))) & (nb > 1e-9 * np.sqrt((b * b).sum(axis=1))) & (na > 0) & (nb > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ok, (ac * bc).sum(axis=1) / np.where(ok, na * nb, 1.0), np.nan)


def specificity(maps: np.ndarray) -> dict[str, np.ndarray]:
    """Per-frame correlation of each map's weight with the leave-one-out mean weight map.

    Parameters
    ----------
    maps : ndarray, shape (N, H, W)
        Saliency maps (any sign, any units); N >= 2.

    Returns
    -------
    dict
        ``"pearson"``, ``"spearman"``: float64 (N,), NaN for blank maps; ``"blank"``: bool (N,).
        Weights are ``|map| / sum |map|``; blank maps take no part in the mean.
    """
    n = maps.shape[0]
    w = np.abs(maps.reshape(n, -1)).astype(np.float64)
    total = w.sum(axis=1)
    blank = ~(total > 0)
    w[~blank] /= total[~blank, None]
    w[blank] = 0.0
    k = int((~blank).sum())
    # leave-one-out mean of the non-blank weight maps
    loo = (w.sum(axis=0, keepdims=True) - w) / np.maximum(k - (~blank).astype(np.float64)[:, None], 1.0)
    pearson = pearson_rows(w, loo)
    spearman = pearson_rows(rank_average(w), rank_average(loo))
    pearson[blank] = np.nan
    spearman[blank] = np.nan
    return {"pearson": pearson, "spearman": spearman, "blank": blank}


def mass_on(maps: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Fraction of each map's absolute mass inside ``mask`` (both (N, H, W)); NaN for blank maps."""
    w = np.abs(maps).reshape(maps.shape[0], -1).astype(np.float64)
    total = w.sum(axis=1)
    inside = (w * mask.reshape(mask.shape[0], -1)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, inside / np.where(total > 0, total, 1.0), np.nan)


def random_blobs(shape: tuple[int, int, int], rng: np.random.Generator, sigma: float = RANDOM_BLOB_SIGMA) -> np.ndarray:
    """Smooth random maps ``(N, H, W)`` float32: white noise blurred with a Gaussian of ``sigma`` pixels."""
    noise = rng.standard_normal(shape).astype(np.float32)
    blobs = np.stack([cv2.GaussianBlur(z, (0, 0), sigma, borderType=cv2.BORDER_REFLECT) for z in noise])
    return blobs - blobs.min(axis=(1, 2), keepdims=True)  # >= 0: ranking by |map| ranks by the noise itself


def order_by(maps: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Pixel ranks (N, H*W), int64: 0 for the pixel with the largest ``|map|``, ties in random order."""
    n = maps.shape[0]
    a = np.abs(maps.reshape(n, -1))
    ranks = np.empty(a.shape, dtype=np.int64)
    for i in range(n):
        order = np.lexsort((rng.random(a.shape[1]), -a[i]))  # last key is the primary one
        ranks[i, order] = np.arange(a.shape[1])
    return ranks


@torch.no_grad()
def deletion_curves(model, x: torch.Tensor, ranks: torch.Tensor, baseline: torch.Tensor | float,
                    steps=DELETION_STEPS, chunk: int = 256) -> torch.Tensor:
    """``|f(x with the top pixels deleted) - f(x)|`` for several rankings of each frame.

    Parameters
    ----------
    model : nn.Module
        A one-output regressor (PilotNet), in eval mode.
    x : Tensor (B, C, H, W)
        Frames in the model's input space.
    ranks : Tensor (B, R, H*W), int64
        R rankings per frame: a pixel of rank ``r`` is deleted once ``r < round(step * H * W)``.
    baseline : float or Tensor broadcastable to (B, C, H, W)
        What a deleted pixel (all channels) becomes.
    steps : sequence of float
        Fractions of pixels deleted, in [0, 1].

    Returns
    -------
    Tensor (B, R, len(steps)), float32
        Absolute change of the prediction, in the output's units (radians).
    """
    b, c, h, w = x.shape
    r = ranks.shape[1]
    base = torch.as_tensor(baseline, dtype=x.dtype).expand(b, c, h, w)
    counts = torch.tensor([int(round(s * h * w)) for s in steps])
    clean = model(x).reshape(b, -1)[:, 0]
    out = torch.empty(b, r, len(steps))
    for i in range(b):
        masks = ranks[i][:, None, :] < counts[None, :, None]  # (R, S, P)
        masks = masks.reshape(r * len(steps), 1, h, w)
        rows = torch.where(masks, base[i:i + 1], x[i:i + 1])
        preds = torch.cat([model(rows[j:j + chunk]).reshape(-1, 1)[:, 0] for j in range(0, rows.shape[0], chunk)])
        out[i] = (preds - clean[i]).abs().reshape(r, len(steps))
    return out


def auc(curves: np.ndarray, steps=DELETION_STEPS) -> np.ndarray:
    """Area under deletion curves (..., S) over the fraction deleted, divided by its range: mean height."""
    s = np.asarray(steps, dtype=np.float64)
    y = np.asarray(curves, dtype=np.float64)
    area = ((y[..., 1:] + y[..., :-1]) * np.diff(s) / 2.0).sum(axis=-1)
    return area / (s[-1] - s[0])


def bootstrap_ratio(num: np.ndarray, den: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% interval of ``mean(num) / mean(den)`` resampling frames (paired) with replacement."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, num.shape[0], size=(n, num.shape[0]))
    ratios = num[idx].mean(axis=1) / den[idx].mean(axis=1)
    lo, hi = np.percentile(ratios, [2.5, 97.5])
    return float(lo), float(hi)


def _list(v: np.ndarray, digits: int = 5) -> list:
    """Per-frame values for the JSON: rounded floats, None for NaN."""
    return [None if not np.isfinite(a) else round(float(a), digits) for a in np.asarray(v, dtype=np.float64)]


def summary(v: np.ndarray) -> dict:
    """Median, quartiles and count of the finite values of ``v``."""
    v = np.asarray(v, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"median": None, "q25": None, "q75": None, "mean": None, "n": 0}
    q25, med, q75 = np.percentile(v, [25, 50, 75])
    return {"median": float(med), "q25": float(q25), "q75": float(q75), "mean": float(v.mean()), "n": int(v.size)}


# --------------------------------------------------------------------------- the run


def compute_maps(model, x: torch.Tensor, variant: Variant, batch: int) -> np.ndarray:
    """The variant's maps of all frames ``(N, H, W)`` float32, in batches with a progress bar."""
    opts = variant.options_for()
    parts = []
    for i in tqdm(range(0, x.shape[0], batch), desc=variant.name, unit="batch", file=sys.stderr, leave=False):
        parts.append(fv.explain(model, x[i:i + batch], method=variant.method, **opts).float().cpu().numpy())
    return np.concatenate(parts)


def load_maps(path: str, idx: np.ndarray, variants: list[Variant]) -> dict[str, np.ndarray]:
    """Maps saved by ``--save-maps`` for the same frames; rows missing from the file are computed.

    Raises
    ------
    SystemExit
        If the file cannot be read or was made from other frames.
    """
    try:
        with np.load(path) as f:
            frames, names = f["frames"], [str(n) for n in f["names"]]
            saved = {n: f[f"map{i}"] for i, n in enumerate(names)}
    except (OSError, KeyError, ValueError) as exc:
        raise SystemExit(f"--load-maps {path}: cannot read saved maps ({exc})") from None
    if frames.shape != idx.shape or not (frames == idx).all():
        raise SystemExit(f"--load-maps {path}: saved for other frames (every {frames[1] - frames[0] if frames.size > 1 else '?'}th"
                         f", {frames.size} frames); use the same --frames-every and --first")
    return {v.name: saved[v.name].astype(np.float32) for v in variants if v.name in saved}


def car_mask(model, frame_shape: tuple[int, int]) -> np.ndarray:
    """The car's box (:data:`CAR_BOX`, recorded-frame fractions) in the model's input space, bool (H, W)."""
    h, w = frame_shape
    box = np.zeros((1, h, w, 3), np.uint8)
    y0, y1, x0, x1 = (int(round(f * s)) for f, s in zip(CAR_BOX, (h, h, w, w)))
    box[0, y0:y1, x0:x1] = 255
    return model.preprocess(box)[0, 0].cpu().numpy() > 0


@torch.no_grad()
def car_painted_change(model, frames: np.ndarray) -> np.ndarray:
    """``|f(frame with the car painted road grey) - f(frame)|`` per frame (radians), float64 (N,)."""
    h, w = frames.shape[1:3]
    y0, y1, x0, x1 = (int(round(f * s)) for f, s in zip(CAR_BOX, (h, h, w, w)))
    painted = frames.copy()
    painted[:, y0:y1, x0:x1] = CAR_PAINT
    clean = model(model.preprocess(frames))[:, 0]
    return (model(model.preprocess(painted))[:, 0] - clean).abs().double().cpu().numpy()


def _deletion_entry(a: np.ndarray, r: np.ndarray, curves: np.ndarray, seed: int) -> dict:
    lo, hi = bootstrap_ratio(a, r, seed=seed)
    return {
        "auc_rad": float(a.mean()),
        "ratio_to_random": float(a.mean() / r.mean()),
        "ratio_ci95": [lo, hi],
        "frames_above_random": float((a > r).mean()),
        "curve_rad": [float(c) for c in curves.mean(axis=0)],
    }


def _measure_args(args: argparse.Namespace) -> list[str]:
    """The options that change the numbers (output paths and the maps' cache left out), as given."""
    out = []
    for opt, dest, default in (("--frames-every", "frames_every", FRAMES_EVERY), ("--first", "first", 0),
                               ("--seeds", "seeds", 5), ("--seed", "seed", 0)):
        if getattr(args, dest) != default:
            out += [opt, str(getattr(args, dest))]
    if args.methods != [v.name for v in VARIANTS]:
        out += ["--methods", ",".join(args.methods)]
    return out


def run(args: argparse.Namespace) -> dict:
    """Compute every measure; returns the result dict written as JSON."""
    torch.manual_seed(0)
    model = fv.models.load("pilotnet-carracing")
    log = fv.data.load_drive_log()
    idx = np.arange(args.first, len(log), args.frames_every)
    if idx.size < 3:
        raise SystemExit(f"--frames-every {args.frames_every} leaves {idx.size} frames; need at least 3")
    frames = log.frames[idx]
    x = model.preprocess(frames)
    with torch.no_grad():
        pred = model(x)[:, 0].double().cpu().numpy()
    xs = x.cpu().numpy()
    road = road_mask(xs)
    band = road_band(road)
    car = np.broadcast_to(car_mask(model, frames.shape[1:3]), road.shape)
    variants = [v for v in VARIANTS if v.name in args.methods]
    print(f"{idx.size} frames (every {args.frames_every}th from {args.first}) of {log.path.name}; "
          f"rows: {', '.join(v.name for v in variants)}", file=sys.stderr)

    maps = load_maps(args.load_maps, idx, variants) if args.load_maps else {}
    for v in variants:
        if v.name not in maps:
            maps[v.name] = compute_maps(model, x, v, 8 if v.method == "occlusion" else 64)
    if args.save_maps:
        tmp = Path(args.save_maps).with_name(Path(args.save_maps).name + f".tmp-{os.getpid()}.npz")
        np.savez_compressed(tmp, frames=idx, names=np.array(list(maps)), **{f"map{i}": m for i, m in enumerate(maps.values())})
        os.replace(tmp, args.save_maps)

    # rankings: one per method, then the controls (args.seeds each), the same for every method
    rng = np.random.default_rng(args.seed)
    n, hh, ww = idx.size, xs.shape[2], xs.shape[3]
    method_ranks = [order_by(maps[name], rng) for name in maps]
    controls = {
        "random pixels": [order_by(np.zeros((n, hh, ww), np.float32), rng) for _ in range(args.seeds)],
        "random blobs": [order_by(random_blobs((n, hh, ww), rng), rng) for _ in range(args.seeds)],
    }
    all_ranks = torch.from_numpy(np.stack(method_ranks + controls["random pixels"] + controls["random blobs"], axis=1))
    k = len(maps)
    control_cols = {"random pixels": slice(k, k + args.seeds), "random blobs": slice(k + args.seeds, k + 2 * args.seeds)}

    deletion = {}
    for base_name in BASELINES:
        base = make_baseline(base_name, x)
        curves = []
        for i in tqdm(range(0, n, 8), desc=f"deletion ({base_name})", unit="batch", file=sys.stderr, leave=False):
            b = base[i:i + 8] if isinstance(base, torch.Tensor) else base
            curves.append(deletion_curves(model, x[i:i + 8], all_ranks[i:i + 8], b).numpy())
        deletion[base_name] = np.concatenate(curves)  # (N, rankings, steps)

    road_spec = specificity(road.astype(np.float32))
    car_change = car_painted_change(model, frames)
    result = {
        "schema": "fastviz.method-choice/1",
        "command": shlex.join(["python", "scripts/compare_methods.py", *_measure_args(args)]),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "software": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                     "fastviz": fv.__version__},
        "sample": {"log": log.path.name, "frames_every": args.frames_every, "first": args.first,
                   "frames": idx.tolist(), "n": int(n), "random_rankings_per_frame": args.seeds,
                   "recorded_steering_rad": summary(log.steering[idx]), "predicted_steering_rad": summary(pred),
                   "abs_recorded_steering_above_5deg": float((np.abs(log.steering[idx]) > np.radians(5)).mean())},
        "rules": RULES | {"deletion_controls": f"{args.seeds} rankings per frame and control: " + "; ".join(
            f"{c}: {CONTROLS[c]}" for c in CONTROLS)},
        "road_share": summary(road.reshape(n, -1).mean(axis=1)),
        "road_band_share": summary(band.reshape(n, -1).mean(axis=1)),
        "reference": {
            "road_mask_specificity": {"pearson": summary(road_spec["pearson"]),
                                      "spearman": summary(road_spec["spearman"]),
                                      "per_frame_pearson": _list(road_spec["pearson"])},
            "road_share_per_frame": _list(road.reshape(n, -1).mean(axis=1)),
            "car": {"box_recorded_fractions": list(CAR_BOX), "share_of_picture": float(car[0].mean()),
                    "painted_as_road_abs_change_rad": summary(car_change),
                    "painted_as_road_abs_change_max_rad": float(car_change.max()),
                    "abs_prediction_rad": summary(np.abs(pred))},
        },
        "controls": {},
        "methods": {},
    }
    for base_name, curves in deletion.items():
        result["controls"][base_name] = {
            c: {"auc_rad": float(auc(curves[:, cols, :]).mean()),
                "curve_rad": [float(v) for v in curves[:, cols, :].mean(axis=(0, 1))],
                "auc_spread_over_seeds_rad": float(auc(curves[:, cols, :]).mean(axis=0).std())}
            for c, cols in control_cols.items()
        }
    for j, v in enumerate(variants):
        m = maps[v.name]
        spec = specificity(m)
        entry = {
            "method": v.method, "options": {key: str(o) for key, o in v.options.items()}, "call": v.call(),
            "note": v.note, "signed": bool((m < 0).any()),
            "cost_ms_per_frame": v.cost_ms, "cost_source": v.cost_source,
            "blank_frames": int(spec["blank"].sum()),
            "specificity": {"pearson": summary(spec["pearson"]), "spearman": summary(spec["spearman"])},
            "road_weight": summary(mass_on(m, road)),
            "road_band_weight": summary(mass_on(m, band)),
            "car_weight": summary(mass_on(m, car)),
            "deletion": {},
            "per_frame": {"pearson": _list(spec["pearson"]), "spearman": _list(spec["spearman"]),
                          "road_weight": _list(mass_on(m, road))},
        }
        for base_name, curves in deletion.items():
            a = auc(curves[:, j, :])
            entry["deletion"][base_name] = {
                c: _deletion_entry(a, auc(curves[:, cols, :]).mean(axis=1), curves[:, j, :], args.seed)
                for c, cols in control_cols.items()
            }
            entry["per_frame"][f"deletion_auc_rad_{base_name}"] = _list(a)
        result["methods"][v.name] = entry
    if REFERENCE in maps:
        w_ref = np.abs(maps[REFERENCE]).reshape(n, -1)
        for name, m in maps.items():
            agree = pearson_rows(np.abs(m).reshape(n, -1).astype(np.float64), w_ref)
            result["methods"][name]["agreement_with_reference"] = summary(agree) | {"reference": REFERENCE}
    result["winners"] = winners(result)
    result["recommendation"] = recommend(result)
    if args.grid:
        write_grid(args.grid, xs, road, maps, idx, pred)
    return result


def _ratio(e: dict, base: str, control: str = "random pixels") -> float:
    return e["deletion"][base][control]["ratio_to_random"]


def faithfulness(e: dict) -> float:
    """Geometric mean of a row's deletion ratios over every baseline and control (1 = as random)."""
    return float(np.exp(np.mean([np.log(_ratio(e, b, c)) for b in BASELINES for c in CONTROLS])))


def winners(result: dict) -> dict:
    """The best row on each criterion (names), from a result dict."""
    ms = result["methods"]
    out = {
        "frame-specificity (lowest mean Pearson)": min(ms, key=lambda n: ms[n]["specificity"]["pearson"]["mean"]),
        "road weight (highest median)": max(ms, key=lambda n: ms[n]["road_weight"]["median"]),
        **{f"deletion, {b} baseline, against {c}": max(ms, key=lambda n: _ratio(ms[n], b, c))
           for b in BASELINES for c in CONTROLS},
        "deletion, all four (geometric mean)": max(ms, key=lambda n: faithfulness(ms[n])),
        "cost (lowest)": min(ms, key=lambda n: ms[n]["cost_ms_per_frame"]),
    }
    agree = {n: e["agreement_with_reference"]["median"] for n, e in ms.items()
             if e.get("agreement_with_reference") and n != REFERENCE}
    if agree:
        out[f"agreement with `{REFERENCE}` (highest median Pearson)"] = max(agree, key=agree.get)
    return out


def recommend(result: dict) -> dict:
    """Overlay's default, by a fixed rule: fast enough, then faithful, then the most faithful.

    (1) Fast enough for a whole drive log: cost <= 10 ms per frame on the 2-core CPU. (2) Faithful:
    the deletion ratio's 95% interval lies above 1 for every baseline against both random
    controls (if no row passes, against random pixels only; if none still, every fast row).
    (3) Of those, the highest faithfulness (geometric mean of the four deletion ratios). Rows
    within 10% of the best count as tied and are ranked by frame-specificity (mean Pearson,
    lower first) plus road weight (median, higher first), ranks summed; then by cost.
    Faithfulness leads because the overlay answers "which pixels drove this output?";
    specificity and road weight are plausibility checks, not measures of that.
    """
    ms = result["methods"]
    fast = [n for n in ms if ms[n]["cost_ms_per_frame"] <= REALTIME_MS]

    def passes(n: str, controls) -> bool:
        return all(ms[n]["deletion"][b][c]["ratio_ci95"][0] > 1.0 for b in BASELINES for c in controls)

    faithful = [n for n in fast if passes(n, CONTROLS)] or [n for n in fast if passes(n, ["random pixels"])]
    pool = faithful or fast
    best = max(faithfulness(ms[n]) for n in pool)
    tied = [n for n in pool if faithfulness(ms[n]) >= 0.9 * best]
    order = {
        "specificity": sorted(tied, key=lambda n: ms[n]["specificity"]["pearson"]["mean"]),
        "road_weight": sorted(tied, key=lambda n: -ms[n]["road_weight"]["median"]),
    }
    plaus = {n: sum(o.index(n) for o in order.values()) for n in tied}
    choice = min(tied, key=lambda n: (plaus[n], ms[n]["cost_ms_per_frame"]))
    rule = " ".join(line.strip() for line in recommend.__doc__.split("\n\n", 1)[1].splitlines())
    return {"variant": choice, "method": ms[choice]["method"], "options": ms[choice]["options"], "rule": rule,
            "fast_enough": fast, "faithful_and_fast": faithful,
            "faithfulness": {n: faithfulness(ms[n]) for n in ms}, "tied_within_10_percent": tied}


# --------------------------------------------------------------------------- output


def _f(v, digits=2) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _iqr(s: dict, digits=2) -> str:
    return f"{_f(s['median'], digits)} [{_f(s['q25'], digits)}, {_f(s['q75'], digits)}]"


def _ci(d: dict) -> str:
    return f"{d['ratio_to_random']:.2f} [{d['ratio_ci95'][0]:.2f}, {d['ratio_ci95'][1]:.2f}]"


def markdown(result: dict) -> str:
    """The tables, winners and recommendation as markdown."""
    ms = result["methods"]
    smp = result["sample"]
    ref = result["reference"]
    car = ref["car"]
    rec = result["recommendation"]
    where = [
        "| method | cost (ms/frame) | specificity: Pearson median [IQR] | mean | Spearman median | road weight "
        "median [IQR] | road band weight | weight on the car | blank maps |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, e in ms.items():
        sp = e["specificity"]
        where.append(
            f"| `{name}` | {e['cost_ms_per_frame']:g} | {_iqr(sp['pearson'])} | {_f(sp['pearson']['mean'])} | "
            f"{_f(sp['spearman']['median'])} | {_iqr(e['road_weight'])} | {_f(e['road_band_weight']['median'])} | "
            f"{_f(e['car_weight']['median'])} | {e['blank_frames']}/{smp['n']} |"
        )
    rs = ref["road_mask_specificity"]
    where.append(f"| *road mask (reference)* | | {_iqr(rs['pearson'])} | {_f(rs['pearson']['mean'])} | "
                 f"{_f(rs['spearman']['median'])} | 1 | | | |")
    has_ref = any(e.get("agreement_with_reference") for e in ms.values())
    head = " | ".join(f"{b} baseline, / {c}" for b in BASELINES for c in CONTROLS)
    faith = [f"| method | {head} | geometric mean |" + (f" agreement with `{REFERENCE}` |" if has_ref else ""),
             "|---|" + "---:|" * (len(BASELINES) * len(CONTROLS) + 1 + has_ref)]
    for name, e in ms.items():
        cells = " | ".join(_ci(e["deletion"][b][c]) for b in BASELINES for c in CONTROLS)
        agree = e.get("agreement_with_reference")
        faith.append(f"| `{name}` | {cells} | **{faithfulness(e):.2f}** |"
                     + (f" {_f(agree['median']) if agree else '–'} |" if has_ref else ""))
    steps = " | ".join(f"{100 * s:g}%" for s in DELETION_STEPS)
    curve_lines = [f"| ranking | {steps} | AUC (mrad) |", "|---|" + "---:|" * (len(DELETION_STEPS) + 1)]

    def curve_row(label: str, d: dict) -> str:
        return f"| {label} | " + " | ".join(f"{1000 * v:.1f}" for v in d["curve_rad"]) + f" | {1000 * d['auc_rad']:.1f} |"

    for name, e in ms.items():
        curve_lines.append(curve_row(f"`{name}`", e["deletion"]["mean"]["random pixels"]))
    for c, d in result["controls"]["mean"].items():
        curve_lines.append(curve_row(c, d))
    share = result["road_share"]
    opts = "".join(f" --{k} {v}" for k, v in rec["options"].items())
    ticks = lambda names: ", ".join(f"`{n}`" for n in names) or "none"  # noqa: E731
    return "\n".join([
        "# Which method should `fastviz overlay` draw by default?",
        "",
        f"Measured by `{result['command']}` ({result['date']}, torch {result['software']['torch']}, CPU): "
        f"{smp['n']} frames (every {smp['frames_every']}th) of the bundled held-out log `{smp['log']}` "
        f"({100 * smp['abs_recorded_steering_above_5deg']:.0f}% of them steering more than 5 degrees), the bundled "
        "PilotNet, every map in the model's input space (66 x 200). All numbers, per-frame values included, are in "
        "`docs/method-choice.json`; the script's docstring defines each measure.",
        "",
        "## Where the maps put their weight",
        "",
        "- **specificity**: the correlation of a frame's map (|map| scaled to sum 1) with the mean map of the other "
        "sampled frames: median [quartiles] and mean. Lower = more frame-specific. Most of the log is straight road, "
        "where the scene itself hardly changes: the road mask's own figure is the reference, and the mean shows how "
        "far maps move in the frames where the scene does change.",
        f"- **road weight**: the fraction of |map| on grey road pixels; the road covers {_iqr(share)} of the picture. "
        "The road band adds ~2 recorded pixels around the road (its edges). **Weight on the car**: on the car's box "
        f"({100 * car['share_of_picture']:.1f}% of the picture).",
        "",
        "\n".join(where),
        "",
        "## Whether the pixels they rank first matter to the prediction (deletion check)",
        "",
        "Pixels deleted in order of |map| (0 to 50%), the mean |change of the predicted steering| along the curve, "
        "divided by the same for random orders of the pixels: **random pixels**, or **random blobs** (orders of "
        "smoothed noise, contiguous as a smooth map's top pixels are): ratio of the means over frames "
        "[95% bootstrap interval over frames]. Above 1: the map finds pixels the prediction rests "
        "on; below 1: it ranks first pixels that matter less than random ones."
        + (f" **Agreement**: median per-frame Pearson correlation of |map| with `{REFERENCE}`'s |map|." if has_ref else ""),
        "",
        "\n".join(faith),
        "",
        "Deletion curves (mean baseline): mean |change of the prediction| in milliradians after deleting the top "
        "fraction of pixels:",
        "",
        "\n".join(curve_lines),
        "",
        f"The car is drawn at the same place in every frame. Painting it road grey changes the prediction by "
        f"{1000 * car['painted_as_road_abs_change_rad']['median']:.1f} mrad (median over the sampled frames; at most "
        f"{1000 * car['painted_as_road_abs_change_max_rad']:.1f}); the median |prediction| is "
        f"{1000 * car['abs_prediction_rad']['median']:.1f} mrad.",
        "",
        "Costs per frame (2-core CPU) are from `benchmarks/RESULTS.md`: "
        + "; ".join(f"`{n}` {e['cost_ms_per_frame']:g} ms ({e['cost_source']})" for n, e in ms.items()) + ".",
        "",
        "## Winners",
        "",
        "\n".join(f"- {crit}: `{name}`" for crit, name in result["winners"].items()),
        "",
        "## Recommendation",
        "",
        f"Rule (`recommend` in the script): {rec['rule']}",
        "",
        f"Fast enough: {ticks(rec['fast_enough'])}. Faithful: {ticks(rec['faithful_and_fast'])}. "
        f"Within 10% of the most faithful of those: {ticks(rec['tied_within_10_percent'])}.",
        "",
        f"**Recommended default: `{rec['variant']}`** (`fastviz overlay --method {rec['method']}{opts}`).",
        "",
    ])


def write_grid(path: str, xs: np.ndarray, road: np.ndarray, maps: dict, idx: np.ndarray, pred: np.ndarray,
               rows: int = 6) -> None:
    """A PNG for looking: per frame (rows: the sharpest predicted turns, then frames evenly spread), the
    input with the road outlined, then each |map| in jet, each scaled to its own maximum."""
    turns = np.argsort(-np.abs(pred))[: rows // 2]
    spread = [i for i in np.linspace(0, len(idx) - 1, len(idx)).round().astype(int) if i not in turns]
    spread = [spread[j] for j in np.linspace(0, len(spread) - 1, rows - len(turns)).round().astype(int)] if spread else []
    picks = sorted(set(turns.tolist()) | set(spread))
    out_rows = []
    for i in picks:
        img = (xs[i].transpose(1, 2, 0) * 255).round().astype(np.uint8).copy()
        contours, _ = cv2.findContours(road[i].astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(img, contours, -1, (255, 0, 255), 1)
        panels = [img]
        for m in maps.values():
            a = np.abs(m[i])
            a = a / a.max() if a.max() > 0 else a
            heat = cv2.cvtColor(cv2.applyColorMap((a * 255).astype(np.uint8), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
            panels.append(heat)
        row = np.concatenate([np.pad(p, ((2, 2), (2, 2), (0, 0)), constant_values=255) for p in panels], axis=1)
        cv2.putText(row, f"frame {idx[i]} pred {pred[i]:+.3f}", (4, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1)
        out_rows.append(row)
    header = np.full((14, out_rows[0].shape[1], 3), 255, np.uint8)
    for k, name in enumerate(["input (road outlined)", *maps]):
        cv2.putText(header, name[:28], (4 + k * 204, 11), cv2.FONT_HERSHEY_SIMPLEX, 0.33, (0, 0, 0), 1)
    picture = np.concatenate([header, *out_rows], axis=0)
    picture = cv2.resize(picture, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    if not cv2.imwrite(path, cv2.cvtColor(picture, cv2.COLOR_RGB2BGR)):
        raise SystemExit(f"cannot write {path}")


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames-every", type=int, default=FRAMES_EVERY, metavar="K",
                    help=f"use every K-th frame of the bundled log (default {FRAMES_EVERY}: 50 frames, a few minutes on 2 cores)")
    ap.add_argument("--first", type=int, default=0, help="first frame used (default 0)")
    ap.add_argument("--seeds", type=int, default=5, help="random rankings per frame for the deletion check (default 5)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random rankings, tie-breaks and bootstrap")
    ap.add_argument("--methods", default=",".join(v.name for v in VARIANTS),
                    help="comma-separated rows (default: all): " + "; ".join(v.name for v in VARIANTS))
    ap.add_argument("--out-json", default="docs/method-choice.json")
    ap.add_argument("--out-md", default="docs/method-choice.md")
    ap.add_argument("--grid", metavar="PNG", help="also write a picture of some frames' maps (for checking by eye)")
    ap.add_argument("--save-maps", metavar="NPZ", help="save the maps (to re-measure without recomputing them)")
    ap.add_argument("--load-maps", metavar="NPZ", help="reuse maps saved by --save-maps for the same frames")
    args = ap.parse_args(argv)
    if args.frames_every < 1 or args.seeds < 1 or args.first < 0:
        ap.error("--frames-every and --seeds must be >= 1, --first >= 0")
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    known = {v.name for v in VARIANTS}
    unknown = [m for m in args.methods if m not in known]
    if unknown or not args.methods:
        ap.error(f"unknown --methods {unknown}; choose from: {', '.join(sorted(known))}")

    result = run(args)
    md = markdown(result)
    _write(Path(args.out_json), json.dumps(result, indent=1) + "\n")
    _write(Path(args.out_md), md)
    print(md)
    print(f"-> {args.out_json}, {args.out_md}", file=sys.stderr)


if __name__ == "__main__":
    main()
