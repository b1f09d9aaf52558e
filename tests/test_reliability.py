"""Reliability (issue 8): exact resume, interruption, kills, non-finite losses, bad input.

Runs go through ``craft.run.train`` in this process (one import of torch for
all of them); the kill tests need a process to kill and use the CLI.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import attrs
import pytest
import torch
from PIL import Image

import forked_cli
from conftest import shapes_folder, tiny_cnn
from craft import checkpoint, cli, run
from craft.config import load, loads
from craft.logging import read_metrics
from craft.step import init_state, make_train_step

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest

CNN = tiny_cnn("""
[optim]
kind = "adamw"
lr = 3e-3
clip_norm = 1.0

[schedule]
kind = "warmup_cosine"
warmup_ratio = 0.25

[train]
steps = 8
eval_every = 4
log_every = 2
eval_batches = 1
compile = false
""")

# experiments/gpt_char.toml, shrunk: dropout on, eager (compiling would take
# longer than the whole run), a sample at every evaluation.
GPT_OVERRIDES = {
    "model.block_size": 16, "model.n_layer": 1, "model.n_head": 2, "model.n_embd": 16, "model.dropout": 0.1,
    "data.block_size": 16, "data.batch_size": 4, "schedule.warmup_steps": 2,
    "train.steps": 8, "train.eval_every": 4, "train.log_every": 2, "train.eval_batches": 2, "train.compile": False,
    "train.sample.every": 1, "train.sample.max_new_tokens": 12,
}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    # 48 train images, batch 8: an epoch is 6 steps, so an 8-step run crosses one.
    return shapes_folder(tmp_path_factory.mktemp("data"), num_train=48, num_val=16)


def cnn_experiment(tmp_path: Path, shapes: Path, name: str = "cnn", **overrides):
    text = CNN.format(out=tmp_path / "runs", data=shapes)
    return loads(text, {"name": name, **overrides})


def gpt_experiment(tmp_path: Path, name: str = "gpt", **overrides):
    corpus = tmp_path / "corpus.txt"
    if not corpus.exists():
        corpus.write_text("".join(f"The {i}th quick brown fox jumps over the lazy dog.\n" for i in range(40)))
    extra = {"name": name, "out_dir": str(tmp_path / "runs"), "data.path": str(corpus)}
    return load(ROOT / "experiments" / "gpt_char.toml", {**GPT_OVERRIDES, **extra, **overrides})


class _Signalling:
    """A train iterator that raises ``signum`` while the ``at``-th batch is read (a user's Ctrl-C mid-step)."""

    def __init__(self, inner, at: int, signum: int = signal.SIGINT, poison: bool = False) -> None:
        self.inner, self.at, self.signum, self.poison, self.calls = inner, at, signum, poison, 0

    def __next__(self):
        self.calls += 1
        batch = next(self.inner)
        if self.calls == self.at:
            if self.poison:  # a NaN in the input: loss and gradients go non-finite
                return {k: v.float().fill_(float("nan")) if v.is_floating_point() else v for k, v in batch.items()}
            signal.raise_signal(self.signum)
        return batch

    def __getattr__(self, name):
        return getattr(self.inner, name)


def wrap_train_data(monkeypatch, **kwargs) -> None:
    build_data = run.build_data

    def wrapped(exp, split, *args):
        data = build_data(exp, split, *args)
        return _Signalling(data, **kwargs) if split == "train" else data

    monkeypatch.setattr(run, "build_data", wrapped)


def final_payload(run_dir: Path) -> dict:
    return checkpoint.load(checkpoint.step_files(run_dir / "checkpoints")[-1])


def assert_same_run(a: Path, b: Path) -> None:
    """Bitwise the same state in the last checkpoint, and the same logged metrics (timings aside)."""
    pa, pb = final_payload(a), final_payload(b)
    torch.testing.assert_close(pa["state"], pb["state"], atol=0, rtol=0)
    assert pa["data"] == pb["data"]
    strip = lambda events: [(e["step"], e["split"], e["metrics"], e.get("text")) for e in events]
    assert strip(read_metrics(a)) == strip(read_metrics(b))


def quiet(*args) -> None:
    pass


# -- 1. exact resume -------------------------------------------------------


@pytest.mark.parametrize("model", ["cnn", "gpt"])
def test_stopping_mid_epoch_and_resuming_is_bitwise_the_straight_run(model, tmp_path, shapes, monkeypatch):
    make = (lambda name: cnn_experiment(tmp_path, shapes, name)) if model == "cnn" else (
        lambda name: gpt_experiment(tmp_path, name)
    )
    straight = run.train(make("straight"), echo=quiet)
    wrap_train_data(monkeypatch, at=5)  # step 5 of 8; for the CNN an epoch is 6 steps
    with pytest.raises(run.Interrupted) as stopped:
        run.train(make("stopped"), echo=quiet)
    assert stopped.value.step == 5 and stopped.value.path.name == "step_00000005.pt"
    monkeypatch.undo()
    resumed = run.train(make("stopped"), resume=True, echo=quiet)
    assert_same_run(straight, resumed)
    if model == "gpt":  # the samples logged at each evaluation are the same text too
        assert [e["split"] for e in read_metrics(resumed)].count("sample") == 2


def test_host_generators_are_restored_on_resume(tmp_path):
    import numpy as np

    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.randn()  # NumPy's generator caches a Gaussian: that is state too
    saved = checkpoint.load(checkpoint.save(tmp_path / "rng.pt", checkpoint.rng_states()))
    want = (random.random(), np.random.randn(), np.random.rand(), torch.rand(()))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    checkpoint.restore_rng(saved)
    assert (random.random(), np.random.randn(), np.random.rand(), torch.rand(())) == want


# -- 2. interruption -------------------------------------------------------


def test_sigterm_finishes_the_step_and_saves(tmp_path, shapes, monkeypatch):
    wrap_train_data(monkeypatch, at=3, signum=signal.SIGTERM)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(run.Interrupted, match="interrupted at step 3; checkpoint saved to .*step_00000003.pt"):
        run.train(cnn_experiment(tmp_path, shapes), echo=quiet)
    payload = final_payload(tmp_path / "runs" / "cnn")
    assert int(payload["state"]["step"]) == 3 and payload["data"] == {"epoch": 0, "index": 3}
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back


def test_a_corrupt_newest_checkpoint_is_set_aside_and_the_previous_one_used(tmp_path, shapes):
    exp = cnn_experiment(tmp_path, shapes, **{"train.checkpoint_every": 2, "train.keep_checkpoints": 2})
    straight = run.train(cnn_experiment(tmp_path, shapes, "straight"), echo=quiet)
    run_dir = run.train(exp, echo=quiet)
    newest = checkpoint.step_path(run_dir / "checkpoints", 8)
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated, as by a full disk
    lines = []
    run.train(exp, resume=True, echo=lines.append)
    assert any("skipping" in line and "step_00000008.pt: unreadable checkpoint" in line for line in lines)
    assert any("resuming" in line and "step_00000006.pt (step 6)" in line for line in lines)
    assert (run_dir / "checkpoints" / "step_00000008.pt.corrupt").exists()
    assert_same_run(straight, run_dir)


def test_a_run_killed_before_its_first_checkpoint_resumes_from_the_start(tmp_path, shapes):
    exp = cnn_experiment(tmp_path, shapes)
    straight = run.train(cnn_experiment(tmp_path, shapes, "straight"), echo=quiet)
    run_dir = run.train(exp, echo=quiet)
    for path in (run_dir / "checkpoints").iterdir():
        path.unlink()
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write('{"step": 9, "split": "tr')  # a line cut short by the kill
    lines = []
    run.train(exp, resume=True, echo=lines.append)
    assert any("has no checkpoint yet: starting it again from step 0" in line for line in lines)
    assert_same_run(straight, run_dir)


# -- 3. non-finite values --------------------------------------------------


def test_a_nan_loss_stops_the_run_naming_the_step_and_the_last_good_checkpoint(tmp_path, shapes, monkeypatch):
    wrap_train_data(monkeypatch, at=3, poison=True)
    exp = cnn_experiment(tmp_path, shapes, **{"train.checkpoint_every": 2, "train.log_every": 4})
    with pytest.raises(run.RunError) as error:
        run.train(exp, echo=quiet)
    message = str(error.value)
    assert "non-finite loss or gradient norm at step 3 (stopped at step 4)" in message
    assert "last good checkpoint is" in message and "step_00000002.pt" in message
    assert "\n" not in message
    files = checkpoint.step_files(tmp_path / "runs" / "cnn" / "checkpoints")
    assert [p.name for p in files] == ["step_00000002.pt"]  # nothing holding NaNs was written
    state = checkpoint.load(files[0])["state"]
    assert all(torch.isfinite(v).all() for v in state["params"].values())
    # What the message offers: resume with "skip"; the same batch comes again and is skipped.
    monkeypatch.undo()
    wrap_train_data(monkeypatch, at=1, poison=True)
    run_dir = run.train(attrs.evolve(exp, train=attrs.evolve(exp.train, on_nonfinite="skip")), resume=True, echo=quiet)
    assert int(final_payload(run_dir)["state"]["step"]) == 8
    assert [e["metrics"]["skipped_steps"] for e in read_metrics(run_dir) if e["split"] == "train"] == [1, 1]


def test_skip_keeps_the_old_state_and_counts_skips_in_the_log(tmp_path, shapes, monkeypatch, capsys):
    wrap_train_data(monkeypatch, at=3, poison=True)
    exp = cnn_experiment(
        tmp_path, shapes,
        **{"train.on_nonfinite": "skip", "train.checkpoint_every": 1, "train.keep_checkpoints": 10},
    )
    run_dir = run.train(exp, echo=quiet)
    said = capsys.readouterr().out.splitlines()
    assert said[-1] == "warning: 1 of 8 updates were skipped as non-finite (train.on_nonfinite = 'skip')"  # the sum
    ckpts = run_dir / "checkpoints"
    before, skipped = (checkpoint.load(checkpoint.step_path(ckpts, s))["state"] for s in (2, 3))
    assert int(skipped["step"]) == 3
    torch.testing.assert_close(skipped["params"], before["params"], atol=0, rtol=0)
    torch.testing.assert_close(skipped["opt_state"], before["opt_state"], atol=0, rtol=0)
    final = final_payload(run_dir)["state"]
    assert all(torch.isfinite(v).all() for v in final["params"].values())
    counts = [(e["step"], e["metrics"]["skipped_steps"]) for e in read_metrics(run_dir) if e["split"] == "train"]
    assert counts == [(2, 0), (4, 1), (6, 1), (8, 1)]


def test_the_lr_logged_after_a_skipped_update_is_the_one_the_schedule_used(tmp_path, shapes, monkeypatch):
    """A skipped update leaves the schedule's count behind the step: the log said schedule(step - 1) all the same."""
    from craft.optim import ScheduleState, find_state, warmup_cosine
    from craft.trained import load_run

    wrap_train_data(monkeypatch, at=3, poison=True)
    exp = cnn_experiment(tmp_path, shapes, **{"train.on_nonfinite": "skip", "train.checkpoint_every": 2})
    run_dir = run.train(exp, echo=quiet)
    schedule = warmup_cosine(3e-3, total_steps=8, warmup_ratio=0.25)  # the experiment's, as torch.optim would see it
    logged = {e["step"]: e["metrics"]["lr"] for e in read_metrics(run_dir) if e["split"] == "train"}
    for step in (4, 6, 8):
        state = load_run(run_dir, checkpoint.step_path(run_dir / "checkpoints", step).name).state
        applied = int(find_state(state.opt_state, ScheduleState).count)
        assert applied == step - 1  # the update of step 3 was skipped
        assert logged[step] == pytest.approx(float(schedule(torch.tensor(applied - 1))), rel=1e-12)


@pytest.mark.parametrize("donate", [False, True])
def test_the_skipping_step_selects_the_old_state_on_device(donate):
    from conftest import batch_for, bn_dropout_net, cross_entropy

    from craft.optim import adamw

    torch.manual_seed(0)
    model = bn_dropout_net()
    tx = adamw(1e-2)
    step = make_train_step(model, cross_entropy, tx, compile=False, donate=donate, skip_nonfinite=True)
    state = init_state(model, tx)
    bad = batch_for("bn_dropout")
    bad["input"][0, 0, 0, 0] = float("inf")
    want = torch.utils._pytree.tree_map(torch.clone, state)
    state, metrics = step(state, bad)
    assert not torch.isfinite(metrics["loss"])
    torch.testing.assert_close(state.params, want.params, atol=0, rtol=0)
    torch.testing.assert_close(state.buffers, want.buffers, atol=0, rtol=0)  # BatchNorm statistics too
    torch.testing.assert_close(state.opt_state, want.opt_state, atol=0, rtol=0)
    assert int(state.step) == 1
    state, metrics = step(state, batch_for("bn_dropout"))
    assert torch.isfinite(metrics["loss"]) and not torch.equal(state.params["0.weight"], want.params["0.weight"])


# -- 4. bad input: one clear line each, never a traceback ------------------


def cli_error(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exited:
        cli.main(list(argv))
    err = capsys.readouterr().err
    assert exited.value.code in (cli.EXIT_CONFIG, cli.EXIT_ERROR), err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]  # after the progress bar, if any
    assert len(errors) == 1, err
    return errors[0]


def _image_folder(root: Path, files: dict[str, bytes | None]) -> Path:
    """``root/<class>/<file>``: bytes as given, None for a small valid PNG."""
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if data is None:
            Image.new("RGB", (32, 32), (40, 90, 200)).save(path)
        else:
            path.write_bytes(data)
    return root


def _png_bytes() -> bytes:
    import io

    out = io.BytesIO()
    Image.new("RGB", (32, 32), (40, 90, 200)).save(out, "PNG")
    return out.getvalue()


def _bad_filter_png() -> bytes:
    """A 4x2 RGB PNG whose first row has filter byte 7: torchvision's decoder segfaults on it."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = b"\x07" + bytes(12) + b"\x00" + bytes(12)
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 2, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


GOOD = {f"{c}/{c}_{i}.png": None for c in ("a", "b") for i in range(4)}
BAD_IMAGE_FOLDERS = {
    "corrupt image": ({**GOOD, "a/a_9.png": b"\x89PNG\r\n\x1a\n garbage"}, "cannot decode image .*a_9.png"),
    "damaged PNG rows": ({**GOOD, "a/a_9.png": _bad_filter_png()}, "cannot decode image .*a_9.png \\(bad row filter"),
    "truncated image": ({**GOOD, "a/a_9.png": _png_bytes()[:60]}, "cannot decode image .*a_9.png"),
    "text named .jpg": ({**GOOD, "b/notes.jpg": b"hello, not a picture\n"}, "cannot decode image .*notes.jpg"),
    "empty image file": ({**GOOD, "b/b_9.png": b""}, "cannot decode image .*b_9.png \\(empty file\\)"),
    "empty folder": ({}, "no images \\(.jpg, .jpeg, .png\\) in"),
    "class folder without images": ({**GOOD, "c/readme.txt": b"x"}, "class folder .*c has no images"),
}


@pytest.mark.parametrize("case", sorted(BAD_IMAGE_FOLDERS))
def test_bad_image_folders_are_one_line(case, tmp_path, capsys):
    files, pattern = BAD_IMAGE_FOLDERS[case]
    root = _image_folder(tmp_path / "images", files)
    root.mkdir(exist_ok=True)
    exp = tmp_path / "e.toml"
    exp.write_text(CNN.format(out=tmp_path / "runs", data=root) + "\n")
    # val_path = path: the evaluation at step 2 reads every file, wherever the bad one sorts
    line = cli_error(
        capsys, str(exp), f"--data.val_path={root}", "--data.batch_size=2", "--train.steps=2", "--train.eval_batches=99"
    )
    assert re.search(pattern, line), line


def test_skip_unreadable_trains_on_the_rest_and_counts_what_it_skipped(tmp_path):
    files = {**GOOD, "a/a_8.png": b"\x89PNG broken", "b/b_9.jpg": b"not a jpeg", "b/notes.txt": b"ignored"}
    root = _image_folder(tmp_path / "images", files)
    exp = loads(CNN.format(out=tmp_path / "runs", data=root), {
        "data.skip_unreadable": True, "data.val_fraction": 0.25, "data.batch_size": 2, "train.steps": 2,
    })
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable of \d+ images .*data.skip_unreadable") as caught:
        run_dir = run.train(exp, echo=quiet)
    counts = [re.search(r"skipped (\d+) unreadable", str(w.message)) for w in caught]
    assert sum(int(m.group(1)) for m in counts if m) == 2  # one in each split
    assert int(final_payload(run_dir)["state"]["step"]) == 2


@pytest.mark.parametrize("mode, save", [
    ("I;16", {}), ("P", {}), ("CMYK", {}), ("LA", {}), ("1", {}),
])
def test_unusual_image_modes_decode_to_rgb(mode, save, tmp_path):
    from craft.data.images import read_image

    path = tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")
    Image.new("RGB", (8, 8), (200, 200, 200)).convert(mode).save(path, **save)
    image = read_image(str(path), channels=3)
    assert image.shape == (3, 8, 8) and image.dtype == torch.uint8


@pytest.mark.parametrize("content, pattern", [
    (b"caf\xe9\n", "not UTF-8 text \\(invalid byte 0xe9 at offset 3\\); convert it to UTF-8"),
    (b"", "the corpus is empty"),
])
def test_bad_text_is_one_line(content, pattern, tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(content)
    line = cli_error(
        capsys, str(ROOT / "experiments" / "gpt_char.toml"), f"--data.path={corpus}", f"--out_dir={tmp_path}"
    )
    assert re.search(pattern, line), line


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("text")
    return run.train(gpt_experiment(tmp, **{"train.steps": 3, "train.eval_every": 3}), echo=quiet)


def test_prompt_outside_the_vocabulary_is_one_line(text_run, capsys):
    line = cli_error(capsys, "generate", str(text_run), "--prompt=The €")
    assert "1 character not in the vocabulary: '€'" in line


def test_checkpoint_of_a_different_model_config_is_one_line(text_run, tmp_path, capsys):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(text_run, other)
    config = other / "config.toml"
    config.write_text(config.read_text().replace("n_embd = 16", "n_embd = 32"))
    line = cli_error(capsys, "evaluate", str(other))
    assert "do not match this model" in line and "different model config" in line
    exp = tmp_path / "exp.toml"
    exp.write_text(config.read_text().replace(f'out_dir = "{text_run.parent}"', f'out_dir = "{tmp_path}"'))
    line = cli_error(capsys, str(exp), "--name=other", "--resume")
    assert "cannot resume: the experiment differs from the saved run: model.n_embd: saved 16, now 32;" in line
    assert "train a new run under another --name" in line and "--overwrite" not in line  # it would delete the run


def test_existing_run_folder_and_failing_imports_are_one_line(text_run, tmp_path, capsys):
    exp = tmp_path / "exp.toml"
    exp.write_text((text_run / "config.toml").read_text())
    (tmp_path / "broken_plugin.py").write_text("import not_a_module_anywhere\n")
    sys.path.insert(0, str(tmp_path))
    try:
        line = cli_error(capsys, str(exp), "--imports=['broken_plugin']", "--overwrite")
    finally:
        sys.path.remove(str(tmp_path))
    assert "imports: cannot import 'broken_plugin': No module named 'not_a_module_anywhere'" in line


def test_ctrl_c_before_training_is_one_line(tmp_path, shapes, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "train", interrupted)
    exp = tmp_path / "e.toml"
    exp.write_text(CNN.format(out=tmp_path / "runs", data=shapes))
    with pytest.raises(SystemExit) as exited:
        cli.main([str(exp)])
    assert exited.value.code == cli.EXIT_INTERRUPTED
    assert capsys.readouterr().err == "interrupted\n"


# -- 5. safety -------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "__import__('os').system('touch PWNED')", "exec('open(\"PWNED\", \"w\")')", "[open('PWNED', 'w')]",
    "{'a': __import__('os')}", "lambda: 1",
])
def test_override_values_are_never_evaluated(text, tmp_path, monkeypatch, shapes):
    from craft.config import ConfigError, parse_override

    monkeypatch.chdir(tmp_path)
    value = parse_override(text)
    assert value == text  # not a literal: kept as the text itself
    base = CNN.format(out=tmp_path / "runs", data=shapes)
    assert loads(base, {"name": value}).name == text
    with pytest.raises(ConfigError, match="optim.lr: expected float"):
        loads(base, {"optim.lr": value})
    assert not (tmp_path / "PWNED").exists()


# -- 2 (cont.). kills: the CLI in a subprocess, SIGKILLed -------------------

KILL_OVERRIDES = ["--train.steps=24", "--train.checkpoint_every=1", "--train.keep_checkpoints=2", "--train.log_every=1"]


ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def _start(exp: Path) -> forked_cli.Started:
    """``python -m craft EXP`` (``--resume`` once the run folder holds something), a process of its own
    forked from one that has imported craft: a real process to SIGKILL, without 6 s of start-up each."""
    return forked_cli.start([str(exp), *KILL_OVERRIDES] + (["--resume"] if _used(exp) else []), cwd=ROOT, env=ONE_THREAD)


def _used(exp: Path) -> bool:
    run_dir = exp.parent / "runs" / "cnn"
    return run_dir.exists() and any(run_dir.iterdir())


def _train_events(run_dir: Path) -> list[dict]:
    try:
        return [e for e in read_metrics(run_dir) if e["split"] == "train"]
    except (OSError, ValueError):  # being rewritten by a resume
        return []


def _every_checkpoint_loads(run_dir: Path) -> int:
    """All step files load (atomic writes: never a half-written one); returns how many there are."""
    files = checkpoint.step_files(run_dir / "checkpoints")
    for path in files:
        checkpoint.load(path)
    return len(files)


def _wait_for(event, process: forked_cli.Started, timeout: float = 300) -> None:
    """Poll until ``event()`` holds or ``process`` ends; the timeout only guards a hung run."""
    deadline = time.monotonic() + timeout
    while not event() and process.poll() is None:
        if time.monotonic() > deadline:
            process.kill()
            process.wait()
            pytest.fail(f"no event within {timeout} s: {process.err.read_text()}")
        time.sleep(0.01)


@pytest.fixture
def kill_experiment(tmp_path, shapes, one_thread) -> tuple[Path, Path]:
    """The experiment as a TOML file, and its straight run (in this process, one thread like the
    killed ones: another thread count may sum in another order) to compare with."""
    exp = tmp_path / "kill" / "cnn.toml"
    exp.parent.mkdir()
    exp.write_text(CNN.format(out=exp.parent / "runs", data=shapes))
    overrides = {k.removeprefix("--"): int(v) for k, v in (a.split("=") for a in KILL_OVERRIDES)}
    straight = run.train(loads(exp.read_text(), {**overrides, "name": "straight", "out_dir": str(tmp_path)}), echo=quiet)
    return exp, straight


# Dies in the middle of its 3rd checkpoint write: half the bytes on disk, then SIGKILL.
_DIE_MID_WRITE = """
import os, signal, sys, torch, craft.checkpoint as c
real, calls = torch.save, [0]
def save(obj, f):
    calls[0] += 1
    if calls[0] == 3:
        import io; buf = io.BytesIO(); real(obj, buf); f.write(buf.getvalue()[: len(buf.getvalue()) // 2]); f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    real(obj, f)
c.torch.save = save
sys.argv = ["craft", *sys.argv[1:]]
from craft.cli import main; main()
"""


@pytest.mark.slow
def test_sigkill_during_a_checkpoint_write_loses_nothing(kill_experiment):
    exp, straight = kill_experiment
    run_dir = exp.parent / "runs" / "cnn"
    process = subprocess.run(
        [sys.executable, "-c", _DIE_MID_WRITE, str(exp), *KILL_OVERRIDES],
        check=False, cwd=ROOT, capture_output=True, text=True, env=ONE_THREAD,
    )
    assert process.returncode == -signal.SIGKILL, process.stderr
    assert list((run_dir / "checkpoints").glob(".step_00000003.pt.*.tmp")), "the write was cut off"
    assert [p.name for p in checkpoint.step_files(run_dir / "checkpoints")] == ["step_00000001.pt", "step_00000002.pt"]
    assert _every_checkpoint_loads(run_dir) == 2
    finished = _start(exp)
    assert finished.wait(timeout=300) == 0, finished.err.read_text()
    assert not list((run_dir / "checkpoints").glob(".*.tmp")), "the dead write's temporary file is cleaned up"
    assert_same_run(straight, run_dir)


@pytest.mark.slow
def test_sigkill_at_random_moments_always_leaves_a_loadable_checkpoint(kill_experiment):
    exp, straight = kill_experiment
    run_dir = exp.parent / "runs" / "cnn"
    rng = random.Random(0)
    kills = 0
    for round in range(6):
        process = _start(exp)
        if round == 0:  # during start-up: once the run folder exists, before its first checkpoint
            _wait_for(lambda: (run_dir / "config.toml").exists(), process)
        else:  # mid-training: after 1-3 more steps, at a random moment of the next ones (writes included)
            target = len(_train_events(run_dir)) + rng.randint(1, 3)
            _wait_for(lambda: len(_train_events(run_dir)) >= target, process)
            time.sleep(rng.uniform(0.0, 0.1))  # jitter after the event: where in the step the kill lands
        if process.poll() is not None:
            break
        process.kill()
        process.wait()
        kills += 1
        _every_checkpoint_loads(run_dir)
    assert kills >= 4
    finished = _start(exp)
    assert finished.wait(timeout=300) == 0, finished.err.read_text()
    assert_same_run(straight, run_dir)
    steps = [e["step"] for e in read_metrics(run_dir) if e["split"] == "train"]
    assert steps == list(range(1, 25))  # every step logged once, none lost or doubled
