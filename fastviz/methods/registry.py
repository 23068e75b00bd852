"""The method registry: every saliency method registers itself by name.

The CLI's ``--method`` choices and the tests' parameter lists both read this registry, so a new
method is exposed and tested by registering it (the pattern of timm's ``register_model``).

Every registered method checks its input at the public boundary with
:func:`fastviz.hooks.check_input` (form, NaN/Inf unless ``check_finite=False``, channels and
size) before the model runs, and runs the model only inside :func:`fastviz.hooks.model_guard`,
which holds the model's re-entrant lock: calls on one model from several threads are serialised,
calls on different models run in parallel.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch

from ..errors import InputError, UnknownNameError
from ..hooks import check_finite as _check_finite

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


def explain(
    model: torch.nn.Module, x: torch.Tensor, method: str = "occlusion", check_finite: bool = True, **kwargs
) -> torch.Tensor:
    """Saliency maps of ``model`` on ``x`` by the method registered as ``method``.

    Parameters
    ----------
    model : nn.Module
    x : Tensor (B, C, H, W)
        Float input in the model's input space, on the model's device.
    method : str
        A name from :func:`methods`.
    check_finite : bool
        Check ``x`` for NaN and Inf before the model runs (default); ``False`` skips that pass
        over ``x`` for speed. Passed on to the method (a method registered without this option
        gets the check here).
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
        For an option the method does not take; and as the method raises (NaN or Inf in ``x``,
        a channel count or size the model does not take, ...).

    Notes
    -----
    Thread-safe as the methods are: calls on one model are serialised, calls on different
    models run in parallel (see :func:`fastviz.hooks.model_lock`).
    """
    fn = get(method)
    accepted = inspect.signature(fn).parameters
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        options = ", ".join(n for n in accepted if n not in ("model", "x"))
        raise InputError(f"method {method!r} takes no option {', '.join(map(repr, unknown))}; its options are: {options}")
    if "check_finite" in accepted:
        kwargs["check_finite"] = check_finite
    elif check_finite and isinstance(x, torch.Tensor):
        _check_finite(x)
    return fn(model, x, **kwargs)
