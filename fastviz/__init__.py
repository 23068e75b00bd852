"""fastviz: fast occlusion and saliency maps for PyTorch CNNs.

Which pixels of this frame drove this output? ``fastviz`` answers with saliency maps
(occlusion, VisualBackProp, Grad-CAM, ...) computed in large batches on the model's device.

>>> import fastviz as fv
>>> model = fv.models.load("pilotnet-carracing")
>>> log = fv.data.load_drive_log()
>>> x = model.preprocess(log.frames[:4])          # (4, 3, 66, 200) float32
>>> maps = fv.occlusion(model, x)                 # (4, 66, 200) float32
"""

from . import data, errors, kernels, models, render, scheduler, targets, tempfiles, video
from . import audit
from .costs import bench
from .methods import (
    backprojection,
    cam,
    explain,
    feature_maps,
    filter_visualization,
    grad_cam,
    guided_backprop,
    hypercolumns,
    layers,
    methods,
    occlusion,
    saliency,
    visual_backprop,
)
from .overlay import write_overlay
from .stream import stream

__all__ = [
    "audit",
    "backprojection",
    "bench",
    "cam",
    "data",
    "errors",
    "explain",
    "feature_maps",
    "filter_visualization",
    "grad_cam",
    "guided_backprop",
    "hypercolumns",
    "kernels",
    "layers",
    "methods",
    "models",
    "occlusion",
    "render",
    "saliency",
    "scheduler",
    "stream",
    "targets",
    "tempfiles",
    "video",
    "visual_backprop",
    "write_overlay",
]

__version__ = "0.1.0"
