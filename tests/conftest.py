"""Shared tiny models with fixed weights; the CUDA simulator for machines without a GPU."""

from __future__ import annotations

import os

import torch

# Numba reads NUMBA_ENABLE_CUDASIM when it is first imported: decide before anything imports it.
# Without a CUDA GPU the kernels' CUDA paths run in Numba's simulator (slow: keep sizes tiny).
if "NUMBA_ENABLE_CUDASIM" not in os.environ and not torch.cuda.is_available():
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"

# Measured chunk plans (fastviz.scheduler.tune) are cached on disk: keep the tests' cache apart
# from the user's, one per test session.
if "FASTVIZ_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["FASTVIZ_CACHE_DIR"] = tempfile.mkdtemp(prefix="fastviz-test-cache-")

import pytest  # noqa: E402
from torch import nn  # noqa: E402


class BoxSum(nn.Module):
    """Output depends only on one box of the input: sum of squares inside ``[y0:y1, x0:x1]``."""

    def __init__(self, y0=10, y1=14, x0=20, x1=27):
        super().__init__()
        self.box = (y0, y1, x0, x1)
        self.scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, x):
        y0, y1, x0, x1 = self.box
        return (self.scale * (x[:, :, y0:y1, x0:x1] ** 2).sum(dim=(1, 2, 3))).unsqueeze(1)


def small_convnet(seed: int = 0, inplace: bool = False, classes: int = 1) -> nn.Sequential:
    """Conv(3->4, 3x3, s1, p1) ReLU Conv(4->6, 3x3, s2) ReLU Conv(6->5, 3x3, s1, p1) ReLU, then a
    linear head; fixed random weights."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(inplace=inplace),
        nn.Conv2d(4, 6, 3, stride=2),
        nn.ReLU(inplace=inplace),
        nn.Conv2d(6, 5, 3, padding=1),
        nn.ReLU(inplace=inplace),
        nn.Flatten(),
        nn.LazyLinear(classes),
    )


def materialise(model: nn.Module, x: torch.Tensor) -> nn.Module:
    with torch.no_grad():
        model(x)
    return model.eval()


@pytest.fixture
def convnet() -> nn.Sequential:
    return materialise(small_convnet(), torch.zeros(1, 3, 17, 23))


@pytest.fixture
def frames() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand(3, 3, 17, 23)
