"""metrics.jsonl and loss.png."""

from __future__ import annotations

import errno
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from craft.hooks import advance, log_train, untimed
from craft.logging import (
    FIRST_STEP_BAR, MetricsLog, bar_look, plot_metrics, progress_bar, read_metrics, truncate_metrics,
)
from craft.loop import Progress


def _log(tmp_path, steps=(10, 20, 30)):
    log = MetricsLog(tmp_path)
    for step in steps:
        log.write(step, "train", {"loss": 1.0 / step}, elapsed=step / 10, samples_per_s=100.0)
        log.write(step, "val", {"loss": 2.0 / step, "accuracy": step / 100}, elapsed=step / 10)
    log.close()


def test_events_are_one_json_object_per_line(tmp_path):
    _log(tmp_path)
    events = read_metrics(tmp_path)
    assert len(events) == 6
    assert events[0] == {"step": 10, "split": "train", "metrics": {"loss": 0.1}, "elapsed": 1.0, "samples_per_s": 100.0}


def test_truncate_drops_events_after_a_step(tmp_path):
    _log(tmp_path)
    truncate_metrics(tmp_path, after_step=20)
    assert [e["step"] for e in read_metrics(tmp_path)] == [10, 10, 20, 20]


def test_plot_is_a_png(tmp_path):
    _log(tmp_path)
    path = plot_metrics(tmp_path)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (700, 400)


def test_a_plot_that_cannot_be_written_leaves_the_last_one(tmp_path, monkeypatch):
    """Disk full mid-draw left a 0-byte loss.png (savefig wrote in place)."""
    import matplotlib.figure

    _log(tmp_path)
    before = plot_metrics(tmp_path).read_bytes()

    def full(self, fname, **kwargs):
        Path(fname).write_bytes(b"")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full)
    with pytest.raises(OSError):
        plot_metrics(tmp_path)
    assert (tmp_path / "loss.png").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loss.png", "metrics.jsonl"]


def test_tensorboard_events_beside_the_jsonl(tmp_path):
    pytest.importorskip("tensorboard")
    log = MetricsLog(tmp_path, tensorboard=True)
    log.write(1, "train", {"loss": 0.5}, elapsed=0.1)
    log.close()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_trackers_get_every_number_of_the_event(tmp_path):
    """samples_per_s and mfu sit beside the metrics in metrics.jsonl; the trackers used to get the metrics alone."""
    got = []
    log = MetricsLog(tmp_path, trackers=(SimpleNamespace(log=lambda *event: got.append(event), close=lambda: None),))
    log.write(10, "train", {"loss": 0.5}, elapsed=0.1, samples_per_s=812.5, mfu=0.25)
    log.write(10, "sample", {}, elapsed=0.2, text="hello")
    log.close()
    assert got == [(10, "train", {"loss": 0.5, "samples_per_s": 812.5, "mfu": 0.25}), (10, "sample", {})]


def test_a_damaged_last_line_is_left_out_and_an_earlier_one_is_named(tmp_path):
    _log(tmp_path, steps=(10, 20))
    path = tmp_path / "metrics.jsonl"
    good = path.read_text()
    for damaged in ('{"step": 30, "spl', '{"step": 30, "spl\n', "5\n", '{"step": "x", "split": "val", "metrics": {}}\n'):
        path.write_text(good + damaged)
        assert len(read_metrics(tmp_path)) == 4  # a killed write: skipped
    lines = good.splitlines(keepends=True)
    path.write_text("".join([lines[0], "garbage\n", *lines[1:]]))
    with pytest.raises(ValueError, match=r"metrics.jsonl' line 2 is not a metrics event \('garbage'\); delete or repair"):
        read_metrics(tmp_path)
    with pytest.raises(ValueError, match="line 2"):
        truncate_metrics(tmp_path, after_step=10)


def test_check_tensorboard_names_this_projects_extra(monkeypatch):
    from craft.config import ConfigError
    from craft.logging import check_tensorboard

    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.delitem(sys.modules, "torch.utils.tensorboard", raising=False)
    with pytest.raises(ConfigError) as info:
        check_tensorboard()
    (line,) = info.value.problems
    assert 'python -m pip install -e ".[tensorboard]" in the craft checkout' in line


def test_the_bar_shows_no_rate_or_eta_until_the_first_step_is_done():
    assert bar_look(0, compiling=True) == (FIRST_STEP_BAR, "compiling the train step")
    assert bar_look(0, compiling=False) == (FIRST_STEP_BAR, "first step")
    assert bar_look(1, compiling=True) == (None, "")
    assert "remaining" not in FIRST_STEP_BAR and "rate" not in FIRST_STEP_BAR


def test_after_the_first_step_the_bar_counts_its_rate_from_the_second(monkeypatch):
    import io

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    bar = progress_bar(100, 10, compiling=True)  # a run resumed at step 10
    waiting = str(bar)
    assert "compiling the train step" in waiting and "it/s" not in waiting and "<" not in waiting
    progress = Progress(None, 11, 100)
    advance(bar)(progress, {})  # the first (compiled) step is done
    assert bar.bar_format is None and bar.postfix == ""
    assert bar.n == bar.initial == 11  # the rate is (n - initial) / elapsed: the first step is not in it
    assert "compiling" not in str(bar) and "11/100" in str(bar)
    assert advance(bar)(progress, {}) is progress
    assert bar.initial == 11 and bar.n == 12  # only once
    bar.close()


def _log_train(tmp_path, bar):
    return log_train(MetricsLog(tmp_path), lambda m: m, bar, print, lambda: 1.0, skip=False)


def test_the_logged_samples_per_s_leaves_out_the_first_step_as_the_bar_does(monkeypatch, tmp_path):
    import io

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    bar = progress_bar(100, 0, compiling=True)
    compiled = Progress(None, 1, 100, samples=64, window=time.perf_counter() - 100)  # the first step compiled 100 s
    progress = advance(bar)(compiled, {})
    second = progress._replace(step=2, samples=progress.samples + 64)  # one more step of 64, as fit counts it
    _log_train(tmp_path, bar)(second, {"loss": torch.tensor(1.0)})
    (event,) = read_metrics(tmp_path)
    assert event["samples_per_s"] > 100, event  # 64 samples in well under a second, not 128 in 100 s
    bar.close()


def test_a_log_at_the_first_step_has_no_samples_per_s(monkeypatch, tmp_path):
    import io

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    bar = progress_bar(100, 0, compiling=True)
    first = advance(bar)(Progress(None, 1, 100, samples=64, window=time.perf_counter() - 100), {})
    _log_train(tmp_path, bar)(first, {"loss": torch.tensor(1.0)})  # log_every = 1: only the compiling step to time
    (event,) = read_metrics(tmp_path)
    assert "samples_per_s" not in event and event["metrics"] == {"loss": 1.0}
    bar.close()


def test_the_logged_samples_per_s_leaves_out_evaluations_and_checkpoints(monkeypatch, tmp_path):
    """A window that holds an evaluation (whose first call compiles) reports the training rate, not less."""
    import io

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    bar = progress_bar(100, 0, compiling=False)
    slow_evaluation = untimed(lambda p, m: (time.sleep(0.5), p)[1])
    progress = Progress(None, 10, 100, samples=0, window=time.perf_counter())
    progress = slow_evaluation(progress, {})._replace(step=11, samples=640)  # then 10 steps of 64
    _log_train(tmp_path, bar)(progress, {"loss": torch.tensor(1.0)})
    (event,) = read_metrics(tmp_path)
    assert event["samples_per_s"] > 640 / 0.25, event  # counting the 0.5 s evaluation would give < 1,280
    bar.close()


def test_under_torchrun_samples_per_s_is_the_global_batchs_and_mfu_one_devices(monkeypatch, tmp_path):
    """With 2 processes each reads 6 of a global batch of 12: the log counted 6 a step, half the rate."""
    import io

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    monkeypatch.setattr(time, "perf_counter", lambda: 10.0)
    bar = progress_bar(100, 0, compiling=False)
    rates = []
    hook = log_train(MetricsLog(tmp_path), lambda m: m, bar, print, lambda: 1.0, skip=False,
                     utilisation=lambda rate: rates.append(rate) or 0.5, replicas=2)
    hook(Progress(None, 20, 100, samples=60, window=8.0), {"loss": torch.tensor(1.0)})  # 10 steps of 6 in 2 s
    (event,) = read_metrics(tmp_path)
    assert event["samples_per_s"] == 60.0 and rates == [30.0] and event["mfu"] == 0.5
    bar.close()


def failing_after(calls: int, code: int, written: list | None = None):
    """An ``append_line`` that writes ``calls`` lines, then half a line before it raises ``OSError(code)``."""
    from craft import logging as craft_logging

    real, count = craft_logging.append_line, [0]

    def append(fd, line):
        count[0] += 1
        if count[0] > calls:
            real(fd, line[: len(line) // 2])
            raise OSError(code, os.strerror(code))
        real(fd, line)

    return append


@pytest.mark.parametrize("code, fix", [(errno.ENOSPC, "free some space"), (errno.EPERM, "make the folder writable")])
def test_a_failed_write_is_taken_back_and_said_with_its_file_and_fix(tmp_path, monkeypatch, code, fix):
    """A full disk left half a line (later unreadable), and log.close() flushed it again: a bare second error."""
    from craft import logging as craft_logging

    log = MetricsLog(tmp_path)
    monkeypatch.setattr(craft_logging, "append_line", failing_after(1, code))
    log.write(1, "train", {"loss": 1.0}, 0.1)
    with pytest.raises(OSError, match=rf"^cannot write '.*metrics.jsonl': {os.strerror(code)}; {fix} and --resume$"):
        log.write(2, "train", {"loss": 0.5}, 0.2)
    log.close()  # nothing left to write: no second error
    assert (tmp_path / "metrics.jsonl").read_text().endswith("}\n")
    assert [e["step"] for e in read_metrics(tmp_path)] == [1]


def test_a_failed_truncate_names_the_file_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    log = MetricsLog(tmp_path)
    log.write(1, "train", {"loss": 1.0}, 0.1)
    log.close()

    def full(*args, **kwargs):
        Path(args[0]).touch()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OSError, match=r"^cannot write '.*metrics.jsonl': No space left on device; free some space"):
        truncate_metrics(tmp_path, after_step=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]
