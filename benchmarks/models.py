"""Benchmark-only models for the memory suite (benchmarks/test_bench_memory.py).

Both are defined here (no torchvision) and carry random weights drawn with a fixed seed: memory
use and speed do not depend on training, and their outputs are meaningless.

- :class:`VGGLike`: VGG-11's convolutional layout ("configuration A" of Simonyan & Zisserman,
  "Very Deep Convolutional Networks for Large-Scale Image Recognition", ICLR 2015), with the
  three large fully connected layers replaced by global average pooling and one linear layer.
  It is "VGG-like", not VGG-11: about 9.7 M parameters instead of 133 M. The activations, which
  set occlusion's memory footprint, are exactly VGG-11's.
- :class:`ResNet50Like`: a ResNet-50-sized network (He et al., "Deep Residual Learning for
  Image Recognition", CVPR 2016): bottleneck blocks [3, 4, 6, 3] with widths 64..512 and
  expansion 4, batch norm, 1000 classes; about 25.6 M parameters, the same layout as
  torchvision's ``resnet50`` (downsampling on the 3x3 convolution, "v1.5").

Both take float32 ``(B, 3, 224, 224)`` and return ``(B, 1000)`` logits; both work with any
input of at least 32x32 (global average pooling), which the suite uses for a cheap warm-up.
ReLUs run in place, as in torchvision's versions.
"""

from __future__ import annotations

import torch
from torch import nn

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


class Bottleneck(nn.Module):
    """ResNet bottleneck: 1x1 (width), 3x3 (width, ``stride``), 1x1 (4 x width), each with batch
    norm; identity or a 1x1-conv + batch-norm shortcut; ReLU after the sum."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1) -> None:
        super().__init__()
        out = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + identity)


class ResNet50Like(nn.Module):
    """ResNet-50's layout: 7x7/2 stem with batch norm, ReLU and 3x3/2 max-pool; four stages of
    [3, 4, 6, 3] bottleneck blocks (widths 64, 128, 256, 512; output 256..2048 channels);
    global average pooling; a linear layer to ``num_classes``."""

    def __init__(self, num_classes: int = 1000, blocks=(3, 4, 6, 3)) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        stages = []
        c = 64
        for i, (n, width) in enumerate(zip(blocks, (64, 128, 256, 512))):
            stage = []
            for j in range(n):
                stage.append(Bottleneck(c, width, stride=2 if (j == 0 and i > 0) else 1))
                c = width * Bottleneck.expansion
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.stages(self.stem(x))), 1))


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
