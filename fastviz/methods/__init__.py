"""Saliency methods, one module per family, each registered by name.

``perturbation``: occlusion; ``vbp``: VisualBackProp; ``cam``: CAM and Grad-CAM;
``gradients``: gradient saliency and guided backprop; ``activations``: hypercolumns, layer
listing, feature maps and filter visualisation; ``backprojection``: the model-free baseline
(not registered: it takes an image, not a model).
"""

from .activations import feature_maps, filter_visualization, hypercolumns, layers
from .backprojection import backprojection, backprojection_maps
from .cam import cam, grad_cam
from .gradients import guided_backprop, saliency
from .perturbation import occlusion
from .registry import explain, get, methods, register
from .vbp import visual_backprop

__all__ = [
    "backprojection",
    "backprojection_maps",
    "cam",
    "explain",
    "feature_maps",
    "filter_visualization",
    "get",
    "grad_cam",
    "guided_backprop",
    "hypercolumns",
    "layers",
    "methods",
    "occlusion",
    "register",
    "saliency",
    "visual_backprop",
]
