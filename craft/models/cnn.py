"""The seed's small CNN for 32x32 images."""

from __future__ import annotations

import attrs
from torch import Tensor, nn

from craft.models import MODELS
from craft.validators import at_least


class SmallCNN(nn.Module):
    """Conv(in->16) ReLU MaxPool, Conv(16->32) ReLU MaxPool, Linear(32*8*8 -> classes).

    Input ``(B, in_channels, 32, 32)``; output logits ``(B, num_classes)``.
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
        return self.fc(self.features(x).flatten(1))  # (B, num_classes)


@MODELS.register("cnn")
@attrs.frozen
class CNNConfig:
    """``[model] kind = "cnn"``: the seed CNN; images must be 32x32. ``num_classes`` left unset is the
    data's class count (a run fills it in; in Python pass it)."""

    num_classes: int | None = attrs.field(default=None, validator=at_least(1))
    in_channels: int = attrs.field(default=3, validator=at_least(1))

    def build(self) -> SmallCNN:
        return SmallCNN(self.num_classes, self.in_channels)
