"""docs/extending.md, followed as a new user would.

The guide's code blocks are the example files in ``examples/custom/``, and
every command it shows runs here, in a copy of that folder, shortened with a
few overrides (few steps, no compilation). Each example must train (its
logged loss goes down), evaluate and, for the language model, generate. A
mismatched component gets a one-line error that names it. At the end:
docs/architecture.md's layer table holds every module and every import.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import attrs
import forked_cli
import pytest
import torch
from torch import nn

from craft.config import loads
from craft.data import DATASETS
from craft.data.batching import EvalBatches, TrainBatches
from craft.models import MODELS
from craft.run import RunError, train

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "custom"
GUIDE = (ROOT / "docs" / "extending.md").read_text(encoding="utf-8")
FENCES = re.findall(r"```(\w*)\n(.*?)```", GUIDE, flags=re.S)
INCLUDES = re.findall(r"<!-- file: (\S+) -->\n```\w+\n(.*?)```", GUIDE, flags=re.S)
COMMANDS = [line for lang, body in FENCES if lang == "sh" for line in body.splitlines() if line.strip()]
ERRORS = [line.removeprefix("error: ") for _, body in FENCES for line in body.splitlines() if line.startswith("error: ")]
SHORT = ["--train.steps=30", "--train.eval_every=30", "--train.log_every=5", "--train.compile=false"]


def test_the_guide_shows_every_example_file_verbatim():
    shown = dict(INCLUDES)
    files = {f"examples/custom/{p.name}" for p in EXAMPLES.iterdir() if p.suffix in (".py", ".toml")}
    assert set(shown) == files
    for path, code in shown.items():
        assert code == (ROOT / path).read_text(encoding="utf-8"), f"docs/extending.md's copy of {path} is out of date"
    code_blocks = [body for lang, body in FENCES if lang in ("python", "toml")]
    assert len(code_blocks) == len(INCLUDES), "every python/toml block of the guide must be an example file"


def test_every_command_of_the_guide_is_run_here():
    assert COMMANDS[0] == "cd examples/custom"  # the `project` fixture's copy
    assert set(COMMANDS[1:]) == set(RUN)


# -- the examples, run as the guide says -----------------------------------------

RUN = {
    "python make_images.py data/shapes": [],
    "python -m craft cnn.toml": SHORT,
    "python -m craft evaluate runs/shapes_net": [],
    "python my_step.py cnn.toml": SHORT,
    "python -m craft lstm.toml": SHORT,
    "python -m craft evaluate runs/tied_lstm": [],
    'python -m craft generate runs/tied_lstm --prompt="the "': ["--max_new_tokens=40"],
}
"""Each command of the guide and what the test appends to keep it short."""


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A copy of examples/custom, as a user's folder."""
    folder = tmp_path_factory.mktemp("extending") / "custom"
    shutil.copytree(EXAMPLES, folder, ignore=shutil.ignore_patterns("runs", "data", "__pycache__"))
    return folder


def run(command: str, cwd: Path, *, expect: int = 0, extra: list[str] | None = None) -> subprocess.CompletedProcess:
    """``command`` (a command of the guide) in ``cwd``, with this interpreter."""
    args = shlex.split(command)
    args = [sys.executable if a == "python" else a for a in args] + (RUN.get(command, []) if extra is None else extra)
    # Tiny models on a shared 2-core machine: one thread avoids stalls in parallel regions.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CRAFT_DEBUG": ""}
    if args[1:3] == ["-m", "craft"]:  # forked from a process that has imported craft: no 6 s start-up each
        result = forked_cli.run(args[3:], cwd=cwd, env=env, timeout=300)
    else:
        result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == expect, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


def train_losses(run_dir: Path) -> list[float]:
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [e["metrics"]["loss"] for e in events if e["split"] == "train"]


def metrics_of(line: str) -> dict[str, float]:
    """``"step 30  loss 0.45  accuracy 1.0"`` -> ``{"step": 30.0, "loss": 0.45, "accuracy": 1.0}``."""
    words = line.split()
    return {k: float(v) for k, v in zip(words[::2], words[1::2])}


@pytest.fixture(scope="module")
def images(project) -> Path:
    run("python make_images.py data/shapes", project)
    files = sorted((project / "data" / "shapes").glob("*.jpg"))
    assert {f.name.partition("_")[0] for f in files} == {"circle", "square", "triangle"}
    return project


def test_custom_cnn_dataset_and_task_train_and_evaluate(images):
    run("python -m craft cnn.toml", images)
    losses = train_losses(images / "runs" / "shapes_net")
    assert len(losses) == 6 and losses[-1] < losses[0]
    means = metrics_of(run("python -m craft evaluate runs/shapes_net", images).stdout)
    assert means["step"] == 30
    assert means["error"] == pytest.approx(1 - means["accuracy"])  # the custom task's summarize
    assert means["accuracy"] > 1 / 3  # better than chance on the held-out files


def test_custom_step_trains_in_its_own_loop(images):
    out = run("python my_step.py cnn.toml", images).stdout.splitlines()
    losses = [float(line.split()[-1]) for line in out if line.startswith("step ")]
    assert len(losses) == 6 and losses[-1] < losses[0]
    evaluated = {line.split(":")[0]: metrics_of(line.split(":")[1]) for line in out if line.startswith("val ")}
    assert set(evaluated) == {"val last", "val ema"}
    assert all(m["accuracy"] > 1 / 3 for m in evaluated.values())  # both beat chance (3 classes)


def test_custom_language_model_and_text_dataset_train_evaluate_and_generate(project):
    run("python -m craft lstm.toml", project)
    run_dir = project / "runs" / "tied_lstm"
    losses = train_losses(run_dir)
    assert losses[-1] < losses[0] - 0.5  # from ~ln(vocab) towards character statistics
    assert "vocab_size = " in (run_dir / "config.toml").read_text()  # filled in from the data
    means = metrics_of(run("python -m craft evaluate runs/tied_lstm", project).stdout)
    assert means["perplexity"] < len(json.loads((run_dir / "tokenizer.json").read_text())["chars"])
    text = run('python -m craft generate runs/tied_lstm --prompt="the "', project).stdout
    assert len(text.rstrip("\n")) > 0
    chars = set(json.loads((run_dir / "tokenizer.json").read_text())["chars"])
    assert set(text) - {"\n"} <= chars  # decoded with the dataset's tokenizer


def test_a_dataset_without_the_tasks_keys_is_named_on_one_line(project):
    """The guide's first error: lstm.toml with its [task] section left out."""
    config = (project / "lstm.toml").read_text()
    section = '[task]\nkind = "language_model"\n'
    assert section in config
    (project / "no_task.toml").write_text(config.replace(section, ""))
    result = run("python -m craft no_task.toml", project, expect=1, extra=["--name=no_task"])
    first = result.stderr.splitlines()[0]
    assert first.removeprefix("error: ") in ERRORS
    assert not (project / "runs" / "no_task").exists()  # checked before the run folder is made


# -- mismatched components, in this process ----------------------------------------


@attrs.frozen
class RandomImages:
    """16 random 32x32 images of 3 classes under ``keys``, in batches of 8; or tuples."""

    keys: list[str] = attrs.Factory(lambda: ["image", "label"])
    tuples: bool = False

    def build(self, split: str, *, seed: int, rank: int = 0, world_size: int = 1):
        generator = torch.Generator().manual_seed(0)
        images, labels = torch.randn(16, 3, 32, 32, generator=generator), torch.randint(0, 3, (16,), generator=generator)
        if self.tuples:
            return [(images[:8], labels[:8])]

        def load(indices):
            return {self.keys[0]: images[indices], self.keys[1]: labels[indices]}

        common = dict(batch_size=8, classes=["a", "b", "c"], rank=rank, world_size=world_size)
        if split == "train":
            return TrainBatches(16, load, seed=seed, **common)
        return EvalBatches(16, load, **common)


@attrs.frozen
class ConvHead:
    """A CNN that ends in a convolution: logits (B, 3, 8, 8), not (B, 3)."""

    def build(self) -> nn.Module:
        return nn.Conv2d(3, 3, kernel_size=4, stride=4)


@attrs.frozen
class For64px:
    def build(self) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * 64 * 64, 3))


@pytest.fixture(scope="module", autouse=True)
def mismatched_components():
    added = [(DATASETS, "random_images", RandomImages), (MODELS, "conv_head", ConvHead), (MODELS, "for_64px", For64px)]
    for table, name, entry in added:
        table.register(name)(entry)
    yield
    for table, name, _ in added:
        table._entries.pop(name, None)


def start(tmp_path: Path, model: str, **data) -> str:
    """The one-line error of training ``model`` on random_images; no run folder is made."""
    options = "".join(f"{k} = {json.dumps(v)}\n" for k, v in data.items())
    exp = loads(
        f'name = "mismatch"\nout_dir = "{tmp_path.as_posix()}"\n'
        f'[model]\nkind = "{model}"\n[data]\nkind = "random_images"\n{options}[train]\ncompile = false\n'
    )
    with pytest.raises(RunError) as error:
        train(exp, echo=lambda *a: None)
    assert not (tmp_path / "mismatch").exists()
    message = str(error.value)
    assert "\n" not in message
    return message


def test_a_model_with_the_wrong_output_shape_is_named(tmp_path):
    message = start(tmp_path, "conv_head")
    assert message in ERRORS  # the guide's second error, word for word


def test_a_dataset_with_other_keys_is_named_with_the_missing_key(tmp_path):
    message = start(tmp_path, "conv_head", keys=["x", "y"])
    assert message.startswith("data.kind = 'random_images' yields batches with keys ['x', 'y'], ")
    assert "task.kind = 'classification' reads 'image'" in message


def test_a_dataset_missing_only_the_target_key_is_named(tmp_path):
    message = start(tmp_path, "conv_head", keys=["image", "target"])
    assert "yields batches with keys ['image', 'target'], but task.kind = 'classification' reads 'label'" in message


def test_a_model_that_fails_on_the_batch_is_named_with_the_shapes(tmp_path):
    message = start(tmp_path, "for_64px")
    assert message.startswith(
        "model.kind = 'for_64px' failed on the first batch of data.kind = 'random_images' (image (8, 3, 32, 32), label (8,)): "
    )


def test_batches_that_are_not_dicts_are_named(tmp_path):
    message = start(tmp_path, "conv_head", tuples=True)
    assert message == "data.kind = 'random_images' yields tuple batches; a batch must be a dict of tensors"


# -- docs/architecture.md --------------------------------------------------------

ARCHITECTURE = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")


def _layers() -> dict[str, tuple[list[str], set[str]]]:
    """The page's table: layer -> (module patterns, layers it may import)."""
    layers = {}
    for row in re.findall(r"^\| (\w+) \| (`craft.*?) \|(.*)\|$", ARCHITECTURE, flags=re.M):
        name, modules, allowed = row
        layers[name] = (re.findall(r"`([\w.*]+)`", modules), {a.strip() for a in allowed.split(",") if a.strip()})
    return layers


def _modules() -> dict[str, Path]:
    """Every module of the craft package, by dotted name."""
    found = {}
    for path in sorted((ROOT / "craft").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _layer_of(module: str, layers) -> str | None:
    for name, (patterns, _) in layers.items():
        for p in patterns:
            if module == p or (p.endswith(".*") and (module == p[:-2] or module.startswith(p[:-1]))):
                return name
    return None


def _craft_imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The craft modules ``path`` imports, lazily or not (``from craft import run`` is ``craft.run``)."""
    import ast

    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "craft"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "craft":
            out |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module for a in node.names}
    return out


def test_the_architecture_page_lists_every_module_in_one_layer():
    layers = _layers()
    assert list(layers) == ["foundations", "optim", "models", "tasks", "step", "data", "config", "run", "cli"]
    unplaced = [m for m in _modules() if _layer_of(m, layers) is None]
    assert not unplaced, f"add {unplaced} to a layer of docs/architecture.md"


FACADE = {"craft": {"craft.trained"}}
"""The package root's one lazy entry point above its layer: ``craft.load_model`` (see docs/architecture.md)."""


def test_every_import_follows_the_architecture_pages_layers():
    layers, modules = _layers(), _modules()
    wrong = []
    for module, path in modules.items():
        layer = _layer_of(module, layers)
        allowed = layers[layer][1] | {layer}
        for imported in sorted(_craft_imports(path, modules) - FACADE.get(module, set())):
            if _layer_of(imported, layers) not in allowed:
                wrong.append(f"{module} ({layer}) imports {imported} ({_layer_of(imported, layers)})")
    assert not wrong, "imports against docs/architecture.md's layers:\n" + "\n".join(wrong)


def test_the_names_the_architecture_page_uses_exist():
    import importlib

    names = set(re.findall(r"\bcraft(?:\.\w+)+", ARCHITECTURE))
    assert len(names) > 15
    for name in sorted(names):
        parts = name.split(".")
        for cut in range(len(parts), 0, -1):  # the longest importable prefix, then attributes
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
                break
            except ModuleNotFoundError:
                continue
        for attr in parts[cut:]:
            assert hasattr(obj, attr), f"docs/architecture.md names {name}, which does not exist"
            obj = getattr(obj, attr)
