"""Looking at activations: hypercolumn maps, layer listings, feature maps, filter visualisation.

* :func:`hypercolumns` — the seeds' heuristic saliency map: the channel mean of each conv
  layer's activated output, normalised, resized to the input and multiplied across layers
  (blog post "Visualizations for regressing wheel steering angles"; the term is from Hariharan
  et al., "Hypercolumns for object segmentation and fine-grained localization", CVPR 2015).
* :func:`layers` / :func:`feature_maps` — what runs in a model, and one layer's output.
* :func:`filter_visualization` — gradient ascent on the input for one channel's mean
  activation, with the regularisers of Yosinski et al., "Understanding Neural Networks Through
  Deep Visualization" (2015), as used in the seeds' post "Visualizing CNN filters with Keras".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..hooks import HandleList, as_layers, check_input, execution_order, find_layer, model_device, model_guard
from ._layers import ConvBlocks
from .registry import register

__all__ = ["LayerInfo", "feature_maps", "filter_visualization", "hypercolumns", "layers"]


def _unit_min_max(m: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each map of ``(B, h, w)`` to [0, 1]; a constant map gives zeros."""
    lo = m.amin(dim=(1, 2), keepdim=True)
    span = m.amax(dim=(1, 2), keepdim=True) - lo
    return torch.where(span > 0, (m - lo) / span.clamp_min(torch.finfo(m.dtype).tiny), torch.zeros_like(m))


# --------------------------------------------------------------------------- hypercolumns


@register("hypercolumns")
def hypercolumns(
    model: nn.Module,
    x: torch.Tensor,
    layers: Sequence[nn.Module | str] | None = None,
    check_finite: bool = True,
) -> torch.Tensor:
    """Hypercolumn saliency maps: the product of the layers' normalised mean activations.

    For each chosen layer: the mean over channels of its output ``(B, h, w)``, min-max
    normalised per image to [0, 1] (a constant map gives 0), resized to the input size with
    bilinear interpolation (``align_corners=False``); the maps of all layers are multiplied
    pointwise, so a pixel scores high only where every layer is strongly active. The product
    is not normalised again. A heuristic: it ignores the fully connected head and how the
    output uses each feature.

    Source: the seeds' blog post "Visualizations for regressing wheel steering angles"
    (second attempt, "peeking at the conv layers' output features with hypercolumns"); the term
    from Hariharan et al., "Hypercolumns for object segmentation and fine-grained
    localization", CVPR 2015.

    Parameters
    ----------
    model : nn.Module
        Used as it is (call ``model.eval()`` first); left unchanged.
    x : Tensor (B, C, H, W)
        Float input in the model's input space, on the model's device.
    layers : sequence of nn.Module or dotted names, optional
        Default: the activated output of every ``nn.Conv2d`` that runs (the activation module
        that follows the conv, through normalisation modules, else the conv output). An
        ``nn.Conv2d`` given here also stands for its activated output; any other module for
        its own output, which must be ``(B, C, h, w)``.
    check_finite : bool
        Check ``x`` for NaN and Inf before the forward pass (default); ``False`` skips that
        pass over ``x`` for speed.

    Returns
    -------
    Tensor (B, H, W)
        float32 in [0, 1] on ``x``'s device.

    Raises
    ------
    InputError
        For a malformed ``x`` (NaN or Inf: naming the frames; a channel count or size the
        model does not take: naming the expected and the given shape, before any forward
        pass), no conv layer in the model, a chosen layer that does not run or whose output
        is not 4-D.
    UnknownNameError
        For a layer name not in the model.

    Notes
    -----
    Thread-safe: calls on one model from several threads are serialised by the model's lock
    (:func:`fastviz.hooks.model_lock`); calls on different models run in parallel.

    Examples
    --------
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.Conv2d(4, 4, 3)).eval()
    >>> hypercolumns(net, torch.rand(2, 3, 20, 24)).shape
    torch.Size([2, 20, 24])
    """
    check_input(model, x, finite=check_finite)
    if layers is None:
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        others: list[nn.Module] = []
        if not convs:
            raise InputError(f"{type(model).__name__} has no nn.Conv2d layer; give layers= explicitly")
    else:
        chosen = as_layers(model, layers)
        if not chosen:
            raise InputError("layers is empty")
        convs = [m for m in chosen if isinstance(m, nn.Conv2d)]
        others = [m for m in chosen if not isinstance(m, nn.Conv2d)]
    expected = len(convs) + len(others)
    means: list[torch.Tensor] = []

    def keep(_conv: nn.Module, _inp: torch.Tensor, _module: nn.Module, activated: torch.Tensor) -> None:
        means.append(activated.detach().float().mean(dim=1))

    def keep_output(module: nn.Module, _args: tuple, output) -> None:
        if not isinstance(output, torch.Tensor) or output.ndim != 4:
            raise InputError(f"layer {type(module).__name__} must output (B, C, h, w), got "
                             f"{tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__}")
        means.append(output.detach().float().mean(dim=1))

    with model_guard(model), HandleList() as handles, torch.no_grad():
        tracker = ConvBlocks(convs, keep).attach(model, handles) if convs else None
        handles.extend(m.register_forward_hook(keep_output) for m in others)
        model(x)
        if tracker is not None:
            tracker.finish()
    if len(means) != expected:
        raise InputError(f"{expected - len(means)} of the chosen layers did not run (or ran more than once)")
    out = torch.ones(x.shape[0], *x.shape[-2:], device=x.device, dtype=torch.float32)
    with torch.no_grad():
        for m in means:
            m = _unit_min_max(m)
            if m.shape[-2:] != x.shape[-2:]:
                m = F.interpolate(m.unsqueeze(1), size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
            out = out * m
    return out.clamp_(0.0, 1.0)


# --------------------------------------------------------------------------- layers, feature maps


class LayerInfo(NamedTuple):
    """One leaf module's run: dotted ``name``, module ``type`` name, per-sample output ``shape``."""

    name: str
    type: str
    shape: tuple[int, ...]


def layers(model: nn.Module, x: torch.Tensor) -> list[LayerInfo]:
    """The leaf modules of ``model`` in the order they run on ``x[:1]``, with output shapes.

    Parameters
    ----------
    model : nn.Module
        Left unchanged.
    x : Tensor (B, C, H, W)
        Float input in the model's input space, on the model's device; only ``x[:1]`` runs.

    Returns
    -------
    list of LayerInfo
        ``(name, type, shape)`` per leaf-module call that returned a tensor: the dotted name
        (``"features.0"``), the class name (``"Conv2d"``) and the output shape without the
        batch dimension (``(C, h, w)`` for a conv, ``(F,)`` for a linear layer). A module
        called twice appears twice.

    Raises
    ------
    InputError
        For a malformed ``x`` (a channel count or size the model does not take: naming the
        expected and the given shape). NaN or Inf values are allowed: only shapes are listed.
    """
    check_input(model, x, finite=False)
    with model_guard(model):
        order = execution_order(model, x[:1])
    return [LayerInfo(name, type(module).__name__, tuple(out.shape[1:])) for name, module, _inp, out in order]


class _Stop(Exception):
    """Raised by a forward hook to end the forward pass once the wanted layer has run."""


def _run_to(model: nn.Module, x: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """Run ``model(x)`` up to ``layer``'s first call and return its output (graph kept if grads on)."""
    captured: list[torch.Tensor] = []

    def grab(_module: nn.Module, _args: tuple, output) -> None:
        captured.append(output)
        raise _Stop

    with HandleList() as handles:
        handles.append(layer.register_forward_hook(grab))
        try:
            model(x)
        except _Stop:
            pass
    if not captured:
        raise InputError(f"layer {type(layer).__name__} did not run in the forward pass")
    out = captured[0]
    if not isinstance(out, torch.Tensor) or out.ndim != 4:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InputError(f"layer {type(layer).__name__} must output (B, C, h, w), got {shape}")
    return out


def feature_maps(model: nn.Module, x: torch.Tensor, layer: nn.Module | str, check_finite: bool = True) -> torch.Tensor:
    """One layer's output on ``x``: its feature maps.

    The forward pass stops once ``layer`` has run (so the model's head never runs); a layer
    called more than once gives its first call's output.

    Parameters
    ----------
    model : nn.Module
        Left unchanged.
    x : Tensor (B, C, H, W)
        Float input in the model's input space, on the model's device. Its size need not fit
        the layers after ``layer`` (they do not run), so only its form is checked up front.
    layer : nn.Module or str
        A submodule of ``model`` or its dotted name (``"features.3"``).
    check_finite : bool
        Check ``x`` for NaN and Inf first (default); ``False`` skips that pass for speed.

    Returns
    -------
    Tensor (B, C_l, h, w)
        float32, detached, on ``x``'s device (display with :func:`fastviz.render.grid`).

    Raises
    ------
    InputError
        For a malformed ``x`` (NaN or Inf: naming the frames), a layer that does not run or
        whose output is not 4-D.
    UnknownNameError
        For a layer name not in the model.
    """
    check_input(model, x, finite=check_finite, shape=False)
    module = find_layer(model, layer)
    with model_guard(model), torch.no_grad():
        out = _run_to(model, x, module)
    return out.detach().float()


# --------------------------------------------------------------------------- filter visualisation


def _gaussian_blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(1, C, H, W)`` per channel, reflect padding, radius ``ceil(3 sigma)``."""
    radius = max(1, int(math.ceil(3.0 * sigma)))
    radius = min(radius, img.shape[-2] - 1, img.shape[-1] - 1)
    if radius < 1:
        return img
    t = torch.arange(-radius, radius + 1, device=img.device, dtype=img.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = img.shape[1]
    out = F.pad(img, (radius, radius, 0, 0), mode="reflect")
    out = F.conv2d(out, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    out = F.pad(out, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(out, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _zero_below_percentile(img: torch.Tensor, score: torch.Tensor, percentile: float) -> torch.Tensor:
    """Zero the pixels (all channels) of ``img (1, C, H, W)`` whose ``score (H, W)`` is below its percentile."""
    if percentile <= 0:
        return img
    cut = torch.quantile(score.flatten().float(), percentile / 100.0).to(score.dtype)
    return img * (score >= cut).to(img.dtype)


def _first_conv_channels(model: nn.Module) -> int:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    raise InputError(f"{type(model).__name__} has no nn.Conv2d to take the input channels from; give in_channels=")


def filter_visualization(
    model: nn.Module,
    layer: nn.Module | str,
    channel: int,
    size: tuple[int, int] = (64, 64),
    steps: int = 100,
    lr: float = 0.1,
    l2_decay: float = 0.01,
    blur_every: int = 4,
    blur_sigma: float = 0.5,
    norm_threshold: float = 5.0,
    contribution_threshold: float = 0.0,
    seed: int = 0,
    device: torch.device | str | None = None,
    in_channels: int | None = None,
    init_scale: float = 0.1,
) -> torch.Tensor:
    """An input image that strongly activates one channel of a layer, by gradient ascent.

    Starting from Gaussian noise ``init_scale * N(0, 1)`` drawn from a ``torch.Generator``
    seeded with ``seed``, each step computes the gradient ``g`` of the channel's mean
    activation with respect to the image (only the image: the model's parameters are not
    touched) and applies, in this order:

    1. ascent: ``x += lr * g / rms(g)`` (the gradient scaled to unit root-mean-square, so
       ``lr`` is in input units per step);
    2. L2 decay: ``x *= 1 - l2_decay``;
    3. every ``blur_every`` steps: a Gaussian blur of ``blur_sigma`` pixels per channel;
    4. small norm: pixels whose norm over channels is below the ``norm_threshold``-th
       percentile are set to 0 (all channels);
    5. small contribution: pixels whose contribution ``sum_c x * g`` (a first-order estimate of
       how much the pixel adds to the activation) is below the ``contribution_threshold``-th
       percentile are set to 0.

    These are the regularisers of Yosinski et al., "Understanding Neural Networks Through Deep
    Visualization" (ICML Deep Learning Workshop 2015), as tried in the seeds' post
    "Visualizing CNN filters with Keras". The forward pass stops at ``layer``, so the input
    ``size`` need not fit the model's head. The same arguments give the same image on the same
    device.

    Parameters
    ----------
    model : nn.Module
        Used as it is (call ``model.eval()`` first); its mode, parameters, ``requires_grad``,
        ``.grad`` and hooks are left unchanged.
    layer : nn.Module or str
        A submodule (or dotted name) whose output is ``(B, C, h, w)``.
    channel : int
        Channel of ``layer``'s output to maximise, ``0 <= channel < C``.
    size : (int, int)
        ``(H, W)`` of the image.
    steps : int
        Gradient-ascent steps, >= 0 (0 returns the initial noise).
    lr : float
        Step size, > 0, in input units (see step 1).
    l2_decay : float
        In [0, 1); 0 disables it.
    blur_every : int
        Blur period in steps; 0 disables blurring.
    blur_sigma : float
        Standard deviation of the blur in pixels, > 0.
    norm_threshold, contribution_threshold : float
        Percentiles in [0, 100); 0 disables the rule.
    seed : int
        Seed of the initial noise.
    device : torch.device or str, optional
        Default: the model's device (CPU for a model without parameters).
    in_channels : int, optional
        Channels of the image; default the ``in_channels`` of the model's first ``nn.Conv2d``.
    init_scale : float
        Standard deviation of the initial noise, >= 0.

    Returns
    -------
    Tensor (1, C, H, W)
        float32, detached, on ``device``: an image in the model's input space. Values are not
        clipped; L2 decay keeps them bounded (about ``lr / l2_decay`` in magnitude at most).
        For display map it to [0, 1] with :func:`fastviz.render.normalize` per channel or over
        the whole image.

    Raises
    ------
    InputError
        For a layer whose output is not 4-D or that does not run, a channel out of range, or
        an option out of its range.
    UnknownNameError
        For a layer name not in the model.
    """
    module = find_layer(model, layer)
    try:
        height, width = (int(v) for v in size)
    except (TypeError, ValueError):
        raise InputError(f"size must be (H, W), got {size!r}") from None
    if height < 1 or width < 1:
        raise InputError(f"size must be positive, got {(height, width)}")
    if int(steps) < 0:
        raise InputError(f"steps must be >= 0, got {steps}")
    if not float(lr) > 0:
        raise InputError(f"lr must be > 0, got {lr}")
    if not 0.0 <= float(l2_decay) < 1.0:
        raise InputError(f"l2_decay must be in [0, 1), got {l2_decay}")
    if int(blur_every) < 0 or not float(blur_sigma) > 0:
        raise InputError(f"blur_every must be >= 0 and blur_sigma > 0, got {blur_every}, {blur_sigma}")
    for name, pct in (("norm_threshold", norm_threshold), ("contribution_threshold", contribution_threshold)):
        if not 0.0 <= float(pct) < 100.0:
            raise InputError(f"{name} must be a percentile in [0, 100), got {pct}")
    if float(init_scale) < 0:
        raise InputError(f"init_scale must be >= 0, got {init_scale}")
    if isinstance(channel, bool) or not isinstance(channel, int) or channel < 0:
        raise InputError(f"channel must be a non-negative int, got {channel!r}")
    channels = int(in_channels) if in_channels is not None else _first_conv_channels(model)
    if device is None:
        device = model_device(model) or torch.device("cpu")
    device = torch.device(device)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)

    gen = torch.Generator(device=device).manual_seed(int(seed))
    img = torch.randn(1, channels, height, width, generator=gen, device=device, dtype=dtype) * float(init_scale)
    with model_guard(model):
        for step in range(int(steps)):
            xi = img.detach().requires_grad_(True)
            with torch.enable_grad():
                out = _run_to(model, xi, module)
                if not 0 <= channel < out.shape[1]:
                    raise InputError(f"channel {channel} out of range: the layer has {out.shape[1]} channels")
                score = out[:, channel].mean()
                (grad,) = torch.autograd.grad(score, xi)
            with torch.no_grad():
                rms = grad.pow(2).mean().sqrt()
                img = img + float(lr) * grad / rms.clamp_min(1e-12)
                if l2_decay > 0:
                    img = img * (1.0 - float(l2_decay))
                if blur_every and (step + 1) % int(blur_every) == 0:
                    img = _gaussian_blur(img, float(blur_sigma))
                img = _zero_below_percentile(img, img[0].norm(dim=0), float(norm_threshold))
                img = _zero_below_percentile(img, (img * grad)[0].sum(dim=0), float(contribution_threshold))
    return img.detach().float()
