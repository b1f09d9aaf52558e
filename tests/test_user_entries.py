"""A user's registry entry written wrong: no ``build``, a ``build`` that does not take the run's arguments, or one
that returns the wrong thing. Each is one line naming the section and the fix, before anything trains."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
import torch
from torch import nn

from craft.config import ConfigError, loads
from craft.data import DATASETS
from craft.models import MODELS
from craft.optim import OPTIMIZERS
from craft.run import RunError, train
from craft.tasks import TASKS, Task, classification_loss, image_inputs


@attrs.frozen
class NoBuild:
    width: int = 3


@attrs.frozen
class BuildWants:
    def build(self, num_classes):
        return nn.Linear(8, num_classes)


@attrs.frozen
class DataWithoutSeed:
    def build(self, split):
        return []


@attrs.frozen
class ReturnsNothing:
    def build(self):
        pass


@attrs.frozen
class TaskAsFunction:
    def build(self):
        return lambda outputs, batch: outputs.mean()


def a_dict(learning_rate, *, momentum: float = 0.9):
    return {"lr": learning_rate}


def per_class_counts(logits, batch):
    """Cross entropy, and a vector metric: predictions per class, shape (C,)."""
    loss, _ = classification_loss(logits, batch)
    return loss, {"per_class": torch.bincount(logits.argmax(-1), minlength=logits.shape[-1]).float()}


@attrs.frozen
class VectorMetric:
    def build(self):
        return Task(image_inputs, per_class_counts)


@attrs.frozen
class SummaryNone:
    def build(self):
        return Task(image_inputs, classification_loss, summarize=lambda means: None)


ENTRIES = [(MODELS, "no_build", NoBuild), (MODELS, "build_wants", BuildWants), (DATASETS, "no_seed", DataWithoutSeed),
           (MODELS, "returns_nothing", ReturnsNothing), (TASKS, "task_as_function", TaskAsFunction),
           (OPTIMIZERS, "a_dict", a_dict), (TASKS, "vector_metric", VectorMetric), (TASKS, "summary_none", SummaryNone)]


@pytest.fixture(scope="module", autouse=True)
def entries():
    for table, name, entry in ENTRIES:
        table.register(name)(entry)
    yield
    for table, name, _ in ENTRIES:
        table._entries.pop(name, None)


def experiment(tmp_path: Path, **kinds: str) -> str:
    kinds = {"model": "cnn", "data": "shapes", **kinds}
    sections = "".join(f'[{section}]\nkind = "{kind}"\n' for section, kind in kinds.items())
    return (f'name = "wrong"\nout_dir = "{tmp_path.as_posix()}"\n{sections}'
            "[train]\nsteps = 1\ncompile = false\n")


@pytest.mark.parametrize("kinds, message", [
    ({"model": "no_build"}, "model.kind: NoBuild has no build method; a [model] entry makes its object with build() "
                            "(docs/extending.md)"),
    ({"model": "build_wants"}, "model.kind: BuildWants.build(num_classes) cannot be called as a run calls it, build(): "
                               "missing a required argument: 'num_classes'"),
    ({"data": "no_seed"}, "data.kind: DataWithoutSeed.build(split) cannot be called as a run calls it, "
                          "build(split, *, seed, rank=0, world_size=1): got an unexpected keyword argument 'seed'"),
], ids=["no build", "model build with arguments", "data build without seed"])
def test_a_build_a_run_cannot_call_is_a_config_error(tmp_path, kinds, message):
    """They were raw AttributeError / TypeError tracebacks from inside the run. Reading the config is
    fine (--print_config shows it); the run refuses it before it writes anything."""
    exp = loads(experiment(tmp_path, **kinds))
    with pytest.raises(ConfigError) as error:
        train(exp, echo=lambda *a: None)
    assert str(error.value) == message
    assert not (tmp_path / "wrong").exists()


@pytest.mark.parametrize("kinds, message", [
    ({"model": "returns_nothing"}, "model.kind = 'returns_nothing': build() returned NoneType, not an nn.Module; "
                                   "return one from build()"),
    ({"task": "task_as_function"}, "task.kind = 'task_as_function': build() returned function, not a "
                                   "craft.tasks.Task; return one from build()"),
    ({"optim": "a_dict"}, "optim.kind = 'a_dict': a_dict() returned dict, not a craft.optim.Transform (init, update); "
                          "return one from a_dict()"),
    ({"task": "vector_metric"}, "task.kind = 'vector_metric': loss_fn's metric 'per_class' must be a 0-d tensor (one "
                                "number for the batch), got shape (7,); log a vector as one metric per element "
                                "(per_class_0, per_class_1, ...)"),
    ({"task": "summary_none"}, "task.kind = 'summary_none': summarize(means) returned NoneType; return the dict of "
                               "means, with any figures derived from them added"),
], ids=["model", "task", "optimizer", "vector metric", "summarize"])
def test_a_build_that_returns_the_wrong_thing_is_one_line(tmp_path, kinds, message):
    """A vector metric was logged as one number without a word: its mean in train, another figure in val."""
    with pytest.raises(RunError) as error:
        train(loads(experiment(tmp_path, **kinds)), echo=lambda *a: None)
    assert str(error.value) == message
    assert not (tmp_path / "wrong").exists()


def test_a_module_under_imports_that_is_not_found_says_where_it_was_looked_for(tmp_path, monkeypatch):
    """`craft evaluate /elsewhere/runs/x` from another folder said only "No module named 'my_models'"."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as error:
        loads('imports = ["nowhere_to_be_found"]\n' + experiment(tmp_path))
    assert str(error.value) == (
        f"imports: cannot import 'nowhere_to_be_found': No module named 'nowhere_to_be_found'; modules under imports "
        f"are looked up in the current folder ({tmp_path}) and on PYTHONPATH: run craft from the folder that holds it, "
        f"or add that folder to PYTHONPATH"
    )


def test_a_module_under_imports_that_fails_names_its_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken_module_of_a_user.py").write_text("import torch\n\nx = undefined_name\n")
    with pytest.raises(ConfigError) as error:
        loads('imports = ["broken_module_of_a_user"]\n' + experiment(tmp_path))
    assert str(error.value) == (
        "imports: cannot import 'broken_module_of_a_user': name 'undefined_name' is not defined "
        f"({tmp_path / 'broken_module_of_a_user.py'}, line 3)"
    )
