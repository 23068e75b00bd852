"""Saliency methods, one module per family, each registered by name.

``perturbation``: occlusion; ``vbp``: VisualBackProp; ``cam``: Grad-CAM.
"""

from .cam import grad_cam
from .perturbation import occlusion
from .registry import explain, get, methods, register
from .vbp import visual_backprop

__all__ = ["explain", "get", "grad_cam", "methods", "occlusion", "register", "visual_backprop"]
