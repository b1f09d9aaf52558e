"""craft: a small functional training library for PyTorch."""

__version__ = "0.1.0"


def load_model(run_dir, checkpoint_name: str = "latest"):
    """The trained ``nn.Module`` of a run folder, in one call (see ``craft.trained.load_model``)."""
    from craft.trained import load_model as load

    return load(run_dir, checkpoint_name)
