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

from ..errors import InputError
from ..hooks import HandleList, as_layers, check_input, model_guard
from ._layers import ConvBlocks
from .registry import register

__all__ = ["ones_deconv", "visual_backprop"]


def _padding(conv: nn.Conv2d) -> tuple[int, int]:
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return 0, 0
        # "same": PyTorch pads (d * (k - 1)) // 2 before; any odd pixel after is fixed by the
        # exact-size crop in ones_deconv.
        return tuple(d * (k - 1) // 2 for k, d in zip(conv.kernel_size, conv.dilation))  # type: ignore[return-value]
    return tuple(conv.padding)  # type: ignore[return-value]


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
    k, s, d = conv.kernel_size, conv.stride, conv.dilation
    p = _padding(conv)
    natural = [(m.shape[2 + i] - 1) * s[i] - 2 * p[i] + d[i] * (k[i] - 1) + 1 for i in range(2)]
    out_pad = [min(max(size[i] - natural[i], 0), max(s[i], d[i]) - 1) for i in range(2)]
    weight = torch.ones(1, 1, k[0], k[1], device=m.device, dtype=m.dtype)
    up = F.conv_transpose2d(m, weight, stride=s, padding=p, output_padding=out_pad, dilation=d)
    dh, dw = size[0] - up.shape[2], size[1] - up.shape[3]
    if dh or dw:  # only for geometries the output padding cannot express
        up = F.pad(up, (0, max(dw, 0), 0, max(dh, 0)))[:, :, : size[0], : size[1]]
    return up


@register("visual_backprop")
def visual_backprop(
    model: nn.Module,
    x: torch.Tensor,
    layers: Sequence[nn.Module | str] | None = None,
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

    Returns
    -------
    Tensor (B, H, W)
        float32 in [0, 1] on ``x``'s device (all zeros where a map is constant).

    Raises
    ------
    InputError
        For a malformed ``x``, a layer that is not an ``nn.Conv2d``, or no conv layer running.
    """
    check_input(model, x)
    if layers is None:
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    else:
        convs = as_layers(model, layers)
        for c in convs:
            if not isinstance(c, nn.Conv2d):
                raise InputError(f"VisualBackProp layers must be nn.Conv2d, got {type(c).__name__}")
    if not convs:
        raise InputError(f"{type(model).__name__} has no nn.Conv2d layer for VisualBackProp")
    order: list[nn.Conv2d] = []
    in_sizes: list[tuple[int, int]] = []
    means: list[torch.Tensor] = []  # only the channel means are kept, not the activations

    def keep_mean(conv: nn.Conv2d, conv_input: torch.Tensor, _module: nn.Module, activated: torch.Tensor) -> None:
        order.append(conv)
        in_sizes.append(tuple(conv_input.shape[-2:]))
        means.append(activated.float().mean(dim=1, keepdim=True))

    with model_guard(model), HandleList() as handles, torch.no_grad():
        tracker = ConvBlocks(convs, keep_mean).attach(model, handles)
        model(x)
        tracker.finish()
    if not order:
        raise InputError("none of the conv layers ran in the forward pass")
    with torch.no_grad():
        m = means[-1]
        for i in range(len(order) - 1, 0, -1):
            m = ones_deconv(m, order[i], in_sizes[i])
            shallower = means[i - 1]
            if m.shape[-2:] != shallower.shape[-2:]:
                m = F.interpolate(m, size=shallower.shape[-2:], mode="bilinear", align_corners=False)
            m = m * shallower
        m = ones_deconv(m, order[0], in_sizes[0])
        if m.shape[-2:] != x.shape[-2:]:
            m = F.interpolate(m, size=x.shape[-2:], mode="bilinear", align_corners=False)
        m = m[:, 0]
        lo = m.amin(dim=(1, 2), keepdim=True)
        span = m.amax(dim=(1, 2), keepdim=True) - lo
        out = torch.where(span > 0, (m - lo) / span.clamp_min(torch.finfo(m.dtype).tiny), torch.zeros_like(m))
    return out.float()
