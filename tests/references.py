"""Plain, independent reference implementations of each method's published definition.

Written as directly as possible — Python loops over windows and positions, one forward pass per
occluded window — and sharing no code with fastviz.methods, so a test comparing the two checks
the engine against the definition rather than against itself.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def window_starts(extent: int, size: int, stride: int) -> list[int]:
    """Top-left coordinates: every ``stride`` pixels, plus one flush with the far edge."""
    size = min(size, extent)
    starts = []
    pos = 0
    while pos + size <= extent:
        starts.append(pos)
        pos += stride
    if starts[-1] + size != extent:
        starts.append(extent - size)
    return starts


def occlusion_loop(model, x, windows=(8, 16, 32), stride=4, baseline=0.0, target=None, score="delta"):
    """Occlusion by a plain per-window loop: one forward pass per (frame, window).

    ``baseline``: a float, or a callable ``frame (C, H, W) -> fill (C, H, W)``.
    ``target``: callable ``(clean_output_row (1, ...), output_row (1, ...)) -> float``;
    default: output[0, 0].
    """
    b, c, h, w = x.shape
    out = torch.zeros(b, h, w, dtype=torch.float64)
    with torch.no_grad():
        for i in range(b):
            frame = x[i : i + 1]
            clean = model(frame)
            fill = baseline(frame[0]) if callable(baseline) else torch.full_like(frame[0], float(baseline))
            per_scale = []
            for size in windows:
                sh, sw = min(size, h), min(size, w)
                total = torch.zeros(h, w, dtype=torch.float64)
                count = torch.zeros(h, w, dtype=torch.float64)
                for y0 in window_starts(h, sh, stride):
                    for x0 in window_starts(w, sw, stride):
                        masked = frame.clone()
                        masked[0, :, y0 : y0 + sh, x0 : x0 + sw] = fill[:, y0 : y0 + sh, x0 : x0 + sw]
                        occluded = model(masked)
                        if target is None:
                            s = float(clean[0, 0]) - float(occluded[0, 0])
                        else:
                            s = target(clean, clean) - target(clean, occluded)
                        if score == "abs":
                            s = abs(s)
                        total[y0 : y0 + sh, x0 : x0 + sw] += s
                        count[y0 : y0 + sh, x0 : x0 + sw] += 1
                per_scale.append((total / count.clamp_min(1), count > 0))
            # mean over the scales whose windows cover the pixel; 0 where none does
            values = torch.stack([v for v, _ in per_scale]).sum(0)
            n_cover = torch.stack([c for _, c in per_scale]).sum(0)
            out[i] = torch.where(n_cover > 0, values / n_cover.clamp_min(1), torch.zeros_like(values))
    return out


def ones_transposed_conv_loop(m: np.ndarray, kernel: int, stride: int, padding: int, out_size: tuple[int, int]) -> np.ndarray:
    """VisualBackProp's upscaling by its definition: every input pixel receives the sum of the
    deeper map over the output positions whose (kernel x kernel, stride, padding) receptive
    field contains it."""
    out = np.zeros(out_size, dtype=np.float64)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            for di in range(kernel):
                for dj in range(kernel):
                    y, xx = i * stride - padding + di, j * stride - padding + dj
                    if 0 <= y < out_size[0] and 0 <= xx < out_size[1]:
                        out[y, xx] += m[i, j]
    return out


def visual_backprop_sequential(convs_and_acts: list[tuple[nn.Conv2d, nn.Module | None]], x: torch.Tensor) -> np.ndarray:
    """The paper's steps for a plain conv stack: run each conv (and its activation), average
    channels, then from the deepest layer up: upscale with the all-ones deconvolution, multiply
    with the shallower average, finish at input size, min-max normalise. One frame ``(1, C, H, W)``."""
    means, in_sizes = [], []
    h = x
    with torch.no_grad():
        for conv, act in convs_and_acts:
            in_sizes.append(tuple(h.shape[-2:]))
            h = conv(h)
            if act is not None:
                h = act(h)
            means.append(h[0].mean(0).double().numpy())
    m = means[-1]
    for layer in range(len(means) - 1, -1, -1):
        conv = convs_and_acts[layer][0]
        m = ones_transposed_conv_loop(m, conv.kernel_size[0], conv.stride[0], conv.padding[0], in_sizes[layer])
        if layer > 0:
            m = m * means[layer - 1]
    lo, hi = m.min(), m.max()
    return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)


def grad_cam_split(features: nn.Module, head: nn.Module, x: torch.Tensor, score_fn) -> torch.Tensor:
    """Grad-CAM by its definition on a model split at the target layer: A = features(x);
    alpha_k = spatial mean of d score / d A_k; ReLU(sum_k alpha_k A_k), at layer resolution."""
    maps = []
    for i in range(x.shape[0]):
        a = features(x[i : i + 1]).detach().requires_grad_(True)
        s = score_fn(head(a))
        (g,) = torch.autograd.grad(s.sum(), a)
        alpha = g.mean(dim=(2, 3), keepdim=True)
        maps.append(F.relu((alpha * a).sum(1))[0].detach())
    return torch.stack(maps)
