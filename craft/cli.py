"""Command line: a thin Fire adapter over craft's functions."""

from __future__ import annotations

import platform

import fire
import torch

import craft
from craft.optim import OPTIMIZERS, SCHEDULES


def info() -> str:
    """Versions, devices and the registered optimizers and schedules."""
    cuda = f"{torch.cuda.device_count()} CUDA device(s)" if torch.cuda.is_available() else "no CUDA"
    return "\n".join(
        [
            f"craft {craft.__version__}, torch {torch.__version__}, Python {platform.python_version()}",
            f"devices: cpu ({torch.get_num_threads()} threads), {cuda}",
            f"optimizers: {', '.join(sorted(OPTIMIZERS))}",
            f"schedules: {', '.join(sorted(SCHEDULES))}",
        ]
    )


def main() -> None:
    fire.Fire({"info": info}, name="craft")
