"""A sweep's logs: every member's events in the sweep's ``metrics.jsonl`` (with "member" and "hparams")
and in the member's own run folder, each event what the member would log as a run alone."""

from __future__ import annotations

import math
from typing import NamedTuple

from craft import hooks
from craft.ensemble import unstack_state
from craft.logging import MetricsLog
from craft.loop import Progress
from craft.optim import ScheduleState, find_state


class MemberLogs(NamedTuple):
    """The sweep's log (``logs[0]``) and member ``i``'s own (``logs[i + 1]``); ``team``: the sweep's
    members (``craft.sweep.Member``: ``index`` and ``hparams()``)."""

    team: list
    logs: list[MetricsLog]

    def write(self, step: int, split: str, values: list[dict[str, float]], elapsed: float) -> None:
        for m, v in zip(self.team, values):
            self.logs[0].write(step, split, v, elapsed, member=m.index, hparams=m.hparams())
            self.logs[m.index + 1].write(step, split, v, elapsed)

    def close(self) -> None:
        for log in self.logs:
            log.close()


def log_members(logs: MemberLogs, summarize, bar, elapsed, learning_rates) -> hooks.Hook:
    """Each member's means over the log window (as a run logs them) and the learning rate its last
    applied update used (``learning_rates[i]``: member ``i``'s schedule, a function of the step)."""

    def hook(progress: Progress, metrics) -> Progress:
        values = hooks.window_means(progress, metrics)  # the only host sync
        # the count of applied updates, per member: a skipped update holds the schedule back
        applied = find_state(progress.state[0].opt_state, ScheduleState).count.tolist()
        events = [
            {**summarize({k: v[i] for k, v in values.items()}), "lr": rate(max(applied[i] - 1, 0))}
            for i, rate in enumerate(learning_rates)
        ]
        logs.write(progress.step, "train", events, elapsed())
        finite = [v for v in values["loss"] if math.isfinite(v)]
        bar.set_postfix(best_loss=f"{min(finite):.4f}" if finite else "nan", refresh=False)
        return progress._replace(window_sums=None, window_counts=None)

    return hook


def evaluate_members(run_eval, logs: MemberLogs, elapsed) -> hooks.Hook:
    """Each member's val figures (``run_eval`` of its unstacked state), logged and kept in ``progress.val``."""

    def hook(progress: Progress, metrics) -> Progress:
        state = progress.state[0]
        values = [run_eval(unstack_state(state, m.index)) for m in logs.team]
        logs.write(progress.step, "val", values, elapsed())
        return progress._replace(val=values)

    return hook
