"""Class activation map family: Grad-CAM and CAM (and, later, their relatives).

The family shares one skeleton — capture the target layer's activation ``A (B, K, h, w)`` and
the target's gradient ``G`` with respect to it, weigh the channels, sum, ReLU, upsample — and
each method supplies one step: the channel weights (the pattern of pytorch-grad-cam's
``BaseCAM.get_cam_weights``).

Gradients are taken only down to the target layer: the forward pass runs without autograd up
to the layer, whose output is replaced by a fresh leaf tensor; autograd records only the part
of the network above it, and only the gradient with respect to that leaf is computed (no
parameter gradients, nothing left in ``.grad``).

CAM (:func:`cam`) needs no gradient: its channel weights are a row of the final linear layer of
a conv -> global average pool -> linear network, read off the weights directly.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .. import scheduler
from ..errors import InputError
from ..hooks import HandleList, check_input, find_layer, layer_name, model_guard
from ..targets import Class, Output, Target, as_target, bind, evaluate, for_rows
from ._layers import last_conv_block
from .registry import register

__all__ = ["cam", "grad_cam", "layer_activation_and_gradient"]

Weigher = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def layer_activation_and_gradient(
    model: nn.Module,
    x: torch.Tensor,
    layer: nn.Module,
    target: Target | Callable | int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Activation ``A`` of ``layer``, ``dscore/dA``, and the model output, for each sample.

    Parameters
    ----------
    model, x : as in :func:`grad_cam`
    layer : nn.Module
        The target layer, a submodule of ``model``.
    target : as in :func:`grad_cam`

    Returns
    -------
    A, G : Tensor (B, ...)
        The layer's output and the gradient of each sample's target score with respect to it.
    output : Tensor (B, ...) or what the model returns
        The model's output (detached where it is a tensor).

    Raises
    ------
    InputError
        If the layer does not run exactly once, does not return a tensor, or does not
        influence the target; or when called inside ``torch.inference_mode()``.
    """
    if torch.is_inference_mode_enabled():
        raise InputError("Grad-CAM needs autograd, which torch.inference_mode() switches off: call it outside inference mode")
    captured: list[torch.Tensor] = []
    grad_mode = torch.is_grad_enabled()

    def capture(_module, _args, output):
        if not isinstance(output, torch.Tensor):
            raise InputError(f"target layer {layer_name(model, layer)!r} returns {type(output).__name__}, not a tensor")
        if captured:
            raise InputError(f"target layer {layer_name(model, layer)!r} runs more than once in a forward pass")
        leaf = output.detach().requires_grad_(True)
        captured.append(leaf)
        torch.set_grad_enabled(True)  # record the graph from here on only
        return leaf.clone()  # a non-leaf, so in-place modules after the layer are allowed

    try:
        with HandleList() as handles:
            handles.append(layer.register_forward_hook(capture))
            torch.set_grad_enabled(False)
            output = model(x)
        if not captured:
            raise InputError(f"target layer {layer_name(model, layer)!r} did not run in the forward pass")
        (activation,) = captured
        clean = output.detach() if isinstance(output, torch.Tensor) else output
        tgt = as_target(target, clean)
        scores = evaluate(tgt, output, bind(tgt, clean), x.shape[0])
        if not scores.requires_grad:
            raise InputError(f"the target does not depend on layer {layer_name(model, layer)!r}")
        (grad,) = torch.autograd.grad(scores.sum(), activation, allow_unused=True)
        if grad is None:
            raise InputError(f"the target does not depend on layer {layer_name(model, layer)!r}")
    finally:
        torch.set_grad_enabled(grad_mode)
    return activation.detach(), grad, clean


def _store(maps: list[torch.Tensor], m: torch.Tensor, x: torch.Tensor, r0: int, r1: int, upsample: bool) -> None:
    """Write a chunk's maps ``(b, h, w)`` into ``maps[0]`` (allocated on the first chunk, float32),
    bilinearly resized to ``x``'s size when ``upsample``."""
    if upsample and m.shape[-2:] != x.shape[-2:]:
        m = F.interpolate(m.unsqueeze(1), size=x.shape[-2:], mode="bilinear", align_corners=False).squeeze(1)
    if not maps:
        maps.append(torch.empty(x.shape[0], *m.shape[1:], device=x.device, dtype=torch.float32))
    maps[0][r0:r1] = m


def _cam(model, x, layer, target, upsample: bool, weigh: Weigher, memory_budget=None, chunk_size=None,
         check_finite: bool = True) -> torch.Tensor:
    check_input(model, x, finite=check_finite)
    maps: list[torch.Tensor] = []  # one tensor, allocated once the first chunk gives the map size
    with model_guard(model):
        if layer is None:
            layer = getattr(model, "cam_layer", None)  # the architecture's own choice, if it has one
        module = last_conv_block(model, x[:1]) if layer is None else find_layer(model, layer)
        # activations above the layer and their gradients are kept for the backward pass
        p = scheduler.plan(model, x[:1], rows=x.shape[0], memory_budget=memory_budget, chunk=chunk_size, factor=2.0)

        def step(r0: int, r1: int) -> None:
            a, g, _ = layer_activation_and_gradient(model, x[r0:r1], module, for_rows(target, r0, r1))
            if a.ndim != 4:
                raise InputError(f"target layer {layer_name(model, module)!r} must output (B, K, h, w), got {tuple(a.shape)}")
            with torch.no_grad():
                cam = F.relu((weigh(a, g).view(a.shape[0], a.shape[1], 1, 1) * a).sum(dim=1))
                _store(maps, cam, x, r0, r1, upsample)

        scheduler.run_chunks(p, step, x.device)
    return maps[0]


def _gradient_means(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return g.mean(dim=(2, 3))


@register("grad_cam")
def grad_cam(
    model: nn.Module,
    x: torch.Tensor,
    layer: nn.Module | str | None = None,
    target: Target | Callable[[torch.Tensor], torch.Tensor] | int | None = None,
    upsample: bool = True,
    memory_budget: str | int | float | None = None,
    chunk_size: int | None = None,
    check_finite: bool = True,
) -> torch.Tensor:
    """Grad-CAM saliency maps.

    With ``A (B, K, h, w)`` the target layer's activation and ``y`` the target score::

        alpha_k = mean over (h, w) of dy/dA_k
        map     = ReLU(sum_k alpha_k A_k)

    then bilinearly resized to the input size (``upsample=True``). For steering regression use
    ``target=fastviz.targets.Steering()`` (the seeds' steering-direction target).

    Source: Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
    Gradient-based Localization", ICCV 2017.

    Parameters
    ----------
    model : nn.Module
        Used as it is (call ``model.eval()`` first); left unchanged.
    x : Tensor (B, C, H, W)
        Float input in the model's input space, on the model's device.
    layer : nn.Module or dotted name, optional
        The target layer; its output must be ``(B, K, h, w)``. Default: the model's
        ``cam_layer`` attribute if it has one (PilotNet: ``"features.5"``, see
        :class:`fastviz.models.PilotNet`), else the activated output of the last ``nn.Conv2d``
        that runs.
    target : Target, callable, int or None
        The scalar explained (see :mod:`fastviz.targets`); ``None``: the single output, or the
        top class of a classifier.
    upsample : bool
        Resize to ``(H, W)``; ``False`` returns the layer's resolution ``(h, w)``.
    memory_budget : str, int, float or None
        Bytes a chunk of frames may use (see :func:`fastviz.scheduler.parse_budget`; the
        need per frame counts activations and gradients: twice the no-grad footprint);
        chunks are halved on out-of-memory.
    chunk_size : int, optional
        Frames per forward/backward pass, overriding the plan.
    check_finite : bool
        Check ``x`` for NaN and Inf before the forward pass (default; a NaN frame would give a
        NaN map); ``False`` skips that pass over ``x`` for speed.

    Returns
    -------
    Tensor (B, H, W) or (B, h, w)
        float32, >= 0, on ``x``'s device; raw (not normalised), in units of the target times
        the activation.

    Raises
    ------
    InputError
        For a malformed ``x`` (NaN or Inf: naming the frames; a channel count or size the
        model does not take: naming the expected and the given shape, before any forward
        pass) or target, a layer that does not output ``(B, K, h, w)``, runs more than once,
        or does not influence the target; inside ``torch.inference_mode()``; for a malformed
        budget.
    OutOfBudgetError
        If one frame per pass still runs out of memory.
    UnknownNameError
        For a layer name the model does not have.

    Notes
    -----
    Thread-safe: calls on one model from several threads are serialised by the model's lock
    (:func:`fastviz.hooks.model_lock`), so no call sees another's hooks; calls on different
    models run in parallel.
    """
    return _cam(model, x, layer, target, upsample, _gradient_means, memory_budget, chunk_size, check_finite)


def _last_linear(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """The last ``nn.Linear`` to run on ``x`` (one row)."""
    ran: list[nn.Module] = []
    with HandleList() as handles, torch.no_grad():
        handles.extend(
            m.register_forward_hook(lambda m, _a, _o: ran.append(m)) for m in model.modules() if isinstance(m, nn.Linear)
        )
        model(x)
    if not ran:
        raise InputError(f"CAM needs a conv -> global average pool -> nn.Linear model; {type(model).__name__} runs no nn.Linear")
    return ran[-1]


def _class_rows(target, output: torch.Tensor, out_features: int) -> torch.Tensor:
    """Per-sample row of the linear layer's weight that ``target`` selects, ``(B,)`` long."""
    tgt = as_target(target, output)  # raises InputError for a non-tensor output
    flat = output.reshape(output.shape[0], -1)
    if flat.shape[1] != out_features:
        raise InputError(
            f"CAM reads class scores from the final nn.Linear ({out_features} outputs), but the model "
            f"returns {flat.shape[1]} values per sample"
        )
    if isinstance(tgt, Class):  # Class(k) and TopClass()
        return tgt.bind(output)
    if isinstance(tgt, Output):
        if not -out_features <= tgt.index < out_features:
            raise InputError(f"target Output({tgt.index}) is out of range for an output with {out_features} values per sample")
        return torch.full((flat.shape[0],), tgt.index % out_features, dtype=torch.long, device=output.device)
    raise InputError(
        f"CAM needs a class index to choose a row of the linear layer's weight: give target= Class(k), "
        f"TopClass(), Output(index), an int or None, not {type(tgt).__name__}; for any other "
        "scalar of the output use grad_cam"
    )


@register("cam")
def cam(
    model: nn.Module,
    x: torch.Tensor,
    target: Target | int | None = None,
    layer: nn.Module | str | None = None,
    fc: nn.Module | str | None = None,
    upsample: bool = True,
    memory_budget: str | int | float | None = None,
    chunk_size: int | None = None,
    check_finite: bool = True,
) -> torch.Tensor:
    """Class activation maps (CAM) of a conv -> global average pool -> linear network.

    With ``A (B, K, h, w)`` the last conv block's output, ``W (N, K)`` the weight of the final
    linear layer (whose input is the global average of ``A``) and ``c`` the target's class::

        map = sum_k W[c, k] A_k

    then bilinearly resized to the input size (``upsample=True``). As in the paper the map is
    the raw weighted sum: not rectified (it may be negative) and without the linear layer's
    bias; its spatial mean plus ``bias[c]`` is class ``c``'s score. No gradient is computed,
    so CAM also runs inside ``torch.inference_mode()``.

    Source: Zhou, Khosla, Lapedriza, Oliva and Torralba, "Learning Deep Features for
    Discriminative Localization", CVPR 2016.

    Parameters
    ----------
    model : nn.Module
        Used as it is (call ``model.eval()`` first); left unchanged. Its output must be the
        linear layer's output ``(B, N)`` (or have its shape, such as a softmax of it).
    x : Tensor (B, C, H, W)
        Float input in the model's input space, on the model's device.
    target : Target, int or None
        The class whose map is made: :class:`~fastviz.targets.Class` (one class or one per
        sample), :class:`~fastviz.targets.TopClass`, :class:`~fastviz.targets.Output` (index:
        the row of ``W``) or an int; ``None``: the single output of a one-output model, else the
        top class. A plain callable target is an ``InputError``: CAM needs a class index (use
        :func:`grad_cam` for any scalar of the output).
    layer : nn.Module or dotted name, optional
        The feature layer ``A``; its output must be ``(B, K, h, w)``. Default: the model's
        ``cam_layer`` attribute if it has one, else the activated output of the last
        ``nn.Conv2d`` that runs.
    fc : nn.Linear or dotted name, optional
        The final linear layer; default: the last ``nn.Linear`` that runs.
    upsample : bool
        Resize to ``(H, W)``; ``False`` returns the layer's resolution ``(h, w)``.
    memory_budget : str, int, float or None
        Bytes a chunk of frames may use (see :func:`fastviz.scheduler.parse_budget`);
        chunks are halved on out-of-memory.
    chunk_size : int, optional
        Frames per forward pass, overriding the plan.
    check_finite : bool
        Check ``x`` for NaN and Inf before the forward pass (default); ``False`` skips that
        pass over ``x`` for speed.

    Returns
    -------
    Tensor (B, H, W) or (B, h, w)
        float32 on ``x``'s device; signed, raw (not normalised), in units of the class score.

    Raises
    ------
    InputError
        For a malformed ``x`` (NaN or Inf: naming the frames; a channel count or size the
        model does not take: naming the expected and the given shape, before any forward
        pass), target or budget; a plain callable or non-class target; a model
        without the CAM structure: no ``nn.Linear``, a layer that does not output
        ``(B, K, h, w)`` or does not run exactly once, ``in_features != K``, or a linear layer
        whose input is not the global average of the layer's output.
    OutOfBudgetError
        If one frame per pass still runs out of memory.
    UnknownNameError
        For a layer name the model does not have.

    Notes
    -----
    Thread-safe: calls on one model from several threads are serialised by the model's lock
    (:func:`fastviz.hooks.model_lock`); calls on different models run in parallel.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()
    >>> cam(net, torch.rand(2, 3, 32, 32), target=3).shape
    torch.Size([2, 32, 32])
    """
    check_input(model, x, finite=check_finite)
    maps: list[torch.Tensor] = []  # allocated once the first chunk gives the map size
    with model_guard(model):
        if layer is None:
            layer = getattr(model, "cam_layer", None)
        module = last_conv_block(model, x[:1]) if layer is None else find_layer(model, layer)
        linear = _last_linear(model, x[:1]) if fc is None else find_layer(model, fc)
        if not isinstance(linear, nn.Linear):
            raise InputError(f"fc must be an nn.Linear, got {type(linear).__name__}")
        p = scheduler.plan(model, x[:1], rows=x.shape[0], memory_budget=memory_budget, chunk=chunk_size, cache_sized=True)
        lname, fname = layer_name(model, module), layer_name(model, linear)

        def step(r0: int, r1: int) -> None:
            acts: list[torch.Tensor] = []
            pooled: list[torch.Tensor] = []

            def take_act(_m, _a, out):
                acts.append(out)

            def take_fc_input(_m, args):
                pooled.append(args[0])

            with HandleList() as handles, torch.no_grad():
                handles.append(module.register_forward_hook(take_act))
                handles.append(linear.register_forward_pre_hook(take_fc_input))
                output = model(x[r0:r1])
            if len(acts) != 1 or len(pooled) != 1:
                which = lname if len(acts) != 1 else fname
                raise InputError(f"CAM needs layer {which!r} to run exactly once in a forward pass")
            (a,), (z,) = acts, pooled
            if not isinstance(a, torch.Tensor) or a.ndim != 4:
                shape = tuple(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__
                raise InputError(f"target layer {lname!r} must output (B, K, h, w), got {shape}")
            if linear.in_features != a.shape[1]:
                raise InputError(
                    f"CAM needs conv -> global average pool -> linear: layer {lname!r} has {a.shape[1]} channels "
                    f"but linear {fname!r} takes {linear.in_features} features"
                )
            if z.shape != a.shape[:2] or not torch.allclose(z, a.mean(dim=(2, 3)), rtol=1e-4, atol=1e-5, equal_nan=True):
                raise InputError(
                    f"CAM needs conv -> global average pool -> linear: the input of linear {fname!r} is not the "
                    f"global average of layer {lname!r}'s output (is the model in eval mode?)"
                )
            rows = _class_rows(for_rows(target, r0, r1), output, linear.out_features)
            with torch.no_grad():
                w = linear.weight.detach()[rows.to(linear.weight.device)]  # (b, K)
                m = torch.einsum("bk,bkhw->bhw", w.to(a.dtype), a)
                _store(maps, m, x, r0, r1, upsample)

        scheduler.run_chunks(p, step, x.device)
    return maps[0]
