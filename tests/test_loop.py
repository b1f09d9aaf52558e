"""craft.loop and craft.hooks with a fake step: no model, no compile, scripted metrics."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from craft import hooks
from craft.loop import Progress, chain, every, fit, when
from craft.rundir import RunError


def batches():
    return ({"x": torch.zeros(2, 1)} for _ in itertools.count())


def scripted(losses):
    """A step whose state is the step count and whose loss is ``losses[count]``."""

    def step(state, batch):
        return state + 1, {"loss": torch.tensor(losses[state]), "grad_norm": torch.tensor(1.0)}

    return step


def record(seen: list, name: str):
    def hook(progress, metrics):
        seen.append((name, progress.step))
        return progress

    return hook


def test_every_fires_on_multiples_and_on_the_last_step():
    seen = []
    end = fit(Progress(0, 0, 7), batches(), scripted([0.0] * 7), every(3, record(seen, "h")))
    assert seen == [("h", 3), ("h", 6), ("h", 7)]
    assert end.step == 7 and end.state == 7 and end.stop is None


def test_fit_resumes_from_the_progress_step_and_counts_samples():
    seen = []
    end = fit(Progress(4, 4, 6), batches(), scripted([0.0] * 6), every(1, record(seen, "h")))
    assert seen == [("h", 5), ("h", 6)] and end.samples == 4  # two batches of 2


def test_chain_runs_hooks_in_order_each_given_the_previous_progress():
    seen = []
    bump = lambda p, m: p._replace(bad_evals=p.bad_evals + 1)  # noqa: E731
    check = lambda p, m: seen.append(p.bad_evals) or p  # noqa: E731
    fit(Progress(0, 0, 2), batches(), scripted([0.0] * 2), chain(record(seen, "a"), bump, check, record(seen, "b")))
    assert seen == [("a", 1), 1, ("b", 1), ("a", 2), 2, ("b", 2)]


def test_a_stop_ends_the_loop_after_that_steps_hooks():
    seen = []
    stop_at_2 = when(lambda p: p.step == 2, lambda p, m: p._replace(stop="test"))
    end = fit(Progress(0, 0, 10), batches(), scripted([0.0] * 10), chain(stop_at_2, record(seen, "after")))
    assert end.step == 2 and end.stop == "test"
    assert seen == [("after", 1), ("after", 2)]  # the hooks after the stop still ran at step 2


def evaluating(values):
    """An eval hook that reports the scripted ``loss`` of this step as the val metric."""
    return lambda p, m: p._replace(val={"loss": values[p.step - 1]})


def test_early_stopping_saves_the_best_and_stops_after_patience_worse_evaluations():
    saved = []
    rule = SimpleNamespace(metric="loss", mode="min", patience=2)
    val = [3.0, 2.0, 2.5, 1.5, 1.6, 1.7, 0.1, 0.0]
    hook = chain(evaluating(val), hooks.early_stopping(rule, lambda p: saved.append(p.step)))
    end = fit(Progress(0, 0, 8), batches(), scripted([0.0] * 8), hook)
    assert saved == [1, 2, 4]  # each new best
    assert end.stop == "early_stopping" and end.step == 6 and end.best == 1.5 and end.bad_evals == 2


def test_early_stopping_on_an_unlogged_metric_is_one_line():
    rule = SimpleNamespace(metric="acc", mode="max", patience=1)
    with pytest.raises(RunError, match="train.early_stopping.metric = 'acc' is not logged; choose one of"):
        fit(Progress(0, 0, 2), batches(), scripted([0.0] * 2), chain(evaluating([1.0, 1.0]), hooks.early_stopping(rule, print)))


def test_checkpoint_hook_records_the_last_good_checkpoint():
    paths = lambda p: Path(f"step_{p.step}.pt")  # noqa: E731
    end = fit(Progress(0, 0, 5), batches(), scripted([0.0] * 5), every(2, hooks.checkpoint(paths)))
    assert end.last_good == Path("step_5.pt")


def test_nonfinite_steps_are_counted_on_device_and_stop_names_the_first():
    losses = [1.0, math.nan, 1.0, 1.0]
    hook = chain(hooks.count_nonfinite, every(3, hooks.stop_on_nonfinite))
    with pytest.raises(RunError, match=r"non-finite loss or gradient norm at step 2 \(stopped at step 3\); no checkpoint"):
        fit(Progress(0, 0, 4), batches(), scripted(losses), hook)
    end = fit(Progress(0, 0, 4), batches(), scripted(losses), hooks.count_nonfinite)
    assert int(end.nonfinite) == 1 and int(end.first_nonfinite) == 2


def test_a_raised_signal_flag_stops_the_loop():
    flag = hooks.SignalFlag()
    raise_at_3 = when(lambda p: p.step == 3, lambda p, m: setattr(flag, "raised", 15) or p)
    end = fit(Progress(0, 0, 10), batches(), scripted([0.0] * 10), chain(raise_at_3, hooks.stop_on_signal(flag)))
    assert end.stop == "signal" and end.step == 3


def test_ranks_agree_to_stop_on_rank_0_s_failed_log_write():
    """Under torchrun only rank 0 writes the log: its failed write stopped it alone, the others then waited in the
    next step's all-reduce. The agreement that stops every rank on a signal stops them on it too."""
    hook = hooks.stop_on_signal(hooks.SignalFlag(), agree=lambda mine: mine)  # one rank: its own answer
    failed, other = Progress(0, 0, 10)._replace(stop="log"), Progress(0, 0, 10)
    assert hook(failed, {}).stop == "log" and hook(other, {}).stop is None
    anyone = hooks.stop_on_signal(hooks.SignalFlag(), agree=lambda mine: True)  # another rank's log write failed
    assert anyone(other, {}).stop == "signal" and anyone(failed, {}).stop == "log"
