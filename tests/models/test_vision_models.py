"""Vision models: shapes, registry configs, buffers."""

from __future__ import annotations

import pytest
import torch

from craft.models import MODELS, ResNet, SmallCNN


@pytest.mark.parametrize("in_channels", [1, 3])
def test_cnn_maps_32x32_images_to_logits(in_channels):
    model = MODELS["cnn"](num_classes=7, in_channels=in_channels).build()
    assert isinstance(model, SmallCNN)
    assert model(torch.randn(5, in_channels, 32, 32)).shape == (5, 7)


@pytest.mark.parametrize("size", [16, 32, 48])
def test_resnet_takes_any_image_size_and_has_batchnorm_buffers(size):
    model = MODELS["resnet"](num_classes=4, widths=[8, 16], blocks=2).build()
    assert isinstance(model, ResNet)
    assert model(torch.randn(2, 3, size, size)).shape == (2, 4)
    assert any(name.endswith("running_mean") for name, _ in model.named_buffers())
