"""craft.config: TOML <-> attrs records, strict checks, overrides, derived configs."""

from __future__ import annotations

import pickle
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any, get_args, get_origin

import attrs
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from craft import config
from craft.config import (
    Component,
    ConfigError,
    EarlyStopping,
    Experiment,
    Optim,
    Train,
    apply_overrides,
    build,
    config_class,
    dumps,
    load,
    loads,
    parse_override,
    save,
    to_dict,
)
from craft.data import DATASETS
from craft.models import MODELS
from craft.optim import OPTIMIZERS, SCHEDULES, Transform
from craft.tasks import TASKS

TOY = "_test_config_toy"  # test-only registry names: unique, removed afterwards


@attrs.frozen
class ToyData:
    path: str
    batch_size: int = 32
    shuffle: bool = True
    splits: list[float] = attrs.field(factory=lambda: [0.9, 0.1])
    limit: int | None = None


@pytest.fixture(scope="module", autouse=True)
def toy_dataset():
    """DATASETS may be empty while it is being filled: bring our own entry."""
    DATASETS.register(TOY)(ToyData)
    yield
    del DATASETS._entries[TOY]


@pytest.fixture
def register():
    """``register(registry, name, entry)`` for the test's duration."""
    added = []

    def add(registry, name, entry):
        registry.register(name)(entry)
        added.append((registry, name))
        return entry

    yield add
    for registry, name in added:
        registry._entries.pop(name, None)


BASE = f"""
name = "base"
[model]
kind = "cnn"
[data]
kind = "{TOY}"
path = "data/x"
"""


def problems_of(text: str, overrides: dict | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        loads(text, overrides)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


# --- Loading and defaults ------------------------------------------------------


def test_minimal_config_gets_every_default():
    exp = loads(BASE)
    assert exp.model == Component("cnn", MODELS["cnn"]())
    assert exp.data == Component(TOY, ToyData("data/x"))
    assert exp.task == Component("classification", TASKS["classification"]())
    assert exp.optim == Optim("adamw", 1e-3, config_class(OPTIMIZERS["adamw"])())
    assert exp.schedule == Component("constant", config_class(SCHEDULES["constant"])())
    assert (exp.seed, exp.out_dir, exp.imports, exp.train) == (0, "runs", [], Train())


def test_design_doc_example():
    exp = loads(
        f"""
        name = "custom_cnn"
        seed = 0
        imports = []
        [model]
        kind = "cnn"
        num_classes = 10
        [data]
        kind = "{TOY}"
        path = "data/shapes"
        batch_size = 128
        [optim]
        kind = "adamw"
        lr = 1e-3
        clip_norm = 1.0
        [schedule]
        kind = "warmup_cosine"
        warmup_ratio = 0.1
        [train]
        steps = 2000
        eval_every = 200
        precision = "fp32"
        compile = true
        early_stopping = {{ metric = "accuracy", mode = "max" }}
        """
    )
    assert exp.optim.lr == 1e-3 and exp.optim.config.clip_norm == 1.0
    assert exp.schedule.config.warmup_ratio == 0.1
    assert exp.data.config.batch_size == 128
    assert exp.train.early_stopping == EarlyStopping("accuracy", "max", 5)


def test_to_dict_resolves_defaults_and_omits_none():
    d = to_dict(loads(BASE))
    assert d["optim"] == {"kind": "adamw", "lr": 1e-3, "b1": 0.9, "b2": 0.999, "eps": 1e-8, "weight_decay": 0.01}
    assert d["schedule"] == {"kind": "constant"}  # total_steps=None left out
    assert d["task"] == {"kind": "classification"}
    assert d["data"] == {"kind": TOY, "path": "data/x", "batch_size": 32, "shuffle": True, "splits": [0.9, 0.1]}
    assert "eval_batches" not in d["train"] and "early_stopping" not in d["train"]
    assert d["train"]["steps"] == 1000 and d["imports"] == []


def test_save_and_load_file(tmp_path):
    exp = loads(BASE, {"train.early_stopping.patience": 2})
    save(exp, tmp_path / "resolved.toml")
    assert load(tmp_path / "resolved.toml") == exp
    assert load(str(tmp_path / "resolved.toml"), {"seed": 7}) == attrs.evolve(exp, seed=7)


def test_experiment_pickles():
    exp = loads(BASE + '[optim]\nkind = "sgd"\nmomentum = 0.9\n')
    assert pickle.loads(pickle.dumps(exp)) == exp


# --- Round trip -------------------------------------------------------------------


def values(t: Any) -> st.SearchStrategy:
    """Any valid TOML-writable value of type ``t`` (None only where the default is None).

    Numbers are finite and integers and lists not empty or negative: the
    built-in configs refuse the others (widths = [], num_classes = 0, lr = inf).
    """
    origin, args = get_origin(t), get_args(t)
    if t is bool:
        return st.booleans()
    if t is int:
        return st.integers(1, 2**63 - 1)
    if t is float:
        return st.floats(allow_nan=False, allow_infinity=False)
    if t is str:
        return st.text(max_size=8)
    if origin is list:
        return st.lists(values(args[0]), min_size=1, max_size=3)
    if type(None) in args:
        return st.none() | values(next(a for a in args if a is not type(None)))
    raise NotImplementedError(t)


def configs(entry: Any) -> st.SearchStrategy:
    cls = attrs.resolve_types(config_class(entry))
    return st.builds(cls, **{f.name: values(f.type) for f in attrs.fields(cls)})


def components(registry, kinds) -> st.SearchStrategy:
    return st.sampled_from(sorted(kinds)).flatmap(
        lambda kind: configs(registry[kind]).map(lambda cfg: Component(kind, cfg))
    )


positive = st.integers(1, 10**9)
experiments = st.builds(
    Experiment,
    name=st.text(min_size=1, max_size=8).filter(lambda n: n not in (".", "..") and not set(n) & set("/\\\0")),
    model=components(MODELS, ["cnn", "resnet"]),
    data=components(DATASETS, [TOY]),
    seed=st.integers(-(2**63), 2**63 - 1),
    out_dir=st.text(max_size=8),
    imports=st.lists(st.sampled_from(["json", "craft.models"]), max_size=2),
    task=components(TASKS, ["classification"]),
    optim=st.sampled_from(sorted(OPTIMIZERS)).flatmap(
        lambda kind: st.builds(Optim, st.just(kind), st.floats(0, allow_infinity=False), configs(OPTIMIZERS[kind]))
    ),
    schedule=components(SCHEDULES, SCHEDULES),
    train=st.builds(
        Train,
        steps=positive,
        eval_every=positive,
        log_every=positive,
        eval_batches=st.none() | positive,
        precision=st.sampled_from(["fp32", "bf16"]),
        compile=st.booleans(),
        device=st.sampled_from(["auto", "cpu", "cuda", "cuda:0", "cuda:12"]),
        accum_steps=positive,
        checkpoint_every=st.none() | positive,
        keep_checkpoints=positive,
        early_stopping=st.none()
        | st.builds(EarlyStopping, st.text(min_size=1, max_size=8), st.sampled_from(["min", "max"]), st.integers(0, 99)),
        tensorboard=st.booleans(),
    ),
)


@settings(max_examples=200)
@given(experiments)
def test_dumps_loads_round_trip(exp):
    assert loads(dumps(exp)) == exp


# --- Errors --------------------------------------------------------------------------


def test_unknown_key_suggests_close_match():
    assert problems_of(BASE + "[optim]\nlrr = 3e-4\n") == ["optim.lrr: unknown key; did you mean 'lr'?"]
    assert problems_of('nmae = "x"\n' + BASE) == ["nmae: unknown key; did you mean 'name'?"]
    assert problems_of(BASE + "[train]\nstpes = 1\nzzz = 2\n") == [
        "train.stpes: unknown key; did you mean 'steps'?",
        "train.zzz: unknown key",
    ]
    assert problems_of(BASE + "[train.early_stopping]\npatiense = 1\n") == [
        "train.early_stopping.patiense: unknown key; did you mean 'patience'?"
    ]


def test_unknown_key_under_default_kind_names_the_kinds_that_have_it():
    (line,) = problems_of(BASE + "[schedule]\nwarmup_ratio = 0.1\n")
    assert line.startswith("schedule.warmup_ratio: unknown key (kind defaults to 'constant';")
    assert "warmup_cosine" in line


def test_missing_required_keys():
    assert problems_of(BASE.replace('path = "data/x"', "")) == ["data.path: required"]
    assert problems_of("[model]\nkind = 'cnn'\n") == ["name: required", "data: required"]


def test_missing_kind():
    (line,) = problems_of(BASE.replace('kind = "cnn"', "num_classes = 3"))
    assert line.startswith("model.kind: required; known: ") and "cnn" in line


def test_unknown_kind_lists_known_kinds():
    assert problems_of(BASE.replace('"cnn"', '"cnnn"')) == [f"model.kind: {MODELS.unknown_message('cnnn')}"]
    assert "did you mean 'cnn'? known: " in MODELS.unknown_message("cnnn")
    assert problems_of(BASE + "[optim]\nkind = 'adamx'\n") == [f"optim.kind: {OPTIMIZERS.unknown_message('adamx')}"]
    assert problems_of(BASE.replace('"cnn"', "3")) == ["model.kind: expected str, got 3"]


def test_wrong_types_name_the_path():
    assert problems_of(BASE + "[train]\nsteps = 0.5\n") == ["train.steps: expected int, got 0.5"]
    assert problems_of("seed = 'cnn'\n" + BASE) == ["seed: expected int, got 'cnn'"]
    assert problems_of('name = "x"\nmodel = "cnn"\n[data]\nkind = "t"\n')[0] == (
        "model: expected a table, got 'cnn'; to pick that kind, set model.kind (--model.kind=cnn)"
    )
    assert problems_of(BASE + "[train]\nearly_stopping = 3\n") == [
        "train.early_stopping: expected a table, got 3; to leave this optional table out, "
        "remove it from the TOML or give None on the command line"
    ]
    with_sample = BASE + "[train.sample]\nevery = 2\n"
    assert loads(with_sample).train.sample.every == 2
    assert loads(with_sample, {"train.sample": None}).train.sample is None  # --train.sample=None
    assert problems_of(BASE + "[train.early_stopping]\nmode = 'mn'\n") == [
        "train.early_stopping.mode: expected one of 'min', 'max', got 'mn'"
    ]


def test_list_items_are_checked():
    text = BASE.replace('"cnn"', '"resnet"\nwidths = [8, "a", 2.5]')
    assert problems_of(text) == ["model.widths[1]: expected int, got 'a'", "model.widths[2]: expected int, got 2.5"]
    # A string is not a list of its characters.
    assert problems_of(BASE.replace('"cnn"', '"resnet"\nwidths = "abc"')) == ["model.widths: expected a list, got 'abc'"]
    assert problems_of("imports = 'json'\n" + BASE) == ["imports: expected a list, got 'json'"]


def test_validators_report_every_invalid_value():
    text = BASE + "[train]\nsteps = 0\neval_every = -1\nprecision = 'fp16'\nkeep_checkpoints = 0\n"
    assert problems_of(text) == [
        "train.steps: must be >= 1, got 0",
        "train.eval_every: must be >= 1, got -1",
        "train.precision: must be one of 'fp32', 'bf16', got 'fp16'",
        "train.keep_checkpoints: must be >= 1, got 0",
    ]
    assert problems_of(BASE.replace('"base"', '""')) == ["name: must not be empty"]
    assert problems_of(BASE + "[train.early_stopping]\npatience = -1\n") == [
        "train.early_stopping.patience: must be >= 0, got -1"
    ]


def test_a_negative_learning_rate_is_refused_not_climbed():
    """``lr = -3e-3`` trained by gradient ascent, without a word; so did a sweep's negative values."""
    assert problems_of(BASE + "[optim]\nlr = -3e-3\n") == ["optim.lr: must be >= 0, got -0.003"]
    assert problems_of(BASE + '[sweep]\n"optim.lr" = [1e-3, -1e-3]\n"optim.weight_decay" = [-0.1]\n') == [
        "sweep.optim.lr: every value must be >= 0, got [0.001, -0.001]",
        "sweep.optim.weight_decay: every value must be >= 0, got [-0.1]",
    ]


def test_a_frozen_groups_lr_scale_or_weight_decay_is_refused():
    """``freeze = true`` with ``lr_scale = 10.0`` was accepted, and the scale did nothing."""
    groups = '[[optim.groups]]\nmatch = "fc.*"\nfreeze = true\nlr_scale = 10.0\nweight_decay = 0.0\n'
    assert problems_of(BASE + "[optim]\n" + groups) == [
        "optim.groups[0].lr_scale: does nothing in a frozen group (freeze = true); drop it, or the freeze",
        "optim.groups[0].weight_decay: does nothing in a frozen group (freeze = true); drop it, or the freeze",
    ]


def test_user_validators_are_reported_with_their_path(register):
    @attrs.frozen
    class Net:
        width: int = attrs.field(default=8, validator=attrs.validators.gt(0))

        def __attrs_post_init__(self):
            if self.width == 13:
                raise ValueError("unlucky width")

    register(MODELS, "_test_config_net", Net)
    (line,) = problems_of(BASE.replace('"cnn"', '"_test_config_net"\nwidth = 0'))
    assert line.startswith("model.width: ") and "must be > 0" in line
    assert problems_of(BASE.replace('"cnn"', '"_test_config_net"\nwidth = 13')) == ["model: unlucky width"]


def test_all_problems_are_reported():
    text = f"""
    nmae = "x"
    seed = true
    [model]
    kind = "cnn"
    num_classes = "10"
    [data]
    kind = "{TOY}"
    [optim]
    lrr = 1
    lr = "fast"
    [train]
    compile = "false"
    """
    assert sorted(problems_of(text)) == sorted(
        [
            "name: required",
            "nmae: unknown key; did you mean 'name'?",
            "seed: expected int, got True",
            "model.num_classes: expected int, got '10'",
            "data.path: required",
            "optim.lr: expected float, got 'fast'",
            "optim.lrr: unknown key; did you mean 'lr'?",
            "train.compile: expected bool, got 'false'",
        ]
    )


def test_toml_syntax_error_gives_line_and_column():
    (line,) = problems_of('name = "x"\nseed = \n')
    assert line.startswith("<string>: invalid TOML: ") and "line 2, column" in line
    with pytest.raises(ConfigError, match=r"exp\.toml: invalid TOML: .*line 1"):
        loads("[[x\nname = 1", source="exp.toml")


def test_unreadable_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=f"^{missing}: cannot read config: No such file"):
        load(missing)
    with pytest.raises(ConfigError, match=f"^{tmp_path}: cannot read config"):
        load(tmp_path)  # a directory


def test_not_a_table():
    with pytest.raises(ConfigError, match="^config: expected a table, got 3$"):
        config.from_dict(3)


# --- Strict scalars -------------------------------------------------------------------


@pytest.mark.parametrize("value", ['"false"', '"true"', "0", "1"])
def test_bool_accepts_only_bool(value):
    expected = f"train.compile: expected bool, got {parse_override(value)!r}"
    assert problems_of(BASE + f"[train]\ncompile = {value}\n") == [expected]


@pytest.mark.parametrize("value", ["true", "0.5", '"3"', "3.0"])
def test_int_accepts_only_int(value):
    expected = f"train.steps: expected int, got {parse_override(value)!r}"
    assert problems_of(BASE + f"[train]\nsteps = {value}\n") == [expected]


def test_float_accepts_int_but_not_bool_or_str():
    exp = loads(BASE + "[optim]\nlr = 1\n")
    assert exp.optim.lr == 1.0 and type(exp.optim.lr) is float
    assert problems_of(BASE + "[optim]\nlr = true\n") == ["optim.lr: expected float, got True"]
    assert problems_of(BASE + "[optim]\nlr = '1e-3'\n") == ["optim.lr: expected float, got '1e-3'"]


def test_str_accepts_only_str():
    assert problems_of(BASE + "[train]\ndevice = 0\n") == ["train.device: expected str, got 0"]


# --- Overrides ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("false", False),
        ("true", True),
        ("3e-4", 3e-4),
        ("1e-3", 0.001),
        ("-2", -2),
        ("[1, 2]", [1, 2]),
        ("'abc'", "abc"),
        ('"a b"', "a b"),
        ("cnn", "cnn"),
        ("cuda:0", "cuda:0"),
        ("a b", "a b"),
        ("{ patience = 3 }", {"patience": 3}),
        ("True", True),  # Python literals too, via ast.literal_eval
        (".5", 0.5),
        ("(1, 2)", [1, 2]),
        ("2024-01-01", "2024-01-01"),  # TOML dates stay text: no key takes one
        ("__import__('os').getcwd()", "__import__('os').getcwd()"),  # never evaluated
        ("1\nw = 2", "1\nw = 2"),
        ("", ""),
    ],
)
def test_parse_override(text, value):
    assert parse_override(text) == value
    assert type(parse_override(text)) is type(value)


def test_overrides_set_nested_keys_and_get_the_same_checks():
    flags = {"optim.lr": 3e-4, "train.compile": parse_override("false"), "seed": 1, "model.kind": "resnet"}
    exp = loads(BASE, flags)
    assert (exp.optim.lr, exp.train.compile, exp.seed, exp.model.kind) == (3e-4, False, 1, "resnet")
    assert loads(BASE, {"train.early_stopping.patience": 3}).train.early_stopping == EarlyStopping(patience=3)
    assert problems_of(BASE, {"train.steps": 0.5}) == ["train.steps: expected int, got 0.5"]
    assert problems_of(BASE, {"train.compile": "false"}) == ["train.compile: expected bool, got 'false'"]
    assert problems_of(BASE, {"optim.lrr": 1.0}) == ["optim.lrr: unknown key; did you mean 'lr'?"]


def test_override_through_a_non_table_is_an_error():
    assert problems_of(BASE, {"name.first": "x", "model.kind.x": 1, "a..b": 1}) == [
        "name.first: cannot set, name is 'base', not a table",
        "model.kind.x: cannot set, model.kind is 'cnn', not a table",
        "a..b: not a dotted key path",
    ]


def test_apply_overrides_copies():
    data = {"train": {"steps": 1}, "name": "x"}
    out = apply_overrides(data, {"train.steps": 2, "new.table.key": 3})
    assert out == {"train": {"steps": 2}, "name": "x", "new": {"table": {"key": 3}}}
    assert data == {"train": {"steps": 1}, "name": "x"}
    assert apply_overrides(data, None) == data
    with pytest.raises(ConfigError, match="^3: not a dotted key path$"):
        apply_overrides(data, {3: 1})


# --- Function entries -------------------------------------------------------------------


def field_names(entry) -> list[str]:
    return [f.name for f in attrs.fields(config_class(entry))]


def test_derived_configs_of_optimizers_and_schedules():
    assert field_names(OPTIMIZERS["adamw"]) == ["b1", "b2", "eps", "weight_decay", "clip_norm"]  # no mask
    assert field_names(SCHEDULES["warmup_cosine"]) == ["total_steps", "warmup_steps", "warmup_ratio", "min_lr", "init_lr"]
    assert config_class(OPTIMIZERS["sgd"]) is config_class(OPTIMIZERS["sgd"])  # cached
    assert config_class(MODELS["cnn"]) is MODELS["cnn"]


def test_every_registered_entry_has_a_config_of_the_one_protocol():
    from craft.config import Config

    for table in config.registries().values():
        for name, entry in table.items():
            if name.startswith("_test"):  # this module's toys, some without build
                continue
            cls = config_class(entry)
            assert attrs.has(cls) and issubclass(cls, Config), f"{table.what} {name!r}"


def test_a_section_builds_the_same_way_whichever_way_its_entry_is_written():
    exp = loads(BASE.replace('"cnn"', '"cnn"\nnum_classes = 3') + '[schedule]\nkind = "cosine"\ntotal_steps = 9\n')
    assert build(exp.model).fc.out_features == 3  # a class entry: its own build
    schedule = build(exp.schedule, 2.0, total_steps=100)  # a function entry: called with its fields
    assert float(schedule(torch.tensor(0))) == 2.0 and float(schedule(torch.tensor(9))) == 0.0  # the TOML's 9 wins


def test_sgd_with_momentum_builds():
    exp = loads(BASE + '[optim]\nkind = "sgd"\nlr = 0.1\nmomentum = 0.9\nnesterov = true\n')
    assert (exp.optim.config.momentum, exp.optim.config.nesterov) == (0.9, True)
    assert isinstance(build(exp.optim, exp.optim.lr), Transform)
    assert isinstance(build(exp.optim, exp.optim.lr, mask=None), Transform)


def test_non_toml_options_are_not_keys():
    assert problems_of(BASE + "[optim]\nmask = 1\n") == ["optim.mask: unknown key"]
    assert problems_of(BASE + "[optim]\nlearning_rate = 1\n") == ["optim.learning_rate: unknown key"]


def test_schedule_build_takes_total_steps_from_the_run_unless_set():
    exp = loads(BASE + '[schedule]\nkind = "warmup_cosine"\nwarmup_ratio = 0.5\n')
    schedule = build(exp.schedule, 1.0, total_steps=10)
    assert float(schedule(torch.tensor(5))) == pytest.approx(1.0)  # end of warmup
    exp = loads(BASE + '[schedule]\nkind = "warmup_cosine"\nwarmup_steps = 2\ntotal_steps = 4\n')
    schedule = build(exp.schedule, 1.0, total_steps=1000)  # the TOML's total_steps wins
    assert float(schedule(torch.tensor(4))) == pytest.approx(0.0)


def test_derived_config_keeps_only_toml_typed_keyword_options(register):
    def make(
        size: int,
        *,
        widths: list[int] = [1, 2],  # noqa: B006
        scale: float | None = None,
        name: str = "x",
        fn: Any = None,
        required: int,
        nested: list[int | None] = [],  # noqa: B006
        missing: "NoSuchType" = 0,  # noqa: F821
    ):
        return size, widths, scale, name

    register(MODELS, "_test_config_fn", make)
    assert field_names(make) == ["widths", "scale", "name"]
    exp = loads(BASE.replace('"cnn"', '"_test_config_fn"\nwidths = [3]'))
    assert build(exp.model, 5, required=1) == (5, [3], None, "x")  # run-time options pass through
    assert config_class(make)().widths is not config_class(make)().widths  # list defaults are copied
    assert loads(dumps(exp)) == exp


def test_non_attrs_class_entry_is_reported(register):
    class Plain:
        pass

    register(MODELS, "_test_config_plain", Plain)
    (line,) = problems_of(BASE.replace('"cnn"', '"_test_config_plain"'))
    assert line.startswith("model: ") and "not an attrs class" in line


def test_registries():
    assert config.registries() == {
        "models": MODELS, "datasets": DATASETS, "tasks": TASKS, "optimizers": OPTIMIZERS, "schedules": SCHEDULES
    }


def test_build_class_entry():
    exp = loads(BASE.replace('"cnn"', '"cnn"\nnum_classes = 4'))
    assert build(exp.model).fc.out_features == 4


# --- Imports ----------------------------------------------------------------------------


def test_imports_register_entries(tmp_path, monkeypatch):
    module = "_test_config_plugin"
    (tmp_path / f"{module}.py").write_text(
        textwrap.dedent(
            """
            import attrs
            from craft.models import MODELS

            @MODELS.register("_test_config_plugin_model")
            @attrs.frozen
            class PluginModel:
                width: int = 4
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        text = f'imports = ["{module}"]\n' + BASE.replace('"cnn"', '"_test_config_plugin_model"\nwidth = 7')
        exp = loads(text)
        assert exp.model.config.width == 7 and exp.imports == [module]
        assert loads(dumps(exp)) == exp
    finally:
        MODELS._entries.pop("_test_config_plugin_model", None)
        sys.modules.pop(module, None)


def test_imports_find_modules_in_the_current_folder(tmp_path, monkeypatch):
    """As `python -m craft` does, the installed `craft` command (no "" on sys.path) looks in the current folder."""
    module = "_test_config_cwd_plugin"
    (tmp_path / f"{module}.py").write_text("LOADED = True\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    try:
        assert loads(f'imports = ["{module}"]\n' + BASE).imports == [module]
        assert sys.modules[module].LOADED
    finally:
        sys.modules.pop(module, None)


def test_failing_imports_are_reported(tmp_path, monkeypatch):
    (tmp_path / "_test_config_broken.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    text = 'imports = ["_test_config_missing.models", "json", "_test_config_broken"]\n' + BASE
    try:
        assert problems_of(text) == [
            "imports: cannot import '_test_config_missing.models': No module named '_test_config_missing'; modules "
            f"under imports are looked up in the current folder ({Path.cwd()}) and on PYTHONPATH: run craft from the "
            "folder that holds it, or add that folder to PYTHONPATH",
            f"imports: cannot import '_test_config_broken': boom ({tmp_path / '_test_config_broken.py'}, line 1)",
        ]
    finally:
        sys.modules.pop("_test_config_broken", None)


# --- Values checked at load (issue 14) ----------------------------------------------


@pytest.mark.parametrize(
    "overrides, problem",
    [
        ({"train.device": "banana"}, "train.device: must be 'auto', 'cpu', 'cuda' or 'cuda:N' (N a device index), got 'banana'"),
        ({"train.device": "cuda:x"}, "train.device: must be 'auto', 'cpu', 'cuda' or 'cuda:N' (N a device index), got 'cuda:x'"),
        ({"optim.lr": float("nan")}, "optim.lr: must be a finite number, got nan"),
        ({"optim.lr": 10**400}, "optim.lr: must be a finite number, got an integer too large for a float"),
        ({"train.sample.temperature": float("inf")}, "train.sample.temperature: must be a finite number, got inf"),
        ({"sweep.optim.lr": [1e-3, float("nan")]}, "sweep.optim.lr: expected a non-empty list of numbers, none nan or inf, got [0.001, nan]"),
        ({"seed": 2**64}, "seed: must fit in 64 bits (-2**63 <= seed < 2**64), got 18446744073709551616"),
        ({"seed": -(2**63) - 1}, "seed: must fit in 64 bits (-2**63 <= seed < 2**64), got -9223372036854775809"),
        ({"seed": 10**5000}, "seed: must fit in 64 bits (-2**63 <= seed < 2**64), got a 16610-bit number"),
        ({"train.sample.seed": 2**64}, "train.sample.seed: must fit in 64 bits"),
        ({"name": ""}, "name: must not be empty"),
        ({"name": ".."}, "name: must name a folder, not '..'; give a plain name such as 'exp1'"),
        ({"name": "a\\b"}, "name: must be one folder name, without '/' or '\\' (out_dir says where runs go), got 'a\\\\b'"),
        ({"name": "/abs"}, "name: must be one folder name"),
        ({"name": "nul\0byte"}, "name: must not contain a NUL byte, got 'nul\\x00byte'"),
        ({"model.kind": "resnet", "model.widths": []}, "model.widths: must be a non-empty list of positive channel counts"),
        ({"model.kind": "resnet", "model.blocks": 0}, "model.blocks: must be >= 1, got 0"),
        ({"model.num_classes": 0}, "model.num_classes: must be >= 1, got 0"),
    ],
)
def test_values_that_make_no_sense_are_refused_at_load(overrides, problem):
    (line,) = problems_of(BASE, overrides)
    assert line.startswith(problem), line


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:15"])
def test_every_device_name_torch_knows_for_training_loads(device):
    assert loads(BASE, {"train.device": device}).train.device == device


def test_a_byte_order_mark_is_read_past(tmp_path):
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + BASE.encode())
    assert load(path).name == "base"


def test_deep_nesting_is_one_line(tmp_path):
    for text in ("a = " + "[" * 100_000 + "]" * 100_000, "a = " + "{b = " * 50_000 + "}" * 50_000):
        assert problems_of(text) == ["<string>: nested too deeply to read; an experiment needs a few levels of tables"]


def test_a_file_name_that_does_not_print_on_one_line_is_quoted(tmp_path):
    path = tmp_path / "new\nline.toml"
    with pytest.raises(ConfigError) as info:
        load(path)
    (line,) = info.value.problems
    assert "\n" not in line and line.startswith(repr(str(path)) + ": cannot read config")


@pytest.mark.parametrize(
    "texts, field, value",
    [
        ({"name": "2024"}, lambda e: e.name, "2024"),
        ({"name": "true"}, lambda e: e.name, "true"),
        ({"train.sample.prompt": "[1, 2]"}, lambda e: e.train.sample.prompt, "[1, 2]"),
        ({"optim.lr": "3e-4"}, lambda e: e.optim.lr, 3e-4),
        ({"seed": "7"}, lambda e: e.seed, 7),
        ({"model.kind": "resnet", "model.widths": "[4, 8]"}, lambda e: e.model.config.widths, [4, 8]),
        ({"train.compile": "false"}, lambda e: e.train.compile, False),
        ({"name": "None"}, lambda e: e.name, "None"),
        # quoted for the shell's sake (--name='"my run"'): the literal's text, not its quotes
        ({"name": '"my run"'}, lambda e: e.name, "my run"),
        ({"name": "'2024'"}, lambda e: e.name, "2024"),
        ({"train.sample.prompt": '"Once upon"'}, lambda e: e.train.sample.prompt, "Once upon"),
    ],
)
def test_command_line_text_is_kept_as_typed_for_text_fields_only(texts, field, value):
    assert field(loads(BASE, texts=texts)) == value


def test_none_on_the_command_line_unsets_an_optional_text_key():
    # As None leaves out an optional table; it was the text "None" (a val folder named None, a refused prepare).
    folder = BASE.replace(f'kind = "{TOY}"', 'kind = "image_folder"\nprepare = "shapes"\nval_path = "data/v"')
    data = loads(folder, texts={"data.prepare": "None", "data.val_path": "None"}).data.config
    assert (data.prepare, data.val_path) == (None, None)


def test_command_line_text_for_a_number_is_still_checked():
    with pytest.raises(ConfigError) as info:
        loads(BASE, texts={"optim.lr": "fast", "name": "x"})
    assert info.value.problems == ["optim.lr: expected float, got 'fast'"]


SCHEDULED = BASE + "[optim]\nkind = 'adamw'\nb1 = 0.8\nweight_decay = 0.1\n[schedule]\nkind = 'warmup_cosine'\nwarmup_ratio = 0.1\nmin_lr = 1e-5\n"


def test_a_kind_changed_over_the_file_leaves_out_the_old_kinds_keys_saying_which():
    with pytest.warns(UserWarning) as said:
        exp = loads(SCHEDULED, texts={"schedule.kind": "cosine", "optim.kind": "sgd"})
    assert exp.schedule.kind == "cosine" and exp.schedule.config.min_lr == 1e-5  # a key both kinds take stays
    assert exp.optim.kind == "sgd" and exp.optim.config.weight_decay == 0.1
    assert sorted(str(w.message) for w in said) == [
        "optim.kind = 'sgd' replaces the file's 'adamw': left out optim.b1, which 'sgd' does not take",
        "schedule.kind = 'cosine' replaces the file's 'warmup_cosine': left out schedule.warmup_ratio, "
        "which 'cosine' does not take",
    ]
    with pytest.warns(UserWarning, match="left out schedule.warmup_ratio and schedule.min_lr, which 'constant'"):
        assert loads(SCHEDULED, {"schedule.kind": "constant"}).schedule.kind == "constant"


def test_a_key_given_with_the_new_kind_or_of_no_kind_is_still_an_error():
    # Given now, warmup_ratio is the user's: not dropped, and the error names the kinds that take it.
    with pytest.warns(UserWarning, match="left out schedule.min_lr,"):
        assert problems_of(SCHEDULED, {"schedule.kind": "constant", "schedule.warmup_ratio": 0.2}) == [
            "schedule.warmup_ratio: unknown key (kind is 'constant'; 'warmup_ratio' is a key of linear_warmup, warmup_cosine)"
        ]
    # A typo in the file is no key of the old kind either: still reported under the new one.
    typo = SCHEDULED.replace("warmup_ratio", "warmup_ration")
    with pytest.warns(UserWarning, match="left out schedule.min_lr,"):
        assert problems_of(typo, {"schedule.kind": "constant"}) == ["schedule.warmup_ration: unknown key"]
    # Replacing the whole table, or naming the same kind, drops nothing.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert loads(SCHEDULED, {"schedule": {"kind": "constant"}}).schedule.kind == "constant"
        assert loads(SCHEDULED, texts={"schedule.kind": "warmup_cosine"}).schedule.config.warmup_ratio == 0.1


def test_a_section_given_as_a_kind_name_says_to_set_its_kind():
    assert problems_of(BASE, {"optim": "adam"}) == [
        "optim: expected a table, got 'adam'; to pick that kind, set optim.kind (--optim.kind=adam)"
    ]
    assert problems_of(BASE, {"schedule": "nope"}) == ["schedule: expected a table, got 'nope'"]


def test_a_key_in_the_wrong_table_says_where_it_lives():
    """``--train.seed`` and ``--train.lr`` are keys put under the wrong table, not typos to guess at."""
    assert problems_of(BASE, {"train.seed": 1}) == ["train.seed: unknown key; 'seed' is a top-level key (--seed=...)"]
    assert problems_of(BASE, {"train.lr": 0.1}) == ["train.lr: unknown key; did you mean 'optim.lr'?"]
    assert problems_of(BASE, {"train.batch_size": 8}) == ["train.batch_size: unknown key; did you mean 'data.batch_size'?"]
    assert problems_of(BASE, {"train.stepz": 3}) == ["train.stepz: unknown key; did you mean 'steps'?"]  # a typo: as before
    assert problems_of(BASE, {"train.nothing_like_it": 3}) == ["train.nothing_like_it: unknown key"]


def test_early_stopping_mode_follows_the_metric_and_an_unknown_metric_needs_one():
    """metric = "accuracy" without mode minimised accuracy: the run stopped as it improved, keeping the worst."""
    def rule(table: str):
        return loads(BASE + f"[train.early_stopping]\n{table}\n").train.early_stopping

    assert rule('metric = "accuracy"').mode == "max" and rule('metric = "top5"').mode == "max"
    assert rule('metric = "exact_match"').mode == "max"
    assert rule('metric = "perplexity"').mode == "min" and rule("patience = 2").mode == "min"  # loss
    assert rule('metric = "accuracy"\nmode = "min"').mode == "min"  # as an old run's config.toml says it
    saved = loads(BASE + '[train.early_stopping]\nmetric = "accuracy"\n')
    assert 'mode = "max"' in dumps(saved)  # the run's config.toml says which way it went
    assert rule('metric = "f1"').mode is None  # unknown: craft.checks.check_early_stopping asks for it
    assert rule('metric = "f1"\nmode = "max"').mode == "max"
