"""Fuzzing (issue 8): random input reaches only the documented error types.

- configs: random TOML values at known and unknown keys, random override
  text, random TOML text -> ``Experiment`` or ``ConfigError``;
- images: random bytes and mutated PNG/JPEG files -> an image or ``ValueError``;
- text: random bytes -> text or ``ValueError``;
- checkpoints: truncated, bit-flipped, spliced files -> the payload or ``CheckpointError``.

Example counts are set per test (``FUZZ_*``) so CI stays fast.
"""

from __future__ import annotations

import datetime
import io

import attrs
import pytest
import tomli_w
import torch
from conftest import mlp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from craft import checkpoint
from craft.config import (
    ConfigError,
    EarlyStopping,
    Sample,
    Train,
    config_class,
    loads,
    parse_override,
    registries,
)
from craft.data.images import read_image
from craft.data.text import CharTokenizer, TextConfig, read_text
from craft.optim import adamw
from craft.step import init_state

FUZZ_CONFIG = 200
FUZZ_OVERRIDES = 200
FUZZ_TOML_TEXT = 100
FUZZ_IMAGES = 150
FUZZ_TEXT = 100
FUZZ_CHECKPOINTS = 200

BASE = {
    "name": "fuzz",
    "model": {"kind": "cnn"},
    "data": {"kind": "image_folder", "path": "data/x"},
    "train": {"compile": False},
}

# Every key the loader knows, by section, and some it does not.
SECTIONS = {
    "": ["name", "seed", "out_dir", "sweep"],
    "train": [a.name for a in attrs.fields(Train)],
    "train.early_stopping": [a.name for a in attrs.fields(EarlyStopping)],
    "train.sample": [a.name for a in attrs.fields(Sample)],
    "optim": ["kind", "lr", *{k for e in registries()["optimizers"].values() for k in attrs.fields_dict(config_class(e))}],
    "schedule": ["kind", *{k for e in registries()["schedules"].values() for k in attrs.fields_dict(config_class(e))}],
    "model": ["kind", *{k for e in registries()["models"].values() for k in attrs.fields_dict(config_class(e))}],
    "data": ["kind", *{k for e in registries()["datasets"].values() for k in attrs.fields_dict(config_class(e))}],
    "task": ["kind", "label_smoothing"],
    "sweep": ["seeds", "optim.lr", "optim.weight_decay", "model.dropout"],
}
KINDS = sorted({k for table in registries().values() for k in table}) + ["nope"]

# TOML values: anything TOML can hold, including NaN, huge ints, dates, nesting.
scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(KINDS),
    st.dates(),
    st.datetimes(min_value=datetime.datetime(1900, 1, 1)),
)
toml_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(min_size=1, max_size=8), inner, max_size=3),
    max_leaves=8,
)
known_paths = st.sampled_from(sorted({f"{s}.{k}" if s else k for s, keys in SECTIONS.items() for k in keys}))
any_paths = known_paths | st.lists(st.text(max_size=6), min_size=1, max_size=3).map(".".join)
# `imports` would import modules by random names: not what a fuzz test should do.
paths = any_paths.filter(lambda p: not p.startswith("imports"))


def only_config_errors(text: str, overrides=None) -> None:
    try:
        loads(text, overrides)
    except ConfigError as e:
        assert e.problems and all(isinstance(p, str) and p for p in e.problems)


def set_path(data: dict, path: str, value) -> dict:
    """``data`` with ``value`` at the dotted ``path``; tables replace whatever is on the way."""
    out = dict(data)
    keys, table = path.split("."), out
    for key in keys[:-1]:
        child = table.get(key)
        table[key] = table = dict(child) if isinstance(child, dict) else {}
    table[keys[-1]] = value
    return out


@settings(max_examples=FUZZ_CONFIG, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(paths, toml_values), min_size=1, max_size=4))
def test_random_toml_values_give_an_experiment_or_a_config_error(changes):
    data = BASE
    for path, value in changes:
        if all(path.split(".")):
            data = set_path(data, path, value)
    only_config_errors(tomli_w.dumps(data))


@settings(max_examples=FUZZ_OVERRIDES, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(paths, st.text(max_size=30) | toml_values.map(lambda v: tomli_w.dumps({"v": v})[4:-1]), max_size=4))
def test_random_override_text_gives_an_experiment_or_a_config_error(overrides):
    parsed = {path: parse_override(text) for path, text in overrides.items()}  # never raises
    only_config_errors(tomli_w.dumps(BASE), parsed)


@settings(max_examples=FUZZ_TOML_TEXT)
@given(st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
def test_random_text_as_toml_is_a_config_error(text):
    only_config_errors(text)


# -- images ------------------------------------------------------------------


def _encoded(fmt: str) -> bytes:
    image = Image.effect_mandelbrot((12, 10), (-2, -1.5, 1, 1.5), 30).convert("RGB")
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


PNG, JPEG = _encoded("PNG"), _encoded("JPEG")


def _header_end(data: bytes) -> int:
    """Bytes a mutation must leave alone: the dimensions (PNG's are CRC-checked; JPEG's are not,
    and a mutated one could ask for gigabytes)."""
    sof = data.find(b"\xff\xc0")
    return sof + 10 if sof >= 0 else 0


@st.composite
def image_bytes(draw) -> bytes:
    kind = draw(st.sampled_from(["random", "png", "jpeg"]))
    if kind == "random":
        prefix = draw(st.sampled_from([b"", PNG[:8], JPEG[:4], b"GIF89a", b"RIFF\x00\x00\x00\x00WEBP"]))
        return prefix + draw(st.binary(max_size=300))
    data = bytearray(PNG if kind == "png" else JPEG)
    start = _header_end(bytes(data)) if kind == "jpeg" else 0
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
        if len(data) <= start + 1:
            break
        at = draw(st.integers(start, len(data) - 1))
        if op == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[at : at + draw(st.integers(1, 8))]
    return bytes(data)


@settings(max_examples=FUZZ_IMAGES, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=image_bytes(), channels=st.sampled_from([1, 3]))
def test_random_image_bytes_decode_or_raise_value_error(tmp_path, data, channels):
    path = tmp_path / "x.png"
    path.write_bytes(data)
    try:
        image = read_image(str(path), channels)
    except ValueError as e:
        assert str(path) in str(e) and "\n" not in str(e)
    else:
        assert image.dtype == torch.uint8 and image.ndim == 3 and image.shape[0] == channels


# -- text --------------------------------------------------------------------


@settings(max_examples=FUZZ_TEXT, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=400) | st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_random_text_bytes_read_or_raise_value_error(tmp_path, data):
    path = tmp_path / "corpus.txt"
    path.write_bytes(data)
    for read in (
        lambda: read_text(path),
        lambda: TextConfig(path=str(path), block_size=4, batch_size=2).build("train", seed=0),
        lambda: CharTokenizer.load(path),
    ):
        try:
            read()
        except ValueError as e:
            assert str(e) and "\n" not in str(e).strip()


# -- checkpoints ---------------------------------------------------------------


def _template():
    torch.manual_seed(0)
    return init_state(mlp(), adamw(1e-3), seed=1)


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("ckpt") / "step_00000001.pt"
    return checkpoint.save(path, {"state": checkpoint.state_to_dict(_template()), "progress": {}}).read_bytes()


@st.composite
def corruptions(draw, good: bytes) -> bytes:
    data = bytearray(good)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "zero", "splice", "garbage"]))
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[at:]
        elif op == "zero":
            n = draw(st.integers(1, 256))
            data[at : at + n] = bytes(len(data[at : at + n]))
        elif op == "splice":  # a block of the file copied over another place, as a bad sector might
            src, n = draw(st.integers(0, len(data) - 1)), draw(st.integers(1, 64))
            data[at : at + n] = data[src : src + n]
        else:
            data = bytearray(draw(st.binary(max_size=64)))
    return bytes(data)


def test_checkpoint_corruptions_load_or_raise_checkpoint_error(good_checkpoint, tmp_path_factory):
    folder = tmp_path_factory.mktemp("corrupt")
    template = _template()

    @settings(max_examples=FUZZ_CHECKPOINTS)
    @given(corruptions(good_checkpoint))
    def check(data):
        path = folder / "step_00000002.pt"
        path.write_bytes(data)
        try:
            state = checkpoint.state_from_dict(checkpoint.load(path).get("state"), template)
        except checkpoint.CheckpointError as e:
            assert "\n" not in str(e)
        else:  # the damage missed what torch reads, or changed only values: the structure is intact
            assert {k: v.shape for k, v in state.params.items()} == {k: v.shape for k, v in template.params.items()}

    check()


# -- command lines -------------------------------------------------------------

FUZZ_ARGV = 300

words = st.sampled_from(
    ["train", "generate", "info", "evaluate", "prepare", "plot", "exp.toml", "runs/x", "--", "-", "--=", "--=3", "-h",
     "--help", "--resume", "--overwrite=false", "--prompt", "--seed=1", "--num_samples=2", "--train.steps=3", "true"]
) | st.text(max_size=12)


@settings(max_examples=FUZZ_ARGV)
@given(st.lists(words, max_size=6))
def test_random_command_lines_parse_or_give_one_usage_line(argv):
    from craft.cli import COMMANDS, ShowHelp, UsageError, parse_command_line

    try:
        name, args, options = parse_command_line(argv)
    except ShowHelp as text:
        assert str(text).startswith("usage:")
    except UsageError as e:
        assert str(e) and "\n" not in str(e)
    else:
        assert name in COMMANDS and all(isinstance(a, str) for a in args)
        if name == "train":  # run control is a bool or absent; overrides stay text for the config loader
            assert all(isinstance(options[k], bool) for k in ("resume", "overwrite") if k in options)
            assert all(isinstance(v, str) for k, v in options.items() if k not in ("resume", "overwrite"))
