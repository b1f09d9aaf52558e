"""craft: a small functional training library for PyTorch."""

__version__ = "0.1.0"
