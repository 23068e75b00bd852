"""A ResNet-50-sized classifier with random weights, for measuring what methods cost.

:class:`ResNet50` has ResNet-50's layout (He et al., "Deep Residual Learning for Image
Recognition", CVPR 2016): a 7x7/2 stem with batch norm, ReLU and a 3x3/2 max-pool; bottleneck
blocks [3, 4, 6, 3] with widths 64..512 and expansion 4 (downsampling on the 3x3 convolution,
"v1.5", as torchvision's ``resnet50``); global average pooling; a linear layer to 1000 classes;
about 25.6 M parameters. No torchvision is needed. :func:`resnet50_random` draws its weights
with a fixed seed: cost does not depend on training, and its outputs are meaningless.

Input: float32 ``(B, 3, 224, 224)`` (any size of at least 32 x 32 works: global average
pooling); output: ``(B, 1000)`` logits. ReLUs run in place, as in torchvision's version.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Bottleneck", "ResNet50", "resnet50_random"]

#: The input size the model is meant for, (height, width).
INPUT_SIZE = (224, 224)


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


class ResNet50(nn.Module):
    """ResNet-50's layout: stem, four stages of [3, 4, 6, 3] bottleneck blocks (output 256..2048
    channels), global average pooling, a linear layer to ``num_classes``.

    The last convolutional stage is ``stages.3`` (Grad-CAM's and CAM's natural layer), followed
    by ``pool`` and ``fc`` (so CAM applies)."""

    def __init__(self, num_classes: int = 1000, blocks=(3, 4, 6, 3)) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
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


def resnet50_random(seed: int = 0, device: torch.device | str = "cpu", num_classes: int = 1000) -> ResNet50:
    """A :class:`ResNet50` in eval mode on ``device`` with random weights drawn from ``seed``
    (the global RNG state is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ResNet50(num_classes=num_classes)
    return model.to(device).eval()
