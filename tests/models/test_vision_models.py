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


@pytest.mark.parametrize("size", [4, 16, 28, 64, 96])
def test_cnn_takes_any_image_size_of_at_least_4_and_32_px_as_before(size):
    model = MODELS["cnn"](num_classes=3).build()
    assert model(torch.randn(2, 3, size, size)).shape == (2, 3)
    x = torch.randn(2, 3, 32, 32)  # its native size: the classifier reads the 8x8 feature map unpooled
    assert torch.equal(model(x), model.fc(model.features(x).flatten(1)))
    with pytest.raises(ValueError, match=r"the cnn model needs images of at least 4x4 pixels, got 3x3$"):
        model(torch.randn(2, 3, 3, 3))


@pytest.mark.parametrize("size", [16, 32, 48])
def test_resnet_takes_any_image_size_and_has_batchnorm_buffers(size):
    model = MODELS["resnet"](num_classes=4, widths=[8, 16], blocks=2).build()
    assert isinstance(model, ResNet)
    assert model(torch.randn(2, 3, size, size)).shape == (2, 4)
    assert any(name.endswith("running_mean") for name, _ in model.named_buffers())
