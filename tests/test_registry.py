"""Tests of craft.registry.Registry and the real OPTIMIZERS / SCHEDULES tables."""

from __future__ import annotations

import re
from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import craft.optim as optim
from craft.registry import Registry, UnknownNameError

IDENTS = st.from_regex(r"[a-z_][a-z0-9_]{0,10}", fullmatch=True)


def _optimizer_like() -> Registry:
    reg: Registry = Registry("optimizer")
    for name in ("sgd", "adam", "adamw"):
        reg.register(name)(lambda lr, _n=name: (_n, lr))
    return reg


def test_register_returns_object_unchanged():
    reg: Registry = Registry("thing")

    @reg.register("f")
    def f(x):
        return x + 1

    obj = object()
    assert reg.register("obj")(obj) is obj
    assert f(1) == 2 and f.__name__ == "f"
    assert reg["f"] is f
    assert reg["obj"] is obj


def test_duplicate_name_raises_and_keeps_first():
    reg: Registry = Registry("schedule")

    def first():
        pass

    def second():
        pass

    reg.register("cosine")(first)
    with pytest.raises(ValueError, match=r"schedule 'cosine' is already registered") as info:
        reg.register("cosine")(second)
    assert "first" in str(info.value)  # says what holds the name
    assert reg["cosine"] is first
    assert len(reg) == 1


def test_unknown_name_error_suggests_close_match():
    reg = _optimizer_like()
    with pytest.raises(UnknownNameError) as info:
        reg["adam_w"]
    err = info.value
    assert isinstance(err, KeyError)
    msg = str(err)
    assert "\n" not in msg
    assert "'adam_w'" in msg
    assert "did you mean 'adamw'?" in msg
    assert msg.endswith("known: adam, adamw, sgd")
    assert msg.startswith("unknown optimizer 'adam_w'")
    # str() is the plain message, not KeyError's repr of it
    assert not msg.startswith(('"', "'"))


def test_unknown_name_without_close_match():
    reg = _optimizer_like()
    with pytest.raises(KeyError) as info:
        reg["lbfgs_with_line_search"]
    msg = str(info.value)
    assert "did you mean" not in msg
    assert "'lbfgs_with_line_search'" in msg
    for name in ("sgd", "adam", "adamw"):
        assert name in msg


def test_unknown_name_in_empty_registry():
    reg: Registry = Registry("schedule")
    with pytest.raises(UnknownNameError, match=r"^unknown schedule 'x'; known: none$"):
        reg["x"]


@settings(max_examples=60, deadline=None)
@given(st.lists(IDENTS, unique=True, max_size=8), IDENTS)
def test_unknown_message_is_one_line_listing_known_names(names, query):
    reg: Registry = Registry("widget")
    for n in names:
        reg.register(n)(n.upper())
    if query in names:
        assert reg[query] == query.upper()
        return
    with pytest.raises(UnknownNameError) as info:
        reg[query]
    msg = str(info.value)
    assert "\n" not in msg
    assert f"unknown widget {query!r}" in msg
    known = msg.rsplit("known: ", 1)[1]
    assert known == (", ".join(sorted(names)) or "none")
    hint = re.search(r"did you mean '([^']*)'\?", msg)
    if hint:
        assert hint.group(1) in names


@settings(max_examples=60, deadline=None)
@given(st.lists(IDENTS, unique=True, max_size=8), st.lists(IDENTS, max_size=4))
def test_mapping_behaviour(names, probes):
    reg: Registry = Registry("entry")
    for i, n in enumerate(names):
        reg.register(n)(i)
    assert isinstance(reg, Mapping)
    assert len(reg) == len(names)
    assert list(reg) == names  # registration order
    assert dict(reg) == {n: i for i, n in enumerate(names)}
    assert reg == {n: i for i, n in enumerate(names)}
    for p in names + probes:
        assert (p in reg) == (p in names)
        assert reg.get(p, "missing") == (names.index(p) if p in names else "missing")
    assert sorted(reg.keys()) == sorted(names)


def test_registry_is_read_only_and_has_a_repr():
    reg = _optimizer_like()
    with pytest.raises(TypeError):
        reg["new"] = 1  # type: ignore[index]
    assert repr(reg) == "Registry('optimizer', ['adam', 'adamw', 'sgd'])"


@pytest.mark.parametrize("key", [None, 3])
def test_non_string_key_is_just_absent(key):
    reg = _optimizer_like()
    assert key not in reg
    assert reg.get(key) is None


# --------------------------------------------------------------------------
# the real tables


def test_optimizers_table():
    assert {"sgd", "adam", "adamw"} <= set(optim.OPTIMIZERS)
    assert optim.OPTIMIZERS["sgd"] is optim.sgd
    assert optim.OPTIMIZERS["adam"] is optim.adam
    assert optim.OPTIMIZERS["adamw"] is optim.adamw
    with pytest.raises(UnknownNameError, match=r"did you mean 'adamw'\?"):
        optim.OPTIMIZERS["adam_w"]
    assert optim.OPTIMIZERS.what == "optimizer"


def test_schedules_table():
    expected = {"constant", "linear_warmup", "cosine", "warmup_cosine", "step"}
    assert expected <= set(optim.SCHEDULES)
    assert optim.SCHEDULES["constant"] is optim.constant
    assert optim.SCHEDULES["linear_warmup"] is optim.linear_warmup
    assert optim.SCHEDULES["cosine"] is optim.cosine_decay
    assert optim.SCHEDULES["warmup_cosine"] is optim.warmup_cosine
    assert optim.SCHEDULES["step"] is optim.step_decay
    with pytest.raises(KeyError, match="unknown schedule 'cosin'; did you mean 'cosine'"):
        optim.SCHEDULES["cosin"]


def test_the_same_definition_registered_again_replaces_its_entry():
    """A notebook cell run twice, or importlib.reload: it was 'already registered (by __main__.NbMLP)'."""
    reg: Registry = Registry("model")
    cell = "@reg.register('nb_mlp')\nclass NbMLP:\n    hidden = {hidden}\n"
    namespace = {"reg": reg, "__name__": "__main__"}
    exec(cell.format(hidden=8), namespace)
    exec(cell.format(hidden=16), namespace)
    assert reg["nb_mlp"].hidden == 16 and len(reg) == 1
    namespace = {"reg": reg, "__name__": "someone_elses_module"}
    with pytest.raises(ValueError, match=r"model 'nb_mlp' is already registered \(by __main__\.NbMLP\); pick another name"):
        exec(cell.format(hidden=32), namespace)
    assert reg["nb_mlp"].hidden == 16
