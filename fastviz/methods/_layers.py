"""Which module holds a convolution's *activated* output.

A convolution's activated output is the output of the activation module that follows it (through
any normalisation modules that take the conv's output directly), else the conv's own output.
VisualBackProp averages these; Grad-CAM's default target layer is the last of them.
"""

from __future__ import annotations

import torch
from torch import nn

from collections.abc import Callable, Iterable

from ..errors import InputError
from ..hooks import HandleList, leaf_modules

ACTIVATIONS = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU,
    nn.SiLU, nn.Mish, nn.Hardswish, nn.Hardtanh, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Softplus,
)
NORMS = (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d, nn.LocalResponseNorm)
CHAIN = ACTIVATIONS + NORMS


def continues_chain(module: nn.Module, inp: torch.Tensor | None, current: torch.Tensor) -> bool:
    """Whether ``module``, run on ``inp``, extends the conv block whose latest output is ``current``."""
    return isinstance(module, CHAIN) and inp is current


BlockCallback = Callable[[nn.Conv2d, torch.Tensor, nn.Module, torch.Tensor], None]


class AllBlocksDone(Exception):
    """Raised from a forward hook by :class:`ConvBlocks` (with ``stop=True``) once every conv's
    block has ended: the rest of the forward pass cannot change what the blocks hold."""


class ConvBlocks:
    """Forward hooks that follow each conv to its activated output, during one forward pass.

    For every conv in ``convs`` that runs, ``on_block(conv, conv_input, module, activated)`` is
    called once its block ends (when a module runs that does not continue it, or at
    :meth:`finish`): ``module`` is the last activation module of the block, else the conv, and
    ``activated`` its output. Attach with :meth:`attach` inside a :class:`~fastviz.hooks.HandleList`.
    During the callback, :attr:`path` lists the block's modules in the order they ran (the conv,
    then each module that continued it) and :attr:`ended_by` is ``(module, same_input)``: the
    module whose start ended the block and whether its input was the block's latest output
    (``None`` when the block ended with the forward pass, at :meth:`finish`).

    With ``stop=True``, once every conv in ``convs`` has run and its block has ended, the next
    module that is not one of them raises :class:`AllBlocksDone` before it runs: the caller catches
    it and skips the rest of the forward pass (e.g. a regression head).

    Raises
    ------
    InputError
        (from the forward pass) if a conv runs twice or does not return ``(B, C, h, w)``.
    """

    def __init__(self, convs: Iterable[nn.Conv2d], on_block: BlockCallback, stop: bool = False) -> None:
        self.convs = {id(c) for c in convs}
        self.on_block = on_block
        self.stop = stop
        self.path: list[nn.Module] = []
        self.ended_by: tuple[nn.Module, bool] | None = None
        self.seen: set[int] = set()
        self._conv: nn.Conv2d | None = None
        self._input: torch.Tensor | None = None
        self._module: nn.Module | None = None
        self._current: torch.Tensor | None = None  # the block's latest output
        self._value: torch.Tensor | None = None  # its activated output so far

    def attach(self, model: nn.Module, handles: HandleList) -> ConvBlocks:
        for m in leaf_modules(model):
            handles.append(m.register_forward_pre_hook(self._pre))
            handles.append(m.register_forward_hook(self._post))
        return self

    def finish(self) -> None:
        """End the open block, if any (call after the forward pass)."""
        if self._conv is not None:
            self.on_block(self._conv, self._input, self._module, self._value)
        self._conv = self._input = self._module = self._current = self._value = None
        self.path = []
        self.ended_by = None

    def _pre(self, module: nn.Module, args: tuple) -> None:
        inp = args[0] if args else None
        if self._current is not None and not continues_chain(module, inp, self._current):
            self.ended_by = (module, inp is self._current)
            self.finish()
            if self.stop and len(self.seen) == len(self.convs) and id(module) not in self.convs:
                raise AllBlocksDone

    def _post(self, module: nn.Module, args: tuple, output) -> None:
        if id(module) in self.convs:
            if id(module) in self.seen:
                raise InputError("a conv layer ran twice in one forward pass; give the layers explicitly")
            if not isinstance(output, torch.Tensor) or output.ndim != 4:
                raise InputError(f"conv layer output must be (B, C, h, w), got {type(output).__name__}")
            self.finish()
            self.seen.add(id(module))
            self._conv, self._input, self._module = module, args[0], module
            self._current = self._value = output
            self.path = [module]
        elif self._current is not None and continues_chain(module, args[0] if args else None, self._current):
            self._current = output
            self.path.append(module)
            if isinstance(module, ACTIVATIONS):
                self._module, self._value = module, output


def last_conv_block(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """The module holding the activated output of the last ``nn.Conv2d`` to run on ``x``.

    Raises
    ------
    InputError
        If no ``nn.Conv2d`` runs in the forward pass.
    """
    blocks: list[nn.Module] = []
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    tracker = ConvBlocks(convs, lambda conv, inp, module, out: blocks.append(module))
    with HandleList() as handles, torch.no_grad():
        tracker.attach(model, handles)
        model(x)
        tracker.finish()
    if not blocks:
        raise InputError(f"{type(model).__name__} runs no nn.Conv2d on this input; give layer= explicitly")
    return blocks[-1]
