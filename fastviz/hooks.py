"""Layer lookup, hook handles that are always removed, and the guard that keeps a model unchanged.

Every hook fastviz registers lives in a :class:`HandleList` used as a context manager, so it is
removed when the block ends, also when the model raises (the pattern of zennit's
``RemovableHandleList`` and captum's register-in-try / remove-in-finally).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from .errors import InputError, UnknownNameError

__all__ = [
    "HandleList",
    "as_layers",
    "check_input",
    "execution_order",
    "find_layer",
    "layer_name",
    "leaf_modules",
    "model_device",
    "model_guard",
]


class HandleList(list):
    """A list of ``torch.utils.hooks.RemovableHandle`` removed together on ``__exit__``.

    ``__exit__`` returns ``False``: exceptions from the block propagate unchanged.
    """

    def remove_all(self) -> None:
        """Remove every hook in the list (and empty it)."""
        while self:
            self.pop().remove()

    def __enter__(self) -> HandleList:
        return self

    def __exit__(self, *exc_info) -> bool:
        self.remove_all()
        return False


def leaf_modules(model: nn.Module) -> list[nn.Module]:
    """The modules of ``model`` that have no children, in registration order."""
    return [m for m in model.modules() if next(iter(m.children()), None) is None]


def find_layer(model: nn.Module, layer: nn.Module | str) -> nn.Module:
    """Resolve ``layer`` (a submodule of ``model`` or its dotted name, e.g. ``"features.8"``).

    Raises
    ------
    UnknownNameError
        If the name does not exist in ``model`` (the message lists close names).
    InputError
        If a module is given that is not part of ``model``.
    """
    if isinstance(layer, nn.Module):
        if not any(m is layer for m in model.modules()):
            raise InputError(f"layer {type(layer).__name__} is not a submodule of the model")
        return layer
    if not isinstance(layer, str):
        raise InputError(f"layer must be a module or a dotted name, got {type(layer).__name__}")
    modules = dict(model.named_modules())
    if layer in modules and layer != "":
        return modules[layer]
    names = [n for n in modules if n]
    prefix = layer.rsplit(".", 1)[0]
    close = [n for n in names if n.startswith(prefix)] or names
    shown = ", ".join(close[:12]) + (", ..." if len(close) > 12 else "")
    raise UnknownNameError(f"layer {layer!r} not found in {type(model).__name__}; layers are: {shown}")


def layer_name(model: nn.Module, layer: nn.Module) -> str:
    """Dotted name of ``layer`` inside ``model`` (``""`` for the model itself)."""
    for name, module in model.named_modules():
        if module is layer:
            return name
    raise InputError(f"layer {type(layer).__name__} is not a submodule of the model")


def execution_order(model: nn.Module, x: torch.Tensor) -> list[tuple[str, nn.Module, torch.Tensor, torch.Tensor]]:
    """Run ``model(x)`` without gradients and list the leaf modules in the order they ran.

    Returns
    -------
    list of (name, module, input, output)
        ``input`` is the module's first positional input tensor, ``output`` its output; the
        tensors are those of this forward pass (kept alive by the list).
    """
    names = {m: n for n, m in model.named_modules()}
    seen: list[tuple[str, nn.Module, torch.Tensor, torch.Tensor]] = []

    def record(module: nn.Module, args: tuple, output) -> None:
        inp = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if isinstance(output, torch.Tensor):
            seen.append((names[module], module, inp, output))

    with HandleList() as handles, torch.no_grad():
        handles.extend(m.register_forward_hook(record) for m in leaf_modules(model))
        model(x)
    return seen


def _state(model: nn.Module) -> tuple:
    return (
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        [
            (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
             len(getattr(m, "_backward_pre_hooks", {})))
            for m in model.modules()
        ],
    )


@contextmanager
def model_guard(model: nn.Module) -> Iterator[None]:
    """Use ``model`` inside the block and leave it exactly as found.

    fastviz methods never change the mode, ``requires_grad``, modules or hooks of a model; this
    guard also restores the buffers (BatchNorm running statistics) that a forward pass in
    training mode would update, and checks on the way out that the mode, ``requires_grad`` and
    hook counts are unchanged — also when the block raises.

    Raises
    ------
    RuntimeError
        If the block changed the model's mode, ``requires_grad`` or hooks (a fastviz bug).
    """
    before = _state(model)
    buffers = None
    if any(m.training for m in model.modules()):
        buffers = [(b, b.detach().clone()) for b in model.buffers()]
    ok = False
    try:
        yield
        ok = True
    finally:
        if buffers is not None:
            with torch.no_grad():
                for b, saved in buffers:
                    b.copy_(saved)
        if ok and _state(model) != before:
            raise RuntimeError("fastviz changed the model's mode, requires_grad or hooks (this is a bug)")


def model_device(model: nn.Module) -> torch.device | None:
    """Device of the model's first parameter or buffer; ``None`` for a model with neither."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return None


def check_input(model: nn.Module, x: torch.Tensor, name: str = "x") -> None:
    """Check a method's input at the public boundary: float ``(B, C, H, W)`` on the model's device.

    Raises
    ------
    InputError
        For a non-tensor, a wrong rank, an empty batch, a non-float dtype, a dtype other than the
        model's floating-point parameters', or a device mismatch.
    """
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor of shape (B, C, H, W), got {type(x).__name__}")
    if x.ndim != 4:
        raise InputError(f"{name} must have shape (B, C, H, W), got {tuple(x.shape)}")
    if 0 in x.shape:
        raise InputError(f"{name} is empty: shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise InputError(f"{name} must be a floating-point tensor in the model's input space, got {x.dtype}")
    device = model_device(model)
    if device is not None and device != x.device:
        raise InputError(f"{name} is on {x.device} but the model is on {device}; move one of them")
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    if dtype is not None and dtype != x.dtype:
        raise InputError(f"{name} is {x.dtype} but the model's parameters are {dtype}; convert one of them")


def as_layers(model: nn.Module, layers: Sequence[nn.Module | str] | nn.Module | str) -> list[nn.Module]:
    """Resolve one layer or a sequence of layers (modules or dotted names)."""
    if isinstance(layers, (str, nn.Module)):
        layers = [layers]
    return [find_layer(model, layer) for layer in layers]


