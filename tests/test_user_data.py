"""A user's own dataset that breaks the data contract of docs/extending.md: a train iterator that ends,
a val split that can be read only once. Each is one line naming the dataset, and no step is lost."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
import torch

from craft.config import Sweep, loads
from craft.data import DATASETS
from craft.data.batching import EvalBatches, TrainBatches
from craft.run import RunError, train


@attrs.frozen
class FewBatches:
    """32 random 8x8 images of 2 classes in batches of 4; the train split ends after ``train_batches``
    (0: never), the val split is a list, or a generator with ``val = "generator"``."""

    train_batches: int = 0
    val: str = "list"
    label_dtype: str = "int64"

    def build(self, split: str, *, seed: int, rank: int = 0, world_size: int = 1):
        generator = torch.Generator().manual_seed(0)
        images = torch.randn(32, 3, 8, 8, generator=generator)
        labels = (torch.arange(32) % 2).to(getattr(torch, self.label_dtype))

        def load(indices):
            return {"image": images[indices], "label": labels[indices]}

        common = dict(batch_size=4, classes=["a", "b"], rank=rank, world_size=world_size)
        if split == "train":
            batches = TrainBatches(32, load, seed=seed, **common)
            return Ending(batches, self.train_batches) if self.train_batches else batches
        batches = list(EvalBatches(32, load, **common))
        return (b for b in batches) if self.val == "generator" else batches


class Ending:
    """``batches`` that raise StopIteration after ``count`` batches, with their position."""

    def __init__(self, batches: TrainBatches, count: int) -> None:
        self.batches, self.count, self.drawn, self.classes, self.num_classes = batches, count, 0, ["a", "b"], 2

    def __iter__(self):
        return self

    def __next__(self):
        if self.drawn >= self.count:
            raise StopIteration
        self.drawn += 1
        return next(self.batches)

    def state_dict(self):
        return {"drawn": self.drawn, **self.batches.state_dict()}

    def load_state_dict(self, state) -> None:
        self.drawn = state["drawn"]
        self.batches.load_state_dict({k: v for k, v in state.items() if k != "drawn"})


@pytest.fixture(scope="module", autouse=True)
def few_batches():
    DATASETS.register("few_batches")(FewBatches)
    yield
    DATASETS._entries.pop("few_batches", None)


def experiment(tmp_path: Path, steps: int, **data) -> object:
    options = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in data.items())
    return loads(
        f'name = "few"\nout_dir = "{tmp_path.as_posix()}"\n[model]\nkind = "cnn"\n'
        f'[data]\nkind = "few_batches"\n{options}[optim]\nkind = "sgd"\nlr = 0.01\n'
        f"[train]\nsteps = {steps}\neval_every = 4\nlog_every = 2\ncompile = false\n"
    )


def test_a_train_iterator_that_ends_is_one_line_and_its_last_step_is_saved(tmp_path):
    with pytest.raises(RunError) as error:
        train(experiment(tmp_path, 10, train_batches=6), echo=lambda *a: None)
    message = str(error.value)
    assert "\n" not in message and "generator raised StopIteration" not in message
    assert message.startswith("data.kind = 'few_batches': the train iterator ended (StopIteration) after step 6; ")
    assert "a train split yields batches without end" in message
    assert (tmp_path / "few" / "checkpoints" / "step_00000006.pt").exists()  # the eval at 4 saved 4; 5 and 6 not lost
    assert message.endswith(f"resume with: craft train {tmp_path / 'few'} --resume")


def test_a_sweep_whose_train_iterator_ends_says_so_too(tmp_path):
    exp = experiment(tmp_path, 10, train_batches=5)
    with pytest.raises(RunError, match=r"the train iterator ended \(StopIteration\) after step 5; "):
        train(attrs.evolve(exp, sweep=Sweep({"optim.lr": [0.01, 0.02]})), echo=lambda *a: None)
    assert (tmp_path / "few" / "checkpoints" / "step_00000005.pt").exists()


def test_a_val_split_that_reads_only_once_is_refused_before_the_run_starts(tmp_path):
    """The first-batch check took its first batch, the first evaluation the rest (silently fewer batches),
    and the second evaluation none ('the validation split is empty')."""
    with pytest.raises(RunError) as error:
        train(experiment(tmp_path, 10, val="generator"), echo=lambda *a: None)
    assert str(error.value) == (
        "data.kind = 'few_batches' gives a val split that can be read only once (generator); every evaluation "
        "reads it again: return a list of batches, or an object whose __iter__ starts a new pass"
    )
    assert not (tmp_path / "few").exists()


@pytest.mark.parametrize("dtype", ["float32", "int32"])
def test_labels_of_a_dtype_the_task_cannot_score_are_one_line_with_the_dtypes(tmp_path, dtype):
    """torch's RuntimeError from cross_entropy was a raw traceback (the first-batch check caught only
    ValueError, TypeError, AttributeError and IndexError from the task)."""
    with pytest.raises(RunError) as error:
        train(experiment(tmp_path, 10, label_dtype=dtype), echo=lambda *a: None)
    assert str(error.value) == (
        f"task.kind = 'classification' failed on the first batch of data.kind = 'few_batches' (image float32 "
        f"(4, 3, 8, 8), label {dtype} (4,)) and the outputs of model.kind = 'cnn' (float32 (4, 2)): expected target "
        f"dtype to be Long or Byte, but got {'Float' if dtype == 'float32' else 'Int'}; check the dtypes and shapes "
        f"the task expects"
    )
    assert not (tmp_path / "few").exists()
