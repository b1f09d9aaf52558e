"""Models: plain ``nn.Module``s."""

from craft.models.cnn import SmallCNN

__all__ = ["SmallCNN"]
