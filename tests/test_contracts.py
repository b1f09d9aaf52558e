"""Mistakes of the Python API are one clear error, at the step that was handed them."""

from __future__ import annotations

import pytest
import torch
from conftest import MODELS, batch_for, cross_entropy

from craft.freezing import freeze
from craft.optim import sgd
from craft.step import init_state, make_eval_step, make_train_step


def _mlp() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))


def _batch() -> dict[str, torch.Tensor]:
    return {"input": torch.randn(6, 8), "target": torch.randint(0, 4, (6,))}


@pytest.mark.parametrize("compile", [False, True])
def test_a_state_made_before_a_layer_was_added_is_refused_not_trained_in_part(compile):
    """Without the check, ``functional_call`` fills the new layer from the module: it never trains."""
    model, tx = _mlp(), sgd(0.1)
    state = init_state(model, tx)
    model.append(torch.nn.Linear(4, 4))
    step = make_train_step(model, cross_entropy, tx, compile=compile)
    with pytest.raises(ValueError, match=r"the model has '3.bias', '3.weight', which the state lacks.*init_state"):
        step(state, _batch())


def test_a_state_with_names_the_model_lacks_is_refused_by_train_and_eval_steps():
    model, tx = _mlp(), sgd(0.1)
    state = init_state(model, tx)
    model.pop(2)
    with pytest.raises(ValueError, match=r"the state has '2.bias', '2.weight', which the model lacks"):
        make_train_step(model, cross_entropy, tx, compile=False)(state, _batch())
    with pytest.raises(ValueError, match="the state does not match the model"):
        make_eval_step(model, cross_entropy, compile=False)(state, _batch())


def test_a_state_changed_between_calls_is_checked_again():
    model, tx = _mlp(), sgd(0.1)
    step = make_train_step(model, cross_entropy, tx, compile=False)
    state, _ = step(init_state(model, tx), _batch())
    params = dict(state.params)
    params.pop("2.bias")
    with pytest.raises(ValueError, match=r"the model has '2.bias', which the state lacks"):
        step(state._replace(params=params), _batch())


def test_frozen_params_and_tied_weights_are_not_a_mismatch():
    model, tx = MODELS["mlp"](), sgd(0.1)
    state = init_state(model, tx)
    state = freeze(state, tx, list(state.params)[:2])
    make_train_step(model, cross_entropy, tx, compile=False)(state, batch_for("mlp"))
    tied = torch.nn.Sequential(torch.nn.Embedding(5, 4), torch.nn.Linear(4, 5, bias=False))  # GPT's wte and head
    tied[1].weight = tied[0].weight
    batch = {"input": torch.randint(0, 5, (3,)), "target": torch.randint(0, 5, (3,))}
    state, _ = make_train_step(tied, cross_entropy, tx, compile=False)(init_state(tied, tx), batch)
    assert list(state.params) == ["0.weight"]


@pytest.mark.parametrize("compile", [False, True])
def test_a_batch_without_an_input_key_names_its_keys_and_the_fix(compile):
    model, tx = _mlp(), sgd(0.1)
    step = make_train_step(model, lambda out, b: cross_entropy(out, {"target": b["y"]}), tx, compile=compile)
    batch = {"x": torch.randn(6, 8), "y": torch.randint(0, 4, (6,))}
    with pytest.raises(KeyError, match=r"the batch has no 'input' \(it has 'x', 'y'\).*inputs=lambda batch"):
        step(init_state(model, tx), batch)
    step = make_train_step(model, lambda out, b: cross_entropy(out, {"target": b["y"]}), tx, inputs=lambda b: (b["x"],))
    step(init_state(model, tx), batch)  # the fix the message names


def test_a_loss_given_as_a_python_number_says_to_return_the_tensor():
    model, tx = _mlp(), sgd(0.1)
    step = make_train_step(model, lambda out, b: torch.nn.functional.cross_entropy(out, b["target"]).item(), tx, compile=False)
    with pytest.raises(ValueError, match=r"got float \(a Python number has no gradient: return the tensor"):
        step(init_state(model, tx), _batch())
    step = make_train_step(model, lambda out, b: (cross_entropy(out, b)[0], [1.0]), tx, compile=False)
    with pytest.raises(ValueError, match="metrics must be a dict of 0-d tensors, got list"):
        step(init_state(model, tx), _batch())


@pytest.mark.parametrize("compile", ["yes", None, 1])
def test_compile_must_be_a_bool_or_options(compile):
    with pytest.raises(TypeError, match=r"compile must be True, False or a dict of torch.compile options.*got"):
        make_train_step(_mlp(), cross_entropy, sgd(0.1), compile=compile)


@pytest.mark.parametrize("compile", [False, True])
def test_params_moved_to_another_dtype_without_their_optimizer_state_name_the_tensor(compile):
    """It was Adam's raw `expected dtype float for `end` but got dtype double`; moved whole, the state trains."""
    from craft.optim import adamw
    from torch.utils import _pytree as pytree

    model, tx = _mlp(), adamw(1e-2)
    state = init_state(model, tx)
    step = make_train_step(model, cross_entropy, tx, compile=compile)
    batch = {**_batch(), "input": _batch()["input"].double()}
    half_moved = state._replace(params={k: v.double() for k, v in state.params.items()})
    with pytest.raises(TypeError, match=r"^the optimizer state of '0\.weight' is float32 on cpu but the parameter is "
                                        r"float64 on cpu: a state moves whole; .* \(the step failed with: "):
        step(half_moved, batch)
    moved = pytree.tree_map(lambda t: t.double() if t.is_floating_point() else t, state)
    new, metrics = step(moved, batch)
    assert new.params["0.weight"].dtype == torch.float64 and torch.isfinite(metrics["loss"])
    assert all(t.dtype in (torch.float64, torch.int64) for t in pytree.tree_leaves(new.opt_state))


def test_vmap_of_a_train_step_over_stacked_states_says_which_step_to_vmap():
    """vmap's own error was about `.item()`, from reading the stacked rng to seed dropout."""
    from craft.ensemble import stack_states

    model, tx = _mlp(), sgd(0.1)
    states = stack_states([init_state(model, tx, seed=s) for s in range(2)])
    step = make_train_step(model, cross_entropy, tx, compile=False)
    with pytest.raises(RuntimeError, match=r"^a step of make_train_step reads state.rng on the host .* under vmap of "
                                           r"stacked states: train them with craft\.ensemble\.make_ensemble_step, or vmap "
                                           r"craft\.step\.make_pure_step"):
        torch.func.vmap(step, in_dims=(0, None))(states, _batch())
