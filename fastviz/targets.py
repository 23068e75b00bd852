"""Targets: which scalar of a model's output a saliency map explains.

A target is a callable ``output (B, ...) -> score (B,)``. Any such callable works as ``target=``
in every method, as long as each sample's score depends on that sample's output row alone.

Some targets make a choice from the output itself: the argmax class, or the branch of the
steering-direction target. Those choices belong to the *clean* input: occlusion compares the
same scalar function on the clean and the masked frame, so these targets split into
:meth:`Target.bind` (make the choices from the clean output, one per sample) and
:meth:`Target.score` (evaluate with given choices). ``target(output)`` does both at once.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

import torch

from .errors import InputError

__all__ = ["Class", "Output", "Steering", "Target", "TopClass", "default_target"]


class Target:
    """Base class: ``target(output) == target.score(output, target.bind(output))``."""

    def bind(self, output: torch.Tensor) -> torch.Tensor | None:
        """Per-sample choices made from a clean output ``(B, ...)``; ``None`` if there are none."""
        return None

    def score(self, output: torch.Tensor, choice: torch.Tensor | None) -> torch.Tensor:
        """Scores ``(B,)`` of ``output`` ``(B, ...)`` given per-sample ``choice`` ``(B,)``."""
        raise NotImplementedError

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return self.score(output, self.bind(output))

    def rows(self, r0: int, r1: int) -> Target:
        """This target for samples ``r0 .. r1`` of the batch only (a chunk of frames)."""
        return self


def _flat(output: torch.Tensor) -> torch.Tensor:
    if not isinstance(output, torch.Tensor):
        raise InputError(
            f"the model returns a {type(output).__name__}, not a tensor: give target= a callable that "
            "maps the model's output to one score per sample"
        )
    if output.ndim == 0:
        raise InputError("the model's output is a scalar; a target needs one output row per sample (B, ...)")
    return output.reshape(output.shape[0], -1)


class Output(Target):
    """A raw output: ``output.reshape(B, -1)[:, index]`` (a regression value, a logit).

    Parameters
    ----------
    index : int
        Position in the flattened per-sample output; default 0.
    """

    def __init__(self, index: int = 0) -> None:
        self.index = int(index)

    def score(self, output: torch.Tensor, choice: torch.Tensor | None = None) -> torch.Tensor:
        flat = _flat(output)
        if not -flat.shape[1] <= self.index < flat.shape[1]:
            raise InputError(f"target Output({self.index}) is out of range for an output with {flat.shape[1]} values per sample")
        return flat[:, self.index]

    def __repr__(self) -> str:
        return f"Output({self.index})"


class Class(Target):
    """Class ``k``'s logit: ``output[:, k]`` of a classifier output ``(B, K)``.

    Parameters
    ----------
    k : int or sequence of int
        One class for every sample, or one class per sample (length B).
    """

    def __init__(self, k: int | Sequence[int] | torch.Tensor) -> None:
        if isinstance(k, torch.Tensor) and k.ndim == 0:
            k = int(k)
        elif isinstance(k, numbers.Integral) and not isinstance(k, bool):
            k = int(k)  # numpy integers too
        self.k = k if isinstance(k, int) else torch.as_tensor(k, dtype=torch.long)

    def bind(self, output: torch.Tensor) -> torch.Tensor:
        flat = _flat(output)
        k = torch.as_tensor(self.k, dtype=torch.long, device=flat.device).expand(flat.shape[0]) if isinstance(self.k, int) else self.k.to(flat.device)
        if k.shape != (flat.shape[0],):
            raise InputError(f"Class target has {k.numel()} classes for {flat.shape[0]} samples")
        if bool(((k < 0) | (k >= flat.shape[1])).any()):
            raise InputError(f"Class target {self.k} is out of range for {flat.shape[1]} classes")
        return k

    def rows(self, r0: int, r1: int) -> Target:
        return self if isinstance(self.k, int) or self.k is None else Class(self.k[r0:r1])

    def score(self, output: torch.Tensor, choice: torch.Tensor | None) -> torch.Tensor:
        flat = _flat(output)
        k = self.bind(output) if choice is None else choice
        return flat.gather(1, k.view(-1, 1).to(flat.device)).squeeze(1)

    def __repr__(self) -> str:
        return f"Class({self.k})"


class TopClass(Class):
    """The highest-scoring class of the clean output, per sample (the default for classifiers)."""

    def __init__(self) -> None:
        self.k = None  # type: ignore[assignment]

    def bind(self, output: torch.Tensor) -> torch.Tensor:
        return _flat(output).argmax(dim=1)

    def __repr__(self) -> str:
        return "TopClass()"


class Steering(Target):
    """The steering-direction target for regression Grad-CAM (the seeds' ``grad_cam_loss``).

    With ``y`` the predicted steering angle in radians and ``t = radians(threshold_deg)``::

        score = y        if y >  t     (what drives a right turn)
        score = -y       if y < -t     (what drives a left turn)
        score = 1 / |y|  otherwise     (what keeps the wheel centred; = sign(y) / y)

    The branch is chosen from the clean output (see :meth:`Target.bind`). At ``|y| < eps`` the
    centre branch uses ``1 / eps`` instead of dividing by zero.

    Parameters
    ----------
    threshold_deg : float
        Threshold ``t`` in degrees; default 5.
    index : int
        Which output holds the steering angle; default 0.
    eps : float
        Smallest ``|y|`` (radians) the centre branch divides by; default 1e-6.
    """

    RIGHT, LEFT, CENTRE = 1, -1, 0

    def __init__(self, threshold_deg: float = 5.0, index: int = 0, eps: float = 1e-6) -> None:
        if not threshold_deg >= 0:
            raise InputError(f"threshold_deg must be >= 0, got {threshold_deg}")
        self.threshold = math.radians(threshold_deg)
        self.threshold_deg = float(threshold_deg)
        self.index = int(index)
        self.eps = float(eps)

    def bind(self, output: torch.Tensor) -> torch.Tensor:
        y = Output(self.index).score(output).detach()
        branch = torch.zeros_like(y, dtype=torch.long)
        branch[y > self.threshold] = self.RIGHT
        branch[y < -self.threshold] = self.LEFT
        return branch

    def score(self, output: torch.Tensor, choice: torch.Tensor | None) -> torch.Tensor:
        y = Output(self.index).score(output)
        branch = self.bind(output) if choice is None else choice.to(y.device)
        centre = 1.0 / y.abs().clamp_min(self.eps)
        return torch.where(branch == self.RIGHT, y, torch.where(branch == self.LEFT, -y, centre))

    def __repr__(self) -> str:
        return f"Steering(threshold_deg={self.threshold_deg}, index={self.index})"


def default_target(output: torch.Tensor) -> Target:
    """``target=None``: :class:`Output` (0) for one value per sample, else :class:`TopClass`."""
    return Output(0) if _flat(output).shape[1] == 1 else TopClass()


def as_target(target: Target | Callable[[torch.Tensor], torch.Tensor] | int | None, output: torch.Tensor) -> Callable:
    """Normalise the ``target=`` argument given the clean ``output``.

    ``None`` -> :func:`default_target`; an ``int`` -> :class:`Class` for a multi-output model,
    :class:`Output` for a one-output one; a :class:`Target` or any callable unchanged.
    """
    if target is None:
        return default_target(output)  # raises InputError for a non-tensor output
    if isinstance(target, bool):
        raise InputError(f"target must be a Target, a callable or a class index, got {target!r}")
    if isinstance(target, numbers.Integral):
        return Output(int(target)) if _flat(output).shape[1] == 1 else Class(int(target))
    if not callable(target):
        raise InputError(f"target must be a Target, a callable or a class index, got {type(target).__name__}")
    return target


def for_rows(target: Callable, r0: int, r1: int) -> Callable:
    """``target`` restricted to samples ``r0 .. r1`` (per-sample class lists are sliced)."""
    return target.rows(r0, r1) if isinstance(target, Target) else target


def bind(target: Callable, clean_output: torch.Tensor) -> torch.Tensor | None:
    """Per-sample choices of ``target`` on the clean output (``None`` for plain callables)."""
    return target.bind(clean_output) if isinstance(target, Target) else None


def evaluate(target: Callable, output, choice: torch.Tensor | None, batch: int) -> torch.Tensor:
    """Score ``output`` of ``batch`` rows (rows of any samples) with per-row ``choice`` (from
    :func:`bind`). ``output`` is whatever the model returns; a plain callable target may take
    apart a tuple or dict output itself.

    Raises
    ------
    InputError
        If the target does not return one score per row, shape ``(batch,)``.
    """
    scores = target.score(output, choice) if isinstance(target, Target) else target(output)
    if not isinstance(scores, torch.Tensor) or scores.shape != (batch,):
        shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise InputError(f"target must return one score per sample, shape ({batch},), got {shape}")
    return scores
