"""ResNet: the ImageNet stem at ResNet-18 size, and channels-last memory."""

from __future__ import annotations

import torch
import torchvision

from craft.models.resnet import ResNetConfig

RESNET18 = {"widths": [64, 128, 256, 512], "blocks": 2, "imagenet_stem": True}


def test_the_resnet18_layout_has_torchvisions_parameter_count():
    ours = ResNetConfig(num_classes=1000, **RESNET18).build()
    theirs = torchvision.models.resnet18(num_classes=1000)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())


def test_the_imagenet_stem_quarters_the_image_before_the_first_stage():
    model = ResNetConfig(num_classes=5, widths=[8, 16], imagenet_stem=True).build()
    assert model.features(torch.randn(2, 3, 64, 64)).shape == (2, 16, 8, 8)  # 64 / 4 / 2


def test_channels_last_changes_the_memory_not_the_function():
    torch.manual_seed(0)
    plain = ResNetConfig(num_classes=5, widths=[8, 16], imagenet_stem=True).build().eval()
    last = ResNetConfig(num_classes=5, widths=[8, 16], imagenet_stem=True, channels_last=True).build().eval()
    last.load_state_dict(plain.state_dict())
    assert last.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(last(x), plain(x), rtol=1e-4, atol=1e-5)
