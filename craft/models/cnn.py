"""The seed's small CNN, made for 32x32 images; other sizes are pooled to its classifier's input."""

from __future__ import annotations

import attrs
import torch.nn.functional as F
from torch import Tensor, nn

from craft.models import MODELS
from craft.validators import at_least


class SmallCNN(nn.Module):
    """Conv(in->16) ReLU MaxPool, Conv(16->32) ReLU MaxPool, Linear(32*8*8 -> classes).

    Input ``(B, in_channels, H, W)``, H and W at least 4; output logits ``(B, num_classes)``.
    At 32x32, its native size, the classifier reads the 8x8 feature map as it is; at other sizes
    the map is average-pooled to 8x8 first (adaptive pooling), so 32-px results are unchanged.
    ``num_classes=None`` builds the conv layers alone (no ``fc``): ``features``
    then takes any image size, for a model that reuses them as its encoder.
    """

    out_channels = 32

    def __init__(self, num_classes: int | None = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(32 * 8 * 8, num_classes) if num_classes is not None else None

    def features(self, x: Tensor) -> Tensor:
        """The conv layers' feature map ``(B, 32, H / 4, W / 4)``."""
        x = self.pool(self.conv1(x).relu())  # (B, 16, H/2, W/2)
        return self.pool(self.conv2(x).relu())  # (B, 32, H/4, W/4)

    def forward(self, x: Tensor) -> Tensor:
        if self.fc is None:
            raise ValueError("this SmallCNN has no classifier (num_classes=None); call features(x) instead")
        if min(x.shape[-2:]) < 4:  # two 2x2 max pools leave nothing of a smaller image
            raise ValueError(f"the cnn model needs images of at least 4x4 pixels, got {x.shape[-2]}x{x.shape[-1]}")
        features = self.features(x)
        if features.shape[-2:] != (8, 8):  # not 32x32: pooled to the classifier's 8x8 (32 px: not touched)
            features = F.adaptive_avg_pool2d(features, 8)
        return self.fc(features.flatten(1))  # (B, num_classes)


@MODELS.register("cnn")
@attrs.frozen
class CNNConfig:
    """``[model] kind = "cnn"``: the seed CNN, for 32x32 images (any size of at least 4x4 is pooled to
    fit its classifier). ``num_classes`` left unset is the data's class count (a run fills it in; in
    Python pass it)."""

    num_classes: int | None = attrs.field(default=None, validator=at_least(1))
    in_channels: int = attrs.field(default=3, validator=at_least(1))

    def build(self) -> SmallCNN:
        return SmallCNN(self.num_classes, self.in_channels)
