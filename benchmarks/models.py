"""Benchmark-only models for the memory suite (benchmarks/test_bench_memory.py).

Both are defined here (no torchvision) and carry random weights drawn with a fixed seed: memory
use and speed do not depend on training, and their outputs are meaningless.

- :class:`VGGLike`: VGG-11's convolutional layout ("configuration A" of Simonyan & Zisserman,
  "Very Deep Convolutional Networks for Large-Scale Image Recognition", ICLR 2015), with the
  three large fully connected layers replaced by global average pooling and one linear layer.
  It is "VGG-like", not VGG-11: about 9.7 M parameters instead of 133 M. The activations, which
  set occlusion's memory footprint, are exactly VGG-11's.
- :class:`ResNet50Like`: fastviz's ResNet-50-sized network (:class:`fastviz.models.resnet.ResNet50`,
  He et al., CVPR 2016: bottleneck blocks [3, 4, 6, 3], about 25.6 M parameters, torchvision's
  "v1.5" layout), the same model ``fastviz bench --model resnet50`` measures.

Both take float32 ``(B, 3, 224, 224)`` and return ``(B, 1000)`` logits; both work with any
input of at least 32x32 (global average pooling), which the suite uses for a cheap warm-up.
ReLUs run in place, as in torchvision's versions.
"""

from __future__ import annotations

import torch
from torch import nn

from fastviz.models.resnet import ResNet50

__all__ = ["VGG11_LAYOUT", "ResNet50Like", "VGGLike", "build", "parameter_count"]

#: VGG-11 ("A"): output channels of each 3x3 convolution, "M" for a 2x2 max-pool.
VGG11_LAYOUT = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGGLike(nn.Module):
    """VGG-11's convolutional blocks (3x3 convolutions with ReLU, 2x2 max-pools; 64, 128,
    256, 256, 512, 512, 512, 512 channels), then global average pooling and a linear layer to
    ``num_classes``. Not VGG-11's classifier head (three fully connected layers, 124 M
    parameters): see the module docstring."""

    def __init__(self, num_classes: int = 1000, layout=VGG11_LAYOUT) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for v in layout:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(c, int(v), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                c = int(v)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


#: ResNet-50-sized network: the package's own (fastviz/models/resnet.py), one definition.
ResNet50Like = ResNet50


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build(name: str, device: str | torch.device = "cpu", seed: int = 0) -> nn.Module:
    """A benchmark model in eval mode on ``device``, random weights from ``seed``.

    ``name``: ``"vgg-like"``, ``"resnet50-like"`` or ``"pilotnet"`` (fastviz's PilotNet,
    untrained)."""
    torch.manual_seed(seed)
    if name == "vgg-like":
        model = VGGLike()
    elif name == "resnet50-like":
        model = ResNet50Like()
    elif name == "pilotnet":
        import fastviz

        model = fastviz.models.PilotNet()
    else:
        raise ValueError(f"unknown benchmark model {name!r}")
    return model.to(device).eval()
