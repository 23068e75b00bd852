"""VisualBackProp (Bojarski et al., "VisualBackProp: efficient visualization of CNNs",
arXiv 1611.05418, 2016).

One forward pass, no gradients: the channel mean of every conv layer's activated output,
multiplied layer by layer from the deepest up, each time upscaled to the shallower layer's size
by a transposed convolution whose kernel is all ones and whose geometry (kernel size, stride,
padding, dilation) is the conv's own.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels, scheduler
from ..errors import InputError
from ..hooks import HandleList, as_layers, check_input, model_guard
from ._concurrency import parallel_kernels
from ._layers import ConvBlocks
from .perturbation import resolve_backend
from .registry import register

__all__ = ["ones_deconv", "visual_backprop"]

ConvGeometry = kernels.vbp.ConvGeometry


def ones_deconv(m: torch.Tensor, conv: nn.Conv2d, size: tuple[int, int]) -> torch.Tensor:
    """Upscale a mean map through ``conv``'s geometry with an all-ones transposed convolution.

    Parameters
    ----------
    m : Tensor (B, 1, h, w)
        A map at ``conv``'s output resolution.
    conv : nn.Conv2d
        Supplies kernel size, stride, padding and dilation.
    size : (int, int)
        ``(H, W)`` of ``conv``'s input: the output is sized to it exactly (through the
        transposed convolution's output padding).

    Returns
    -------
    Tensor (B, 1, H, W)
        Each input pixel gets the sum of ``m`` over the output positions whose receptive
        field contains it.
    """
    return kernels.vbp.ones_deconv(m, ConvGeometry.of(conv, size))


@register("visual_backprop")
def visual_backprop(
    model: nn.Module,
    x: torch.Tensor,
    layers: Sequence[nn.Module | str] | None = None,
    backend: str = "auto",
    memory_budget: str | int | float | None = None,
    chunk_size: int | None = None,
    check_finite: bool = True,
) -> torch.Tensor:
    """VisualBackProp saliency maps.

    For each conv layer, the channel mean of its activated output (the activation module that
    follows the conv, through normalisation modules, else the conv output). From the deepest
    layer up: upscale with a transposed convolution whose kernel is all ones and whose kernel
    size, stride, padding and dilation are the conv's own, sized to the shallower map exactly;
    multiply pointwise with the shallower mean map; finish at the input size; min-max
    normalise each map to [0, 1]. Where pooling sits between two convs, the upscaled map is
    resized bilinearly to the shallower map's size after the transposed convolution.

    The method is defined for networks whose convs form one chain (PilotNet, VGG-like nets).
    On a branched network (a ResNet's shortcut convs) the convs are still taken in execution
    order; give ``layers=`` with the main path's convs there.

    Source: Bojarski et al., "VisualBackProp: efficient visualization of CNNs",
    arXiv 1611.05418 (2016).

    Parameters
    ----------
    model : nn.Module
        Used as it is (call ``model.eval()`` first); left unchanged.
    x : Tensor (B, C, H, W)
        Float input in the model's input space, on the model's device.
    layers : sequence of nn.Conv2d or dotted names, optional
        The conv layers to use; default every ``nn.Conv2d`` that runs, in execution order.
    backend : {"auto", "torch", "cpu", "cuda"}
        Implementation of the upscaling chain (:func:`fastviz.kernels.upscale_chain`):
        ``"auto"`` picks by device (the Numba CPU twin on the CPU, torch on CUDA; torch
        wherever pooling sits between convs); ``"torch"`` is the plain-torch reference.
    memory_budget : str, int, float or None
        Bytes a chunk of frames may use (see :func:`fastviz.scheduler.parse_budget`); frames
        go through the model in chunks planned from it, halved on out-of-memory.
    chunk_size : int, optional
        Frames per forward pass, overriding the plan.
    check_finite : bool
        Check ``x`` for NaN and Inf before the forward pass (default; a NaN frame would give
        an all-zero map); ``False`` skips that pass over ``x`` for speed.

    Returns
    -------
    Tensor (B, H, W)
        float32 in [0, 1] on ``x``'s device (all zeros where a map is constant).

    Raises
    ------
    InputError
        For a malformed ``x`` (NaN or Inf: naming the frames; a channel count or size the
        model does not take: naming the expected and the given shape, before any forward
        pass), a layer that is not an ``nn.Conv2d``, or no conv layer running, or a backend
        unavailable for the device, or a malformed budget.
    OutOfBudgetError
        If one frame per forward pass still runs out of memory.

    Notes
    -----
    Thread-safe: calls on one model from several threads are serialised by the model's lock
    (:func:`fastviz.hooks.model_lock`); calls on different models run in parallel.
    """
    check_input(model, x, finite=check_finite)
    resolve_backend(backend, x.device, kernels.vbp.DEFAULTS)  # a bad backend fails before the forward pass
    if layers is None:
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    else:
        convs = as_layers(model, layers)
        for c in convs:
            if not isinstance(c, nn.Conv2d):
                raise InputError(f"VisualBackProp layers must be nn.Conv2d, got {type(c).__name__}")
    if not convs:
        raise InputError(f"{type(model).__name__} has no nn.Conv2d layer for VisualBackProp")
    b = x.shape[0]
    means: list[torch.Tensor] = []  # per layer, (B, 1, h, w): every frame's channel means
    geometry: list[ConvGeometry] = []
    with model_guard(model):
        p = scheduler.plan(model, x[:1], rows=b, memory_budget=memory_budget, chunk=chunk_size, cache_sized=True)

        def step(r0: int, r1: int) -> None:
            geom, part = _chunk_means(model, x[r0:r1], convs)
            if not means:
                geometry.extend(geom)
                means.extend(m.new_empty((b, *m.shape[1:])) for m in part)
            for whole, m in zip(means, part):
                whole[r0:r1] = m

        key = ("visual_backprop", scheduler.model_signature(model), tuple(x.shape[1:]), str(x.dtype),
               None if layers is None else len(convs))
        scheduler.run_chunks(scheduler.tune(p, step, x.device, key, fixed=chunk_size is not None), step, x.device)
    if b == 0:
        return torch.empty(0, *x.shape[-2:], device=x.device, dtype=torch.float32)
    # the upscaling chain runs once over all frames (it is per frame; one call saves the
    # per-call cost of the kernel: PilotNet, 256 frames, 11 ms in chunks of 16 vs 4.4 ms)
    return _upscale(means, geometry, tuple(x.shape[-2:]), backend)


def _chunk_means(model: nn.Module, x: torch.Tensor, convs: list[nn.Conv2d]) -> tuple[list, list[torch.Tensor]]:
    """One forward pass of a chunk: each conv layer's geometry and its activated output's channel
    mean ``(b, 1, h, w)``, float32, in the order the layers ran."""
    order: list[nn.Conv2d] = []
    in_sizes: list[tuple[int, int]] = []
    means: list[torch.Tensor] = []  # only the channel means are kept, not the activations

    def keep_mean(conv: nn.Conv2d, conv_input: torch.Tensor, _module: nn.Module, activated: torch.Tensor) -> None:
        order.append(conv)
        in_sizes.append(tuple(conv_input.shape[-2:]))
        means.append(activated.float().mean(dim=1, keepdim=True))

    with HandleList() as handles, torch.no_grad():
        tracker = ConvBlocks(convs, keep_mean).attach(model, handles)
        model(x)
        tracker.finish()
    if not order:
        raise InputError("none of the conv layers ran in the forward pass")
    return [ConvGeometry.of(conv, size) for conv, size in zip(order, in_sizes)], means


def _upscale(means: list[torch.Tensor], geometry: list, size: tuple[int, int], backend: str) -> torch.Tensor:
    """The chain of upscaled, multiplied mean maps, at the input's ``size``, min-max normalised
    per frame: ``(b, H, W)`` float32 in [0, 1]."""
    with torch.no_grad():
        try:
            with parallel_kernels():
                m = kernels.vbp.upscale_chain(means, geometry, backend=backend)  # (b, H_in, W_in)
        except ValueError as exc:  # e.g. backend="cpu" on a chain with pooling between convs
            raise InputError(f"VisualBackProp upscaling: {exc}") from None
        if tuple(m.shape[-2:]) != size:
            m = F.interpolate(m.unsqueeze(1), size=size, mode="bilinear", align_corners=False)[:, 0]
        lo = m.amin(dim=(1, 2), keepdim=True)
        span = m.amax(dim=(1, 2), keepdim=True) - lo
        # in place (m is the chain's own output): (m - lo) / span, 0 for a constant map
        m = m.sub_(lo).div_(span.clamp_min(torch.finfo(m.dtype).tiny)).masked_fill_(span == 0, 0.0)
    return m.float()
