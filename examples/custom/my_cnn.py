"""A custom CNN for 32x32 images: a user's module that craft imports by name."""

from __future__ import annotations

import attrs
from torch import Tensor, nn

from craft.models import MODELS


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    """Conv 3x3, batch norm, ReLU, 2x2 max-pool: ``(B, c_in, H, W) -> (B, c_out, H/2, W/2)``."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),  # no bias: batch norm would cancel it
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )


class ShapesNet(nn.Module):
    """Three conv blocks and a linear head; input ``(B, 3, 32, 32)``, output logits ``(B, num_classes)``."""

    def __init__(self, num_classes: int, width: int, dropout: float) -> None:
        super().__init__()
        self.features = nn.Sequential(conv_block(3, width), conv_block(width, 2 * width), conv_block(2 * width, 4 * width))
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(4 * width * 4 * 4, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)  # (B, 4W, 4, 4)
        return self.head(self.dropout(x.flatten(1)))  # (B, num_classes)


@MODELS.register("shapes_net")
@attrs.frozen
class ShapesNetConfig:
    """``[model] kind = "shapes_net"``; the batch-norm statistics train along, as buffers of the state."""

    num_classes: int = 3
    width: int = 16
    dropout: float = 0.1

    def build(self) -> ShapesNet:
        return ShapesNet(self.num_classes, self.width, self.dropout)
