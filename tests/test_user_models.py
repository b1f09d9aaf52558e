"""A user's own model with lazy layers (``nn.LazyLinear``, as the README's ``mlp_example``), or one whose outputs
the task cannot score, through everything a run folder offers: train, sweep, evaluate, load_model, export."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from craft import load_model, trained
from craft.config import loads
from craft.models import MODELS
from craft.optim import adamw
from craft.run import RunError, train
from craft.step import init_state


@attrs.frozen
class LazyMLP:
    """Flatten, LazyLinear(hidden), ReLU, Linear(num_classes): the first layer is shaped by the first batch."""

    num_classes: int | None = None
    hidden: int = 16
    pair: bool = False  # return (logits, features): outputs the classification task cannot score

    def build(self) -> nn.Module:
        body = nn.Sequential(nn.Flatten(), nn.LazyLinear(self.hidden), nn.ReLU(), nn.Linear(self.hidden, self.num_classes))
        return Pair(body) if self.pair else body


class Pair(nn.Module):
    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x):
        return self.body(x), x


@pytest.fixture(scope="module", autouse=True)
def lazy_mlp():
    MODELS.register("lazy_mlp")(LazyMLP)
    yield
    MODELS._entries.pop("lazy_mlp", None)


def experiment(tmp_path: Path, name: str, extra: str = "") -> object:
    return loads(
        f'name = "{name}"\nout_dir = "{tmp_path.as_posix()}"\n[model]\nkind = "lazy_mlp"\n'
        '[data]\nkind = "shapes"\nnum_train = 32\nnum_val = 16\nbatch_size = 8\nimage_size = 8\n'
        'classes = ["circle", "square"]\n[train]\nsteps = 3\neval_every = 3\ncompile = false\n' + extra
    )


def test_a_lazy_model_evaluates_loads_and_exports_from_its_run_folder(tmp_path):
    """Training shaped the layer on the first batch; the model built again to load the run had seen none
    (evaluate, load_model and export failed with torch's 'Attempted to use an uninitialized parameter')."""
    run_dir = train(experiment(tmp_path, "lazy"), echo=lambda *a: None)
    saved = torch.load(next((run_dir / "checkpoints").glob("step_*.pt")), weights_only=True)["state"]["params"]
    assert saved["1.weight"].shape == (16, 3 * 8 * 8)
    assert trained.evaluate(run_dir)["step"] == 3
    model = load_model(run_dir)
    assert torch.equal(model[1].weight, saved["1.weight"])
    logits = model(torch.zeros(2, 3, 8, 8))
    assert logits.shape == (2, 2)
    exported = load_file(str(trained.export(run_dir, tmp_path / "exported") / "model.safetensors"))
    assert torch.equal(exported["1.weight"], saved["1.weight"])


def test_a_sweep_of_a_lazy_model_shapes_each_member(tmp_path):
    run_dir = train(experiment(tmp_path, "lazy_sweep", '[sweep]\n"optim.lr" = [1e-3, 1e-2]\n'), echo=lambda *a: None)
    assert trained.evaluate(run_dir / "members" / "001")["step"] == 3


@pytest.mark.parametrize("sweep", ["", '[sweep]\n"optim.lr" = [1e-3, 1e-2]\n'], ids=["run", "sweep"])
def test_a_model_whose_outputs_the_task_cannot_score_is_one_line_in_a_sweep_too(tmp_path, sweep):
    """A sweep never tried its components on a batch: a raw TypeError from inside the vmapped step."""
    exp = experiment(tmp_path, "pair")
    exp = attrs.evolve(exp, model=attrs.evolve(exp.model, config=attrs.evolve(exp.model.config, pair=True)))
    if sweep:
        exp = attrs.evolve(exp, sweep=experiment(tmp_path, "pair", sweep).sweep)
    with pytest.raises(RunError) as error:
        train(exp, echo=lambda *a: None)
    assert str(error.value).startswith(
        "model.kind = 'lazy_mlp' returned outputs that task.kind = 'classification' cannot score (first batch of "
        "data.kind = 'shapes'): "
    )
    assert not (tmp_path / "pair").exists()


def test_init_state_of_an_unshaped_lazy_model_names_its_parameters_and_the_fix():
    model = LazyMLP(num_classes=2).build()
    with pytest.raises(ValueError) as error:
        init_state(model, adamw(1e-3))
    assert str(error.value).startswith("the model's '1.weight', '1.bias' are not initialized yet: a lazy module ")
    assert str(error.value).endswith("call the model once on a batch (model(batch['input'])) before init_state")
    model(torch.zeros(1, 3, 8, 8))
    assert init_state(model, adamw(1e-3)).params["1.weight"].shape == (16, 192)
