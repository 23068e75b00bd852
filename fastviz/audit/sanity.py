"""Sanity checks for saliency maps: the model-parameter randomisation test.

Adebayo, Gilmer, Muelly, Goodfellow, Hardt and Kim, "Sanity Checks for Saliency Maps",
NeurIPS 2018: if a method's maps of a trained network look like its maps of the same network
with random weights, the maps cannot be telling us what the network learned — they show the
input (edges, bright regions) or the architecture's own bias. The test here re-initialises
every layer of a copy of the model at once (the paper's "full" randomisation, each module's own
``reset_parameters``, with a fixed seed so the copy is the same on every run), computes the
method's maps of the same frames with the trained and the random copy, and measures their
similarity by Spearman's rank correlation over the pixels of each frame. One random draw can be
degenerate (on the bundled model, seed 0 gates every gradient of guided backprop to zero, seed 1
does not), so the test uses several seeds (:data:`RANDOM_SEEDS`) and averages over all frames
and seeds.

Maps are compared as **absolute values** (the paper's "absolute-value" variant): a signed map's
sign is not comparable between two networks, its magnitude is. The signed correlation is
reported beside it. A method **passes** when the mean absolute-map correlation over the sample has a
magnitude below :data:`DEFAULT_THRESHOLD` (0.5; a strong negative correlation ties the map to
the input as much as a positive one): the paper gives no cut-off, and 0.5 is ours — between the
near-zero correlation of a method that depends on the weights and the 0.7-0.9 of methods that
mostly redraw the input. Read the figure, not only the flag.

A map that is constant (all zero, as a random network's gated gradients can give) has no
ranking to compare: that frame and seed are left out (NaN) and the count of comparisons made is
reported; a method with none is undetermined (``passed`` is ``None``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from ..errors import InputError

__all__ = [
    "DEFAULT_SAMPLE",
    "DEFAULT_THRESHOLD",
    "RANDOM_SEED",
    "RANDOM_SEEDS",
    "SanityResult",
    "model_randomization",
    "randomized_copy",
    "sample_indices",
    "spearman",
]

#: A method passes when its mean absolute-map rank correlation is below this.
DEFAULT_THRESHOLD = 0.5
#: Frames in the sample, spread evenly over the audited frames.
DEFAULT_SAMPLE = 8
#: Seed of :func:`randomized_copy`'s weights when none is given.
RANDOM_SEED = 0
#: Seeds of the random copies the test compares with, one copy each.
RANDOM_SEEDS = (0, 1, 2)


@dataclass
class SanityResult:
    """One method's model-randomisation test.

    Attributes
    ----------
    method : str
    rank_correlation : float
        Mean over the sample's frames and the seeds of Spearman's rank correlation of the
        absolute maps, trained vs random weights, in [-1, 1]; NaN when no comparison was
        defined.
    rank_correlation_signed : float
        The same for the maps as they are (signs kept).
    per_frame : list of list of float
        The absolute-map correlation of each seed (outer) and sampled frame (inner); NaN where a
        map was constant.
    frames : list of int
        The sampled frames (indices into the audited frames).
    seeds : list of int
        The seeds of the random copies.
    compared : int
        Comparisons (frame, seed) with a defined correlation.
    threshold : float
    passed : bool or None
        ``abs(rank_correlation) < threshold``; ``None`` when nothing could be compared.
    """

    method: str
    rank_correlation: float
    rank_correlation_signed: float
    per_frame: list[list[float]] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    compared: int = 0
    threshold: float = DEFAULT_THRESHOLD
    passed: bool | None = None

    def as_dict(self) -> dict:
        """JSON-ready fields (NaN as ``None``)."""
        d = asdict(self)
        for key in ("rank_correlation", "rank_correlation_signed"):
            d[key] = None if not np.isfinite(d[key]) else float(d[key])
        d["per_frame"] = [[None if not np.isfinite(v) else float(v) for v in row] for row in d["per_frame"]]
        return d


def sample_indices(n: int, k: int = DEFAULT_SAMPLE) -> np.ndarray:
    """``min(k, n)`` indices spread evenly over ``0 .. n-1`` (both ends included), int64 ascending."""
    if n <= 0 or k <= 0:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.round(np.linspace(0, n - 1, min(k, n))).astype(np.int64))


def randomized_copy(model: nn.Module, seed: int = RANDOM_SEED) -> nn.Module:
    """A copy of ``model`` with every layer re-initialised (Adebayo et al. 2018, full
    randomisation).

    Each module with a ``reset_parameters`` method (convolutions, linear layers, batch norm: its
    running statistics too) calls it, in module order, under ``torch.manual_seed(seed)``; the
    global random state is restored afterwards. ``model`` is not changed. The copy keeps the
    model's mode, device and attributes (``preprocess``, ``cam_layer``, ...).

    Raises
    ------
    InputError
        If no module of the model can be re-initialised (nothing would change).
    """
    twin = copy.deepcopy(model)
    resettable = [m for m in twin.modules() if callable(getattr(m, "reset_parameters", None))]
    if not resettable:
        raise InputError(f"{type(model).__name__} has no layer with reset_parameters(): it cannot be randomised")
    devices = [p.device for p in twin.parameters() if p.device.type == "cuda"]
    with torch.random.fork_rng(devices=devices[:1]):
        torch.manual_seed(seed)
        for module in resettable:
            module.reset_parameters()
    return twin


def _average_ranks(a: np.ndarray) -> np.ndarray:
    """Ranks 1..P of each row of ``a (B, P)``, ties given their average rank (float64)."""
    ranks = np.empty(a.shape, dtype=np.float64)
    for i, row in enumerate(a):
        order = np.argsort(row, kind="stable")
        sorted_row = row[order]
        # first position of each run of equal values, and the run lengths
        starts = np.flatnonzero(np.r_[True, sorted_row[1:] != sorted_row[:-1]])
        counts = np.diff(np.r_[starts, row.size])
        average = starts + (counts + 1) / 2.0  # 1-based average rank of each run
        ranks[i, order] = np.repeat(average, counts)
    return ranks


def spearman(a, b) -> np.ndarray:
    """Spearman's rank correlation of each pair of rows, ties given average ranks.

    Parameters
    ----------
    a, b : array or Tensor (B, ...)
        Compared row by row over the flattened trailing dimensions; finite values.

    Returns
    -------
    numpy.ndarray (B,)
        float64 in [-1, 1]; NaN where a row is constant (no ranking to compare).

    Raises
    ------
    InputError
        For shapes that differ or non-finite values.
    """
    a = np.asarray(a.detach().cpu() if isinstance(a, torch.Tensor) else a, dtype=np.float64)
    b = np.asarray(b.detach().cpu() if isinstance(b, torch.Tensor) else b, dtype=np.float64)
    if a.shape != b.shape or a.ndim < 1:
        raise InputError(f"spearman needs two arrays of one shape (B, ...), got {a.shape} and {b.shape}")
    a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise InputError("spearman: the maps hold NaN or infinite values")
    ra, rb = _average_ranks(a), _average_ranks(b)
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    na, nb = np.sqrt((ra * ra).sum(1)), np.sqrt((rb * rb).sum(1))
    out = np.full(a.shape[0], np.nan)
    both = (na > 0) & (nb > 0)
    out[both] = (ra[both] * rb[both]).sum(1) / (na[both] * nb[both])
    return np.clip(out, -1.0, 1.0)


def model_randomization(
    model: nn.Module,
    x: torch.Tensor,
    methods: Mapping[str, Callable[[nn.Module, torch.Tensor], torch.Tensor]],
    *,
    maps: Mapping[str, torch.Tensor | np.ndarray] | None = None,
    seeds: Sequence[int] = RANDOM_SEEDS,
    threshold: float = DEFAULT_THRESHOLD,
    frames: Sequence[int] | None = None,
) -> dict[str, SanityResult]:
    """The model-parameter randomisation test (Adebayo et al., NeurIPS 2018) of several methods.

    Parameters
    ----------
    model : nn.Module
        The trained model; not changed.
    x : Tensor (B, C, H, W)
        The sample frames, in the model's input space, on its device.
    methods : mapping name -> callable
        ``fn(model, x) -> Tensor (B, H, W)``, a method with its options bound, e.g.
        ``functools.partial(fastviz.explain, method="grad_cam")``.
    maps : mapping name -> (B, H, W), optional
        The trained model's maps of ``x`` when already computed (an audit store holds them);
        missing ones are computed.
    seeds : sequence of int
        One random copy per seed (:func:`randomized_copy`).
    threshold : float
        A method passes when the magnitude of its mean absolute-map correlation is below it.
    frames : sequence of int, optional
        The sample's indices in the audited frames, recorded in the results.

    Returns
    -------
    dict name -> SanityResult

    Raises
    ------
    InputError
        For an empty sample or seed list, a model that cannot be randomised, maps of another
        shape.
    """
    if x.ndim != 4 or x.shape[0] < 1:
        raise InputError(f"x must hold at least one frame (B, C, H, W), got {tuple(x.shape)}")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise InputError("the randomisation test needs at least one seed")
    frames = list(range(x.shape[0])) if frames is None else [int(i) for i in frames]
    trained: dict[str, torch.Tensor] = {}
    for name, fn in methods.items():
        given = (maps or {}).get(name)
        m = fn(model, x) if given is None else given
        m = m.detach().cpu() if isinstance(m, torch.Tensor) else torch.as_tensor(np.asarray(m))
        trained[name] = m.double()
    absolute: dict[str, list[np.ndarray]] = {name: [] for name in methods}
    signed: dict[str, list[np.ndarray]] = {name: [] for name in methods}
    for seed in seeds:
        random_model = randomized_copy(model, seed)
        for name, fn in methods.items():
            shuffled = fn(random_model, x).detach().cpu().double()
            if trained[name].shape != shuffled.shape:
                raise InputError(f"{name}: maps of the trained model {tuple(trained[name].shape)} and of the random "
                                 f"one {tuple(shuffled.shape)} differ in shape")
            absolute[name].append(spearman(trained[name].abs(), shuffled.abs()))
            signed[name].append(spearman(trained[name], shuffled))
        del random_model
    results = {}
    for name in methods:
        a, s = np.stack(absolute[name]), np.stack(signed[name])
        compared = int(np.isfinite(a).sum())
        rho = float(np.nanmean(a)) if compared else float("nan")
        rho_signed = float(np.nanmean(s)) if np.isfinite(s).any() else float("nan")
        results[name] = SanityResult(
            method=name, rank_correlation=rho, rank_correlation_signed=rho_signed,
            per_frame=[[float(v) for v in row] for row in a], frames=frames, seeds=seeds, compared=compared,
            threshold=float(threshold), passed=bool(abs(rho) < threshold) if compared else None,
        )
    return results
