"""Experiment trackers beside ``metrics.jsonl``: TensorBoard, Weights & Biases and MLflow, offline by default.

    [train]
    loggers = ["tensorboard", "wandb", "mlflow"]

- ``tensorboard``: event files in ``RUN_DIR/tensorboard`` (``tensorboard --logdir runs``).
- ``wandb``: an offline run in ``RUN_DIR/wandb`` unless ``WANDB_MODE`` says
  otherwise (``wandb sync RUN_DIR/wandb/offline-run-*`` uploads it later);
  the project is ``WANDB_PROJECT``, else ``craft``.
- ``mlflow``: a local store in ``RUN_DIR/mlruns`` unless ``MLFLOW_TRACKING_URI``
  is set (``MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri RUN_DIR/mlruns``:
  mlflow >= 3 reads a file store only with that switch); experiment ``craft``.

Each logs every event of ``metrics.jsonl`` as ``split/name`` at its step, and
the resolved config as the run's parameters. A resumed run folder continues its W&B and
MLflow runs (``STATE_FILE``), each step of a split sent once. Each is an optional extra of
this project (``python -m pip install -e ".[wandb]"``); a tracker asked for
but not installed is one line before the run starts (``check``).
"""

from __future__ import annotations

import importlib
import json
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


STATE_FILE = "trackers.json"
"""In the run folder: each resumable tracker's run id and the last step of each split it was sent."""


def open_tracker(name: str, run_dir: Path, run_name: str, config: Mapping[str, Any], start_step: int = 0) -> Tracker:
    """The tracker ``name`` (a key of ``TRACKERS``) for the run in ``run_dir``, resumed from ``start_step``.

    W&B and MLflow continue the tracker run that ``STATE_FILE`` names (a resumed run folder's), and are
    not sent again the steps they already have (``sent_once``): a resume from a checkpoint repeats
    the steps after it, which they keep as first logged. TensorBoard drops those instead (``purge_step``).
    """
    check([name])
    run_dir = Path(run_dir)
    if name == "tensorboard":
        return _tensorboard(run_dir, run_name, config, start_step)
    saved = read_state(run_dir).get(name) or {}
    tracker, run_id = {"wandb": _wandb, "mlflow": _mlflow}[name](run_dir, run_name, config, saved.get("id"))
    sent = dict(saved.get("sent") or {}) if run_id == saved.get("id") else {}
    return sent_once(tracker, lambda: write_state(run_dir, name, {"id": run_id, "sent": sent}), sent)


def sent_once(tracker: Tracker, save: Callable[[], None], sent: dict[str, int]) -> Tracker:
    """``tracker`` that skips an event whose step its split already reached (``sent``: split -> last step),
    and records each step it sends (``save``) before sending it."""
    save()

    def log(step: int, split: str, metrics: Mapping[str, float]) -> None:
        if step <= sent.get(split, -1):
            return
        sent[split] = step
        save()
        tracker.log(step, split, metrics)

    return Tracker(log, tracker.close)


def read_state(run_dir: Path) -> dict[str, Any]:
    """``STATE_FILE``'s contents, or ``{}`` when there is none (or it cannot be read: a new tracker run then)."""
    try:
        state = json.loads((Path(run_dir) / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def write_state(run_dir: Path, name: str, entry: dict[str, Any]) -> None:
    """Set tracker ``name``'s entry of ``STATE_FILE``, atomically (a kill leaves the old file or the new)."""
    state = {**read_state(run_dir), name: entry}
    tmp = Path(run_dir) / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(state, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, Path(run_dir) / STATE_FILE)


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


def _wandb(run_dir: Path, run_name: str, config: Mapping[str, Any], run_id: str | None) -> tuple[Tracker, str]:
    import wandb

    run = wandb.init(
        project=os.environ.get("WANDB_PROJECT", "craft"), name=run_name, dir=str(run_dir),
        mode=os.environ.get("WANDB_MODE", "offline"), config=flat_config(config), reinit="create_new",
        id=run_id, resume="allow" if run_id else None,  # offline: a second folder of the same run id, synced into it
    )

    def log(step: int, split: str, metrics: Mapping[str, float]) -> None:
        run.log({f"{split}/{key}": value for key, value in metrics.items()}, step=step)

    return Tracker(log, run.finish), run.id


def _mlflow(run_dir: Path, run_name: str, config: Mapping[str, Any], run_id: str | None) -> tuple[Tracker, str]:
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri is None:  # a folder of files: MLflow keeps it working behind this switch
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        uri = (run_dir / "mlruns").resolve().as_uri()
    client = MlflowClient(tracking_uri=uri)
    run = mlflow_run(client, run_id)
    if run is None:
        found = client.get_experiment_by_name("craft")
        experiment = found.experiment_id if found else client.create_experiment("craft")
        run = client.create_run(experiment, run_name=run_name)
    else:
        client.update_run(run.info.run_id, status="RUNNING")
    run_id, logged = run.info.run_id, run.data.params
    # A parameter is set once in MLflow: a resumed run's changed values (--train.steps=4000) become tags.
    params = [Param(k, v) for k, v in ((k, str(v)[:500]) for k, v in flat_config(config).items()) if k not in logged]
    for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters per batch
        client.log_batch(run_id, params=params[i : i + 100])
    for k, v in flat_config(config).items():
        if k in logged and logged[k] != str(v)[:500]:
            client.set_tag(run_id, f"resumed.{k}", str(v)[:500])

    def log(step: int, split: str, metrics: Mapping[str, float]) -> None:
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(f"{split}/{k}", float(v), now, step) for k, v in metrics.items()])

    return Tracker(log, lambda: client.set_terminated(run_id)), run_id


def mlflow_run(client, run_id: str | None):
    """The MLflow run ``run_id`` in ``client``'s store, or None (no id, or a store that lacks it: another
    ``MLFLOW_TRACKING_URI``, a deleted run)."""
    if run_id is None:
        return None
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        return None
    return run if run.info.lifecycle_stage == "active" else None
