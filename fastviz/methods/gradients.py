"""Input-gradient family: vanilla gradient saliency and guided backpropagation.

Both take the gradient of the target score with respect to the input frame and differ in one
step: how the backward pass goes through the ReLUs. :func:`saliency` uses the true gradient;
:func:`guided_backprop` passes, at every ``nn.ReLU``, only the positive gradient where the
forward input was positive. The gradient is taken with respect to a detached copy of ``x``
only (``torch.autograd.grad``): no parameter ``.grad`` is written and ``x`` is left as given.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .. import scheduler
from ..errors import InputError
from ..hooks import HandleList, check_input, model_guard
from ..targets import Target, as_target, bind, evaluate, for_rows
from .registry import register

__all__ = ["guided_backprop", "saliency"]

_REDUCTIONS = ("max_abs", None)


class _GuidedReLU(torch.autograd.Function):
    """``relu(x)`` whose backward passes ``grad.clamp(min=0) * (x > 0)`` (guided backprop)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = x.clamp(min=0)  # a new tensor: later in-place ops on it are allowed
        ctx.save_for_backward(out > 0)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (positive,) = ctx.saved_tensors
        return grad.clamp(min=0) * positive


def _guide(_module: nn.Module, args: tuple, output):
    # For an in-place ReLU args[0] *is* the (already rectified) output; either way the guided
    # function recomputes relu of it and replaces the module's output in the graph.
    inp = args[0] if args and isinstance(args[0], torch.Tensor) else output
    return _GuidedReLU.apply(inp)


def _input_gradient(model, x, target, reduce, memory_budget, chunk_size, name: str, hook_relus: bool,
                    check_finite: bool = True) -> torch.Tensor:
    check_input(model, x, finite=check_finite)
    if reduce not in _REDUCTIONS:
        raise InputError(f"reduce must be 'max_abs' or None, got {reduce!r}")
    if torch.is_inference_mode_enabled():
        raise InputError(f"{name} needs autograd, which torch.inference_mode() switches off: call it outside inference mode")
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)] if hook_relus else []
    if hook_relus and not relus:
        raise InputError(
            f"{type(model).__name__} has no nn.ReLU modules: guided backprop hooks nn.ReLU modules "
            "(functional relu calls cannot be hooked); use saliency for the plain gradient"
        )
    out_shape = (x.shape[0], *x.shape[2:]) if reduce == "max_abs" else tuple(x.shape)
    maps = torch.empty(out_shape, device=x.device, dtype=torch.float32)
    with model_guard(model):
        # the graph of the whole network and the gradients are kept for the backward pass
        p = scheduler.plan(model, x[:1], rows=x.shape[0], memory_budget=memory_budget, chunk=chunk_size, factor=2.0)

        def step(r0: int, r1: int) -> None:
            xi = x[r0:r1].detach().clone().requires_grad_(True)
            with HandleList() as handles, torch.enable_grad():
                handles.extend(m.register_forward_hook(_guide) for m in relus)
                output = model(xi)
                clean = output.detach() if isinstance(output, torch.Tensor) else output
                tgt = as_target(for_rows(target, r0, r1), clean)
                scores = evaluate(tgt, output, bind(tgt, clean), r1 - r0)
                if not scores.requires_grad:
                    raise InputError("the target does not depend on the input")
                (grad,) = torch.autograd.grad(scores.sum(), xi, allow_unused=True)
            if grad is None:
                raise InputError("the target does not depend on the input")
            maps[r0:r1] = grad.abs().amax(dim=1) if reduce == "max_abs" else grad

        scheduler.run_chunks(p, step, x.device)
    return maps


_COMMON_PARAMETERS = """
    Parameters
    ----------
    model : nn.Module
        Used as it is (call ``model.eval()`` first); left unchanged (mode, ``requires_grad``,
        hooks; no parameter ``.grad`` is written).
    x : Tensor (B, C, H, W)
        Float input in the model's input space, on the model's device; not modified, its
        ``.grad`` is not touched.
    target : Target, callable, int or None
        The scalar explained (see :mod:`fastviz.targets`); ``None``: the single output, or the
        top class of a classifier. Each sample's score must depend on that sample alone.
    reduce : {"max_abs", None}
        ``"max_abs"`` (default): the maximum over channels of the absolute gradient,
        ``(B, H, W)`` (the paper's map). ``None``: the signed gradient, ``(B, C, H, W)``.
    memory_budget : str, int, float or None
        Bytes a chunk of frames may use (see :func:`fastviz.scheduler.parse_budget`; the need
        per frame counts activations and gradients: twice the no-grad footprint); chunks are
        halved on out-of-memory.
    chunk_size : int, optional
        Frames per forward/backward pass, overriding the plan.
    check_finite : bool
        Check ``x`` for NaN and Inf before the forward pass (default); ``False`` skips that
        pass over ``x`` for speed.
"""

_COMMON_RAISES = """
    Raises
    ------
    InputError
        For a malformed ``x`` (NaN or Inf: naming the frames; a channel count or size the
        model does not take: naming the expected and the given shape, before any forward
        pass), target, ``reduce`` or budget; a target that does not depend on the input;
        inside ``torch.inference_mode()``.{more}
    OutOfBudgetError
        If one frame per pass still runs out of memory.
"""

_COMMON_NOTES = """
    Notes
    -----
    Thread-safe: calls on one model from several threads are serialised by the model's lock
    (:func:`fastviz.hooks.model_lock`); calls on different models run in parallel.
"""


@register("saliency")
def saliency(
    model: nn.Module,
    x: torch.Tensor,
    target: Target | Callable[[torch.Tensor], torch.Tensor] | int | None = None,
    reduce: str | None = "max_abs",
    memory_budget: str | int | float | None = None,
    chunk_size: int | None = None,
    check_finite: bool = True,
) -> torch.Tensor:
    return _input_gradient(model, x, target, reduce, memory_budget, chunk_size, "saliency", hook_relus=False,
                           check_finite=check_finite)


saliency.__doc__ = (
    """Gradient saliency maps: how strongly each input pixel moves the target score.

    With ``y`` the target score of a sample and ``x`` its frame::

        map[h, w] = max over c of |dy / dx[c, h, w]|

    Source: Simonyan, Vedaldi and Zisserman, "Deep Inside Convolutional Networks: Visualising
    Image Classification Models and Saliency Maps", ICLR workshop 2014.
"""
    + _COMMON_PARAMETERS
    + """
    Returns
    -------
    Tensor (B, H, W), or (B, C, H, W) for ``reduce=None``
        float32 on ``x``'s device; ``>= 0`` for ``"max_abs"``, signed for ``None``; raw (not
        normalised), in units of the target per unit of input.
"""
    + _COMMON_RAISES.format(more="")
    + _COMMON_NOTES
    + """
    Examples
    --------
    >>> import torch, fastviz
    >>> net = fastviz.models.PilotNet().eval()
    >>> saliency(net, torch.rand(2, 3, 66, 200)).shape
    torch.Size([2, 66, 200])
"""
)


@register("guided_backprop")
def guided_backprop(
    model: nn.Module,
    x: torch.Tensor,
    target: Target | Callable[[torch.Tensor], torch.Tensor] | int | None = None,
    reduce: str | None = "max_abs",
    memory_budget: str | int | float | None = None,
    chunk_size: int | None = None,
    check_finite: bool = True,
) -> torch.Tensor:
    return _input_gradient(model, x, target, reduce, memory_budget, chunk_size, "guided backprop", hook_relus=True,
                           check_finite=check_finite)


guided_backprop.__doc__ = (
    """Guided backpropagation maps: the input gradient with only positive signals through ReLUs.

    The backward pass is the gradient's except at every ``nn.ReLU`` module, where the gradient
    ``g`` arriving at its output leaves as ``max(g, 0) * (input > 0)`` (the true gradient keeps
    negative ``g``). The map is then reduced like :func:`saliency`. The ReLUs are changed for the
    call only, by forward hooks that route their output through a guided-ReLU autograd function
    (the user's modules are never swapped; in-place ReLUs work); the hooks are removed when the
    call ends, also when it raises. ``F.relu`` / ``torch.relu`` calls inside ``forward`` cannot
    be hooked and pass the plain gradient.

    Source: Springenberg, Dosovitskiy, Brox and Riedmiller, "Striving for Simplicity: The All
    Convolutional Net", ICLR workshop 2015.
"""
    + _COMMON_PARAMETERS
    + """
    Returns
    -------
    Tensor (B, H, W), or (B, C, H, W) for ``reduce=None``
        float32 on ``x``'s device; ``>= 0`` for ``"max_abs"``, signed for ``None``; raw (not
        normalised), in units of the target per unit of input.
"""
    + _COMMON_RAISES.format(more=" Also for a model without ``nn.ReLU`` modules.")
    + _COMMON_NOTES
    + """
    Examples
    --------
    >>> import torch, fastviz
    >>> net = fastviz.models.PilotNet().eval()
    >>> guided_backprop(net, torch.rand(2, 3, 66, 200), reduce=None).shape
    torch.Size([2, 3, 66, 200])
"""
)
