"""fastviz against its peers on the same work, in one run (issue 6).

- Grad-CAM: fastviz.grad_cam vs captum.attr.LayerGradCam (``relu_attributions=True``, then
  ``LayerAttribution.interpolate(..., "bilinear")`` to the input size: fastviz's own steps) vs
  pytorch_grad_cam.GradCAM (only where it is installed: it needs torchvision), on the same layer
  and target:
  - PilotNet (the bundled weights, ``fastviz.models.load()``), layer ``features.5``, the single
    output, batch 16 and 64 (66x200 frames);
  - the ResNet-50-sized net of benchmarks/models.py at 224x224, layer ``stages.3`` (the last
    stage), each frame's top class, batch 4 on the CPU and 256 on CUDA only.
- Saliency: fastviz.saliency vs captum.attr.Saliency (``abs=True``, then the max over channels);
  guided backprop: fastviz.guided_backprop vs captum.attr.GuidedBackprop (max over channels of
  the absolute value); PilotNet, batch 64.

Each test checks once, on the benchmark's own inputs, that fastviz and the peer give the same
maps: exactly the same quantity for Captum (rtol 1e-3); for pytorch-grad-cam, which min-max
normalises each map and resizes with OpenCV, after the same per-frame normalisation (atol 1e-2).

Groups ``peers-<method>-<model>-<device>-b<batch>``; ``extra_info``: impl ("fastviz", "captum",
"pytorch-grad-cam"), device, batch, model. ms per frame = median / batch (benchmarks/report.py,
``peer_tables``).

Run: ``python -m pytest benchmarks/test_bench_peers.py -q --benchmark-json=benchmarks/results-peers-cpu.json``
then ``python benchmarks/make_results.py``.
"""

from __future__ import annotations

import pytest
import torch

import fastviz as fv
import models as bench_models

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
ROUNDS = {"pilotnet": 15, "resnet50-like": 7}

# (model, batch, device) of the Grad-CAM workloads: ResNet-50-sized at 256 only on CUDA
GRADCAM_CASES = [(m, b, d) for d in DEVICES for m, b in
                 [("pilotnet", 16), ("pilotnet", 64), ("resnet50-like", 4 if d == "cpu" else 256)]]
LAYERS = {"pilotnet": "features.5", "resnet50-like": "stages.3"}


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


_CACHE: dict = {}


def workload(name: str, batch: int, device: str):
    """(model, x, fastviz target, captum target, per-row class indices) — the same for every impl."""
    key = (name, batch, device)
    if key not in _CACHE:
        torch.manual_seed(0)
        if name == "pilotnet":
            model = fv.models.load().to(device).eval()
            x = torch.rand(batch, 3, 66, 200, device=device)
            classes = [0] * batch  # the single output
            fv_target, cap_target = None, 0
        else:
            model = bench_models.build(name, device)
            x = torch.rand(batch, 3, 224, 224, device=device)
            with torch.no_grad():
                top = model(x).argmax(1)
            classes = top.tolist()
            fv_target, cap_target = fv.targets.Class(top), top
        _CACHE.clear()  # one model at a time in memory
        _CACHE[key] = (model, x, fv_target, cap_target, classes)
    return _CACHE[key]


def label(benchmark, method, name, device, batch, impl):
    benchmark.group = f"peers-{method}-{name}-{device}-b{batch}"
    benchmark.extra_info.update(impl=impl, device=device, batch=batch, model=name, method=method)


def run_bench(benchmark, fn, device, name):
    def run():
        out = fn()
        sync(device)
        return out

    return benchmark.pedantic(run, rounds=ROUNDS[name], warmup_rounds=1)


def assert_close(ours, theirs, what, rtol=1e-3):
    ours, theirs = ours.detach().float().cpu(), theirs.detach().float().cpu()
    assert ours.shape == theirs.shape, (what, ours.shape, theirs.shape)
    atol = 1e-4 * float(theirs.abs().max().clamp(min=1e-12))  # float32 sums in another order
    assert torch.allclose(ours, theirs, rtol=rtol, atol=atol), (
        f"{what}: max |diff| {float((ours - theirs).abs().max()):.3g}, max |ref| {float(theirs.abs().max()):.3g}")


def minmax(m: torch.Tensor) -> torch.Tensor:
    """Per-frame min-max normalisation, as pytorch-grad-cam's scale_cam_image."""
    flat = m.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - lo) / (hi - lo + 1e-7)).view_as(m)


# --- Grad-CAM -------------------------------------------------------------------------------

def _fastviz_gradcam(name, batch, device):
    model, x, fv_target, _, _ = workload(name, batch, device)
    return lambda: fv.grad_cam(model, x, layer=LAYERS[name], target=fv_target)


def _captum_gradcam(name, batch, device):
    captum = pytest.importorskip("captum.attr")
    model, x, _, cap_target, _ = workload(name, batch, device)
    gc = captum.LayerGradCam(model, model.get_submodule(LAYERS[name]))

    def fn():
        a = gc.attribute(x, target=cap_target, relu_attributions=True)
        return captum.LayerAttribution.interpolate(a, tuple(x.shape[-2:]), interpolate_mode="bilinear").squeeze(1)

    return fn


@pytest.mark.parametrize("name,batch,device", GRADCAM_CASES)
def test_gradcam_fastviz(benchmark, name, batch, device):
    label(benchmark, "gradcam", name, device, batch, "fastviz")
    out = run_bench(benchmark, _fastviz_gradcam(name, batch, device), device, name)
    assert out.shape == (batch, *workload(name, batch, device)[1].shape[-2:])


@pytest.mark.parametrize("name,batch,device", GRADCAM_CASES)
def test_gradcam_captum(benchmark, name, batch, device):
    fn = _captum_gradcam(name, batch, device)
    assert_close(_fastviz_gradcam(name, batch, device)(), fn(), f"grad-cam {name} b{batch}: fastviz vs captum")
    label(benchmark, "gradcam", name, device, batch, "captum")
    run_bench(benchmark, fn, device, name)


@pytest.mark.parametrize("name,batch,device", GRADCAM_CASES)
def test_gradcam_pytorch_grad_cam(benchmark, name, batch, device):
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, x, _, _, classes = workload(name, batch, device)
    cam = pgc.GradCAM(model=model, target_layers=[model.get_submodule(LAYERS[name])])
    targets = [ClassifierOutputTarget(c) for c in classes]

    def fn():
        return cam(input_tensor=x, targets=targets)  # numpy (B, H, W), min-max normalised per frame

    theirs = torch.as_tensor(fn())
    ours = minmax(_fastviz_gradcam(name, batch, device)().cpu())
    # OpenCV's bilinear resize and float32 rounding: compare the normalised maps with atol 1e-2
    assert ours.shape == theirs.shape
    assert torch.allclose(ours, theirs.float(), atol=1e-2), float((ours - theirs).abs().max())
    label(benchmark, "gradcam", name, device, batch, "pytorch-grad-cam")
    run_bench(benchmark, fn, device, name)


# --- Saliency and guided backprop (PilotNet, batch 64) ----------------------------------------

GRAD_CASES = [("pilotnet", 64, d) for d in DEVICES]


def _fastviz_grad(method, name, batch, device):
    model, x, fv_target, _, _ = workload(name, batch, device)
    f = fv.saliency if method == "saliency" else fv.guided_backprop
    return lambda: f(model, x, target=fv_target)


def _captum_grad(method, name, batch, device):
    captum = pytest.importorskip("captum.attr")
    model, x, _, cap_target, _ = workload(name, batch, device)
    if method == "saliency":
        sal = captum.Saliency(model)
        return lambda: sal.attribute(x, target=cap_target, abs=True).amax(dim=1)
    gbp = captum.GuidedBackprop(model)
    return lambda: gbp.attribute(x, target=cap_target).abs().amax(dim=1)


@pytest.mark.parametrize("name,batch,device", GRAD_CASES)
@pytest.mark.parametrize("method", ["saliency", "guided-backprop"])
def test_grad_fastviz(benchmark, method, name, batch, device):
    label(benchmark, method, name, device, batch, "fastviz")
    out = run_bench(benchmark, _fastviz_grad(method, name, batch, device), device, name)
    assert out.shape == (batch, 66, 200)


@pytest.mark.parametrize("name,batch,device", GRAD_CASES)
@pytest.mark.parametrize("method", ["saliency", "guided-backprop"])
def test_grad_captum(benchmark, method, name, batch, device):
    fn = _captum_grad(method, name, batch, device)
    assert_close(_fastviz_grad(method, name, batch, device)(), fn(), f"{method} {name} b{batch}: fastviz vs captum")
    label(benchmark, method, name, device, batch, "captum")
    run_bench(benchmark, fn, device, name)
