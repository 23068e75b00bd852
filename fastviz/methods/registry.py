"""The method registry: every saliency method registers itself by name.

The CLI's ``--method`` choices and the tests' parameter lists both read this registry, so a new
method is exposed and tested by registering it (the pattern of timm's ``register_model``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch

from ..errors import InputError, UnknownNameError

__all__ = ["explain", "get", "methods", "register"]

_REGISTRY: dict[str, Callable[..., torch.Tensor]] = {}


def register(name: str) -> Callable[[Callable[..., torch.Tensor]], Callable[..., torch.Tensor]]:
    """Decorator: register a method ``fn(model, x, **kwargs) -> Tensor (B, H, W)`` as ``name``."""

    def decorate(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"method {name!r} is already registered")
        _REGISTRY[name] = fn
        fn.method_name = name  # type: ignore[attr-defined]
        return fn

    return decorate


def methods() -> list[str]:
    """Names of every registered saliency method, sorted."""
    return sorted(_REGISTRY)


def get(name: str) -> Callable[..., torch.Tensor]:
    """The method registered as ``name``.

    Raises
    ------
    UnknownNameError
        If no method has that name (the message lists the registered ones).
    """
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise UnknownNameError(f"unknown method {name!r}; registered methods: {', '.join(methods())}") from None


def explain(model: torch.nn.Module, x: torch.Tensor, method: str = "occlusion", **kwargs) -> torch.Tensor:
    """Saliency maps of ``model`` on ``x`` by the method registered as ``method``.

    Parameters
    ----------
    model : nn.Module
    x : Tensor (B, C, H, W)
        Float input in the model's input space, on the model's device.
    method : str
        A name from :func:`methods`.
    **kwargs
        The method's own options (see each method's docstring).

    Returns
    -------
    Tensor (B, H, W)
        float32 on ``x``'s device (``grad_cam(upsample=False)``: the layer's resolution).

    Raises
    ------
    UnknownNameError
        For an unregistered ``method``.
    InputError
        For an option the method does not take.
    """
    fn = get(method)
    accepted = inspect.signature(fn).parameters
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        options = ", ".join(n for n in accepted if n not in ("model", "x"))
        raise InputError(f"method {method!r} takes no option {', '.join(map(repr, unknown))}; its options are: {options}")
    return fn(model, x, **kwargs)
