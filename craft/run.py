"""The loop that ties an experiment together.

config -> built parts (model, task, optimizer, data) -> compiled steps ->
train, evaluate, log, checkpoint. Every piece it uses is importable on its
own; this file only wires them and owns the run folder::

    runs/NAME/config.toml        the resolved experiment (load() reproduces it)
    runs/NAME/metrics.jsonl      one JSON object per log event
    runs/NAME/checkpoints/       step_XXXXXXXX.pt (the last K), best.pt
    runs/NAME/loss.png           train / val curves
    runs/NAME/tokenizer.json     text and caption data: what ``craft generate`` decodes with
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import attrs
import torch
from torch import nn

from craft import checkpoint, distributed
from craft.config import Component, Experiment, Sample, build, dumps, to_dict, tomllib
from craft.config import load as load_config
from craft.distributed import Replicas
from craft.logging import MetricsLog, NullLog, plot_metrics, progress_bar, truncate_metrics
from craft.step import TrainState, init_state, make_eval_step, make_train_step
from craft.tasks import Task, batch_size, mean_metrics

SINGLE = distributed.single()
CONFIG_FILE = "config.toml"
TOKENIZER_FILE = "tokenizer.json"
# Keys that steer the run but not the arithmetic: a resumed run may change them.
RUN_CONTROL = {
    "steps", "eval_every", "log_every", "eval_batches", "compile", "device",
    "checkpoint_every", "keep_checkpoints", "early_stopping", "sample", "tensorboard",
    "on_nonfinite",  # after a non-finite stop, resuming with "skip" is the way on
}


class RunError(Exception):
    """A run that cannot start or go on, for a reason the user can fix."""


class Interrupted(Exception):
    """SIGINT/SIGTERM: the current step finished and a checkpoint was written."""

    def __init__(self, step: int, path: Path) -> None:
        super().__init__(f"interrupted at step {step}; checkpoint saved to {path}")
        self.step, self.path = step, path


class Parts(NamedTuple):
    model: nn.Module
    task: Task
    transform: Any
    device: torch.device


def resolve_device(name: str, replicas: Replicas = SINGLE) -> torch.device:
    """``"auto"``: CUDA when present, else the CPU. Under torchrun, the device ``LOCAL_RANK`` picks."""
    if replicas.device is not None:
        if name not in ("auto", replicas.device.type):
            raise RunError(
                f"train.device = {name!r} but torchrun's process group runs on {replicas.device.type}; "
                'use train.device = "auto"'
            )
        return replicas.device
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RunError(f"train.device = {name!r} but no CUDA device is available; use \"auto\" or \"cpu\"")
    return device


def build_parts(exp: Experiment, replicas: Replicas = SINGLE) -> Parts:
    """Model (initialised from ``exp.seed``, on the device), task and optimizer."""
    device = resolve_device(exp.train.device, replicas)
    torch.manual_seed(exp.seed)
    model = _built("model", lambda: build(exp.model)).to(device)
    schedule = _built("schedule", lambda: build(exp.schedule, exp.optim.lr, total_steps=exp.train.steps))
    return Parts(model, build(exp.task), _built("optim", lambda: build(exp.optim, schedule)), device)


def _built(section: str, make):
    """``make()``, with a value problem it raises named by its config section."""
    try:
        return make()
    except ValueError as e:
        raise RunError(f"{section}: {e}") from None


def build_data(exp: Experiment, split: str, replicas: Replicas = SINGLE):
    """The iterator of ``split``; under torchrun, this rank's slice of every global batch."""
    if replicas.active:
        return build(exp.data, split, seed=exp.seed, rank=replicas.rank, world_size=replicas.world_size)
    return build(exp.data, split, seed=exp.seed)


def fit_to_data(exp: Experiment, data) -> Experiment:
    """``exp`` with the model keys the data decides filled in, after checking the rest.

    A text model's ``vocab_size`` left unset is the tokenizer's size (the
    resolved config then records it, so the run can be rebuilt without the
    data). Mismatches that would surface as index errors mid-step are caught here.
    """
    config = exp.model.config
    want, have = getattr(config, "num_classes", None), getattr(data, "num_classes", None)
    if want is not None and have and want != have:  # text data has no classes
        raise RunError(
            f"model.num_classes = {want} but the data has {have} classes ({', '.join(data.classes)}); "
            f"set model.num_classes = {have}"
        )
    vocab = getattr(data, "vocab_size", None)
    if vocab is not None and attrs.has(type(config)) and "vocab_size" in attrs.fields_dict(type(config)):
        if config.vocab_size is None:
            config = attrs.evolve(config, vocab_size=vocab)
        elif config.vocab_size < vocab:
            raise RunError(
                f"model.vocab_size = {config.vocab_size} but the data's tokenizer has {vocab} tokens; "
                "remove model.vocab_size to take it from the data"
            )
    context, needed = getattr(config, "block_size", None), getattr(data, "block_size", None)
    if context is not None and needed is not None and needed > context:
        raise RunError(
            f"the data's sequences have {needed} tokens but model.block_size = {context}; "
            f"set model.block_size >= {needed} or lower the data's length"
        )
    return attrs.evolve(exp, model=Component(exp.model.kind, config))


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def evaluate_batches(
    eval_step,
    state: TrainState,
    batches: Iterable,
    device: torch.device,
    task: Task,
    limit: int | None = None,
    replicas: Replicas = SINGLE,
) -> dict[str, float]:
    """Eval metrics over ``batches`` (at most ``limit``): means weighted by ``task.weight``, then summarized.

    Under torchrun each rank evaluates its shard and the weighted totals are
    summed across ranks, so every rank gets the figures of the whole split.
    """
    metrics, weights = [], []
    for i, batch in enumerate(batches):
        if limit is not None and i >= limit:
            break
        batch = to_device(batch, device)
        metrics.append(eval_step(state, batch))
        weights.append(task.weight(batch))
    if not metrics:
        raise RunError("the validation split is empty: add validation data (data.val_path) or raise data.val_fraction")
    return task.summarize(mean_metrics(metrics, weights, replicas.sum if replicas.active else None))


class _Reads(dict):
    """A batch that records the keys read from it but missing."""

    def __init__(self, batch: dict[str, torch.Tensor]) -> None:
        super().__init__(batch)
        self.missing: list[str] = []

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self:
            self.missing.append(key)
        return super().__getitem__(key)


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def check_components(exp: Experiment, parts: Parts, batches: Iterable) -> None:
    """Run the task's inputs, the model and the task's loss once on the first of ``batches``.

    A mismatch between user components (a dataset without a key the task
    reads, a model whose outputs the task cannot score) is reported here,
    naming each component by its config ``kind``, instead of surfacing as a
    key or shape error from inside the step. Empty ``batches`` are left to
    evaluation to report. The model runs in eval mode, without gradients.
    """
    batch = next(iter(batches), None)
    if batch is None:
        return
    data, model, task = (f"{section}.kind = {getattr(exp, section).kind!r}" for section in ("data", "model", "task"))
    if not isinstance(batch, dict) or not all(isinstance(v, torch.Tensor) for v in batch.values()):
        raise RunError(f"{data} yields {type(batch).__name__} batches; a batch must be a dict of tensors")
    reads = _Reads(to_device(batch, parts.device))

    def missing() -> RunError:
        return RunError(
            f"{data} yields batches with keys {sorted(batch)}, but {task} reads "
            f"{', '.join(map(repr, reads.missing))}; make the dataset yield the keys the task reads"
        )

    try:
        args = parts.task.inputs(reads)
    except KeyError:
        if reads.missing:
            raise missing() from None
        raise
    was_training = parts.model.training
    parts.model.eval()
    try:
        with torch.no_grad():
            outputs = parts.model(*args)
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in batch.items())
        raise RunError(f"{model} failed on the first batch of {data} ({shapes}): {_first_line(e)}") from None
    finally:
        parts.model.train(was_training)
    try:
        with torch.no_grad():
            parts.task.loss(outputs, reads)
    except KeyError:
        if reads.missing:
            raise missing() from None
        raise
    except (ValueError, TypeError, AttributeError, IndexError) as e:
        raise RunError(
            f"{model} returned outputs that {task} cannot score (first batch of {data}): {_first_line(e)}"
        ) from None


def check_run_dir(exp: Experiment, *, resume: bool, overwrite: bool) -> Path:
    """The run folder, after checking the flags fit it; nothing is touched yet."""
    run_dir = Path(exp.out_dir) / exp.name
    if resume and overwrite:
        raise RunError("choose one of --resume and --overwrite")
    used = run_dir.exists() and any(run_dir.iterdir())
    if used and not (resume or overwrite):
        raise RunError(f"run folder {run_dir} already exists; pass --resume to continue it or --overwrite to replace it")
    if resume and not used:
        raise RunError(f"nothing to resume: {run_dir} does not exist; drop --resume to start the run")
    return run_dir


def prepare_run_dir(run_dir: Path, *, overwrite: bool) -> Path:
    """Empty ``run_dir`` when overwriting, and make sure it exists."""
    if overwrite and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def check_resumable(now: dict[str, Any], saved: dict[str, Any]) -> None:
    """A resumed run may change how it runs (steps, eval cadence), not what it computes.

    ``now`` and ``saved`` are resolved configs (``to_dict``).
    """
    differ = []
    for section in sorted(now.keys() | saved.keys()):
        a, b = now.get(section), saved.get(section)
        if section == "train" and isinstance(a, dict) and isinstance(b, dict):
            differ += [f"train.{k}" for k in sorted(a.keys() | b.keys()) if k not in RUN_CONTROL and a.get(k) != b.get(k)]
        elif a != b:
            differ.append(section)
    if differ:
        raise RunError(
            f"cannot resume: the experiment differs from the saved run in {', '.join(differ)}; "
            "restore those settings, or start a new run (--overwrite or another name)"
        )


class _StopFlag:
    """Turns SIGINT/SIGTERM into a flag the loop checks between steps."""

    def __init__(self) -> None:
        self.raised: int | None = None

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        def handler(signum, frame):
            if self.raised is not None:  # a second signal: stop now
                raise KeyboardInterrupt
            self.raised = signum

        try:
            old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        except ValueError:  # not the main thread: leave signals alone
            yield
            return
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)


def train(exp: Experiment, *, resume: bool = False, overwrite: bool = False, echo=print) -> Path:
    """Train ``exp``; returns the run folder. See the module docstring for its contents.

    Launched by torchrun (``WORLD_SIZE > 1``), every process trains one
    data-parallel replica and rank 0 alone writes the run folder; see
    ``craft.distributed``.
    """
    if exp.sweep is not None:  # many members through one vmapped step: craft.sweep
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise RunError("a [sweep] trains its members in one process; run it without torchrun")
        from craft.sweep import train_sweep

        return train_sweep(exp, resume=resume, overwrite=overwrite, echo=echo)
    replicas = distributed.from_env()
    finished = False
    try:
        run_dir = _train(exp, resume, overwrite, echo if replicas.is_main else _quiet, replicas)
        finished = True
        return run_dir
    except RuntimeError as e:
        if replicas.active and distributed.is_collective_failure(e):
            # Another rank died (its own error is printed by that rank): say so in one line.
            raise RunError(
                f"rank {replicas.rank}: stopped because another rank failed or left (its error is above); "
                "set CRAFT_DEBUG=1 for the collective's own message"
            ) from e
        raise
    finally:
        distributed.close(replicas, wait=finished)


def _quiet(*args: Any, **kwargs: Any) -> None:
    pass


def _train(exp: Experiment, resume: bool, overwrite: bool, echo, replicas: Replicas) -> Path:
    main = replicas.is_main
    run_dir = check_run_dir(exp, resume=resume, overwrite=overwrite)
    ckpt_dir = run_dir / "checkpoints"
    # Everything that can fail on the config is built before an old run is replaced.
    train_data, val_data = build_data(exp, "train", replicas), build_data(exp, "val", replicas)
    exp = fit_to_data(exp, train_data)
    parts = build_parts(exp, replicas)
    cfg = exp.train
    tokenizer = getattr(train_data, "tokenizer", None)
    if cfg.sample is not None and tokenizer is None:
        raise RunError(f"train.sample needs text data with a tokenizer; data.kind = {exp.data.kind!r} has none")
    if cfg.sample is not None and hasattr(exp.data.config, "load_image"):
        raise RunError(
            "train.sample continues a text prompt, and a captioning run reports exact_match instead; "
            "remove [train.sample] (caption an image after training with craft generate RUN_DIR --image=PATH)"
        )
    check_components(exp, parts, val_data)
    if main:
        prepare_run_dir(run_dir, overwrite=overwrite)
    replicas.barrier()  # the others read the folder rank 0 prepares
    state = init_state(parts.model, parts.transform, seed=exp.seed)
    progress = {"elapsed": 0.0, "best": None, "bad_evals": 0}
    resolved = to_dict(exp)

    last_good: Path | None = None  # the newest checkpoint written or resumed from
    if resume:
        found = checkpoint.load_latest(ckpt_dir, on_skip=lambda e: echo(f"warning: skipping {e}"))
        if found is None:
            if checkpoint.step_files(ckpt_dir):
                raise RunError(f"nothing to resume: no readable checkpoint in {ckpt_dir}; pass --overwrite to start again")
            # Stopped before its first checkpoint: nothing is lost by starting over.
            saved = _saved_config(run_dir)
            if saved is not None:
                check_resumable(resolved, saved)
            if main:
                truncate_metrics(run_dir, 0)
            echo(f"{run_dir} has no checkpoint yet: starting it again from step 0")
        else:
            last_good, payload = found
            check_resumable(resolved, payload["config"])
            state = checkpoint.state_from_dict(payload["state"], state)
            for path in checkpoint.set_aside_after(ckpt_dir, last_good):
                echo(f"warning: set aside the unreadable {path.name}")
            train_data.load_state_dict(payload["data"])
            restore_rng(payload)
            progress.update(payload["progress"])
            if main:
                truncate_metrics(run_dir, int(state.step))
            echo(f"resuming {run_dir} from {last_good.name} (step {int(state.step)})")
    # Replicas start equal: every rank built the same state from the same seed;
    # copy rank 0's anyway, then check (a rank that read another checkpoint fails here).
    replicas.broadcast(state)
    replicas.check_same(state, "the replicas' initial states")
    text = dumps(exp)
    if main:
        _write_atomic(run_dir / CONFIG_FILE, text)
        if tokenizer is not None:
            tokenizer.save(run_dir / TOKENIZER_FILE)
    echo(text)

    common = dict(inputs=parts.task.inputs, precision=cfg.precision, compile=cfg.compile)
    # Donation keeps one copy of the state. On CUDA it is off: with torch 2.11's
    # inductor, a donated GPT step measured wrong parameters from its first step
    # (tests/test_step_cuda.py checks it on a GPU machine).
    donate = parts.device.type == "cpu"
    train_step = make_train_step(
        parts.model, parts.task.loss, parts.transform, accum_steps=cfg.accum_steps, donate=donate,
        skip_nonfinite=cfg.on_nonfinite == "skip", cross_replica_mean=replicas.mean(), **common
    )
    eval_step = make_eval_step(parts.model, parts.task.loss, **common)
    log = MetricsLog(run_dir, tensorboard=cfg.tensorboard) if main else NullLog()
    every_ckpt = cfg.checkpoint_every or cfg.eval_every
    stop = _StopFlag()

    run_start, elapsed_before = time.perf_counter(), progress["elapsed"]

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - run_start

    # Steps whose loss or gradient norm was NaN/Inf, counted on device (no sync
    # per step); read on the log cadence and before anything is evaluated or saved.
    nonfinite = torch.tensor(progress.get("skipped", 0), dtype=torch.int64, device=parts.device)
    first_nonfinite = torch.tensor(-1, dtype=torch.int64, device=parts.device)

    def count_nonfinite(metrics: dict[str, torch.Tensor]) -> None:
        nonlocal first_nonfinite
        bad = ~(torch.isfinite(metrics["loss"]) & torch.isfinite(metrics["grad_norm"]))
        nonfinite.add_(bad)
        first_nonfinite = torch.where(bad & (first_nonfinite < 0), state.step, first_nonfinite)

    def check_finite(step: int) -> None:
        """With ``on_nonfinite = "stop"``: stop before a non-finite state is evaluated or saved."""
        if cfg.on_nonfinite != "stop" or not int(nonfinite):
            return
        good = f"the last good checkpoint is {last_good}" if last_good else "no checkpoint was written"
        raise RunError(
            f"non-finite loss or gradient norm at step {int(first_nonfinite)} (stopped at step {step}); {good}. "
            'Set train.on_nonfinite = "skip" and --resume to skip such updates, or start again with a lower '
            "optim.lr or optim.clip_norm"
        )

    def snapshot() -> dict[str, Any]:
        return {
            "state": checkpoint.state_to_dict(state),
            "data": train_data.state_dict(),
            **rng_states(),
            "progress": {**progress, "elapsed": elapsed(), "skipped": int(nonfinite)},
            "config": resolved,
        }

    def save(step: int) -> Path:
        nonlocal last_good
        check_finite(step)
        last_good = checkpoint.step_path(ckpt_dir, step)
        if main:
            checkpoint.save(last_good, snapshot())
            checkpoint.prune(ckpt_dir, cfg.keep_checkpoints)
        return last_good

    def run_eval(step: int) -> bool:
        """Log val metrics; True when early stopping says stop."""
        check_finite(step)
        metrics = evaluate_batches(eval_step, state, val_data, parts.device, parts.task, cfg.eval_batches, replicas)
        log.write(step, "val", metrics, elapsed())
        say(f"step {step}: " + "  ".join(f"val {k} {v:.4f}" for k, v in metrics.items()))
        if cfg.sample is not None and main and (step // cfg.eval_every) % cfg.sample.every == 0:
            text = sample_text(parts.model, state, tokenizer, cfg.sample)
            log.write(step, "sample", {}, elapsed(), text=text)
            say(f"step {step}: sample\n{text}")
        rule = cfg.early_stopping
        if rule is None:
            return False
        if rule.metric not in metrics:
            raise RunError(f"train.early_stopping.metric = {rule.metric!r} is not logged; choose one of {sorted(metrics)}")
        value, best = metrics[rule.metric], progress["best"]
        if best is None or (value < best if rule.mode == "min" else value > best):
            progress.update(best=value, bad_evals=0)
            if main:
                checkpoint.save(ckpt_dir / "best.pt", snapshot())
            return False
        progress["bad_evals"] += 1
        return progress["bad_evals"] >= rule.patience

    start = int(state.step)
    bar = progress_bar(cfg.steps, start, disable=not main)
    say = bar.write if main else _quiet
    window_start, window_samples = time.perf_counter(), 0
    try:
        with stop.installed():
            for step in range(start + 1, cfg.steps + 1):
                batch = next(train_data)
                state, metrics = train_step(state, to_device(batch, parts.device))
                count_nonfinite(metrics)
                window_samples += batch_size(batch)
                bar.update(1)
                if step % cfg.log_every == 0 or step == cfg.steps:
                    values = parts.task.summarize({k: v.item() for k, v in metrics.items()})  # the only host sync
                    check_finite(step)
                    replicas.check_same(state.params, f"parameters at step {step}")  # checksums, log cadence only
                    if cfg.on_nonfinite == "skip":
                        skipped, reported = int(nonfinite), progress.get("skipped", 0)
                        values["skipped_steps"] = skipped
                        if skipped > reported:
                            say(f"step {step}: skipped {skipped - reported} non-finite update(s), {skipped} in all")
                            progress["skipped"] = skipped
                    now = time.perf_counter()
                    rate = window_samples / max(now - window_start, 1e-9)
                    log.write(step, "train", values, elapsed(), samples_per_s=round(rate, 1))
                    bar.set_postfix(loss=f"{values['loss']:.4f}", samples_s=f"{rate:,.0f}", refresh=False)
                    window_start, window_samples = now, 0
                stopping = (step % cfg.eval_every == 0 or step == cfg.steps) and run_eval(step)
                signalled = stop.raised is not None
                if replicas.active:  # every rank must stop at the same step: agree on the log cadence
                    signalled = (step % cfg.log_every == 0 or step == cfg.steps) and replicas.any(signalled)
                if stopping or step % every_ckpt == 0 or step == cfg.steps or signalled:
                    path = save(step)
                if stopping:
                    say(
                        f"early stopping at step {step}: no better {cfg.early_stopping.metric} "
                        f"in {cfg.early_stopping.patience} evaluations"
                    )
                    break
                if signalled:
                    raise Interrupted(step, path)
    finally:
        bar.close()
        log.close()
    if main:
        plot_metrics(run_dir)
    return run_dir


def rng_states() -> dict[str, Any]:
    """The host's random generators (torch's CPU one, Python's, NumPy's legacy one) as checkpoint data."""
    states = {"torch_rng": torch.get_rng_state(), "python_rng": random.getstate()}
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is optional
        return states
    _, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    states["numpy_rng"] = {
        "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
        "has_gauss": int(has_gauss), "cached_gaussian": float(cached),
    }
    return states


def restore_rng(payload: dict[str, Any]) -> None:
    """Set the generators ``rng_states`` saved (a checkpoint without NumPy's leaves it alone)."""
    torch.set_rng_state(payload["torch_rng"])
    random.setstate(payload["python_rng"])
    saved = payload.get("numpy_rng")
    if saved is not None:
        import numpy as np

        keys = saved["keys"].numpy().astype(np.uint32)
        np.random.set_state(("MT19937", keys, saved["pos"], saved["has_gauss"], saved["cached_gaussian"]))


def _saved_config(run_dir: Path) -> dict[str, Any] | None:
    """The resolved config a run folder holds, or None when it has none that parses."""
    try:
        return tomllib.loads((run_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so a kill leaves the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class LoadedRun(NamedTuple):
    exp: Experiment
    parts: Parts
    state: TrainState


def load_run(run_dir: Path, checkpoint_name: str = "latest") -> LoadedRun:
    """A run folder's experiment, built parts and the state of one of its checkpoints.

    ``checkpoint_name``: ``latest`` (the newest readable one), ``best``, or a file name.
    """
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).exists():
        raise RunError(f"{run_dir} is not a run folder (no {CONFIG_FILE})")
    exp = load_config(run_dir / CONFIG_FILE)
    ckpt_dir = run_dir / "checkpoints"
    if checkpoint_name == "latest":
        found = checkpoint.load_latest(ckpt_dir)
        if found is None:
            raise RunError(f"no readable checkpoint in {ckpt_dir}")
        payload = found[1]
    else:
        payload = checkpoint.load(ckpt_dir / ("best.pt" if checkpoint_name == "best" else checkpoint_name))
    parts = build_parts(exp)
    state = checkpoint.state_from_dict(payload["state"], init_state(parts.model, parts.transform, seed=exp.seed))
    return LoadedRun(exp, parts, state)


def evaluate(run_dir: Path, checkpoint_name: str = "latest") -> dict[str, float]:
    """Re-evaluate a run's checkpoint (``latest``, ``best`` or a file name) on its val split."""
    exp, parts, state = load_run(run_dir, checkpoint_name)
    eval_step = make_eval_step(
        parts.model, parts.task.loss, inputs=parts.task.inputs, precision=exp.train.precision, compile=False
    )
    metrics = evaluate_batches(eval_step, state, build_data(exp, "val"), parts.device, parts.task)
    return {"step": int(state.step), **metrics}


def sample_text(
    model: nn.Module,
    state: TrainState,
    tokenizer,
    options: Sample,
    *,
    stop: str | None = None,
    use_cache: bool = True,
    context: dict[str, torch.Tensor] | None = None,
    on_text=None,
) -> str:
    """New text from ``model`` with ``state``'s parameters, continuing ``options.prompt``.

    ``context``: the model's other inputs (a captioner's image); ``on_text``:
    called with each new piece of text as it comes; see ``craft.generate``.
    """
    from craft.generate import generate_text

    return generate_text(
        model, {**state.params, **state.buffers}, tokenizer, options.prompt,
        max_new_tokens=options.max_new_tokens, temperature=options.temperature,
        top_k=options.top_k, top_p=options.top_p, seed=options.seed, use_cache=use_cache, stop=stop,
        context=context, on_text=on_text,
    )


def generate(
    run_dir: Path,
    options: Sample,
    *,
    checkpoint_name: str = "latest",
    stop: str | None = None,
    use_cache: bool = True,
    image: str | Path | None = None,
    on_text=None,
) -> str:
    """Text sampled from a run trained on text data, decoded with the run's tokenizer.

    ``on_text`` (text only): called with each new piece as it is generated.

    With ``image`` (a run trained on captions): that image's caption.
    ``options.prompt`` then holds the begin marker (``BOUNDARY``) and the
    caption's first words, if any; the caption runs to the end marker, or
    until it fills the model's ``block_size``, and comes back without markers.
    """
    from craft.data.tokenizers import BOUNDARY, load_tokenizer

    run_dir = Path(run_dir)
    path = run_dir / TOKENIZER_FILE
    if (run_dir / CONFIG_FILE).exists() and not path.exists():
        raise RunError(f"{run_dir} has no {TOKENIZER_FILE}: generation needs a run trained on text or captions")
    exp = load_config(run_dir / CONFIG_FILE) if (run_dir / CONFIG_FILE).exists() else None
    read_image = getattr(exp.data.config, "load_image", None) if exp is not None else None
    if image is None and read_image is not None:
        raise RunError(f"{run_dir} is a captioning run: give the image to caption, --image=PATH")
    if image is not None and exp is not None and read_image is None:
        raise RunError(f"--image: {run_dir} was trained on {exp.data.kind!r} data, not captions; drop --image")
    if image is not None and not Path(image).is_file():
        raise RunError(f"--image {image}: no such file")
    exp, parts, state = load_run(run_dir, checkpoint_name)
    tokenizer = load_tokenizer(path)
    if image is None:
        return sample_text(parts.model, state, tokenizer, options, stop=stop, use_cache=use_cache, on_text=on_text)
    if not options.prompt.startswith(BOUNDARY):
        raise ValueError(f"a caption's prompt starts with the begin marker {BOUNDARY!r}, got {options.prompt!r}")
    pixels = read_image(image).to(parts.device)[None]  # (1, C, S, S)
    room = parts.model.block_size - len(tokenizer.encode(options.prompt))
    if room < 1:
        raise RunError(f"the prompt fills the model's block_size ({parts.model.block_size} tokens); shorten it")
    options = attrs.evolve(options, max_new_tokens=min(options.max_new_tokens, room))
    new = sample_text(parts.model, state, tokenizer, options, stop=BOUNDARY, use_cache=use_cache, context={"image": pixels})
    start = options.prompt.removeprefix(BOUNDARY)
    return tokenizer.decode(tokenizer.encode(start) + tokenizer.encode(new))  # words are joined by the tokenizer


def plot(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    if not (run_dir / "metrics.jsonl").exists():
        raise RunError(f"{run_dir} has no metrics.jsonl to plot")
    return plot_metrics(run_dir)
