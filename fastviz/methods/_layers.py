"""Which module holds a convolution's *activated* output.

A convolution's activated output is the output of the activation module that follows it (through
any normalisation modules that take the conv's output directly), else the conv's own output.
VisualBackProp averages these; Grad-CAM's default target layer is the last of them.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from ..hooks import execution_order

ACTIVATIONS = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU,
    nn.SiLU, nn.Mish, nn.Hardswish, nn.Hardtanh, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Softplus,
)
NORMS = (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d, nn.LocalResponseNorm)
CHAIN = ACTIVATIONS + NORMS


def continues_chain(module: nn.Module, inp: torch.Tensor | None, current: torch.Tensor) -> bool:
    """Whether ``module``, run on ``inp``, extends the conv block whose latest output is ``current``."""
    return isinstance(module, CHAIN) and inp is current


def last_conv_block(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """The module holding the activated output of the last ``nn.Conv2d`` to run on ``x``.

    Raises
    ------
    InputError
        If no ``nn.Conv2d`` runs in the forward pass.
    """
    calls = execution_order(model, x)
    last = None
    current = None
    for _name, module, inp, out in calls:
        if isinstance(module, nn.Conv2d):
            last, current = module, out
        elif last is not None and continues_chain(module, inp, current):
            current = out
            if isinstance(module, ACTIVATIONS):
                last = module
        else:
            current = None
    if last is None:
        raise InputError(f"{type(model).__name__} runs no nn.Conv2d on this input; give layer= explicitly")
    return last
