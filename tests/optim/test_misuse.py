"""Mistakes made with the toolbox as a library: each one a clear one-line error, or the right answer.

State is read by parameter name, never by position: a reordered dict, a
gradient of another shape or a state built for other parameters used to mix
state between parameters or broadcast without a word.
"""

from __future__ import annotations

import pytest
import torch

from craft.optim import (
    OPTIMIZERS,
    adam,
    adamw,
    apply_updates,
    chain,
    cosine_decay,
    ema,
    inject_hyperparams,
    lookahead,
    multi_steps,
    scale_by_adam,
    scale_by_lion,
    scale_by_muon,
    scale_by_rms,
    scale_by_rss,
    sgd,
    trace,
)

STATEFUL = {
    "trace": lambda: trace(0.9),
    "scale_by_adam": scale_by_adam,
    "scale_by_rms": scale_by_rms,
    "scale_by_rss": lambda: scale_by_rss(0.1),
    "scale_by_lion": scale_by_lion,
    "scale_by_muon": scale_by_muon,
    "multi_steps": lambda: multi_steps(sgd(0.1), every_k=1),
    "lookahead": lambda: lookahead(sgd(0.1), sync_period=1, alpha=0.5),
    "ema": lambda: ema(0.9),
    "adamw": lambda: adamw(0.1),
}


def _params() -> dict[str, torch.Tensor]:  # 2-D leaves of distinct shapes: Muon takes matrices only
    g = torch.Generator().manual_seed(0)
    return {"x": torch.randn(3, 3, generator=g), "y": torch.randn(2, 3, generator=g)}


def _grads(i: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + i)
    return {"x": torch.randn(3, 3, generator=g), "y": torch.randn(2, 3, generator=g)}


@pytest.mark.parametrize("name", sorted(STATEFUL))
def test_state_is_read_by_name_not_position(name):
    """Gradients and params in another order than the state's: the same updates, leaf by leaf."""
    tx, params = STATEFUL[name](), _params()
    state = same = tx.init(params)
    flipped = lambda tree: dict(reversed(tree.items()))  # noqa: E731
    for i in range(3):
        u, state = tx.update(_grads(i), state, params)
        v, same = tx.update(flipped(_grads(i)), same, flipped(params))
        torch.testing.assert_close(v, u, atol=0, rtol=0)  # mappings compare by key
    torch.testing.assert_close(same, state, atol=0, rtol=0)


@pytest.mark.parametrize("name", sorted(STATEFUL))
def test_a_gradient_of_another_shape_is_refused(name):
    tx, params = STATEFUL[name](), _params()
    grads = {"x": torch.ones(3), "y": torch.ones(2, 3)}  # (3,) would broadcast over the (3, 3) state
    shape = r"the update of 'x' has shape \(3,\) but the (optimizer state holds|params hold) \(3, 3\)"
    with pytest.raises(ValueError, match=shape):
        tx.update(grads, tx.init(params), params)


@pytest.mark.parametrize("name", sorted(STATEFUL))
def test_a_state_built_for_other_names_is_refused(name):
    tx = STATEFUL[name]()
    renamed = {"w": torch.ones(3, 3), "b": torch.ones(2, 3)}
    with pytest.raises(ValueError, match=r"the (optimizer state|params) ha(s|ve) no entry for 'w' \((it was built for|"
                                         r"they hold) 'x', 'y'\)"):
        tx.update(renamed, tx.init(_params()), renamed if name not in ("lookahead", "ema") else _params())


def test_a_state_for_more_parameters_than_the_gradients_is_refused():
    tx = adam(0.1)
    with pytest.raises(ValueError, match="the optimizer state has entries the gradients lack: 'y'.*init it from these"):
        tx.update({"x": torch.ones(3, 3)}, tx.init(_params()), None)


def test_gradients_and_params_of_other_names_are_refused():
    params, grads = _params(), {"x": torch.ones(3, 3)}
    with pytest.raises(ValueError, match="apply_updates: the params have entries the updates lack: 'y'"):
        apply_updates(params, grads)
    with pytest.raises(ValueError, match=r"apply_updates: the update of 'x' has shape \(3,\) but the params hold"):
        apply_updates(params, {"x": torch.ones(3), "y": torch.ones(2, 3)})
    tx = sgd(0.1, weight_decay=0.1, mask=lambda p: dict.fromkeys(p, True))
    with pytest.raises(ValueError, match="add_decayed_weights: the params have entries the gradients lack: 'y'"):
        tx.update(grads, tx.init(grads), params)


def test_apply_updates_returns_the_params_order():
    params = _params()
    new = apply_updates(params, dict(reversed(_grads(0).items())))
    assert list(new) == list(params)
    torch.testing.assert_close(new["y"], params["y"] + _grads(0)["y"])


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_nested_params_are_refused_naming_the_flat_dict(name):
    with pytest.raises(TypeError, match=r"params must be a flat \{name: Tensor\} dict .*craft.tree flattens modules "
                                        r"by dotted name.*'enc' holds a dict"):
        OPTIMIZERS[name](0.1).init({"enc": {"w": torch.ones(2, 2)}})


def test_nested_params_are_refused_by_every_kind_of_init():
    nested = {"enc": {"w": torch.ones(2, 2)}}
    for tx in [*(make() for make in STATEFUL.values()), inject_hyperparams(sgd, learning_rate=0.1)]:
        with pytest.raises(TypeError, match="must be a flat"):
            tx.init(nested)


def test_the_state_of_another_optimizer_names_both_types():
    params = _params()
    with pytest.raises(TypeError, match="trace expected a TraceState as its state, got an AdamState"):
        sgd(0.1, momentum=0.9).update(_grads(0), adam(0.1).init(params), params)
    with pytest.raises(TypeError, match=r"this chain of 3 transforms got a tuple of 2 states \(AdamState, \(\)\)"):
        adamw(0.1).update(_grads(0), adam(0.1).init(params), params)
    with pytest.raises(TypeError, match="inject_hyperparams expected an InjectState as its state, got a tuple of 1 states"):
        inject_hyperparams(adam, learning_rate=0.1).update(_grads(0), sgd(0.1).init(params), params)  # was an AttributeError
    with pytest.raises(TypeError, match="lookahead expected a LookaheadState as its state, got an EmaState"):
        STATEFUL["lookahead"]().update(_grads(0), ema(0.9).init(params), params)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_a_string_learning_rate_is_refused(name):
    with pytest.raises(TypeError, match="lr must be a number or a schedule, got '1e-3'"):
        OPTIMIZERS[name]("1e-3")


def test_a_string_option_is_refused_naming_it():
    with pytest.raises(TypeError, match="scale_by_adam: b1 must be a number, got '0.9'"):
        adam(0.1, b1="0.9")
    with pytest.raises(TypeError, match="cosine: lr must be a number, got '0.1'"):
        cosine_decay("0.1", total_steps=10)


def test_the_checks_keep_a_chain_in_one_compiled_graph():
    """Names, shapes and state types are static: checking them adds no graph break."""
    tx, params = chain(trace(0.9), scale_by_adam()), _params()
    step = torch.compile(lambda g, s, p: tx.update(g, s, p), fullgraph=True, backend="eager")
    u, _ = step(_grads(0), tx.init(params), params)
    torch.testing.assert_close(u, tx.update(_grads(0), tx.init(params), params)[0])
