"""Experiment trackers beside ``metrics.jsonl``: TensorBoard, Weights & Biases and MLflow, offline by default.

    [train]
    loggers = ["tensorboard", "wandb", "mlflow"]

- ``tensorboard``: event files in ``RUN_DIR/tensorboard`` (``tensorboard --logdir runs``).
- ``wandb``: an offline run in ``RUN_DIR/wandb`` unless ``WANDB_MODE`` says
  otherwise (``wandb sync RUN_DIR/wandb/offline-run-*`` uploads it later);
  the project is ``WANDB_PROJECT``, else ``craft``.
- ``mlflow``: a local store in ``RUN_DIR/mlruns`` unless ``MLFLOW_TRACKING_URI``
  is set (``mlflow ui --backend-store-uri RUN_DIR/mlruns``); experiment ``craft``.

Each logs every event of ``metrics.jsonl`` as ``split/name`` at its step, and
the resolved config as the run's parameters. Each is an optional extra of
this project (``python -m pip install -e ".[wandb]"``); a tracker asked for
but not installed is one line before the run starts (``check``).
"""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
"""``train.loggers`` entry -> the module it needs (the extra of the same name installs it)."""


class Tracker(NamedTuple):
    """``log(step, split, metrics)`` and ``close()``."""

    log: Callable[[int, str, Mapping[str, float]], None]
    close: Callable[[], None]


def check(names: list[str]) -> None:
    """Raise a one-line ``ConfigError`` for each tracker in ``names`` whose package is not installed."""
    from craft.config import ConfigError

    missing = []
    for name in names:
        try:
            importlib.import_module(TRACKERS[name])
        except ImportError:
            missing.append(name)
    if missing:
        raise ConfigError([
            f"train.loggers: {name!r} needs the {TRACKERS[name]} package, which is not installed: run "
            f"python -m pip install -e \".[{name}]\" in the craft checkout, or remove {name!r} from train.loggers"
            for name in missing
        ])


def open_tracker(name: str, run_dir: Path, run_name: str, config: Mapping[str, Any], start_step: int = 0) -> Tracker:
    """The tracker ``name`` (a key of ``TRACKERS``) for the run in ``run_dir``, resumed from ``start_step``."""
    check([name])
    return {"tensorboard": _tensorboard, "wandb": _wandb, "mlflow": _mlflow}[name](Path(run_dir), run_name, config, start_step)


def flat_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 1e-3}}`` -> ``{"optim.lr": 1e-3}``: the resolved config as tracker parameters."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        out.update(flat_config(value, f"{path}.") if isinstance(value, Mapping) else {path: value})
    return out


def _tensorboard(run_dir: Path, run_name: str, config: Mapping[str, Any], start_step: int = 0) -> Tracker:
    from torch.utils.tensorboard import SummaryWriter

    # Resumed: TensorBoard hides what the earlier run logged after its checkpoint, as metrics.jsonl drops it;
    # else those steps show twice, the old values beside the new.
    writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=start_step + 1 if start_step else None)

    def log(step: int, split: str, metrics: Mapping[str, float]) -> None:
        for key, value in metrics.items():
            writer.add_scalar(f"{split}/{key}", value, step)

    return Tracker(log, writer.close)


def _wandb(run_dir: Path, run_name: str, config: Mapping[str, Any], start_step: int = 0) -> Tracker:
    import wandb

    run = wandb.init(
        project=os.environ.get("WANDB_PROJECT", "craft"), name=run_name, dir=str(run_dir),
        mode=os.environ.get("WANDB_MODE", "offline"), config=flat_config(config), reinit="create_new",
    )

    def log(step: int, split: str, metrics: Mapping[str, float]) -> None:
        run.log({f"{split}/{key}": value for key, value in metrics.items()}, step=step)

    return Tracker(log, run.finish)


def _mlflow(run_dir: Path, run_name: str, config: Mapping[str, Any], start_step: int = 0) -> Tracker:
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri is None:  # a folder of files: MLflow keeps it working behind this switch
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        uri = (run_dir / "mlruns").resolve().as_uri()
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name("craft")
    experiment = found.experiment_id if found else client.create_experiment("craft")
    run_id = client.create_run(experiment, run_name=run_name).info.run_id
    params = [Param(k, str(v)[:500]) for k, v in flat_config(config).items()]
    for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters per batch
        client.log_batch(run_id, params=params[i : i + 100])

    def log(step: int, split: str, metrics: Mapping[str, float]) -> None:
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(f"{split}/{k}", float(v), now, step) for k, v in metrics.items()])

    return Tracker(log, lambda: client.set_terminated(run_id))
