"""A ResNet with BatchNorm: CIFAR-style for small images, or ImageNet-style (ResNet-18 sized) for photos."""

from __future__ import annotations

import attrs
import torch
from torch import Tensor, nn

from craft.models import MODELS
from craft.validators import at_least, channel_widths


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual; ``stride`` 2 halves the resolution."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = (
            nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
            if stride != 1 or c_in != c_out
            else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn1(self.conv1(x)).relu()
        out = self.bn2(self.conv2(out))
        return (out + self.shortcut(x)).relu()


class ResNet(nn.Module):
    """Stem conv, ``len(widths)`` stages of ``blocks`` BasicBlocks, global pool, linear.

    Input ``(B, in_channels, H, W)`` of any size; each stage after the first
    halves H and W. Output logits ``(B, num_classes)``. ``num_classes=None``
    builds the trunk alone (no head, so no unused parameters): ``forward``
    then gives the pooled features ``(B, out_channels)`` and ``features`` the
    map, for a model that reuses the trunk as its image encoder.

    ``imagenet_stem``: a 7x7 stride-2 conv and a 3x3 stride-2 max pool (H and
    W / 4 before the first stage), as torchvision's ResNet-18 for photos;
    else (default) one 3x3 conv at full resolution. ``channels_last``
    keeps the weights and the input in channels-last memory (faster
    convolutions on GPUs with tensor cores, and under bf16).
    """

    def __init__(
        self, num_classes: int | None = 10, in_channels: int = 3, widths=(16, 32, 64), blocks: int = 1,
        imagenet_stem: bool = False, channels_last: bool = False,
    ) -> None:
        super().__init__()
        if imagenet_stem:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, widths[0], 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(widths[0]),
                nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1),
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()
            )
        stages, c_in = [], widths[0]
        for i, width in enumerate(widths):
            for j in range(blocks):
                stages.append(BasicBlock(c_in, width, stride=2 if i > 0 and j == 0 else 1))
                c_in = width
        self.stages = nn.Sequential(*stages)
        self.out_channels = c_in
        self.head = nn.Linear(c_in, num_classes) if num_classes is not None else None
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def features(self, x: Tensor) -> Tensor:
        """The trunk's feature map ``(B, out_channels, H / 2**(len(widths)-1), W / ...)``; ImageNet stem: / 4 more."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.stages(self.stem(x))

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x).mean(dim=(2, 3))  # (B, widths[-1])
        return x if self.head is None else self.head(x)  # (B, num_classes)


@MODELS.register("resnet")
@attrs.frozen
class ResNetConfig:
    """``[model] kind = "resnet"``: a ResNet with BatchNorm.

    ResNet-18 sized: ``widths = [64, 128, 256, 512]``, ``blocks = 2``,
    ``imagenet_stem = true`` (11.7M parameters with 1000 classes, as torchvision's).
    ``num_classes`` left unset is the data's class count (a run fills it in; in
    Python pass it).
    """

    num_classes: int | None = attrs.field(default=None, validator=at_least(1))
    in_channels: int = attrs.field(default=3, validator=at_least(1))
    widths: list[int] = attrs.field(factory=lambda: [16, 32, 64], validator=channel_widths)
    blocks: int = attrs.field(default=1, validator=at_least(1))
    imagenet_stem: bool = False
    channels_last: bool = False

    def build(self) -> ResNet:
        return ResNet(
            self.num_classes, self.in_channels, tuple(self.widths), self.blocks, self.imagenet_stem, self.channels_last
        )
