"""Reliability of the command line (issues 14 and 17): flags mean what they say, bad input is one line.

Every case runs the real CLI in a subprocess, as a user types it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY_TRAIN, run_cli, shapes_folder, tiny_cnn, tiny_gpt

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

CNN = tiny_cnn("""
[train]
steps = 4
eval_every = 2
log_every = 1
eval_batches = 1
compile = false
""")

def craft(*args: str, cwd: Path = ROOT, timeout: float = 300) -> subprocess.CompletedProcess:
    return run_cli(*args, cwd=cwd, env=ENV, timeout=timeout)


def one_error(result: subprocess.CompletedProcess, status: int = 2) -> str:
    """The single ``error:`` line of a failed command (no traceback), checking its exit status."""
    assert result.returncode == status, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


@pytest.fixture(scope="module")
def cnn_exp(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cnn")
    shapes = shapes_folder(root)
    exp = root / "cnn.toml"
    exp.write_text(CNN.format(out=root / "runs", data=shapes))
    return exp


@pytest.fixture(scope="module")
def cnn_run(cnn_exp) -> Path:
    result = craft(str(cnn_exp))
    assert result.returncode == 0, result.stderr
    return cnn_exp.parent / "runs" / "cnn"


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("text")
    exp = tiny_gpt(root, TINY_TRAIN, batch_size=4, text="the cat sat on the mat\n" * 40)
    result = craft(str(exp))
    assert result.returncode == 0, result.stderr
    return root / "runs" / "gpt"


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


# -- 1. run-control flags are strict booleans -------------------------------


@pytest.mark.parametrize("flag", ["--overwrite=false", "--resume=false", "--overwrite=False"])
def test_a_false_flag_neither_deletes_nor_resumes(flag, cnn_exp, cnn_run):
    before = _snapshot(cnn_run)
    result = craft(str(cnn_exp), flag)
    assert result.returncode == 0, result.stderr
    assert "holds an earlier run: this one is" in result.stdout  # a fresh folder of its own
    assert _snapshot(cnn_run) == before  # nothing deleted, nothing resumed


@pytest.mark.parametrize(
    "args, message",
    [
        (["--resume=1"], "--resume: expected true or false, got '1'"),
        (["--overwrite=yes"], "--overwrite: expected true or false, got 'yes'"),
        (["resume"], "unexpected argument 'resume'"),
        (["--resume", "false"], "unexpected argument 'false' (a true/false option is written --key=false)"),
        (["--=3"], "'--=3' is not an option; options are written --key=value"),
        (["-x"], "'-x' is not an option"),
        (["--train.steps"], "--train.steps needs a value"),
        (["--resume", "--resume"], "--resume is given twice"),
        (["--resume", "--overwrite"], "choose one of --resume (continue the run) and --overwrite (replace it)"),
    ],
)
def test_malformed_run_control_is_one_line_before_training(args, message, cnn_exp, tmp_path):
    line = one_error(craft(str(cnn_exp), f"--out_dir={tmp_path}", *args))
    assert message in line
    assert not list(tmp_path.iterdir())  # refused before a run folder was made


# -- 2. config values checked at load ----------------------------------------


@pytest.mark.parametrize(
    "override, message",
    [
        ("--train.device=banana", "train.device: must be 'auto', 'cpu', 'cuda' or 'cuda:N'"),
        ("--train.device=mps", "got 'mps'"),
        ("--train.device=meta", "got 'meta'"),
        ("--optim.lr=nan", "optim.lr: must be a finite number, got nan"),
        ("--optim.lr=inf", "optim.lr: must be a finite number, got inf"),
        ("--optim.weight_decay=-inf", "optim.weight_decay: must be a finite number"),
        ("--seed=18446744073709551616", "seed: must fit in 64 bits"),
        ("--name=..", "name: must name a folder, not '..'"),
        ("--name=.", "name: must name a folder, not '.'"),
        ("--name=a/b", "name: must be one folder name"),
        ("--name=/tmp/x", "name: must be one folder name"),
        ("--name=", "name: must not be empty"),
        ("--model.widths=[]", "model.widths: must be a non-empty list of positive channel counts"),
    ],
)
def test_bad_config_values_are_one_line_naming_the_key(override, message, cnn_exp, tmp_path):
    extra = ["--model.kind=resnet"] if "widths" in override else []
    line = one_error(craft(str(cnn_exp), f"--out_dir={tmp_path}", *extra, override))
    assert message in line, line
    assert not list(tmp_path.iterdir())


def test_a_kind_changed_on_the_command_line_leaves_out_the_files_keys_of_the_old_kind_in_one_line(cnn_exp, tmp_path):
    exp = tmp_path / "cosine.toml"
    exp.write_text(cnn_exp.read_text() + "[schedule]\nkind = 'warmup_cosine'\nwarmup_ratio = 0.1\n")
    result = craft(str(exp), "--schedule.kind=constant", "--print_config")
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "warning: schedule.kind = 'constant' replaces the file's 'warmup_cosine': left out schedule.warmup_ratio, "
        "which 'constant' does not take"
    ]
    assert "warmup_ratio" not in result.stdout


def test_a_text_key_takes_the_value_as_typed(cnn_exp, tmp_path):
    # --name=2024 is the name "2024", not a wrong-typed number: only the device is reported.
    line = one_error(craft(str(cnn_exp), "--name=2024", "--train.device=banana"))
    assert line.startswith("error: train.device:"), line


def test_bom_deep_nesting_and_odd_file_names(cnn_exp, tmp_path):
    bom = tmp_path / "bom.toml"
    bom.write_bytes(b"\xef\xbb\xbf" + cnn_exp.read_bytes())
    line = one_error(craft(str(bom), "--train.device=banana"))  # read past the BOM to the value check
    assert "train.device" in line
    deep = tmp_path / "deep.toml"
    deep.write_text("a = " + "[" * 100_000 + "]" * 100_000)
    assert "nested too deeply" in one_error(craft(str(deep)))
    odd = tmp_path / "new\nline.toml"
    line = one_error(craft(str(odd)))
    assert "'" in line and "cannot read config" in line  # the name quoted, on one line


# -- 3. tensorboard ----------------------------------------------------------


def test_tensorboard_without_the_package_is_one_line_naming_this_projects_extra(cnn_exp, tmp_path):
    hide = "import sys; sys.modules['tensorboard'] = None; from craft.cli import main; sys.argv[0] = 'craft'; main()"
    result = subprocess.run(
        [sys.executable, "-c", hide, str(cnn_exp), f"--out_dir={tmp_path}", "--train.tensorboard=true"],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env=ENV,
    )
    line = one_error(result)
    assert 'python -m pip install -e ".[tensorboard]"' in line and "craft[" not in line
    assert not list(tmp_path.iterdir())


def test_tensorboard_events_read_back(cnn_exp, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = craft(str(cnn_exp), f"--out_dir={tmp_path}", "--train.tensorboard=true")
    assert result.returncode == 0, result.stderr
    events = EventAccumulator(str(tmp_path / "cnn" / "tensorboard"))
    events.Reload()
    steps = [e.step for e in events.Scalars("train/loss")]
    assert steps == [1, 2, 3, 4] and "val/accuracy" in events.Tags()["scalars"]


# -- 4. generate ------------------------------------------------------------


def test_generate_prints_the_prompt_its_continuation_and_more_samples(text_run):
    result = craft("generate", str(text_run), "--prompt=the ", "--max_new_tokens=8", "--num_samples=2", "--seed=3")
    assert result.returncode == 0, result.stderr
    samples = result.stdout.split("\n\n")
    assert len(samples) == 2 and all(s.startswith("the ") for s in samples), result.stdout
    assert all(len(s.strip("\n")) == len("the ") + 8 for s in samples), result.stdout


def test_a_tiny_temperature_is_greedy(text_run):
    tiny = craft("generate", str(text_run), "--prompt=the ", "--max_new_tokens=8", "--temperature=1e-45")
    greedy = craft("generate", str(text_run), "--prompt=the ", "--max_new_tokens=8", "--temperature=0")
    assert tiny.returncode == 0, tiny.stderr
    assert tiny.stdout == greedy.stdout


def test_generate_streams_and_ctrl_c_keeps_the_text(text_run):
    proc = subprocess.Popen(
        [sys.executable, "-m", "craft", "generate", str(text_run), "--prompt=the ", "--max_new_tokens=1000000000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=ENV,
        # Ctrl-C as a terminal's user has it, even where these tests run as a background job (`pytest &`),
        # whose commands start with SIGINT ignored (and Python then leaves it ignored).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        first = proc.stdout.read(24)  # arrives while generation goes on
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        try:
            rest, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:  # say how the process held the signal: pending, blocked or ignored
            held = [line for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines() if line.startswith(("Sig", "Shd"))]
            pytest.fail(f"generate went on 60 s after SIGINT; its signal masks: {held}")
    finally:
        proc.kill()
    assert first.startswith(b"the ")
    assert proc.returncode == 130, err
    assert err.decode().strip() == "interrupted" and len(first + rest) > 24


# -- 5. metrics.jsonl ----------------------------------------------------------


def _damage(run_dir: Path, line: int) -> None:
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    lines[line] = '{"step": 3, "spl\n'
    path.write_text("".join(lines))


def test_a_damaged_last_metrics_line_is_skipped_by_plot_and_resume(cnn_exp, tmp_path):
    result = craft(str(cnn_exp), f"--out_dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "cnn"
    _damage(run_dir, -1)
    assert craft("plot", str(run_dir)).returncode == 0
    resumed = craft(str(cnn_exp), f"--out_dir={tmp_path}", "--resume", "--train.steps=6")
    assert resumed.returncode == 0, resumed.stderr
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert max(e["step"] for e in events) == 6


def test_a_damaged_metrics_line_before_the_last_is_refused_naming_it(cnn_run, tmp_path):
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(cnn_run, run_dir)
    _damage(run_dir, 1)
    line = one_error(craft("plot", str(run_dir)), status=1)
    assert "metrics.jsonl' line 2 is not a metrics event" in line


# -- 6. the command line ----------------------------------------------------------


@pytest.mark.parametrize("command", ["train", "evaluate", "generate", "plot", "prepare", "info"])
def test_every_command_has_its_own_help(command):
    result = craft(command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: craft {command}") and "functools" not in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["generate"], "craft generate: missing RUN_DIR; usage: craft generate RUN_DIR"),
        (["trian"], "unknown command 'trian' (did you mean 'train'?)"),
        (["info", "cnnn"], "nothing registered as 'cnnn' (did you mean 'cnn'?)"),
        (["exp.yaml"], "craft reads TOML experiments: 'exp.yaml' is not a .toml file"),
        (["train", "runs/nothere", "--resume"], "no run folder 'runs/nothere' to resume"),
        (["train", "docs"], "'docs' is a folder: add --resume to continue the run there, or give the experiment's .toml"),
        (["export", "runs/x"], "craft export: missing OUT"),
        (["generate", "runs/x", "--tempreature=0"], "(did you mean 'temperature'?)"),
        (["generate", "runs/x", "--cache=no"], "--cache: expected true or false, got 'no'"),
        (["generate", "runs/x", "--num_samples=0"], "--num_samples: must be >= 1"),
        (["generate", "runs/x", "--seed=18446744073709551616"], "--seed: must fit in 64 bits"),
        (["generate", "runs/x", "--stop="], "--stop: empty; give the text to end a sample before"),
        ([], "give a command"),
        (["prepare", "tokens", "README.md", "no_out", "--val_fraction=1.5"], "--val_fraction=1.5: must be between 0 and 1"),
    ],
)
def test_usage_mistakes_are_one_line(args, message):
    assert message in one_error(craft(*args))


def test_info_describes_one_entry():
    result = craft("info", "cnn")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        'cnn: in models; use it as [model] kind = "cnn"', "  num_classes: int | None = None", "  in_channels: int = 3"
    ]


def test_output_piped_into_a_reader_that_leaves_is_no_traceback():
    """`craft --help | head -1`: the pipe closes before craft writes; craft stops quietly."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "craft", "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=ENV
    )
    proc.stdout.close()  # the reader is gone before the first line
    _, err = proc.communicate(timeout=120)
    assert b"Traceback" not in err and b"BrokenPipeError" not in err, err.decode()
    assert proc.returncode == 1


def test_accum_steps_that_do_not_split_the_batch_are_a_config_error_before_the_run(tmp_path):
    exp = tiny_gpt(tmp_path, TINY_TRAIN + "accum_steps = 3\n", batch_size=8)
    line = one_error(craft(str(exp)))
    assert "train.accum_steps: 3 does not split data.batch_size = 8 into equal micro-batches" in line
    assert not (tmp_path / "runs").exists()  # no run folder left behind for a run that never started


def test_resume_on_text_with_another_vocabulary_is_refused(tmp_path):
    """The run's token ids would mean other characters: the corpus edited (or token files prepared
    again) between the run and its resume is one line, and the run's tokenizer.json is kept."""
    exp = tiny_gpt(tmp_path, TINY_TRAIN, batch_size=4, text="the cat sat on the mat\n" * 40)
    assert craft(str(exp)).returncode == 0
    saved = (tmp_path / "runs" / "gpt" / "tokenizer.json").read_bytes()
    (tmp_path / "corpus.txt").write_text("THE CAT SAT ON THE MAT\n" * 40, encoding="utf-8")  # as many characters
    line = one_error(craft(str(exp), "--resume", "--train.steps=6"), status=1)
    assert "cannot resume: the data's tokenizer differs from" in line
    assert (tmp_path / "runs" / "gpt" / "tokenizer.json").read_bytes() == saved
    # A new character: said as the same mistake, not "model.vocab_size = 12 but the data's tokenizer has 13 tokens;
    # remove model.vocab_size", whose fix then led to this line anyway.
    (tmp_path / "corpus.txt").write_text("the cat sat on the mat!\n" * 40, encoding="utf-8")
    line = one_error(craft(str(exp), "--resume", "--train.steps=6"), status=1)
    assert "cannot resume: the data's tokenizer differs from" in line
