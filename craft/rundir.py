"""Starting or resuming a run in its folder: the one checkpoint payload, the checks that a
run may go on, which experiment ``--resume`` continues, and the checkpoint it starts from.

The folder itself (layout, marker, lock, atomic writes) is ``craft.runfolder``;
its names are re-exported here, so a run imports one module for its folder.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import attrs

from craft import checkpoint, rollback
from craft.config import load as load_config
from craft.config import to_dict
from craft.config.records import mode_follows_metric
from craft.config import tomllib
from craft.logging import truncate_metrics
from craft.words import cannot_write, plural
from craft.runfolder import (
    CHECKPOINTS, CLASSES_FILE, CONFIG_FILE, LOCK_FILE, MARKER_FILE, TOKENIZER_FILE, InUse, Interrupted, RunError, check_free, claimed,
    check_replaceable, check_run_dir, config_line, data_paths, fresh_name, is_run_folder, is_used, locked, prepare_run_dir, write_atomic,
    write_data_files,
)

__all__ = [
    "CHECKPOINTS", "CLASSES_FILE", "CONFIG_FILE", "LOCK_FILE", "MARKER_FILE", "RUN_CONTROL", "TOKENIZER_FILE", "WHERE", "InUse", "Interrupted",
    "RunError", "Start", "check_free", "check_replaceable", "check_resumable", "check_run_dir", "checkpoint_payload", "claimed", "config_line",
    "data_paths", "fresh_name", "is_run_folder", "is_used", "locked", "prepare_run_dir", "resume_target",
    "check_members_not_ahead", "save_checkpoint", "saved_config", "start_or_resume", "write_atomic", "write_data_files",
]

# Keys that steer the run but not the arithmetic: a resumed run may change them.
RUN_CONTROL = {
    "steps", "eval_every", "log_every", "eval_batches", "compile", "device",
    "checkpoint_every", "keep_checkpoints", "early_stopping", "sample", "tensorboard", "loggers",
    "on_nonfinite",  # after a non-finite stop, resuming with "skip" is the way on
}
EVAL_ONLY_DATA = {"eval_batch_size", "val_windows"}  # how much of val is read, and in what batches: as train.eval_batches
WHERE = {"out_dir", "name"}  # where a run lives is not what it computes: a moved run resumes


def save_checkpoint(path: Path, payload: dict[str, Any]) -> Path:
    """``checkpoint.save``, with a failed write (a full disk) reported naming the file."""
    try:
        return checkpoint.save(path, payload)
    except OSError as e:
        raise RunError(cannot_write(f"checkpoint {str(path)!r}", e, then="--resume")) from None


def checkpoint_payload(state: Any, data_state: dict[str, Any], progress: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """What every checkpoint of a run or a sweep holds; ``state`` a (stacked) TrainState."""
    return {
        "state": checkpoint.state_to_dict(state),
        "data": data_state,
        **checkpoint.rng_states(),
        "progress": progress,
        "config": config,
    }


def saved_config(run_dir: Path) -> dict[str, Any] | None:
    """The resolved config a run folder holds, or None when it has none that parses."""
    try:
        return tomllib.loads((run_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None


def check_resumable(now: dict[str, Any], saved: dict[str, Any]) -> list[str]:
    """A resumed run may change how it runs (steps, eval cadence, where it lives), not what it computes.

    ``now`` and ``saved`` are resolved configs (``to_dict``). One change to
    the arithmetic is allowed when asked for: ``schedule.total_steps``
    (stretching the schedule over a longer run); the returned lines say so.
    """
    saved = {**saved, "schedule": _schedule_length(saved)}
    differ, notes = [], []
    for section in sorted((now.keys() | saved.keys()) - WHERE):
        a, b = now.get(section), saved.get(section)
        if section == "train" and isinstance(a, dict) and isinstance(b, dict):
            differ += [f"train.{k}" for k in sorted(a.keys() | b.keys()) if k not in RUN_CONTROL and a.get(k) != b.get(k)]
        elif section == "data" and isinstance(a, dict) and isinstance(b, dict):
            differ += [f"data.{k}" for k in sorted(a.keys() | b.keys()) if k not in EVAL_ONLY_DATA and a.get(k) != b.get(k)]
        elif section == "schedule" and isinstance(a, dict) and isinstance(b, dict) and a != b:
            if {**a, "total_steps": None} != {**b, "total_steps": None}:
                differ.append(section)
            else:
                notes.append(
                    f"schedule.total_steps: {b.get('total_steps')} -> {a.get('total_steps')}: the learning-rate "
                    "schedule is stretched to the new length from this step on"
                )
        elif a != b:
            differ.append(section)
    if differ:
        changes = _kinds_first([c for key in differ for c in _changes(key, _at(now, key), _at(saved, key))], now, saved)
        shown = "; ".join(changes[:3]) + (f"; ... {len(changes)} in all" if len(changes) > 3 else "")
        raise RunError(
            f"cannot resume: the experiment differs from the saved run: {shown or ', '.join(differ)}; "
            "restore those settings, or train a new run under another --name"
        )
    return notes


def _at(config: dict[str, Any], dotted: str) -> Any:
    for key in dotted.split("."):
        config = config.get(key) if isinstance(config, dict) else None
    return config


def _changes(path: str, now: Any, saved: Any, label: str = "now") -> list[str]:
    """``"path.key: saved A, now B"`` for each leaf that differs between two config tables (``label`` names B)."""
    if isinstance(now, dict) and isinstance(saved, dict):
        keys = sorted(now.keys() | saved.keys())
        return [c for k in keys for c in _changes(f"{path}.{k}", now.get(k), saved.get(k), label)]
    return [] if now == saved else [f"{path}: saved {saved!r}, {label} {now!r}"]


def _kinds_first(changes: list[str], now: dict[str, Any], saved: dict[str, Any]) -> list[str]:
    """``changes`` with a section whose ``kind`` changed first, in one line: its other keys (the options one kind has
    and the other lacks, or sets otherwise) differ because of that, not as changes of their own."""
    kinds = [
        section for section in sorted(now.keys() & saved.keys())
        if isinstance(now[section], dict) and isinstance(saved[section], dict)
        and now[section].get("kind") != saved[section].get("kind")
    ]
    section_of = lambda change: change.partition(":")[0].partition(".")[0]  # noqa: E731
    head = [
        f"{s}.kind: saved {saved[s].get('kind')!r}, now {now[s].get('kind')!r}"
        + (", and its options" if any(section_of(c) == s and not c.startswith(f"{s}.kind:") for c in changes) else "")
        for s in kinds
    ]
    return head + [c for c in changes if section_of(c) not in kinds]


def _schedule_length(config: dict[str, Any]) -> Any:
    """``config``'s schedule, with the length a run from before craft recorded it ran on: its ``train.steps``."""
    schedule, train = config.get("schedule"), config.get("train")
    if isinstance(schedule, dict) and "total_steps" not in schedule and isinstance(train, dict) and "steps" in train:
        return {**schedule, "total_steps": train["steps"]}
    return schedule


def resume_target(config: str | Path, texts: dict[str, str], say: Callable[[str], None] = print) -> Any:
    """The experiment ``--resume`` continues: the run folder's own ``config.toml`` with only ``texts``
    (this command line's overrides) on top, not the TOML file again (``say`` warns where the file now differs).

    ``config`` is the experiment file (its run folder is ``out_dir/name`` after
    ``texts``) or the run folder itself. A run folder moved since keeps its new place.
    """
    config = Path(config)
    if config.is_dir():
        run_dir = config
    else:
        given = load_config(config, texts=texts)
        run_dir = Path(given.out_dir) / given.name
    if not (run_dir / CONFIG_FILE).is_file():
        return _no_run(run_dir) if config.is_dir() else given
    exp = load_config(run_dir / CONFIG_FILE, texts=texts)
    exp = attrs.evolve(exp, train=mode_follows_metric(exp.train, texts))
    recorded = _schedule_length(saved_config(run_dir) or {})
    if getattr(exp.schedule.config, "total_steps", 0) is None and isinstance(recorded, dict):
        # A run from before the length was recorded: its schedule ran over its own train.steps.
        config_ = attrs.evolve(exp.schedule.config, total_steps=recorded.get("total_steps"))
        exp = attrs.evolve(exp, schedule=attrs.evolve(exp.schedule, config=config_))
    if not config.is_dir() and (edited := file_differences(to_dict(given), to_dict(exp))):
        say(f"warning: --resume continues {run_dir / CONFIG_FILE}, not {config} again, which now differs: {edited}; "
            "change what --resume allows with an override (--train.steps=N), anything else in a new run (--name)")
    return attrs.evolve(exp, out_dir=str(run_dir.parent), name=run_dir.name)


def file_differences(given: dict[str, Any], saved: dict[str, Any]) -> str:
    """Where the experiment file (``given``, resolved) differs from the run's saved config, as the resume refusal
    says it (first three, and how many in all); keys the file leaves for the run to fill in do not count."""
    changes = [c for section in sorted((given.keys() | saved.keys()) - WHERE)
               for c in _changes(section, given.get(section), saved.get(section), "file") if not c.endswith(", file None")]
    return "; ".join(changes[:3]) + (f"; ... {len(changes)} in all" if len(changes) > 3 else "")


def _no_run(run_dir: Path) -> Any:
    raise RunError(f"nothing to resume: {str(run_dir)!r} has no {CONFIG_FILE}; give the experiment's TOML file")


class Start(NamedTuple):
    """Where a run begins: the state and progress to start from, and the checkpoint they came from."""

    state: Any
    progress: dict[str, Any]
    payload: dict[str, Any] | None  # the resumed checkpoint (its "data", "numpy_rng", ...); None: from scratch
    path: Path | None


def start_or_resume(
    run_dir: Path, resolved: dict[str, Any], state: Any, *, resume: bool | str, main: bool, echo: Callable[[str], None],
    restore: Callable[[dict[str, Any], Any], Any] = checkpoint.state_from_dict,
) -> Start:
    """From ``state`` (fresh), or with ``resume`` from the newest usable checkpoint in ``run_dir`` (``resume`` a
    name, ``--checkpoint=NAME``: from that one, ``craft.rollback``).

    Resuming checks the config, restores the host generators, sets aside
    unreadable (or, rolling back, all) newer checkpoints and cuts ``metrics.jsonl`` back to the
    checkpoint's step (``main`` only). The caller restores its data position
    from ``payload["data"]``.
    """
    fresh = {"elapsed": 0.0, "best": None, "bad_evals": 0}
    if not resume:
        return Start(state, fresh, None, None)
    ckpt_dir, rolling_back = run_dir / CHECKPOINTS, isinstance(resume, str)
    found = rollback.chosen(run_dir, resume) if rolling_back else checkpoint.load_latest(
        ckpt_dir, on_skip=lambda e: echo(f"warning: skipping {e}"), check=checkpoint.check_run_payload)
    if found is None:
        if checkpoint.step_files(ckpt_dir):
            raise RunError(f"nothing to resume: no readable checkpoint in {str(ckpt_dir)!r}; pass --overwrite to start again")
        saved = saved_config(run_dir)  # stopped before its first checkpoint: nothing is lost by starting over
        if saved is not None:
            for note in check_resumable(resolved, saved):
                echo(note)
        if main:
            truncate_metrics(run_dir, 0)
        echo(f"{run_dir} has no checkpoint yet: starting it again from step 0")
        return Start(state, fresh, None, None)
    path, payload = found
    step, steps = checkpoint.saved_step(payload), resolved["train"]["steps"]
    if step > steps:  # before anything is written: config.toml would record the shorter run
        raise RunError(f"cannot resume: {str(run_dir)!r} has trained {step} steps, more than train.steps = {steps}; "
                       f"to train further, raise --train.steps above {step} (an earlier checkpoint: --checkpoint=NAME)")
    try:
        notes = check_resumable(resolved, payload["config"])
    except RunError as e:  # a rollback to change what --resume refuses: a new run from the checkpoint's weights
        raise RunError(f"{e}{rollback.other_settings(run_dir, path) if rolling_back else ''}") from None
    for note in notes:
        echo(note)
    state = restore(payload["state"], state)
    if main and rolling_back:  # every newer one, best.pt too (a chosen file may be best.pt: no step in its name)
        rollback.set_aside_after(run_dir, step, echo)
    for moved in checkpoint.set_aside_after(ckpt_dir, step) if main and not rolling_back else []:
        echo(f"warning: set aside the unreadable {moved.name}")
    checkpoint.restore_rng(payload)
    if main:
        truncate_metrics(run_dir, step)
    echo(f"resuming {run_dir} from {path.name} (step {step})")
    return Start(state, early_stopping_progress(resolved, payload["config"], {**fresh, **payload["progress"]}, step, echo), payload, path)


def _rule(config: dict[str, Any]) -> dict[str, Any]:
    return (config.get("train") or {}).get("early_stopping") or {}


def early_stopping_progress(
    now: dict[str, Any], saved: dict[str, Any], progress: dict[str, Any], step: int, echo: Callable[[str], None],
) -> dict[str, Any]:
    """A resumed run's early-stopping ``progress`` under the rule it runs with ``now``.

    The saved best is a value of the saved rule's metric: under another metric
    or mode it is no yardstick (a loss of 1.9 beats every accuracy), so the
    best and the count of worse evaluations start afresh, said. A run that
    had already stopped early (as many worse evaluations as ``patience``)
    stops again at once (``progress["stop"]``) instead of training one more
    evaluation's worth of steps.
    """
    rule, before = _rule(now), _rule(saved)
    if not rule:
        return progress
    key = lambda r: (r.get("metric"), r.get("mode"))  # noqa: E731
    if progress.get("best") is not None and key(rule) != key(before):
        was = f"{before.get('metric')!r} ({before.get('mode')})" if before else "none"
        echo(
            f"train.early_stopping: {was} -> {rule['metric']!r} ({rule['mode']}): the best so far is counted afresh "
            "from this step; best.pt is replaced at the next evaluation"
        )
        return {**progress, "best": None, "bad_evals": 0}
    if 0 < progress.get("bad_evals", 0) >= rule["patience"]:
        echo(
            f"the run stopped early at step {step} (no better {rule['metric']} in "
            f"{plural(progress['bad_evals'], 'evaluation')}); to train it further, raise --train.early_stopping.patience"
        )
        return {**progress, "stop": "early_stopping"}
    return progress


def check_members_not_ahead(run_dir: Path, members_dir: Path) -> None:
    """Refuse to resume a sweep one of whose members was trained on alone past the sweep's newest checkpoint:
    resuming would rewrite that member's log from the sweep's step and leave its later checkpoints beside
    the sweep's. Said before anything is touched."""
    def newest(folder: Path) -> int:
        files = checkpoint.step_files(folder / CHECKPOINTS)
        return checkpoint.step_number(files[-1]) if files else -1

    sweep_step = newest(run_dir)
    for folder in sorted(p for p in members_dir.glob("*") if p.is_dir()) if members_dir.is_dir() else []:
        if (step := newest(folder)) > sweep_step:
            raise RunError(
                f"cannot resume the sweep: member {folder.name} was trained on alone to step {step}, past the sweep's "
                f"step {sweep_step}, and resuming would rewrite its log; copy it out first (cp -r {folder} "
                f"{run_dir.name}-{folder.name}-alone), or go on with it alone (craft train {folder} --resume)"
            )
