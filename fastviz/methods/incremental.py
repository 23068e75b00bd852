"""Incremental occlusion: recompute only what a window changes (Krypton).

Nakandala, Kumar and Papakonstantinou, "Incremental and Approximate Inference for Faster
Occlusion-based Deep CNN Explanations" (SIGMOD 2019; "Krypton"): an occluded window changes a
convolution's output only inside the window's *projective field*, a box that grows layer by
layer. Everything outside it equals the clean frame's activations, which are computed once per
frame. So for every layer, only the changed box of each window is recomputed — from a patch of
the clean activations (a receptive-field region of the layer's input, cached per frame) with the
window's changed values written in — until the box covers most of the map or the network pools
globally; from there on, the ordinary forward pass runs on the full maps.

How it is built here:

- the model is traced once with :mod:`torch.fx` (the trace is cached per model); standard
  ``torch.nn`` layers are the graph's leaves;
- :func:`plan_scale` propagates each window's changed box through the graph, per scale: the
  windows of one scale have one patch size per layer (the largest box of the scale, shifted
  inwards at the map's edges), so their patches batch into one convolution;
- supported incrementally: convolutions (zero padding, any stride, dilation and groups),
  max- and average-pooling (no ``ceil_mode``), batch norm in eval mode, elementwise activations,
  dropout in eval mode, elementwise ``+ - * /`` of two maps or of a map and a scalar or a
  per-channel constant, and concatenation along channels; any other operation (global pooling,
  flatten, linear layers, ...) receives the full maps — the changed box is written into the
  clean map (:func:`fastviz.kernels.assemble`) — and so does every layer after it;
- :func:`run_rows` computes a chunk of rows (frame, window) of one scale; patch assembly and the
  write-back are :func:`fastviz.kernels.assemble` (Numba CUDA kernel, CPU twin, torch reference).

The result equals the full recomputation up to floating-point rounding (the convolutions run on
smaller inputs, so their accumulation order may differ: about 1e-7 relative in float32). Models
that cannot be traced (data-dependent control flow), models with a module in training mode
(batch statistics make rows depend on each other), and graphs that mutate values another node
still reads are not run incrementally (:func:`trace` raises :class:`Unsupported`).

Approximation (off by default): Krypton's projective-field threshold ``tau`` caps the changed
box of every layer at ``ceil(tau * size)`` of the map's height and width, centred on the exact
box; what lies outside is taken from the clean activations.
"""

from __future__ import annotations

import logging
import math
import operator
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from .. import kernels

__all__ = ["Graph", "ScalePlan", "Unsupported", "clean_pass", "plan_scale", "run_rows", "trace"]

log = logging.getLogger(__name__)

#: Switch to the ordinary forward pass where a layer's changed box covers more than this fraction
#: of its map: the patch convolution then costs about as much as the full one, plus assembly.
FULL_FRACTION = 0.5


class Unsupported(Exception):
    """The model cannot run incrementally (the message says why); occlusion falls back to the
    full forward pass."""


# ---------------------------------------------------------------------------------------------
# operation classes

_POINTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid,
    nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Softsign, nn.Tanhshrink,
    nn.PReLU, nn.Identity, nn.Dropout, nn.Dropout2d, nn.BatchNorm2d,
)
_POINTWISE_FUNCTIONS = {
    F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish, F.hardtanh,
    F.hardswish, F.hardsigmoid, F.softplus, F.sigmoid, F.tanh, torch.relu, torch.sigmoid, torch.tanh,
    torch.clamp, torch.clip, torch.abs, torch.exp, torch.neg, torch.square, torch.sqrt,
}
_POINTWISE_METHODS = {"relu", "sigmoid", "tanh", "clamp", "clip", "abs", "exp", "neg", "square", "sqrt",
                      "contiguous", "relu_", "sigmoid_", "tanh_", "clamp_", "clip_", "abs_", "exp_", "neg_",
                      "square_", "sqrt_"}
_BINARY = {operator.add: operator.add, operator.sub: operator.sub, operator.mul: operator.mul,
           operator.truediv: operator.truediv, operator.iadd: operator.add, operator.isub: operator.sub,
           operator.imul: operator.mul, operator.itruediv: operator.truediv, torch.add: torch.add,
           torch.sub: torch.sub, torch.mul: torch.mul, torch.div: torch.div}
_BINARY_METHODS = {"add": "add", "sub": "sub", "mul": "mul", "div": "div", "add_": "add", "sub_": "sub",
                   "mul_": "mul", "div_": "div"}
_SHAPE_METHODS = {"size", "dim"}
_INPLACE_FUNCTIONS = {operator.iadd, operator.isub, operator.imul, operator.itruediv}


def _is_inplace(node: fx.Node, module: nn.Module | None) -> bool:
    if node.op == "call_module":
        return bool(getattr(module, "inplace", False))
    if node.op == "call_function":
        return node.target in _INPLACE_FUNCTIONS or node.kwargs.get("inplace") is True
    if node.op == "call_method":
        return str(node.target).endswith("_")
    return False


# ---------------------------------------------------------------------------------------------
# the traced graph


@dataclass
class Graph:
    """A model's :mod:`torch.fx` graph, with what the incremental pass needs per node.

    Attributes
    ----------
    module : fx.GraphModule
        The trace; it shares the model's submodules and parameters (no copy).
    nodes : list of fx.Node
        In execution order.
    varying : set of fx.Node
        Nodes whose value depends on the input (the rest are constants of the model).
    last_use : dict
        Node -> index of the last node that reads it (values are freed after it).
    """

    module: fx.GraphModule
    nodes: list
    varying: set
    last_use: dict
    input: fx.Node
    modules: dict = field(default_factory=dict)
    #: conv module -> (weight version key, the weight in channels-last layout), for one call
    weights: "weakref.WeakKeyDictionary" = field(default_factory=weakref.WeakKeyDictionary)


_TRACES: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()
_TRACES_LOCK = threading.Lock()


def trace(model: nn.Module) -> Graph:
    """The model's :class:`Graph`, traced once per model and module structure.

    Raises
    ------
    Unsupported
        If :func:`torch.fx.symbolic_trace` fails (data-dependent control flow, ...), the forward
        takes more than one tensor input, a module is in training mode, or an in-place operation
        mutates a value that another node reads.
    """
    training = [name for name, m in model.named_modules() if m.training]
    if training:
        raise Unsupported(f"module {training[0] or 'model'!r} is in training mode (call model.eval())")
    key = tuple(id(m) for m in model.modules())
    with _TRACES_LOCK:
        known = _TRACES.get(model)
    if known is not None and known[0] == key:
        if isinstance(known[1], str):
            raise Unsupported(known[1])
        return known[1]
    try:
        graph = _trace(model)
    except Unsupported as exc:
        with _TRACES_LOCK:  # the message only: a kept exception would keep its frames' tensors
            _TRACES[model] = (key, str(exc))
        raise
    with _TRACES_LOCK:
        _TRACES[model] = (key, graph)
    return graph


def _trace(model: nn.Module) -> Graph:
    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:  # noqa: BLE001 - any tracing failure means "run the full pass"
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise Unsupported(f"torch.fx cannot trace the model ({type(exc).__name__}: {first})") from None
    nodes = list(gm.graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise Unsupported(f"the model's forward takes {len(placeholders)} inputs; incremental occlusion needs exactly one")
    modules = dict(gm.named_modules())
    varying = {placeholders[0]}
    last_use: dict = {}
    for i, n in enumerate(nodes):
        if any(a in varying for a in n.all_input_nodes):
            varying.add(n)
        for a in n.all_input_nodes:
            last_use[a] = i
        if n.op == "call_function" and n.target in (operator.setitem,):
            raise Unsupported("the model assigns into a tensor (setitem)")
    for n in nodes:
        if _is_inplace(n, modules.get(n.target) if n.op == "call_module" else None) and n.all_input_nodes:
            src = n.args[0] if n.args else None
            if isinstance(src, fx.Node) and len(src.users) > 1:
                raise Unsupported(f"in-place operation {n.name!r} mutates {src.name!r}, which other nodes also read")
    return Graph(module=gm, nodes=nodes, varying=varying, last_use=last_use, input=placeholders[0], modules=modules)


def _fetch(gm: fx.GraphModule, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _load(arg, env: dict):
    return fx.node.map_arg(arg, lambda n: env[n])


def clean_pass(g: Graph, x: torch.Tensor) -> tuple[dict, object]:
    """Run the graph on clean frames ``x (G, C, H, W)``; return every input-dependent node's
    value (the clean activations the patches are cut from) and the output.

    In-place operations run out of place here, so each cached activation is the value its node
    produced (not what a later in-place operation made of it)."""
    env: dict = {}
    try:
        for n in g.nodes:
            if n.op == "placeholder":
                env[n] = x
            elif n.op == "get_attr":
                env[n] = _fetch(g.module, n.target)
            elif n.op == "output":
                return env, _load(n.args[0], env)
            else:
                env[n] = _call(g, n, _load(n.args, env), _load(n.kwargs, env), out_of_place=True)
    finally:
        g.weights.clear()  # the channels-last weight copies live for one pass, not between calls
    raise Unsupported("the graph has no output")  # pragma: no cover - fx graphs always end in output


# ---------------------------------------------------------------------------------------------
# per-scale plan: the changed box of every node


@dataclass
class Step:
    """How one node is computed for a chunk of rows.

    ``kind``: ``"const"`` (no input dependence: the model's value), ``"patch"`` (only the changed
    box: ``size`` at ``at[window]``) or ``"full"`` (whole maps). ``how`` names the rule:
    ``"input"``, ``"conv"``, ``"pool"``, ``"pointwise"``, ``"binary"``, ``"cat"``, ``"shape"``,
    ``"full"`` (the ordinary operation on full maps) or ``"const"``.
    """

    kind: str
    how: str
    size: tuple[int, int] = (0, 0)
    at: np.ndarray | None = None  # (n_windows, 2) int64: the box's top-left per window
    region_at: np.ndarray | None = None  # conv / pool: the input region's top-left per window
    region: tuple[int, int] = (0, 0)  # conv / pool: the input region's size
    map_size: tuple[int, int] = (0, 0)
    pad: float = 0.0


@dataclass
class ScalePlan:
    """The changed boxes of one scale's windows through the graph (:func:`plan_scale`)."""

    steps: dict
    windows: int
    macs_per_row: int  # multiply-accumulates of one row (window) in the incremental pass
    full_macs_per_row: int  # ... and in the ordinary forward pass
    row_bytes: int  # bytes one row holds at the peak of run_rows (values live to their last reader)
    device_at: dict = field(default_factory=dict)  # node -> (n_windows, 2) tensor on the device
    device_region_at: dict = field(default_factory=dict)


def _cdiv(a, b):
    return -((-a) // b)


def _conv_geometry(m: nn.Module) -> tuple | None:
    """(kernel, stride, padding, dilation) pairs and the pad value, or None if unsupported."""
    if isinstance(m, nn.Conv2d):
        if m.padding_mode != "zeros" or isinstance(m.padding, str):
            if isinstance(m.padding, str) and m.padding == "valid" and m.padding_mode == "zeros":
                return m.kernel_size, m.stride, (0, 0), m.dilation, 0.0
            return None
        return m.kernel_size, m.stride, m.padding, m.dilation, 0.0
    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
        if m.ceil_mode:
            return None
        k = nn.modules.utils._pair(m.kernel_size)
        s = nn.modules.utils._pair(m.stride if m.stride is not None else m.kernel_size)
        p = nn.modules.utils._pair(m.padding)
        if isinstance(m, nn.MaxPool2d):
            if getattr(m, "return_indices", False):
                return None
            return k, s, p, nn.modules.utils._pair(m.dilation), -math.inf
        if not m.count_include_pad and any(p):
            return None
        return k, s, p, (1, 1), 0.0
    return None


def _box_through(at: np.ndarray, size: tuple[int, int], geom, out_size: tuple[int, int], tau: float | None):
    """The output box of a window box ``[at, at + size)`` through a sliding-window layer."""
    k, s, p, d, _pad = geom
    new_size = [0, 0]
    lo_all, hi_all = [], []
    for dim in range(2):
        a = at[:, dim]
        b = a + size[dim]
        lo = np.clip(_cdiv(a + p[dim] - d[dim] * (k[dim] - 1), s[dim]), 0, out_size[dim])
        hi = np.clip((b - 1 + p[dim]) // s[dim] + 1, 0, out_size[dim])
        lo_all.append(lo)
        hi_all.append(hi)
        new_size[dim] = int(max(1, (hi - lo).max(initial=1)))
    return _place(lo_all, hi_all, new_size, out_size, tau)


def _place(lo_all, hi_all, size, out_size, tau):
    at = np.empty((len(lo_all[0]), 2), dtype=np.int64)
    size = list(size)
    for dim in range(2):
        lo, hi = lo_all[dim], hi_all[dim]
        if tau is not None:
            cap = max(1, math.ceil(tau * out_size[dim]))
            if size[dim] > cap:
                size[dim] = cap
                lo = np.floor((lo + hi) / 2.0 - cap / 2.0).astype(np.int64)
        size[dim] = min(size[dim], out_size[dim])
        at[:, dim] = np.clip(np.minimum(lo, out_size[dim] - size[dim]), 0, None)
    return at, (int(size[0]), int(size[1]))


def _union(boxes, out_size, tau):
    lo_all, hi_all, size = [], [], [0, 0]
    for dim in range(2):
        lo = np.minimum.reduce([a[:, dim] for a, _s in boxes])
        hi = np.maximum.reduce([a[:, dim] + s[dim] for a, s in boxes])
        lo_all.append(lo)
        hi_all.append(hi)
        size[dim] = int((hi - lo).max(initial=1))
    return _place(lo_all, hi_all, size, out_size, tau)


def _covers_most(size: tuple[int, int], out_size: tuple[int, int]) -> bool:
    """Whether a box of ``size`` covers more than :data:`FULL_FRACTION` of a map of ``out_size``
    (the node then runs on full maps)."""
    return size[0] * size[1] > FULL_FRACTION * out_size[0] * out_size[1]


def _spatial(t) -> tuple[int, int] | None:
    return (int(t.shape[-2]), int(t.shape[-1])) if isinstance(t, torch.Tensor) and t.ndim == 4 else None


def _channel_constant(v) -> bool:
    """A value that broadcasts over a map without spatial extent: a number, a 0-d tensor, or a
    tensor whose last two dimensions are 1."""
    if isinstance(v, (int, float, bool)):
        return True
    if isinstance(v, torch.Tensor):
        return v.ndim == 0 or (v.ndim >= 2 and v.shape[-2:] == (1, 1) and v.ndim <= 4)
    return False


def plan_scale(g: Graph, clean: dict, at: np.ndarray, size: tuple[int, int], tau: float | None = None) -> ScalePlan:
    """Propagate one scale's windows (top-left ``at (n, 2)``, ``size (h, w)`` pixels) through
    the graph, given the clean activations of one or more frames (for the shapes).

    Returns
    -------
    ScalePlan
        Each node's step; the multiply-accumulates per row, incremental and full.
    """
    steps: dict = {}
    macs = full_macs = 0
    for n in g.nodes:
        if n.op == "output":
            break
        if n not in g.varying:
            steps[n] = Step("const", "const")
            continue
        value = clean[n]
        if n.op == "placeholder":
            steps[n] = Step("patch", "input", tuple(size), at.astype(np.int64), map_size=_spatial(value))
            continue
        inputs = [a for a in n.all_input_nodes if a in g.varying]
        kinds = {steps[a].kind for a in inputs}
        module = g.modules.get(n.target) if n.op == "call_module" else None
        step = None
        if kinds == {"patch"}:
            step = _patch_step(g, n, module, inputs, steps, clean, value, tau)
        if step is None:
            if n.op == "call_method" and n.target in _SHAPE_METHODS or not isinstance(value, torch.Tensor):
                step = Step("full", "shape")
            else:
                step = Step("full", "full", map_size=_spatial(value) or (0, 0))
        steps[n] = step
        # cost accounting (multiply-accumulates of convolutions and linear layers per row)
        per_position = 0
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            per_position = module.out_channels * (module.in_channels // module.groups) * kh * kw
        if per_position:
            hw = value.shape[-2] * value.shape[-1]
            full_macs += per_position * hw
            macs += per_position * (step.size[0] * step.size[1] if step.kind == "patch" else hw)
        elif isinstance(module, nn.Linear):
            full_macs += module.in_features * module.out_features
            macs += module.in_features * module.out_features
    return ScalePlan(steps=steps, windows=len(at), macs_per_row=int(macs), full_macs_per_row=int(full_macs),
                     row_bytes=_peak_row_bytes(g, steps, clean))


def _peak_row_bytes(g: Graph, steps: dict, clean: dict) -> int:
    """Bytes one row holds at the peak of :func:`run_rows`: values live from their node to
    their last reader (as run_rows frees them), plus the node's temporaries (a convolution's
    input region, operands written onto a common box, a patch written back into a full map)."""
    def nbytes(n, step) -> int:
        v = clean.get(n)
        if not isinstance(v, torch.Tensor) or v.ndim == 0 or n not in g.varying:
            return 0
        if step.kind == "patch":
            return v.shape[1] * step.size[0] * step.size[1] * v.element_size()
        return v[0].numel() * v.element_size()

    live, peak = 0, 0
    for i, n in enumerate(g.nodes):
        if n.op == "output":
            break
        step = steps[n]
        own = nbytes(n, step)
        temp = 0
        for a in n.all_input_nodes:
            if a in g.varying and steps[a].kind == "patch" and step.kind == "full":
                temp += clean[a][0].numel() * clean[a].element_size()  # written back into a full map
        if step.how in ("conv", "pool"):
            src = clean[n.args[0]]
            temp += src.shape[1] * step.region[0] * step.region[1] * src.element_size()
        elif step.how in ("binary", "cat"):
            temp += sum(clean[a].shape[1] * clean[a].element_size() for a in n.all_input_nodes if a in g.varying) \
                * step.size[0] * step.size[1]
        live += own
        peak = max(peak, live + temp)
        for a in n.all_input_nodes:
            if g.last_use.get(a) == i:
                live -= nbytes(a, steps[a])
    return int(max(peak, 1))


def _patch_step(g: Graph, n: fx.Node, module, inputs, steps, clean, value, tau) -> Step | None:
    """The patch rule of node ``n`` whose input-dependent arguments are all patches, or None
    (then the node runs on full maps)."""
    out_size = _spatial(value)
    if out_size is None:
        return None
    first = steps[inputs[0]]
    if n.op == "call_module":
        if isinstance(module, _POINTWISE_MODULES) and len(inputs) == 1 and n.args and n.args[0] is inputs[0]:
            if _spatial(clean[inputs[0]]) != out_size:
                return None
            return Step("patch", "pointwise", first.size, first.at, map_size=out_size)
        geom = _conv_geometry(module)
        if geom is None or len(n.args) != 1 or n.kwargs or n.args[0] is not inputs[0]:
            return None
        at, size = _box_through(first.at, first.size, geom, out_size, tau)
        if _covers_most(size, out_size):
            return None
        k, s, p, d, pad = geom
        region_at = np.stack([at[:, 0] * s[0] - p[0], at[:, 1] * s[1] - p[1]], axis=1)
        region = ((size[0] - 1) * s[0] + d[0] * (k[0] - 1) + 1, (size[1] - 1) * s[1] + d[1] * (k[1] - 1) + 1)
        how = "conv" if isinstance(module, nn.Conv2d) else "pool"
        return Step("patch", how, size, at, region_at=region_at, region=region, map_size=out_size, pad=pad)
    if n.op == "call_function" and n.target in _POINTWISE_FUNCTIONS or n.op == "call_method" and n.target in _POINTWISE_METHODS:
        first_arg = n.args[0] if n.args else None
        others = [a for a in list(n.args[1:]) + list(n.kwargs.values()) if isinstance(a, fx.Node)]
        if first_arg is not inputs[0] or others or _spatial(clean[inputs[0]]) != out_size:
            return None
        return Step("patch", "pointwise", first.size, first.at, map_size=out_size)
    binary = n.op == "call_function" and n.target in _BINARY or n.op == "call_method" and n.target in _BINARY_METHODS
    if binary:
        if len(n.args) != 2 or any(k not in ("alpha",) for k in n.kwargs):
            return None
        operands = n.args
        boxes = []
        for a in operands:
            if isinstance(a, fx.Node) and a in g.varying:
                if _spatial(clean[a]) != out_size:
                    return None
                boxes.append((steps[a].at, steps[a].size))
            elif not _channel_constant(clean[a] if isinstance(a, fx.Node) else a):
                return None
        at, size = _union(boxes, out_size, tau) if len(boxes) > 1 else (first.at, first.size)
        if _covers_most(size, out_size):
            return None
        return Step("patch", "binary", size, at, map_size=out_size)
    if n.op == "call_function" and n.target is torch.cat:
        tensors = n.args[0] if n.args else n.kwargs.get("tensors")
        dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0)
        if not isinstance(tensors, (list, tuple)) or dim not in (1, -3):
            return None
        if not all(isinstance(a, fx.Node) and a in g.varying and _spatial(clean[a]) == out_size for a in tensors):
            return None
        at, size = _union([(steps[a].at, steps[a].size) for a in tensors], out_size, tau)
        if _covers_most(size, out_size):
            return None
        return Step("patch", "cat", size, at, map_size=out_size)
    return None


# ---------------------------------------------------------------------------------------------
# running a chunk of rows


def _to_device(plan: ScalePlan, device: torch.device) -> None:
    if plan.device_at:
        return
    for n, step in plan.steps.items():
        if step.kind == "patch":
            plan.device_at[n] = torch.as_tensor(step.at, dtype=torch.int64, device=device)
            if step.region_at is not None:
                plan.device_region_at[n] = torch.as_tensor(step.region_at, dtype=torch.int64, device=device)


def assembler(backend: str, device: torch.device):
    """:func:`fastviz.kernels.assemble`'s implementation for ``backend`` on ``device``, without
    the argument checks (the engine builds its arguments itself; the checks' read-back of the
    frame range would synchronise a GPU on every call). The CPU twin runs under
    :func:`~fastviz.methods._concurrency.parallel_kernels`.

    Positional arguments: ``(clean, frame, region_at, size, patch=None, patch_at=None, pad=0.0)``.
    """
    from ._concurrency import parallel_kernels

    name = kernels._backend.resolve(backend, torch.device(device), kernels.patches.DEFAULTS)
    if name == "cpu":
        def run_cpu(*args):
            with parallel_kernels():
                return kernels.patches.assemble_cpu(*args)
        return run_cpu
    return kernels.patches.assemble_cuda if name == "cuda" else kernels.patches.assemble_torch


class _Rows:
    """One chunk's rows: their frames and windows, and each node's box corners for them."""

    def __init__(self, plan: ScalePlan, frame: torch.Tensor, window: torch.Tensor) -> None:
        self.plan, self.frame, self.window = plan, frame, window
        self._at: dict = {}
        self._region: dict = {}

    def at(self, n) -> torch.Tensor:
        t = self._at.get(n)
        if t is None:
            t = self._at[n] = self.plan.device_at[n].index_select(0, self.window)
        return t

    def region_at(self, n) -> torch.Tensor:
        t = self._region.get(n)
        if t is None:
            t = self._region[n] = self.plan.device_region_at[n].index_select(0, self.window)
        return t


def run_rows(
    g: Graph,
    plan: ScalePlan,
    clean: dict,
    frame: torch.Tensor,
    window: torch.Tensor,
    input_patch: torch.Tensor,
    backend: str = "auto",
):
    """The model's output for a chunk of rows of one scale, computed incrementally.

    Parameters
    ----------
    g, plan : the graph and the scale's plan (:func:`trace`, :func:`plan_scale`)
    clean : dict
        Clean values of the frame group (:func:`clean_pass`), ``(G, ...)`` per node.
    frame : int64 Tensor (N,)
        Each row's frame within the group, on the model's device.
    window : int64 Tensor (N,)
        Each row's window within the scale, on the model's device.
    input_patch : Tensor (N, C, h, w)
        What each row's input holds inside its window (the baseline's values there).
    backend : str
        The :func:`fastviz.kernels.assemble` implementation.

    Returns
    -------
    The model's output for the N rows, as the model returns it.
    """
    _to_device(plan, input_patch.device)
    assemble = assembler(backend, input_patch.device)
    rows = _Rows(plan, frame, window)
    steps = plan.steps
    env: dict = {}
    n_rows = frame.shape[0]

    def full(n):
        """Node ``n``'s value as one full map per row: its patch written into its clean map."""
        if steps[n].kind != "patch":
            return env[n]
        c = clean[n]
        origin = torch.zeros(n_rows, 2, dtype=torch.int64, device=c.device)
        return assemble(c, frame, origin, _spatial(c), env[n], rows.at(n))

    def on_box(n, at, size):
        """Node ``n``'s value on the box ``size`` at ``at``: its patch written into a region of
        its clean map (the patch itself where the boxes agree)."""
        if steps[n].size == size and np.array_equal(steps[n].at, at[1]):
            return env[n]
        return assemble(clean[n], frame, at[0], size, env[n], rows.at(n))

    def value(a):
        return full(a) if a in g.varying else env[a]

    for i, n in enumerate(g.nodes):
        if n.op == "output":
            return fx.node.map_arg(n.args[0], value)
        step = steps[n]
        if step.kind == "const":
            env[n] = clean[n]
        elif step.how == "input":
            env[n] = input_patch
        elif step.kind == "patch":
            env[n] = _run_patch(g, n, step, env, clean, rows, on_box, assemble)
        else:
            env[n] = _call(g, n, fx.node.map_arg(n.args, value), fx.node.map_arg(n.kwargs, value))
        for a in n.all_input_nodes:
            if g.last_use.get(a) == i:
                env.pop(a, None)
    raise Unsupported("the graph has no output")  # pragma: no cover - fx graphs end in output


def _weight_like(g: Graph, m: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """The convolution's weight in ``x``'s memory layout, converted once per weight version:
    a channels-last input otherwise converts the weight on every call (ResNet-50's 512x512x3x3
    weights: 3 ms each time)."""
    w = m.weight
    if x.device.type != "cpu" or not x.is_contiguous(memory_format=torch.channels_last) or x.is_contiguous():
        return w
    key = (w.data_ptr(), w._version, w.shape)
    known = g.weights.get(m)
    if known is None or known[0] != key:
        known = g.weights[m] = (key, w.detach().contiguous(memory_format=torch.channels_last))
    return known[1]


def _call(g: Graph, n: fx.Node, args, kwargs, out_of_place: bool = False):
    """Node ``n``'s operation on ``args``. In-place functions (``+=``, ...) always run out of
    place; with ``out_of_place`` also in-place modules (on a copy of their input), in-place
    methods (``relu_`` as ``relu``) and ``inplace=True`` arguments, so that no value another
    node may read later is changed (the clean pass, whose values are cached)."""
    if out_of_place and kwargs.get("inplace") is True:
        kwargs = {**kwargs, "inplace": False}
    if n.op == "call_module":
        m = g.modules[n.target]
        if out_of_place and getattr(m, "inplace", False) and args and isinstance(args[0], torch.Tensor):
            args = (args[0].clone(), *args[1:])
        if type(m) is nn.Conv2d and not kwargs and len(args) == 1 and isinstance(args[0], torch.Tensor) \
                and m.padding_mode == "zeros":
            return F.conv2d(args[0], _weight_like(g, m, args[0]), m.bias, m.stride, m.padding, m.dilation, m.groups)
        return m(*args, **kwargs)
    if n.op == "call_function":
        fn = _BINARY[n.target] if n.target in _INPLACE_FUNCTIONS else n.target
        return fn(*args, **kwargs)
    name = str(n.target)
    if out_of_place and name.endswith("_") and isinstance(args[0], torch.Tensor) and hasattr(args[0], name[:-1]):
        name = name[:-1]
    return getattr(args[0], name)(*args[1:], **kwargs)


def _run_patch(g: Graph, n: fx.Node, step: Step, env, clean, rows: _Rows, on_box, assemble):
    how = step.how
    if how == "pointwise":
        return _call(g, n, fx.node.map_arg(n.args, lambda a: env[a]), fx.node.map_arg(n.kwargs, lambda a: env[a]))
    if how in ("conv", "pool"):
        src = n.args[0]
        region = assemble(clean[src], rows.frame, rows.region_at(n), step.region, env[src], rows.at(src), step.pad)
        m = g.modules[n.target]
        if isinstance(m, nn.Conv2d):
            return F.conv2d(region, _weight_like(g, m, region), m.bias, m.stride, 0, m.dilation, m.groups)
        k = nn.modules.utils._pair(m.kernel_size)
        s = nn.modules.utils._pair(m.stride if m.stride is not None else m.kernel_size)
        if isinstance(m, nn.MaxPool2d):
            return F.max_pool2d(region, k, s, 0, m.dilation)
        return F.avg_pool2d(region, k, s, 0, False, True, m.divisor_override)
    box = (rows.at(n), step.at)
    if how == "binary":
        ops = [on_box(a, box, step.size) if isinstance(a, fx.Node) and a in g.varying
               else (env[a] if isinstance(a, fx.Node) else a) for a in n.args]
        if n.op == "call_function":
            return _BINARY[n.target](*ops, **n.kwargs)
        return getattr(ops[0], _BINARY_METHODS[n.target])(ops[1], **n.kwargs)
    if how == "cat":
        tensors = n.args[0] if n.args else n.kwargs["tensors"]
        return torch.cat([on_box(a, box, step.size) for a in tensors], dim=1)
    raise AssertionError(f"unknown patch rule {how!r}")  # pragma: no cover


def macs_per_window(plans: Sequence[ScalePlan]) -> tuple[float, float]:
    """Mean multiply-accumulates per window, incremental and full, over the scales' windows."""
    n = sum(p.windows for p in plans)
    inc = sum(p.macs_per_row * p.windows for p in plans) / max(n, 1)
    full = sum(p.full_macs_per_row * p.windows for p in plans) / max(n, 1)
    return inc, full


def clean_bytes(clean: dict, g: Graph) -> int:
    """Bytes of the input-dependent clean values in ``clean`` (the per-frame-group cache)."""
    seen, total = set(), 0
    for n in g.varying:
        v = clean.get(n)
        if isinstance(v, torch.Tensor) and id(v) not in seen:
            seen.add(id(v))
            total += v.numel() * v.element_size()
    return total


def window_scores(
    g: Graph,
    x: torch.Tensor,
    grids: Sequence,
    base,
    score_rows,
    scores: torch.Tensor,
    memory_budget,
    chunk_size: int | None,
    backend: str,
    tau: float | None = None,
    select: torch.Tensor | None = None,
) -> list[ScalePlan]:
    """Every window's score, incrementally: fills ``scores (B * n_windows,)``.

    Parameters
    ----------
    g : Graph
    x : Tensor (B, C, H, W)
        The clean frames, in the layout the model runs them in.
    grids : sequence of :class:`~fastviz.methods.perturbation.WindowGrid`
        The scales; rows are ``frame * n_windows + window``, scales concatenated in order.
    base : float or Tensor (B, C, 1 | H, 1 | W)
        The baseline (:func:`~fastviz.methods.perturbation.make_baseline`).
    score_rows : callable ``(output, frames (N,)) -> Tensor (N,)``
        A window's score from the model's output for its rows and their frames.
    scores : Tensor (B * n_windows,)
        Written in place.
    memory_budget, chunk_size : as for occlusion
    backend : str
        :func:`fastviz.kernels.assemble`'s implementation.
    tau : float, optional
        Krypton's projective-field threshold in (0, 1] (approximate); ``None``: exact.
    select : bool Tensor (B, n_windows), optional
        Only these windows are scored (the rest of ``scores`` is left as it is); default all.

    Returns
    -------
    list of ScalePlan
        One per scale (for the cost: multiply-accumulates per window).

    Raises
    ------
    InputError
        For a malformed budget or chunk size (:func:`fastviz.scheduler.plan_rows`).
    OutOfBudgetError
        If one row per pass still runs out of memory (:func:`fastviz.scheduler.run_chunks`).
    """
    try:
        return _window_scores(g, x, grids, base, score_rows, scores, memory_budget, chunk_size, backend, tau, select)
    finally:
        g.weights.clear()  # the channels-last weight copies live for one call, not between calls


def _window_scores(g, x, grids, base, score_rows, scores, memory_budget, chunk_size, backend, tau, select):
    from .. import scheduler

    b, c, h, w = x.shape
    device = x.device
    n = sum(len(gr) for gr in grids)
    budget = scheduler.parse_budget(memory_budget, device)
    first = clean_pass(g, x[:1])[0]
    per_frame = max(1, clean_bytes(first, g))
    group = max(1, min(b, int(budget // 4 // per_frame)))
    layout = torch.channels_last if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    signature = scheduler.model_signature(g.module)
    assemble = assembler(backend, device)
    plans: list[ScalePlan] | None = None
    for f0 in range(0, b, group):
        f1 = min(b, f0 + group)
        clean = clean_pass(g, x[f0:f1])[0] if (f0, f1) != (0, 1) else first
        base_group = None
        if isinstance(base, torch.Tensor):
            base_group = base[f0:f1].expand(f1 - f0, c, h, w).contiguous(memory_format=layout)
        if plans is None:
            plans = [plan_scale(g, clean, gr.boxes()[:, :2].numpy(), (gr.height, gr.width), tau) for gr in grids]
        offset = 0
        for gr, sp in zip(grids, plans):
            m = len(gr)
            todo = None
            if select is not None:
                todo = select[f0:f1, offset:offset + m].reshape(-1).nonzero().view(-1).to(device)
            rows_total = (f1 - f0) * m if todo is None else int(todo.numel())
            if rows_total == 0:
                offset += m
                continue
            p = scheduler.plan_rows(sp.row_bytes, rows_total, device, budget, chunk_size, cache_sized=True)
            size = (gr.height, gr.width)
            _to_device(sp, device)
            at_all = sp.device_at[g.input]  # the windows' corners

            def step(r0: int, r1: int, m=m, offset=offset, size=size, at_all=at_all, sp=sp,
                     clean=clean, f0=f0, base_group=base_group, todo=todo) -> None:
                r = torch.arange(r0, r1, device=device) if todo is None else todo[r0:r1]
                frame = torch.div(r, m, rounding_mode="floor")
                window = r - frame * m
                if base_group is None:
                    patch = torch.full((r1 - r0, c, *size), float(base), dtype=x.dtype, device=device)
                else:
                    patch = assemble(base_group, frame, at_all.index_select(0, window), size)
                out = run_rows(g, sp, clean, frame, window, patch, backend)
                frames = frame + f0
                scores[frames * n + offset + window] = score_rows(out, frames)

            key = ("occlusion-incremental", signature, tuple(x.shape[1:]), str(x.dtype),
                   layout == torch.channels_last, size, m, tau)
            scheduler.run_chunks(scheduler.tune(p, step, device, key, fixed=chunk_size is not None), step, device)
            offset += m
    return plans or []
