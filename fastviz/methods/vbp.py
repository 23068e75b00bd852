"""VisualBackProp (Bojarski et al., "VisualBackProp: efficient visualization of CNNs",
arXiv 1611.05418, 2016).

One forward pass, no gradients: the channel mean of every conv layer's activated output,
multiplied layer by layer from the deepest up, each time upscaled to the shallower layer's size
by a transposed convolution whose kernel is all ones and whose geometry (kernel size, stride,
padding, dilation) is the conv's own.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels, scheduler
from ..errors import InputError
from ..hooks import HandleList, as_layers, check_input, model_guard
from ._concurrency import parallel_kernels
from ._layers import AllBlocksDone, ConvBlocks
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
    On the CPU the frames go through the model in the channels-last memory layout, converted
    chunk by chunk (oneDNN's convolutions run faster on it: PilotNet, 256 frames in chunks of
    32 on a 2-core EPYC, 112 vs 146 ms; benchmarks/RESULTS.md), unless the model rejects it (a
    ``.view`` on an activation raises): then in the layout ``x`` has. The maps agree with the
    standard layout's to float32 rounding.

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

        blocks = _Blocks(convs)
        signature = scheduler.model_signature(model)
        layout = _Layout(model, x, signature)

        def step(r0: int, r1: int) -> None:
            part = layout.run(lambda rows: blocks.means(model, rows), x[r0:r1])
            if not means:
                geometry.extend(blocks.geometry)
                means.extend(m.new_empty((b, *m.shape[1:])) for m in part)
            for whole, m in zip(means, part):
                whole[r0:r1] = m

        key = ("visual_backprop", signature, tuple(x.shape[1:]), str(x.dtype),
               None if layers is None else len(convs), layout.channels_last)
        scheduler.run_chunks(scheduler.tune(p, step, x.device, key, fixed=chunk_size is not None), step, x.device)
    if b == 0:
        return torch.empty(0, *x.shape[-2:], device=x.device, dtype=torch.float32)
    # the upscaling chain runs once over all frames (it is per frame; one call saves the
    # per-call cost of the kernel: PilotNet, 256 frames, 11 ms in chunks of 16 vs 4.4 ms)
    return _upscale(means, geometry, tuple(x.shape[-2:]), backend)


#: Models that raised on channels-last rows -> their structure (scheduler.model_signature) then
_REJECTS_CHANNELS_LAST: "weakref.WeakKeyDictionary[nn.Module, str]" = weakref.WeakKeyDictionary()


class _Layout:
    """The memory layout chunks run in: channels-last on the CPU unless the model rejects it.

    The first chunk decides: if the model raises a ``RuntimeError`` (other than out-of-memory)
    on channels-last rows, that chunk and every later one run in ``x``'s own layout, where a
    real error surfaces again (:func:`fastviz.methods.perturbation.occlusion` probes the same
    way); the model is remembered (per structure), so later calls do not try again.
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, signature: str) -> None:
        given = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        rejects = _REJECTS_CHANNELS_LAST.get(model) == signature
        self.model, self.signature = model, signature
        self.convert = x.device.type == "cpu" and not given and not rejects  # chunks are converted
        self.channels_last = given or self.convert  # what the chunks run in (for the plan's key)
        self._decided = not self.convert

    def run(self, fn, rows: torch.Tensor):
        """``fn`` on ``rows`` in the layout decided (the first call decides)."""
        if not self.convert:
            return fn(rows)
        fast = rows.contiguous(memory_format=torch.channels_last)
        if self._decided:
            return fn(fast)
        try:
            out = fn(fast)
        except RuntimeError as exc:
            if scheduler.is_out_of_memory(exc):
                raise
            self.convert = self.channels_last = False
            self._decided = True
            out = fn(rows)
            _REJECTS_CHANNELS_LAST[self.model] = self.signature  # it runs in the standard layout
            return out
        self._decided = True
        return out


def _channel_mean(activated: torch.Tensor) -> torch.Tensor:
    """``(b, 1, h, w)`` float32: the mean over channels (a sum, then one division of the small
    result: faster than ``mean`` over dim 1 on the CPU)."""
    return activated.float().sum(dim=1, keepdim=True).div_(activated.shape[1])


class _Blocks:
    """The conv blocks' channel means, one chunk at a time.

    The first chunk runs with :class:`~fastviz.methods._layers.ConvBlocks` on every leaf module
    (it finds each conv's activated output) and records the events that delimited each block: the
    outputs of its modules (the conv, then each module that continued it) and the start of the
    module that ended it, whose input was the block's latest output. Later chunks hook only those
    modules and check every event in order, each module's input being the previous event's
    output (so a module that ran in between, e.g. an activation only some inputs take, is seen);
    any difference re-runs that chunk with the full tracking, so the means never change, only the
    cost. A model where a block's end cannot be checked that way (the block ends with the forward
    pass, or the next module takes another tensor) is tracked in full on every chunk. Both stop
    the forward pass where the last block ends: the layers after it (a regression head) do not run.
    """

    def __init__(self, convs: list[nn.Conv2d]) -> None:
        self.convs = convs
        self.geometry: list[ConvGeometry] = []
        #: ("post", module, block, mean here) and ("pre", module, -1, False) in order; None: track
        self.events: list[tuple[str, nn.Module, int, bool]] | None = None

    def means(self, model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
        """Run ``x`` (a chunk) through ``model``: each block's channel mean ``(b, 1, h, w)``,
        float32, in the order the blocks ran."""
        if self.events is not None:
            got = self._follow(model, x)
            if got is not None:
                return got
        return self._track(model, x)

    def _track(self, model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
        order: list[nn.Conv2d] = []
        in_sizes: list[tuple[int, int]] = []
        events: list[tuple[str, nn.Module, int, bool]] | None = []
        means: list[torch.Tensor] = []  # only the channel means are kept, not the activations

        def keep_mean(conv: nn.Conv2d, conv_input: torch.Tensor, module: nn.Module, activated: torch.Tensor) -> None:
            nonlocal events
            block = len(order)
            order.append(conv)
            in_sizes.append(tuple(conv_input.shape[-2:]))
            means.append(_channel_mean(activated))
            if events is not None:
                path = tracker.path
                last = max(i for i, m in enumerate(path) if m is module)  # the activated output's module
                events.extend(("post", m, block, i == last) for i, m in enumerate(path))
                if tracker.ended_by is None or not tracker.ended_by[1]:
                    events = None  # this block's end cannot be checked on later chunks
                else:
                    events.append(("pre", tracker.ended_by[0], -1, False))

        with HandleList() as handles, torch.no_grad():
            tracker = ConvBlocks(self.convs, keep_mean, stop=True).attach(model, handles)
            try:
                model(x)
            except AllBlocksDone:
                pass
            tracker.finish()
        if not order:
            raise InputError("none of the conv layers ran in the forward pass")
        self.geometry = [ConvGeometry.of(conv, size) for conv, size in zip(order, in_sizes)]
        self.events = events
        return means

    def _follow(self, model: nn.Module, x: torch.Tensor) -> list[torch.Tensor] | None:
        """The means by the recorded events, or None where the forward pass left them."""
        events = self.events
        means: list[torch.Tensor | None] = [None] * len(self.geometry)
        k = 0  # the next event
        previous = None  # the previous event's output (None after a block's end: any input)
        on_path = True

        def check(kind: str, module: nn.Module, args: tuple) -> None:
            nonlocal on_path
            if (k >= len(events) or events[k][0] != kind or events[k][1] is not module
                    or (previous is not None and (not args or args[0] is not previous))):
                on_path = False
                raise AllBlocksDone

        def post(module: nn.Module, args: tuple, output) -> None:
            nonlocal k, previous
            check("post", module, args)
            _, _, block, keep = events[k]
            if keep:
                means[block] = _channel_mean(output)
            k, previous = k + 1, output

        def pre(module: nn.Module, args: tuple) -> None:
            nonlocal k, previous
            check("pre", module, args)
            k, previous = k + 1, None  # the next block's conv may take any input (pooling between)
            if k == len(events):
                raise AllBlocksDone  # the last block has ended: skip the rest of the forward pass

        with HandleList() as handles, torch.no_grad():
            for kind, m in dict.fromkeys((kind, m) for kind, m, _, _ in events):  # each hook once
                handles.append(m.register_forward_hook(post) if kind == "post" else m.register_forward_pre_hook(pre))
            try:
                model(x)
            except AllBlocksDone:
                pass
        return means if on_path and k == len(events) else None  # type: ignore[return-value]


def _upscale(means: list[torch.Tensor], geometry: list, size: tuple[int, int], backend: str) -> torch.Tensor:
    """The chain of upscaled, multiplied mean maps, at the input's ``size``, min-max normalised
    per frame: ``(b, H, W)`` float32 in [0, 1]."""
    # the chain normalises (the CPU twin fused per frame) unless a resize to the input's size
    # follows it (a layer before the first conv changed the size)
    resize = tuple(geometry[0].in_size) != tuple(size)
    with torch.no_grad():
        try:
            with parallel_kernels():
                m = kernels.vbp.upscale_chain(means, geometry, backend=backend, normalize=not resize)  # (b, H_in, W_in)
        except ValueError as exc:  # e.g. backend="cpu" on a chain with pooling between convs
            raise InputError(f"VisualBackProp upscaling: {exc}") from None
        if resize:
            m = F.interpolate(m.unsqueeze(1), size=size, mode="bilinear", align_corners=False)[:, 0]
            m = kernels.vbp.normalize_maps(m)  # in place: m is the resize's own output
    return m.float()
