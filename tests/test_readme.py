"""The README's examples run exactly as written, each in a fresh interpreter (the craft commands they
follow are forked from one that has imported craft: ``forked_cli``)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import forked_cli
import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
PYTHON = re.findall(r"```python\n(.*?)```", README, flags=re.S)
TOML = re.findall(r"```toml\n(.*?)```", README, flags=re.S)
EXTENSION = next(block for block in PYTHON if "MODELS.register" in block)
EXTENSION_TOML = next(block for block in TOML if "mlp_example" in block)


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=cwd)


@pytest.mark.slow  # the API example compiles its step
@pytest.mark.parametrize("code", [b for b in PYTHON if b is not EXTENSION], ids=lambda code: code.split("\n")[0])
def test_readme_python_block_runs(code, tmp_path):
    if "runs/gpt_char" in code:  # the block follows `python -m craft experiments/gpt_char.toml`: a short one
        trained = forked_cli.run(
            [str(ROOT / "experiments" / "gpt_char.toml"), f"--out_dir={tmp_path / 'runs'}",
             "--train.steps=4", "--train.eval_every=4", "--train.eval_batches=2", "--schedule.warmup_steps=1",
             "--train.compile=false", "--train.sample.max_new_tokens=4"],
            timeout=300,
        )
        assert trained.returncode == 0, trained.stderr
    result = _python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    if "print(" in code:
        assert result.stdout.strip()
    if "runs/gpt_char" in code:
        _check_generated_text(result.stdout, tmp_path / "runs" / "gpt_char")
    if "train_step(state, batch)" in code:
        _check_one_step_metrics(result.stdout)


def _check_generated_text(stdout: str, run_dir: Path) -> None:
    """The 200 characters generated after the prompt (which is not repeated), each from the run's vocabulary."""
    from craft.data.text import CharTokenizer

    text = stdout[: -len("\n")]  # print's newline
    assert len(text) == 200, repr(text)
    vocabulary = set(CharTokenizer.load(run_dir / "tokenizer.json").chars)
    assert set(text) <= vocabulary, set(text) - vocabulary


def _check_one_step_metrics(stdout: str) -> None:
    """`{loss, accuracy, grad_norm} eval_accuracy` of one step on 32 random images of 10 classes."""
    import ast
    import math

    printed, eval_accuracy = stdout.strip().rsplit(" ", 1)
    metrics, eval_accuracy = ast.literal_eval(printed), float(eval_accuracy)
    assert set(metrics) == {"loss", "accuracy", "grad_norm"}
    assert all(math.isfinite(v) for v in [*metrics.values(), eval_accuracy])
    # accuracies are counts of the 32 examples (the printed one rounded to 4 places)
    assert all(abs(a * 32 - round(a * 32)) < 0.01 and 0 <= a <= 1 for a in (metrics["accuracy"], eval_accuracy))
    # the step's loss is the untrained model's mean cross-entropy over 10 classes, near log(10);
    # one step (at lr 0: the warmup's first) cannot lower it, so "below log(10)" is not asked
    assert abs(metrics["loss"] - math.log(10)) < 0.5, metrics
    assert metrics["grad_norm"] > 0


def test_readme_extension_example_registers_a_model(tmp_path):
    """The model from the README, in the user's module, named under `imports`."""
    (tmp_path / "my_models.py").write_text(EXTENSION)
    (tmp_path / "exp.toml").write_text('name = "readme"\n' + EXTENSION_TOML + '\n[data]\nkind = "shapes"\n')
    result = _python(
        "from craft.config import build, load\n"
        "exp = load('exp.toml')\n"
        "print(exp.model.kind, exp.model.config.hidden, type(build(exp.model)).__name__)",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["mlp_example", "512", "Sequential"]


def test_readme_lists_every_registered_kind():
    from craft.config import registries

    rows = {row.split("|")[2].strip(" `"): row for row in README.splitlines() if row.startswith("| `[")}
    tables = {"models": "craft.models.MODELS", "datasets": "craft.data.DATASETS", "tasks": "craft.tasks.TASKS",
              "optimizers": "craft.optim.OPTIMIZERS", "schedules": "craft.optim.SCHEDULES"}
    for name, table in registries().items():
        missing = [kind for kind in table if f"`{kind}`" not in rows[tables[name]]]
        assert not missing, f"README's [{name}] row misses {missing}"


def test_readme_error_examples_are_what_craft_prints():
    block = re.search(r"```\n(error: .*?)```", README, flags=re.S).group(1).strip().splitlines()
    flags = {"optim.lrr": "--optim.lrr=1", "train.steps": "--train.steps=0.5", "model.kind": "--model.kind=cnnn"}
    for line in block:
        flag = flags[line.removeprefix("error: ").split(":")[0]]
        result = forked_cli.run([str(ROOT / "experiments" / "custom_cnn.toml"), flag, "--print_config"], timeout=300)
        assert result.returncode == 2 and result.stderr.strip() == line


def test_readme_groups_and_ema_toml_is_a_valid_experiment():
    from craft.config import loads

    block = next(b for b in TOML if "optim.groups" in b)
    exp = loads('name = "x"\n[model]\nkind = "cnn"\n[data]\nkind = "shapes"\n' + block)
    assert [g.match for g in exp.optim.groups] == ["fc.*", "conv*"] and exp.train.ema_decay == 0.999


def test_just_run_is_the_readme_main_job():
    recipe = (ROOT / "justfile").read_text().split("run *ARGS:")[1].splitlines()[1].strip()
    assert recipe.replace(" {{ARGS}}", "") in README.split("```sh")[1].split("```")[0]

